"""Where does the peak come from? Replays a CUDA allocator trace (torch.cuda.memory._dump_snapshot, as
written by memory_probe.py --snapshot) and prints the tensors alive at the moment of peak allocation,
grouped by the first DeepSpeed / zerotrain / transformers / torch.optim frame that allocated them.

  python benchmarks/memory_snapshot_report.py SNAPSHOT.pickle [--top 30]
"""

import argparse
import pickle
from collections import defaultdict

INTERESTING = (
    "deepspeed/",
    "zerotrain/",
    "transformers/",
    "torch/optim",
    "memory_probe.py",
    "torch/utils/checkpoint",
    "torch/nn/functional",
)


def site(frames: list[dict]) -> str:
    for f in frames:
        if any(key in f["filename"] for key in INTERESTING):
            short = f["filename"].split("site-packages/")[-1]
            return f"{short}:{f['line']} {f['name']}"
    return frames[0]["filename"].split("/")[-1] + f":{frames[0]['line']} {frames[0]['name']}" if frames else "?"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("snapshot")
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    snap = pickle.load(open(a.snapshot, "rb"))
    events = snap["device_traces"][0]
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    peak_live, peak_index = {}, 0
    for i, e in enumerate(events):
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], site(e.get("frames", [])))
            total += e["size"]
            if total > peak:
                peak, peak_live, peak_index = total, dict(live), i
        elif e["action"] in ("free_completed",):
            if e["addr"] in live:
                total -= live.pop(e["addr"])[0]
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, where in peak_live.values():
        groups[where][0] += size
        groups[where][1] += 1
    print(
        f"{a.snapshot}: {len(events)} events, peak {peak / 2**30:.3f} GiB at event {peak_index} "
        f"(allocating at {site(events[peak_index].get('frames', []))})"
    )
    for where, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {size / 2**20:10.1f} MiB {count:6d}x  {where}")


if __name__ == "__main__":
    main()
