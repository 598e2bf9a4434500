"""`zerotrain bench`: ZeRO stages side by side on this machine, measured and next to the plan.

Each configuration is a real `zerotrain train` run in its own launcher process (no checkpoints, no
evaluation, phase timing on), so an out-of-memory error or a crash in one is recorded and the sweep goes
on. After `warmup_steps` steps the remaining log records give the median step time, tokens/s, MFU, the peak
memory per GPU and the forward / backward / optimizer split; the memory planner's prediction for the same
configuration sits next to it. Writes bench.md, bench.csv, bench.json and two PNG plots.
"""

import csv
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from zerotrain import UserError, memory

OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "out of memory")


@dataclass
class BenchConfig:
    zero_stage: int
    micro_batch: int
    offload_optimizer: str = "none"
    offload_params: str = "none"
    grad_accum_dtype: str = "auto"  # deepspeed.grad_accum_dtype

    @property
    def name(self) -> str:
        off = "".join(
            f"-{what}-{where}"
            for what, where in (("oo", self.offload_optimizer), ("op", self.offload_params))
            if where != "none"
        )
        return f"zero{self.zero_stage}{off}-mb{self.micro_batch}" + (
            "-fp32sums" if self.grad_accum_dtype == "fp32" else ""
        )

    @property
    def label(self) -> str:
        off = ", ".join(
            f"{what} {where}"
            for what, where in (("opt", self.offload_optimizer), ("params", self.offload_params))
            if where != "none"
        )
        return (
            f"ZeRO-{self.zero_stage}"
            + (f" + offload {off}" if off else "")
            + f", mb {self.micro_batch}"
            + (", fp32 sums" if self.grad_accum_dtype == "fp32" else "")
        )


@dataclass
class BenchResult:
    config: BenchConfig
    status: str  # ok | oom | failed (exit N)
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    forward_s: float | None = None
    backward_s: float | None = None
    optimizer_s: float | None = None
    communication_wait_s: float | None = None  # from the profiled steps: communication no compute kernel overlapped
    sm_clock_mhz: float | None = None  # rank 0's GPU while it worked (zerotrain/clocks.py)
    power_capped: float | None = None  # the share of its samples with the power limit holding the clock down
    first_loss: float | None = None
    last_loss: float | None = None
    predicted: dict = field(default_factory=dict)  # the planner's per_gpu terms (bytes)
    log_tail: str = ""

    @property
    def measured(self) -> bool:
        return self.status.startswith("ok")

    def row(self) -> dict:
        c = self.config
        return {
            "config": c.name,
            "zero_stage": c.zero_stage,
            "offload_optimizer": c.offload_optimizer,
            "offload_params": c.offload_params,
            "micro_batch": c.micro_batch,
            "grad_accum_dtype": c.grad_accum_dtype,
            "status": self.status,
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_allocated": self.peak_allocated,
            "peak_reserved": self.peak_reserved,
            "predicted_peak_allocated": self.predicted.get("peak_allocated"),
            "forward_s": self.forward_s,
            "backward_s": self.backward_s,
            "optimizer_s": self.optimizer_s,
            "communication_wait_s": self.communication_wait_s,
            "sm_clock_mhz": self.sm_clock_mhz,
            "power_capped": self.power_capped,
            "first_loss": self.first_loss,
            "last_loss": self.last_loss,
        }


def sweep_configs(
    stages: list[int], micro_batches: list[int], offload: bool, grad_accum_dtype: str = "auto"
) -> list[BenchConfig]:
    """Each stage at each micro-batch, with the offload variants; fp32 gradient sums where zerotrain trains with them
    (ZeRO 1-3 with the optimizer on the GPU), DeepSpeed's default elsewhere."""
    fp32 = lambda z, offload_optimizer="none": (
        grad_accum_dtype if memory.zero_optimizer_on_device(z, offload_optimizer) else "auto"
    )
    out = []
    for z in stages:
        if z not in (0, 1, 2, 3):
            raise UserError(f"--stages: ZeRO stage {z} does not exist; use 0, 1, 2 or 3")
        for mb in micro_batches:
            if mb < 1:
                raise UserError("--micro-batch values must be ≥ 1")
            out.append(BenchConfig(z, mb, grad_accum_dtype=fp32(z)))
            if offload and z >= 2:
                out.append(BenchConfig(z, mb, offload_optimizer="cpu"))
            if offload and z == 3:
                out.append(BenchConfig(z, mb, offload_optimizer="cpu", offload_params="cpu"))
    return out


