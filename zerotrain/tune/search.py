"""Measuring candidates: one real `zerotrain train` run each (bench's command), watched so that a clearly slower one
is stopped early; the search that measures them in the order of their calibrated prediction within the budget; and
the state a --resume continues from."""

import json
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from zerotrain import UserError, memory
from zerotrain.bench import BenchConfig, read_run, summarize, train_command
from zerotrain.tune.grid import Candidate
from zerotrain.tune.report import ms_text
from zerotrain.tune.stepmodel import Calibration, Hardware, predict_terms


@dataclass
class Measure:
    """How candidates are measured: bench's train command on `base_config` with these steps."""

    base_config: str
    nproc: int
    warmup_steps: int
    steps: int
    overrides: list[str]
    grad_accum_dtype: str  # the run's deepspeed.grad_accum_dtype
    stop_slower_by: float  # a run whose median step is this much slower than the best so far is stopped

    @property
    def max_steps(self) -> int:
        return self.warmup_steps + self.steps


def measure_command(c: Candidate, m: Measure, run_dir: Path) -> list[str]:
    """bench's `zerotrain train` command for candidate `c`, every choice of the candidate spelled out."""
    overrides = [
        *m.overrides,
        f"--train.grad_accum={c.grad_accum}",
        f"--deepspeed.offload_optimizer_ratio={c.offload_ratio:g}",
        f"--deepspeed.zero3_persistent_params={'on' if c.persistent else 'off'}",  # as planned, whatever the GPU
        "--train.global_batch_size=0",
        f"--deepspeed.activation_checkpointing={str(c.activation_checkpointing).lower()}",
        f"--train.max_steps={m.max_steps}",
        "--train.profile_steps=0",
    ]
    return train_command(_bench_config(c, m), m.base_config, overrides, m.nproc, run_dir)


def _bench_config(c: Candidate, m: Measure) -> BenchConfig:
    return BenchConfig(
        c.zero_stage, c.micro_batch, c.offload_optimizer, c.offload_params, c.grad_accum_dtype(m.grad_accum_dtype)
    )


