"""Forward + backward of one GPT-2 MLP on a GPU, bf16: the GELU as separate kernels (eager and compiled) against the
GELU in cuBLASLt epilogues (zerotrain/kernels/cublaslt.py, eager and compiled). GPT-2 XL's width and micro-batch 32 by
default; prints milliseconds per call and the matmul TFLOP/s each reaches.
    python3 benchmarks/gelu_mlp_speed.py [--tokens 32768] [--width 1600] [--iters 30]"""

import argparse

import torch
import torch.nn.functional as F

from zerotrain.kernels import cublaslt as fused
from zerotrain.kernels.cublaslt import cublaslt_unavailable, gelu_mlp


def plain_mlp(x, fc_w, fc_b, proj_w, proj_b):
    return F.linear(F.gelu(F.linear(x, fc_w, fc_b), approximate="tanh"), proj_w, proj_b)


def time_ms(step, iters):
    """Milliseconds per call of step(), after 3 warm-up calls (the first of which compiles or times the ways)."""
    for _ in range(3):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32 * 1024)
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--iters", type=int, default=30)
    a = ap.parse_args()
    print("cuBLASLt:", cublaslt_unavailable(torch.device("cuda"), torch.bfloat16) or "available")
    torch.manual_seed(0)
    M, C = a.tokens, a.width
    dev, dt = "cuda", torch.bfloat16
    inputs = [
        (0.02 * torch.randn(s, device=dev)).to(dt).requires_grad_()
        for s in [(M, C), (4 * C, C), (4 * C,), (C, 4 * C), (C,)]
    ]
    grad = torch.randn(M, C, device=dev, dtype=dt)
    flops = 3 * 2 * 2 * M * C * 4 * C  # two matmuls, forward and two backward products each
    for name, fn in (
        ("separate kernels, eager", plain_mlp),
        ("separate kernels, compiled", torch.compile(plain_mlp)),
        ("cuBLASLt epilogues, eager", gelu_mlp),
        ("cuBLASLt epilogues, compiled", torch.compile(gelu_mlp)),
    ):
        ms = time_ms(lambda fn=fn: fn(*inputs).backward(grad), a.iters)
        print(f"RESULT {name:30s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s")
    # the matmuls alone: cuBLAS through PyTorch against each cuBLASLt epilogue's candidates as timed on first use
    x, fc_w, fc_b, proj_w, _ = (t.detach() for t in inputs)
    one = 2 * M * C * 4 * C
    for name, fn in (
        ("addmm x @ fc_w^T + fc_b", lambda: torch.addmm(fc_b, x, fc_w.t())),
        ("mm grad_y @ proj_w", lambda: grad @ proj_w),
    ):
        ms = time_ms(fn, a.iters)
        print(f"RESULT {name:30s} {ms:8.3f} ms  {one / ms / 1e9:7.1f} TFLOP/s")
    names = {
        fused._EPILOGUE_GELU_AUX_BIAS: "GELU_AUX_BIAS",
        fused._EPILOGUE_DGELU_BGRAD: "DGELU_BGRAD",
        fused._EPILOGUE_DGELU: "DGELU",
    }
    lib = fused._cublaslt()
    for key, times in lib.timings.items() if lib else []:
        print(
            f"RESULT {names.get(key[5], key[5]):13s} m,n,k {key[1:4]} candidate algorithms, ms: "
            + " ".join(f"{t:.3f}" for t in times)
        )
    for key, times in fused.timings.items():
        print(
            f"RESULT {key[0]} {key[2:5]}: chose {fused.chosen[key]}; "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items())
        )


if __name__ == "__main__":
    main()