def summarize(records: list[dict], warmup_steps: int) -> dict:
    """Median step time and friends from a run's metrics.jsonl records, skipping warm-up and profiled steps."""
    steps = [r for r in records if "loss" in r]
    timed = [r for r in steps if r["step"] > warmup_steps and not r.get("profiled")] or steps[-1:]
    if not timed:
        return {}
    median = lambda key: (
        statistics.median(r[key] for r in timed) if all(r.get(key) is not None for r in timed) else None
    )
    # steps shorter than the clock sampling interval leave some records without clock readings
    sampled = lambda key: (
        statistics.median(values) if (values := [r[key] for r in timed if r.get(key) is not None]) else None
    )
    return {
        "step_time_s": median("step_time_s"),
        "tokens_per_s": median("tokens_per_s"),
        "mfu": median("mfu"),
        "peak_allocated": steps[-1].get("peak_mem_bytes"),
        "peak_reserved": steps[-1].get("peak_reserved_bytes"),
        "forward_s": median("forward_s"),
        "backward_s": median("backward_s"),
        "optimizer_s": median("optimizer_s"),
        "sm_clock_mhz": sampled("gpu_sm_clock_mhz"),
        "power_capped": sampled("gpu_power_capped"),
        "first_loss": steps[0]["loss"],
        "last_loss": steps[-1]["loss"],
    }


def train_command(cfg: BenchConfig, base_config: str, overrides: list[str], nproc: int, run_dir: Path) -> list[str]:
    """The `zerotrain train` command line that measures one configuration (no checkpoints, no evaluation, phase
    timing on); `overrides` come last, so they win."""
    args = [
        base_config,
        f"--run.out_dir={run_dir}",
        "--run.checkpoints=false",
        "--run.tensorboard=false",
        "--run.wandb=false",
        "--run.resume=",
        "--train.eval_interval=0",
        "--train.early_stop_patience=0",
        "--train.log_interval=1",
        "--train.time_phases=true",
        f"--train.micro_batch_size={cfg.micro_batch}",
        f"--deepspeed.zero_stage={cfg.zero_stage}",
        f"--deepspeed.offload_optimizer={cfg.offload_optimizer}",
        f"--deepspeed.offload_params={cfg.offload_params}",
        f"--deepspeed.grad_accum_dtype={cfg.grad_accum_dtype}",
        # DeepSpeed keeps bf16 master weights (deepspeed.master_weights) only at ZeRO 1-3 with the optimizer on the device
        *(
            []
            if memory.zero_optimizer_on_device(cfg.zero_stage, cfg.offload_optimizer)
            else ["--deepspeed.master_weights=fp32"]
        ),
        *overrides,
        "--overwrite",
    ]
    return [sys.executable, "-m", "zerotrain", "train", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])


def read_run(
    cfg: BenchConfig, returncode: int, log: str, run_dir: Path, warmup_steps: int, max_steps: int
) -> BenchResult:
    """A finished train run's result from its exit code, its output and its metrics.jsonl."""
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    tail = "\n".join(log.strip().splitlines()[-5:])
    if returncode != 0:
        refused = [line for line in log.splitlines() if line.startswith("error: this run would not fit")]
        if refused:  # train's memory check: planned not to fit, so never started
            return BenchResult(cfg, "does not fit (planned)", log_tail=refused[0])
        if any(m in log for m in OOM_MARKERS):
            return BenchResult(cfg, "oom", log_tail=tail)
        finished = any(r.get("step") == max_steps and "loss" in r for r in records)
        if not finished:
            return BenchResult(cfg, f"failed (exit {returncode})", log_tail=tail)
        # every step ran and was measured, then a process died on its way out: keep the numbers, say so
        return BenchResult(
            cfg, f"ok, then exit {returncode} at shutdown", log_tail=tail, **summarize(records, warmup_steps)
        )
    result = BenchResult(cfg, "ok", **summarize(records, warmup_steps))
    profile = run_dir / "profile" / "summary-rank0.json"
    if profile.is_file():
        result.communication_wait_s = json.loads(profile.read_text()).get("communication_wait_s")  # GPU runs only
    return result


