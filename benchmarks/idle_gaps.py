"""Where a profiled GPU sat idle, and what its host was doing meanwhile: reads a rank's chrome trace
(`profile/trace-rank{R}.json.gz` of `train.profile_steps`), finds the gaps between the GPU's kernels and copies (any
stream) longer than --min-us, and sums them by what the host was running when each gap began (the innermost CPU
operators, or Python functions with ZEROTRAIN_PROFILE_STACK=1, on the thread that launched the kernel ending the gap)
and by the operator that launched that kernel.
    python3 benchmarks/idle_gaps.py RUN/profile/trace-rank0.json.gz [--min-us 50] [--top 25]"""

import argparse
import bisect
import gzip
import json
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--min-us", type=float, default=50.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--depth", type=int, default=4)
    a = ap.parse_args()
    with gzip.open(a.trace) as f:
        events = json.load(f).get("traceEvents", [])
    gpu = sorted(
        (e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
        key=lambda e: e["ts"],
    )
    launches = {
        e["args"]["correlation"]: e
        for e in events
        if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})
    }
    host = defaultdict(list)  # (pid, tid) -> spans of CPU ops and Python functions
    for e in events:
        if e.get("cat") in ("cpu_op", "python_function", "user_annotation") and "dur" in e:
            host[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    for spans in host.values():
        spans.sort()
    starts = {k: [s[0] for s in v] for k, v in host.items()}

    def stack_at(thread, t):
        """The innermost --depth spans of the thread that contain time t."""
        spans = host.get(thread, [])
        i = bisect.bisect_right(starts.get(thread, []), t)
        around = [s for s in spans[max(0, i - 4000) : i] if s[1] >= t]
        around.sort(key=lambda s: s[1] - s[0])
        return " < ".join(s[2][:60] for s in around[: a.depth]) or "(nothing recorded)"

    by_host, by_launcher, total, busy_end, count = defaultdict(float), defaultdict(float), 0.0, None, 0
    first, last = gpu[0]["ts"], max(e["ts"] + e["dur"] for e in gpu)
    for e in gpu:
        if busy_end is not None and e["ts"] - busy_end > a.min_us:
            gap = e["ts"] - busy_end
            launch = launches.get(e.get("args", {}).get("correlation"))
            thread = (launch["pid"], launch["tid"]) if launch else None
            by_host[stack_at(thread, busy_end)] += gap
            by_launcher[stack_at(thread, launch["ts"]) if launch else e["name"][:60]] += gap
            total += gap
            count += 1
        busy_end = max(busy_end or 0.0, e["ts"] + e["dur"])
    print(
        f"RESULT {count} gaps over {a.min_us:.0f} us: {total / 1000:.1f} ms idle in {(last - first) / 1000:.1f} ms of trace"
    )
    for title, table in (
        ("host busy with, when the GPU ran dry", by_host),
        ("launched the kernel that ended the gap", by_launcher),
    ):
        print(f"RESULT -- {title}:")
        for name, us in sorted(table.items(), key=lambda kv: -kv[1])[: a.top]:
            print(f"RESULT {us / 1000:9.2f} ms  {name}")


if __name__ == "__main__":
    main()
