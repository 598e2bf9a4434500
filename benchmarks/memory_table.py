"""Measured vs predicted peak memory, as a markdown table for docs/memory.md.

python benchmarks/memory_table.py [docs/memory-measurements.jsonl]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_memory import _run_of_measurement, _shape_of_measurement
from zerotrain.memory import plan


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/memory-measurements.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    print(
        "| run | GPUs | ZeRO | micro-batch × seq | accum | dtype | ckpt | offload | measured peak alloc | predicted | error "
        "| measured reserved | predicted | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors, reserved_errors = [], []
    for r in rows:
        p = plan(_shape_of_measurement(r), _run_of_measurement(r))
        e = p.per_gpu["peak_allocated"] / r["peak_allocated"] - 1
        errors.append(abs(e))
        if "peak_reserved" in r:  # zerotrain train's metrics record the allocated peak only
            er = p.per_gpu["peak_reserved"] / r["peak_reserved"] - 1
            reserved_errors.append(er)
            reserved = f"{r['peak_reserved'] / 2**30:.2f} GiB | {p.per_gpu['peak_reserved'] / 2**30:.2f} GiB | {100 * er:+.1f}%"
        else:
            reserved = f"- | {p.per_gpu['peak_reserved'] / 2**30:.2f} GiB | -"
        off = (
            "/".join(
                x
                for x in (
                    r["offload_optimizer"] != "none"
                    and "opt "
                    + r["offload_optimizer"]
                    + (f" {r['offload_ratio']:g}" if r.get("offload_ratio", 1) < 1 else ""),
                    r["offload_params"] != "none" and "params " + r["offload_params"],
                )
                if x
            )
            or "-"
        )
        print(
            f"| {r['impl']} {r['model']}{_hf_path(r)} | {r['gpus']} | {r['zero_stage']} | {r['micro_batch']} × {r['seq_len']} | {r['grad_accum']}"
            f"{' (fp32 sums)' if r.get('grad_accum_dtype') == 'fp32' else ''} | {r['dtype']} | {'yes' if r['activation_checkpointing'] else '-'} | {off} | {r['peak_allocated'] / 2**30:.2f} GiB "
            f"| {p.per_gpu['peak_allocated'] / 2**30:.2f} GiB | {100 * e:+.1f}% | {reserved} |"
        )
    print(
        f"\n{len(rows)} runs ({len(reserved_errors)} with a reserved peak). Peak allocated: max |error| {100 * max(errors):.2f}%, mean |error| {100 * sum(errors) / len(errors):.2f}%. "
        f"Peak reserved: error from {100 * min(reserved_errors):+.1f}% to {100 * max(reserved_errors):+.1f}%."
    )


def _hf_path(r: dict) -> str:
    """Which path a zerotrain-hf run took: plain transformers, compiled decoder layers or Liger Kernel's modules."""
    if r["impl"] != "zerotrain-hf":
        return ""
    if not r.get("fused_loss"):
        return " (plain)"
    return " (fused loss, Liger Kernel)" if r.get("liger") else " (fused loss, compiled layers)"


if __name__ == "__main__":
    main()
