"""CPU Adam speed on this host: the rate `zerotrain plan --measure-cpu-adam` measures (torch's fused CPU AdamW, fp32)
beside DeepSpeedCPUAdam's, which optimizer offload runs, on the same parameters; parameters per second each.

    python benchmarks/cpu_adam_rate.py [--params 4000000] [--seconds 2]
"""

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=4_000_000)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from zerotrain.planning import measure_cpu_adam, optimizer_rate

    param = torch.nn.Parameter(torch.zeros(args.params))
    param.grad = torch.randn(args.params)
    ds = optimizer_rate(DeepSpeedCPUAdam([param], lr=1e-4, adamw_mode=True), args.params, args.seconds)
    plan = measure_cpu_adam(args.params, args.seconds)
    print(
        f"{torch.get_num_threads()} threads: torch fused AdamW (plan --measure-cpu-adam) {plan / 1e9:.3f}G params/s, "
        f"DeepSpeedCPUAdam {ds / 1e9:.3f}G params/s, ratio {plan / ds:.2f}"
    )


if __name__ == "__main__":
    main()
