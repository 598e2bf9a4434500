"""Forward + backward of GPT-2's causal attention (F.scaled_dot_product_attention, as zerotrain/model.py calls it)
under each SDPA backend PyTorch has: which kernel a GPU runs fastest at a model's shape. GPT-2 XL at micro-batch 32
by default (25 heads of 64, 1024 tokens); prints milliseconds per call and the TFLOP/s each reaches, counting causal
attention's FLOPs (half of the full T×T products).
    python3 benchmarks/attention_speed.py [--batch 32] [--heads 25] [--head-dim 64] [--seq 1024] [--iters 20] [--device cuda]"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(step, iters: int, device: str) -> float:
    """Milliseconds per call of step(), after 3 warm-up calls."""
    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=25)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    torch.manual_seed(0)
    shape = (a.batch, a.heads, a.seq, a.head_dim)
    q, k, v = (torch.randn(shape, device=a.device, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=a.device, dtype=dtype)
    # QK^T and PV, 2 FLOPs per multiply-add, half of the T×T entries under the causal mask; backward does 2.5× forward
    forward_flops = 2 * 2 * a.batch * a.heads * a.seq * a.seq * a.head_dim / 2
    reference = None
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        def step(backend=backend):
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(grad)
            return out
        try:
            q.grad = k.grad = v.grad = None
            out = step().detach()
        except RuntimeError as e:  # this backend does not run on this device, dtype or shape
            print(f"RESULT {backend.name:20s} not available: {str(e).splitlines()[0][:100]}")
            continue
        if reference is None:
            reference = out
        error = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        ms = time_ms(step, a.iters, a.device)
        print(f"RESULT {backend.name:20s} {ms:8.3f} ms  {3.5 * forward_flops / ms / 1e9:7.1f} TFLOP/s  "
              f"(output off the first backend's by {error:.1e})")


if __name__ == "__main__":
    main()