def run_one(
    cfg: BenchConfig,
    base_config: str,
    overrides: list[str],
    nproc: int,
    run_dir: Path,
    warmup_steps: int,
    max_steps: int,
) -> BenchResult:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(cfg, base_config, overrides, nproc, run_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    (run_dir.parent / f"{cfg.name}.log").write_text(log)
    return read_run(cfg, proc.returncode, log, run_dir, warmup_steps, max_steps)


def bench(
    base_config: str,
    overrides: list[str],
    nproc: int,
    configs: list[BenchConfig],
    out: Path,
    warmup_steps: int,
    max_steps: int,
    plan_model: memory.ModelShape,
    plan_run: memory.RunShape,
    on_progress=print,
) -> list[BenchResult]:
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for cfg in configs:
        on_progress(f"bench {cfg.label} ...")
        result = run_one(cfg, base_config, overrides, nproc, out / "runs" / cfg.name, warmup_steps, max_steps)
        p = memory.plan(
            plan_model,
            replace(
                plan_run,
                zero_stage=cfg.zero_stage,
                micro_batch=cfg.micro_batch,
                offload_optimizer=cfg.offload_optimizer,
                offload_params=cfg.offload_params,
                grad_accum_dtype=cfg.grad_accum_dtype,
                contiguous_gradients=cfg.zero_stage >= 2,
            ),
        )  # as dsconfig.build sets it
        result.predicted = dict(p.per_gpu)
        results.append(result)
        on_progress(
            f"  {result.status}"
            + (
                f": {result.tokens_per_s:,.0f} tokens/s, step {1000 * result.step_time_s:.0f} ms"
                if result.measured
                else f"\n{result.log_tail}"
            )
        )
    write_reports(results, out, nproc)
    return results


# ------------------------------------------------------------------------------------------------ reports


def _gib(x) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def write_reports(results: list[BenchResult], out: Path, nproc: int) -> None:
    rows = [r.row() for r in results]
    (out / "bench.json").write_text(json.dumps({"nproc": nproc, "results": rows}, indent=2) + "\n")
    with open(out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    baseline = next((r.tokens_per_s for r in results if r.measured and r.config.zero_stage == 0), None) or next(
        (r.tokens_per_s for r in results if r.measured), None
    )
    lines = [
        (
            "| configuration | status | step ms | tokens/s | speed-up | MFU | forward / backward / optimizer ms | "
            "communication wait ms | SM clock MHz | peak alloc GiB | planned GiB (GPU) | peak reserved GiB | loss first → last |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ok = r.measured
        split = (
            " / ".join(f"{1000 * v:.0f}" for v in (r.forward_s, r.backward_s, r.optimizer_s))
            if ok and r.forward_s is not None
            else ""
        )
        wait = "" if r.communication_wait_s is None else f"{1000 * r.communication_wait_s:.1f}"
        clock = (
            ""
            if r.sm_clock_mhz is None
            else f"{r.sm_clock_mhz:.0f}" + (" (power limit)" if (r.power_capped or 0) >= 0.5 else "")
        )
        lines.append(
            f"| {r.config.label} | {r.status} | {1000 * r.step_time_s:.0f} | {r.tokens_per_s:,.0f} | "
            f"{r.tokens_per_s / baseline:.2f}× | {'' if r.mfu is None else f'{100 * r.mfu:.1f}%'} | {split} | {wait} | {clock} | "
            f"{_gib(r.peak_allocated)} | {_gib(r.predicted.get('peak_allocated'))} | {_gib(r.peak_reserved)} | "
            f"{r.first_loss:.3f} → {r.last_loss:.3f} |"
            if ok
            else f"| {r.config.label} | {r.status} | | | | | | | | | {_gib(r.predicted.get('peak_allocated'))} | | |"
        )
    (out / "bench.md").write_text(
        "\n".join(lines) + "\n\nspeed-up is relative to ZeRO-0 (or the first configuration that ran); "
        "peak memory is per GPU (on CPU: the process's peak RSS, which the GPU plan does not describe); "
        "communication wait: time in the profiled steps when a communication kernel ran and no compute "
        "kernel beside it (GPU only; each run's profile/ holds the traces and the kernel breakdown); "
        "SM clock: the median over the measured steps of rank 0's GPU's mean SM clock while it worked, "
        '"power limit" where the power limit held it down in most samples (MFU counts the peak at the '
        "boost clock).\n"
    )
    _plot(results, out)


def _plot(results: list[BenchResult], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"ZeRO-{r.config.zero_stage}"
        + ("\n+opt " + r.config.offload_optimizer if r.config.offload_optimizer != "none" else "")
        + ("\n+params " + r.config.offload_params if r.config.offload_params != "none" else "")
        + f"\nmb {r.config.micro_batch}"
        for r in results
    ]
    on_gpu = any(r.peak_reserved is not None for r in results)  # CPU runs report the process's peak RSS instead
    terms = ("params", "grads", "optimizer", "activations", "buffers")
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(results)), 4.5))
    bottom = [0.0] * len(results)
    for term in terms:
        values = [r.predicted.get(term, 0) / 2**30 for r in results]
        ax.bar(labels, values, bottom=bottom, label=f"planned {term}")
        bottom = [b + v for b, v in zip(bottom, values)]
    measured = [(i, r.peak_allocated / 2**30) for i, r in enumerate(results) if r.peak_allocated is not None]
    if measured:
        ax.scatter(
            [labels[i] for i, _ in measured],
            [v for _, v in measured],
            color="black",
            marker="_",
            s=900,
            zorder=3,
            label="measured peak allocated" if on_gpu else "peak RSS of the CPU run (the plan is for a GPU)",
        )
    ax.set_ylabel("GiB per GPU")
    ax.set_title("Memory per GPU: planned terms at the peak (bars) and measured peak")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(results)), 4))
    ax.bar(
        labels, [r.tokens_per_s or 0 for r in results], color=["tab:blue" if r.measured else "tab:red" for r in results]
    )
    for i, r in enumerate(results):
        if not r.measured:
            ax.text(i, 0, r.status, ha="center", va="bottom", color="tab:red")
    ax.set_ylabel("tokens/s")
    ax.set_title("Throughput per configuration")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)
    plt.close(fig)