def measure(c: Candidate, m: Measure, run_dir: Path, best_s: float | None, deadline: float | None) -> None:
    """One real run of `c`, watched through its metrics.jsonl: stopped once its median step (after warm-up, two
    steps at least) is clearly slower than `best_s`, or when `deadline` (time.monotonic) passes."""
    cmd = measure_command(c, m, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{c.name}.log"
    metrics = run_dir / "metrics.jsonl"
    started = time.monotonic()
    stopped = ""
    # its own session, so that stopping it stops the launcher's ranks too (one process group, ours)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if deadline is not None and time.monotonic() > deadline:
                    stopped = "stopped (budget)"
                elif best_s is not None and metrics.exists():
                    s = _timed(metrics, m.warmup_steps)
                    if s is not None and s > best_s * (1 + m.stop_slower_by):
                        stopped = "stopped early (slower)"
                if stopped:
                    _stop(proc)
                    break
        except BaseException:  # tune itself interrupted (Ctrl-C, SIGTERM): its run, in a session of its own, too
            _stop(proc)
            raise
    c.wall_s = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    if stopped:
        c.status = stopped
        records = _records(metrics)
        s = summarize(records, m.warmup_steps) if records else {}
        timed = [r for r in records if "loss" in r and r["step"] > m.warmup_steps]
        if s and len(timed) >= 2:
            c.step_time_s, c.tokens_per_s, c.peak_allocated = s["step_time_s"], s["tokens_per_s"], s["peak_allocated"]
            c.steps_timed = len(timed)
        return
    result = read_run(_bench_config(c, m), proc.returncode, text, run_dir, m.warmup_steps, m.max_steps)
    c.status = result.status if not result.log_tail or result.measured else f"{result.status}: {_last(result.log_tail)}"
    if result.measured:
        c.step_time_s, c.tokens_per_s, c.peak_allocated = result.step_time_s, result.tokens_per_s, result.peak_allocated
        c.steps_timed = len([r for r in _records(metrics) if "loss" in r and r["step"] > m.warmup_steps])


def _records(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def _timed(metrics: Path, warmup_steps: int) -> float | None:
    """The median step time after warm-up, once two steps are in; None before."""
    times = [r["step_time_s"] for r in _records(metrics) if "loss" in r and r["step"] > warmup_steps]
    return statistics.median(times) if len(times) >= 2 else None


def _stop(proc: subprocess.Popen) -> None:
    """Stop a measuring run as train --nproc expects (distributed.launch_local): a first SIGTERM lets the ranks
    finish the step and exit, a second kills the launcher's process group and cleans up after it; SIGKILL to the
    run's own process group (it was started in a session of its own) if it still has not ended."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 10)):
        try:
            proc.send_signal(sig)
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _last(tail: str) -> str:
    lines = [line for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


@dataclass
class Search:
    budget_s: float | None  # None: no limit (--exhaustive)
    exhaustive: bool
    max_measure: int | None
    min_measure: int  # measured before the predictions may end the search
    give_up_slower_by: float  # the search ends when the next is predicted this much slower than the best measured
    signature: dict = field(default_factory=dict)  # what a --resume must match (TuneArgs.signature)
    elapsed_before_s: float = 0.0  # spent by the calls this one resumes


def measurement_cost(c: Candidate, m: Measure, startup_s: float) -> float:
    """Seconds one measurement of `c` is expected to take: starting, then warm-up and timed steps."""
    return startup_s + m.max_steps * (c.predicted_s or 0.0)


def search(
    fitting: list[Candidate],
    model: memory.ModelShape,
    run: memory.RunShape,
    hw: Hardware,
    m: Measure,
    s: Search,
    out: Path,
    on_progress=print,
) -> tuple[Calibration, str]:
    """Measure candidates in the order of their calibrated prediction until the budget, the predictions or
    --max-measure say stop. Returns the calibration and why the search ended."""
    cal = Calibration()
    for c in fitting:
        c.terms = predict_terms(c, model, run, hw)
        c.predicted_s = cal.predict(c.terms)
    measured = [c for c in fitting if c.measured]  # from an earlier call (--resume)
    cal.fit(measured)
    for c in fitting:
        c.predicted_s = cal.predict(c.terms)
    start = time.monotonic() - s.elapsed_before_s
    deadline = None if s.budget_s is None else start + s.budget_s
    startup_s = hw.startup_s
    ended = "every fitting candidate was measured"
    while True:
        todo = sorted((c for c in fitting if c.status == "not measured"), key=lambda c: c.predicted_s or 0.0)
        if not todo:
            break
        c = todo[0]
        best = min((x for x in measured if x.status.startswith("ok")), key=lambda x: x.step_time_s or 0.0, default=None)
        done = len([x for x in fitting if x.status != "not measured"])
        if s.max_measure is not None and done >= s.max_measure:
            ended = f"--max-measure {s.max_measure} reached"
            break
        if not s.exhaustive and best and done >= s.min_measure:
            if (c.predicted_s or 0.0) > best.step_time_s * (1 + s.give_up_slower_by):
                ended = (
                    f"the {len(todo)} left are predicted over {s.give_up_slower_by:.0%} slower than the best measured"
                )
                break
        if deadline is not None and time.monotonic() + measurement_cost(c, m, startup_s) > deadline and done:
            ended = f"the budget would not hold another measurement ({len(todo)} left)"
            break
        c.predicted_before_s = c.predicted_s
        on_progress(
            f"[{done + 1}/{len(fitting)}] {c.label}: predicted {ms_text(c.predicted_s)} ms/step"
            + (f", best so far {ms_text(best.step_time_s)} ms ({best.label})" if best else "")
        )
        # the first measurement always runs to the end, so that a budget that held its estimate gives a winner
        measure(
            c,
            m,
            out / "runs" / c.name,
            None if s.exhaustive or not best else best.step_time_s,
            deadline if measured else None,
        )
        if c.measured:
            measured.append(c)
        if c.measured and c.status.startswith("ok"):  # what starting cost: the run's wall time less its steps
            startup_s = max(1.0, c.wall_s - m.max_steps * c.step_time_s)
        off = "" if not c.measured else f", {100 * (c.predicted_before_s / c.step_time_s - 1):+.0f}% predicted"
        on_progress(
            f"  {c.status}"
            + (f": {ms_text(c.step_time_s)} ms/step, {c.tokens_per_s:,.0f} tokens/s{off}" if c.measured else "")
            + f" ({c.wall_s:.0f} s)"
        )
        cal.fit(measured)
        for x in fitting:
            x.predicted_s = cal.predict(x.terms)
        save_state(out, s.signature, time.monotonic() - start, fitting)
    return cal, ended


STATE = "tune-state.json"  # what --resume continues from: the grid's signature, the time spent, every measurement


def save_state(out: Path, signature: dict, elapsed_s: float, cands: list[Candidate]) -> None:
    rows = {c.name: c.row() for c in cands if c.status != "not measured"}
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps({"signature": signature, "elapsed_s": elapsed_s, "measured": rows}, indent=1))
    tmp.replace(out / STATE)


def load_state(out: Path, signature: dict, fitting: list[Candidate]) -> float:
    """Restore the measurements an earlier call made (the same grid, limits and steps); the seconds it spent."""
    path = out / STATE
    if not path.is_file():
        raise UserError(f"--resume: {out} holds no {STATE}; start without --resume")
    state = json.loads(path.read_text())
    if state["signature"] != signature:
        changed = sorted(k for k in signature if state["signature"].get(k) != signature[k])
        raise UserError(
            f"--resume: {out} was tuned with other settings ({', '.join(changed)} differ); use the same "
            "command, or start afresh with --overwrite"
        )
    by_name = {c.name: c for c in fitting}
    for name, row in state["measured"].items():
        if (c := by_name.get(name)) is None:  # planned to fit then, not now: the planner changed
            continue
        c.status, c.step_time_s, c.tokens_per_s = row["status"], row["step_time_s"], row["tokens_per_s"]
        c.peak_allocated, c.steps_timed, c.wall_s = row["peak_allocated"], row["steps_timed"], row["wall_s"]
        c.predicted_before_s = row["predicted_before_measuring_s"]
    return float(state["elapsed_s"])
