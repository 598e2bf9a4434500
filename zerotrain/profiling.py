"""Where a training step's time goes: torch.profiler over the last `train.profile_steps` steps of a run.

Each rank writes `profile/trace-rank{R}.json.gz` (open it in Perfetto or chrome://tracing) and
`profile/summary-rank{R}.json`. On a GPU the summary sorts every kernel into a category (matmul,
attention, communication, compiled fused ops, optimizer, other elementwise, copies) and, from the kernels'
start and end times, splits the wall time of a step into compute, communication that compute hides,
communication the step waits for (no compute kernel running beside it) and idle GPU (host-side overhead).
On a CPU, where there are no kernels, it lists the operators with the most self time.
"""

import gzip
import json
import os
import shutil
import time
from itertools import pairwise
from pathlib import Path

# First match wins, so attention comes before matmul (cuDNN's attention kernels name gemms), and
# communication first of all.
KERNEL_CATEGORIES = (
    ("communication", ("nccl",)),
    ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk", "matmul")),
    ("optimizer", ("adam", "multi_tensor")),
    ("compiled fused ops", ("triton",)),
)
COPY_EVENT_CATEGORIES = ("gpu_memcpy", "gpu_memset")


def kernel_category(name: str) -> str:
    lowered = name.lower()
    for category, needles in KERNEL_CATEGORIES:
        if any(n in lowered for n in needles):
            return category
    return "other elementwise"


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Length of the intersection of two merged, sorted interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _gaps(busy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(a_end, b_start) for (_, a_end), (b_start, _) in pairwise(busy)]


