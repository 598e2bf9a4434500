"""Forward + backward of one GPT-2 transformer block on a GPU (bf16, the GELU in cuBLASLt epilogues), run the ways
--ways names: `compiled` (as `zerotrain train` runs it at ZeRO 0-2), `cudagraphs` (compiled with mode="reduce-overhead",
so each replay launches the block's kernels as one CUDA graph), `eager`, `autotune` (compiled with
mode="max-autotune-no-cudagraphs": Inductor times its Triton matmul templates against cuBLAS for each matmul it sees)
`autotune_unfused` (the same with the GELU left to Inductor, so the MLP's matmuls are tuned too) and `tuned` (compiled,
every matmul by the faster of PyTorch's kernel and the best of cuBLASLt's candidates, cublaslt.tuned_linear). Lists each way's
kernels with their time per call (torch.profiler), then times the ways in turn, a few calls each, many times over,
since the GPU's clock drifts as it heats at its power limit. GPT-2 XL's width at micro-batch 32 by default. (At
d88c8e4 the ways also included the residual add and the bias gradients done inside the matmuls:
docs/log/2026-11-21-block-bytes-cuda-graphs.md.)
    python3 benchmarks/block_speed.py [--batch 32] [--preset gpt2-xl] [--rounds 40]
        [--ways compiled,cudagraphs,eager,autotune,autotune_unfused,tuned]"""

import argparse
import copy

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from zerotrain import kernels
from zerotrain import model as gpt
from zerotrain.gpt_config import config_from_preset
from zerotrain.kernels import cublaslt as fused


def time_ms(step, iters: int, warmup: int = 3) -> float:
    """Milliseconds per call of step(), after `warmup` calls (the first compiles)."""
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def kernel_table(step, iters: int, top: int) -> list[str]:
    """The `top` kernels by GPU time, in ms per call of step()."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    rows = sorted((e for e in prof.key_averages() if e.device_time_total > 0), key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in rows) / iters / 1000
    lines = [f"  all kernels {total:8.3f} ms"]
    for e in rows[:top]:
        lines.append(f"  {e.device_time_total / iters / 1000:8.3f} ms  x{e.count // iters:<3d} {e.key[:110]}")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="gpt2-xl")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--kernels", type=int, default=25)
    ap.add_argument("--ways", default="compiled,cudagraphs,eager")
    ap.add_argument("--rounds", type=int, default=40)
    a = ap.parse_args()
    torch._inductor.config.coordinate_descent_tuning = True  # as GPT.compile_blocks sets it
    cfg = config_from_preset(a.preset)
    torch.manual_seed(0)
    base = gpt.Block(cfg).to("cuda", torch.bfloat16)
    ways = {
        "compiled": (None, True, False),
        "cudagraphs": ("reduce-overhead", True, False),
        "eager": (None, True, False),
        "autotune": ("max-autotune-no-cudagraphs", True, False),
        "autotune_unfused": ("max-autotune-no-cudagraphs", False, False),
        "tuned": (None, True, True),
    }
    x = torch.randn(a.batch, cfg.block_size, cfg.n_embd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    reference, steps = None, {}
    for way in a.ways.split(","):
        torch._dynamo.reset()
        if way not in ways:
            raise SystemExit(f"unknown way {way!r}: choose among {', '.join(ways)}")
        mode, fused_gelu, tuned = ways[way]
        block = copy.deepcopy(base)  # each way its own copy of the same weights: compiled graphs guard on the module
        block.mlp.__class__, block.attn.__class__ = (
            kernels.FastMLP,
            kernels.FastAttention,
        )  # what kernels.apply swaps in
        block.mlp.fused_gelu = fused_gelu
        block.attn.tuned_matmuls = block.mlp.tuned_matmuls = tuned
        compiled = block if way == "eager" else torch.compile(block, mode=mode)

        def step(compiled=compiled, block=block):
            x.grad = None
            for p in block.parameters():
                p.grad = None
            out = compiled(x)
            out.backward(grad)
            return out

        out = step().detach().float()
        grads = [x.grad.float()] + [p.grad.float() for p in block.parameters()]
        if reference is None:
            reference = (out, grads)
        error = max(((g - r).norm() / r.norm()).item() for g, r in zip([out] + grads, [reference[0]] + reference[1]))
        ms = time_ms(step, a.iters)
        steps[way] = step
        print(
            f"RESULT {way:12s} {ms:8.3f} ms per block forward + backward (largest relative difference from the first way {error:.1e})"
        )
        for line in kernel_table(step, 5, a.kernels):
            print(line)
    # The GPU's clock drifts as it heats (by 5-10% over a minute at its power limit), so the ways are compared by
    # running them in turn, a few calls each, many times over.
    totals = dict.fromkeys(steps, 0.0)
    for _ in range(a.rounds):
        for way, step in steps.items():
            totals[way] += time_ms(step, 5, warmup=1)
    base = totals[next(iter(totals))]
    for way, total in totals.items():
        print(
            f"RESULT interleaved {way:12s} {total / a.rounds:8.3f} ms ({100 * (total / base - 1):+.1f}% against the first way)"
        )
    for key, times in fused.timings.items():
        print(
            f"RESULT {key[0]} {key[2:5]}: chose {fused.chosen[key]}; "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items())
        )


if __name__ == "__main__":
    main()
