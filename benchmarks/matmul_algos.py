"""Every matmul of a GPT-2 block's linears (forward, input gradient, weight gradient) and of the fused loss's lm_head
chunk, at a model's width and micro-batch, timed as PyTorch runs it against each algorithm cuBLASLt's heuristic
offers for the same product (zerotrain/kernels/cublaslt.py's ctypes binding): is torch's pick the fastest kernel there is?
GPT-2 XL at micro-batch 32 by default. The MLP's c_fc forward and c_proj input gradient are left out: cublaslt.gelu_mlp runs
them with GELU epilogues and already times the heuristic's candidates. Prints one row per matmul: torch's ms (the
better of a run before and one after the candidates, as the GPU's clock drifts), the heuristic's first candidate,
the fastest candidate and its gain over torch, and the fastest's result against torch's.
    python3 benchmarks/matmul_algos.py [--tokens 32768] [--width 1600] [--vocab 50304] [--loss-chunk 4096]
                                       [--candidates 32] [--iters 20]"""

import argparse

import torch
import torch.nn.functional as F

from zerotrain.kernels import cublaslt

_EPILOGUE_DEFAULT, _EPILOGUE_BIAS = 1, 4


def time_ms(step, iters: int) -> float:
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
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--loss-chunk", type=int, default=4096)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    why = cublaslt.cublaslt_unavailable(torch.device("cuda"), torch.bfloat16)
    if why:
        raise SystemExit(f"cuBLASLt cannot run here: {why}")
    lib = cublaslt._cublaslt()
    dev, dt, C = torch.device("cuda"), torch.bfloat16, a.width
    handle, workspace = lib._device(dev)
    stream = torch.cuda.current_stream(dev)
    torch.manual_seed(0)
    # (name, tokens, in features, out features, bias)
    linears = [
        ("attn.c_attn", a.tokens, C, 3 * C, True),
        ("attn.c_proj", a.tokens, C, C, True),
        ("mlp.c_fc", a.tokens, C, 4 * C, True),
        ("mlp.c_proj", a.tokens, 4 * C, C, True),
        ("lm_head chunk", a.loss_chunk, C, a.vocab, False),
    ]
    skip = {
        ("mlp.c_fc", "forward"),
        ("mlp.c_proj", "input grad"),
    }  # cublaslt.gelu_mlp's epilogue matmuls, tuned already
    total_torch = total_best = 0.0
    print(
        f"{'matmul':28s} {'GFLOP':>7s} {'torch ms':>9s} {'TFLOP/s':>8s} {'1st cand':>9s} {'best ms':>8s} {'gain':>7s}  best of  error"
    )
    for name, M, K, N, has_bias in linears:
        x = torch.randn(M, K, device=dev, dtype=dt)
        w = torch.randn(N, K, device=dev, dtype=dt) / K**0.5
        b = torch.randn(N, device=dev, dtype=dt) if has_bias else None
        g = torch.randn(M, N, device=dev, dtype=dt)
        # row-major products as column-major cuBLASLt calls: (m, n, k, transpose_a, A, transpose_b, B, D, epilogue)
        products = {
            "forward": (
                lambda: F.linear(x, w, b),
                (
                    N,
                    M,
                    K,
                    True,
                    w,
                    False,
                    x,
                    torch.empty(M, N, device=dev, dtype=dt),
                    _EPILOGUE_BIAS if has_bias else _EPILOGUE_DEFAULT,
                ),
            ),
            "input grad": (
                lambda: g @ w,
                (K, M, N, False, w, False, g, torch.empty(M, K, device=dev, dtype=dt), _EPILOGUE_DEFAULT),
            ),
            "weight grad": (
                lambda: g.t() @ x,
                (K, N, M, False, x, True, g, torch.empty(N, K, device=dev, dtype=dt), _EPILOGUE_DEFAULT),
            ),
        }
        for what, (torch_way, (m, n, k, ta, A, tb, B, D, epilogue)) in products.items():
            if (name, what) in skip:
                continue
            flops = 2 * M * K * N
            before = time_ms(torch_way, a.iters)
            alignments = (cublaslt._alignment(A), cublaslt._alignment(B), cublaslt._alignment(D))
            plan = lib._plan(
                handle,
                m,
                n,
                k,
                ta,
                epilogue,
                cublaslt._DTYPES[dt],
                b if epilogue == _EPILOGUE_BIAS else None,
                D,
                alignments,
                transpose_b=tb,
                candidates=a.candidates,
            )
            if plan is None:
                print(f"{name + ' ' + what:28s} cuBLASLt has no algorithm")
                continue
            desc, layouts, algos = plan
            args = (handle, desc, layouts, A, B, D, workspace, stream.cuda_stream)
            times = [lib._time(algo, args, stream, repeats=a.iters) for algo in algos]
            best = min(range(len(algos)), key=times.__getitem__)
            lib._launch(algos[best], *args)
            reference = torch_way()
            error = ((D.float() - reference.float()).norm() / reference.float().norm()).item()
            ms = min(before, time_ms(torch_way, a.iters))
            total_torch, total_best = total_torch + ms, total_best + min(ms, times[best])
            print(
                f"{name + ' ' + what:28s} {flops / 1e9:7.1f} {ms:9.3f} {flops / ms / 1e9:8.1f} {times[0]:9.3f} "
                f"{times[best]:8.3f} {100 * (ms / times[best] - 1):+6.1f}%  {len(algos):3d}     {error:.1e}"
            )
    print(
        f"RESULT these matmuls: torch {total_torch:.3f} ms, with the fastest candidate where it beats torch "
        f"{total_best:.3f} ms ({100 * (total_torch / total_best - 1):+.1f}%)"
    )


if __name__ == "__main__":
    main()