def summarize_gpu_trace(events: list[dict], steps: int, wall_s: float) -> dict:
    """Per-step seconds from a chrome trace's device events. `wall_s` is the host-measured time of the `steps`
    profiled steps (synchronized at both ends). The GPU's idle gaps between kernels are put down to the loop
    phase (train.py's record_function ranges "zerotrain.*") the host was in meanwhile: the host was late there."""
    by_category, by_kernel = {}, {}
    compute, comm, phases = [], [], {}
    for e in events:
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("zerotrain.") and "dur" in e:
            start = float(e["ts"]) * 1e-6
            phases.setdefault(e["name"].removeprefix("zerotrain."), []).append((start, start + float(e["dur"]) * 1e-6))
        if e.get("cat") not in ("kernel", *COPY_EVENT_CATEGORIES) or "dur" not in e:
            continue
        start, dur = float(e["ts"]) * 1e-6, float(e["dur"]) * 1e-6
        category = "copies" if e["cat"] in COPY_EVENT_CATEGORIES else kernel_category(e.get("name", ""))
        by_category[category] = by_category.get(category, 0.0) + dur
        name = e.get("name", e["cat"])[:120]
        by_kernel[name] = by_kernel.get(name, 0.0) + dur
        (comm if category == "communication" else compute).append((start, start + dur))
    compute, comm = _union(compute), _union(comm)
    compute_s, comm_s, hidden_s = _length(compute), _length(comm), _overlap(compute, comm)
    busy_s = compute_s + comm_s - hidden_s
    gaps = _gaps(_union(compute + comm))
    idle_by_phase = {name: _overlap(gaps, _union(spans)) / steps for name, spans in phases.items()}
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:25]
    return {
        "device": "gpu",
        "steps": steps,
        "step_wall_s": wall_s / steps,
        "kernel_s_by_category": {k: v / steps for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "compute_busy_s": compute_s / steps,
        "communication_s": comm_s / steps,
        "communication_hidden_s": hidden_s / steps,
        "communication_wait_s": (comm_s - hidden_s) / steps,  # no compute kernel ran beside it
        "gpu_idle_s": max(0.0, wall_s - busy_s) / steps,
        "gpu_idle_s_by_host_phase": dict(sorted(idle_by_phase.items(), key=lambda kv: -kv[1])),
        "top_kernels_s": {k: v / steps for k, v in top},
    }


def summarize_cpu_ops(key_averages, steps: int, wall_s: float) -> dict:
    rows = sorted(key_averages, key=lambda e: -e.self_cpu_time_total)[:25]
    return {
        "device": "cpu",
        "steps": steps,
        "step_wall_s": wall_s / steps,
        "top_ops_self_cpu_s": {e.key: e.self_cpu_time_total * 1e-6 / steps for e in rows},
    }


class StepProfiler:
    """Profiles steps [first_step, last_step] (1-based optimizer steps) of the loop: `maybe_start(step)` before a
    step's first micro-batch, `maybe_stop(step)` after its optimizer step."""

    def __init__(self, steps: int, max_steps: int, start_step: int, out_dir: Path, rank: int, on_gpu: bool):
        self.first_step = max(max_steps - steps, start_step) + 1
        self.last_step = max_steps
        self.enabled = steps > 0 and self.first_step <= self.last_step
        self.out_dir, self.rank, self.on_gpu = out_dir, rank, on_gpu
        self.prof, self.started_at, self.summary = None, 0.0, None

    def active(self, step: int) -> bool:
        """Whether the 1-based step `step` is (being) profiled."""
        return self.enabled and self.first_step <= step <= self.last_step

    def _sync(self) -> None:
        if self.on_gpu:
            import torch

            torch.cuda.synchronize()

    def maybe_start(self, next_step: int) -> None:
        if not self.enabled or next_step != self.first_step or self.prof is not None:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.on_gpu else [])
        self._sync()
        # ZEROTRAIN_PROFILE_STACK=1 records the Python functions too (benchmarks/idle_gaps.py names the host's work by them)
        self.prof = profile(activities=activities, with_stack=os.environ.get("ZEROTRAIN_PROFILE_STACK") == "1")
        self.prof.__enter__()
        self.started_at = time.perf_counter()

    def maybe_stop(self, step: int) -> dict | None:
        if self.prof is None or step != self.last_step:
            return None
        self._sync()
        wall_s = time.perf_counter() - self.started_at
        self.prof.__exit__(None, None, None)
        steps = self.last_step - self.first_step + 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / f".trace-rank{self.rank}.json"
        self.prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(self.out_dir / f"trace-rank{self.rank}.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        if self.on_gpu:
            events = json.loads(raw.read_text()).get("traceEvents", [])
            self.summary = summarize_gpu_trace(events, steps, wall_s)
        else:
            self.summary = summarize_cpu_ops(self.prof.key_averages(), steps, wall_s)
        raw.unlink()
        self.summary |= {"first_step": self.first_step, "last_step": self.last_step, "rank": self.rank}
        (self.out_dir / f"summary-rank{self.rank}.json").write_text(json.dumps(self.summary, indent=1) + "\n")
        self.prof = None
        return self.summary


def format_summary(summary: dict) -> str:
    """The rank's summary as a few lines for the console."""
    steps = f"steps {summary['first_step']}-{summary['last_step']}"
    wall = summary["step_wall_s"]
    if summary["device"] == "cpu":
        ops = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in list(summary["top_ops_self_cpu_s"].items())[:5])
        return f"profile ({steps}): {1000 * wall:.1f} ms per step; most self CPU time: {ops}"
    parts = ", ".join(
        f"{k} {1000 * v:.1f} ms ({100 * v / wall:.0f}%)" for k, v in summary["kernel_s_by_category"].items()
    )
    return (
        f"profile ({steps}): {1000 * wall:.1f} ms per step; kernels: {parts}; communication waited for "
        f"{1000 * summary['communication_wait_s']:.1f} ms (hidden {1000 * summary['communication_hidden_s']:.1f} ms); "
        f"GPU idle {1000 * summary['gpu_idle_s']:.1f} ms"
        + (
            " (host in "
            + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in summary["gpu_idle_s_by_host_phase"].items())
            + ")"
            if summary.get("gpu_idle_s_by_host_phase")
            else ""
        )
    )
