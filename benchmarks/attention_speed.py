"""Forward + backward of GPT-2's causal attention (F.scaled_dot_product_attention, as zerotrain/model.py calls it)
under each SDPA backend PyTorch has, under FlexAttention (torch.nn.attention.flex_attention, compiled; with
--flex-autotune also under Inductor's max-autotune) and, where it is installed, under FlashAttention-3 as
zerotrain/kernels/flash3.py calls it (q, k, v strided (B, T, H, D) views, no transposes): which kernel a GPU runs fastest
at a model's shape. GPT-2 XL at micro-batch 32 by default (25 heads of 64, 1024 tokens), timed as the model runs it: from the (B, T, 3C) projection,
q, k and v strided views of it (or copied to contiguous (B, H, T, D) tensors first: "q,k,v copied"), to the
(B, T, C) input of the output projection. Prints milliseconds per forward and per forward + backward, and the TFLOP/s each reaches,
counting causal attention's FLOPs (half of the full T×T products; backward does 2.5× forward).
    python3 benchmarks/attention_speed.py [--batch 32] [--heads 25] [--head-dim 64] [--seq 1024] [--iters 20]
                                          [--flex-autotune] [--device cuda]"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from zerotrain.kernels import flash3


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


def flex_attention_call(seq: int, heads: int, device: str, mode: str | None):
    """A compiled causal FlexAttention taking (q, k, v) as SDPA does; None where this torch has no FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, seq, seq, device=device)
    compiled = torch.compile(flex_attention, mode=mode, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=25)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--flex-autotune", action="store_true", help="also FlexAttention compiled with max-autotune")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    torch.manual_seed(0)
    B, H, T, D = a.batch, a.heads, a.seq, a.head_dim
    qkv = torch.randn(B, T, 3 * H * D, device=a.device, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, T, H * D, device=a.device, dtype=dtype)
    # QK^T and PV, 2 FLOPs per multiply-add, half of the T×T entries under the causal mask; backward does 2.5× forward
    forward_flops = 2 * 2 * B * H * T * T * D / 2
    sdpa_ways, ways = {}, {}
    for backend in (
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ):

        def attend(q, k, v, backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        sdpa_ways[backend.name] = attend
    for name, mode in (("FLEX", None), ("FLEX_MAX_AUTOTUNE", "max-autotune-no-cudagraphs")):
        if mode is not None and not a.flex_autotune:
            continue
        attend = flex_attention_call(T, H, a.device, mode)
        if attend is not None:
            sdpa_ways[name] = attend

    def as_model_does(attend, contiguous):
        """The attention of model.CausalSelfAttention from the (B, T, 3C) projection to the (B, T, C) input of c_proj:
        q, k, v strided (B, H, T, D) views of the projection, or (contiguous) copied to (B, H, T, D) first."""

        def run(qkv):
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(H * D, dim=2))
            if contiguous:
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return attend(q, k, v).transpose(1, 2).contiguous().view(B, T, H * D)

        return run

    for name, attend in sdpa_ways.items():
        ways[name] = as_model_does(attend, contiguous=False)
        if name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "FLEX"):
            ways[name + " (q,k,v copied)"] = as_model_does(attend, contiguous=True)
    why_not = flash3.flash3_unavailable(torch.device(a.device), dtype, D)
    if why_not is None:
        ways["FLASH_ATTENTION_3"] = lambda qkv: flash3.causal_attention(qkv, H)
    else:
        print(f"RESULT {'FLASH_ATTENTION_3':30s} not available: {why_not}")
    reference = None
    for name, attend in ways.items():

        def forward_backward(attend=attend):
            out = attend(qkv)
            out.backward(grad)
            return out

        def forward(attend=attend):
            with torch.no_grad():
                return attend(qkv)

        try:
            qkv.grad = None
            out = forward_backward().detach()
        except (RuntimeError, NotImplementedError) as e:  # this way does not run on this device, dtype or shape
            print(f"RESULT {name:30s} not available: {str(e).splitlines()[0][:100]}")
            continue
        if reference is None:
            reference = out, qkv.grad.clone()
        error = ((out.float() - reference[0].float()).norm() / reference[0].float().norm()).item()
        grad_error = ((qkv.grad.float() - reference[1].float()).norm() / reference[1].float().norm()).item()
        ms_forward = time_ms(forward, a.iters, a.device)
        ms = time_ms(forward_backward, a.iters, a.device)
        print(
            f"RESULT {name:30s} forward {ms_forward:7.3f} ms {forward_flops / ms_forward / 1e9:6.1f} TFLOP/s | "
            f"forward+backward {ms:7.3f} ms {3.5 * forward_flops / ms / 1e9:6.1f} TFLOP/s | backward alone "
            f"{2.5 * forward_flops / (ms - ms_forward) / 1e9:6.1f} TFLOP/s (output, qkv gradient off the first way's "
            f"by {error:.1e}, {grad_error:.1e})"
        )


if __name__ == "__main__":
    main()
