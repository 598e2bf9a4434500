"""Metrics: peak-FLOPs table and MFU, peak memory, the one-line step report, the writers (metrics.jsonl,
TensorBoard, optionally Weights & Biases), and the log window the training loop reports through (StepLog: step
time, tokens/s, MFU, memory, phase times and GPU clocks, above a progress bar on a terminal)."""

import json
import os
import resource
import sys
import time
from pathlib import Path

# Dense bf16/fp16 tensor-core peak per GPU from NVIDIA's datasheets (without sparsity). The first
# entry whose name appears in the device name wins, so specific variants come first.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak FLOP/s of one device; ZEROTRAIN_PEAK_FLOPS overrides; None (MFU left blank) on CPUs and
    GPUs not in the table."""
    if os.environ.get("ZEROTRAIN_PEAK_FLOPS"):
        return float(os.environ["ZEROTRAIN_PEAK_FLOPS"])
    if not device_name:
        return None
    for name, flops in PEAK_FLOPS:
        if name in device_name:
            return flops
    return None


def peak_memory(device) -> dict:
    """Peak memory of this rank since the process started: on a GPU the CUDA caching allocator's peak
    allocated and peak reserved bytes (reserved is what nvidia-smi sees, less the CUDA context), on CPU
    the process's peak RSS."""
    import torch

    if device.type == "cuda":
        return {
            "peak_mem_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux reports KiB


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def format_line(r: dict, max_steps: int) -> str:
    """step 120/5000 | loss 3.412 | lr 6.0e-04 | norm 0.91 | 412 ms | 1.27M tok/s | mfu 41.2% | mem 61.3 GiB | 1550 MHz (power limit)"""
    parts = [f"step {r['step']}/{max_steps}", f"loss {r['loss']:.4f}", f"lr {r['lr']:.1e}"]
    if r.get("grad_norm") is not None:
        parts.append(f"norm {r['grad_norm']:.2f}")
    parts += [f"{r['step_time_s'] * 1000:.0f} ms", f"{_si(r['tokens_per_s'])} tok/s"]
    if r.get("mfu") is not None:
        parts.append(f"mfu {100 * r['mfu']:.1f}%")
    parts.append(f"mem {r['peak_mem_bytes'] / 2**30:.2f} GiB")
    if r.get("gpu_sm_clock_mhz") is not None:  # rank 0's GPU, zerotrain/clocks.py
        held = [
            why
            for why, key in (("power", "gpu_power_capped"), ("thermal", "gpu_thermal_capped"))
            if r.get(key, 0) >= 0.5
        ]
        parts.append(f"{r['gpu_sm_clock_mhz']:.0f} MHz" + (f" ({' and '.join(held)} limit)" if held else ""))
    if r.get("loss_scale") is not None:
        parts.append(f"scale {r['loss_scale']:.0f}")
    return " | ".join(parts)


def format_eval_line(r: dict) -> str:
    return f"eval step {r['step']} | val loss {r['val_loss']:.4f} | val ppl {r['val_ppl']:.2f}"


class MetricsWriter:
    """Appends one JSON object per record to metrics.jsonl and mirrors numbers to TensorBoard / W&B.
    Only rank 0 writes. On resume, records after the resumed step (written by the crashed run after
    its last checkpoint) are dropped so the file reads as one run."""

    def __init__(
        self, run_dir: Path, resume_step: int, tensorboard: bool, wandb: bool, wandb_project: str, config: dict
    ):
        self.path = run_dir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        self.wandb = None
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                print(
                    "run.wandb is on but wandb is not installed (pip install wandb); logging locally only",
                    file=sys.stderr,
                )
            else:
                self.wandb = wandb_lib.init(
                    project=wandb_project,
                    dir=str(run_dir),
                    config=config,
                    name=run_dir.name,
                    resume="allow",
                    id=_wandb_id(run_dir),
                )

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, record["step"])
            if "sample" in record:
                self.tb.add_text("sample", record["sample"], record["step"])
        if self.wandb:
            self.wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _step_of(line: str) -> float:
    """A record's step; a line torn by a crash mid-write counts as past any resume point (dropped)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def _wandb_id(run_dir: Path) -> str:
    """A stable W&B run id per run directory, so a resumed run continues the same W&B run."""
    id_file = run_dir / ".wandb_id"
    if not id_file.exists():
        import secrets

        id_file.write_text(secrets.token_hex(8))
    return id_file.read_text().strip()


# ------------------------------------------------------------------------------------------------ the log window


class StepLog:
    """The metrics of a log window (steps since the last log line): step time, tokens/s, MFU, memory, the phase
    times and GPU clocks, written to metrics.jsonl (rank 0) and printed as one line, above a progress bar on a
    terminal. Evaluation and checkpoint time is kept out of the window (`restart`)."""

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        d,
        start_step: int,
        max_steps: int,
        *,
        tokens_per_step: int,
        flops_per_token: float,
        started: float,
        time_phases: bool,
    ):
        import torch

        on_gpu = d.device.type == "cuda"
        self.d, self.started, self.max_steps = d, started, max_steps
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak = peak_flops(torch.cuda.get_device_name(d.device) if on_gpu else None)
        # model states and DeepSpeed's buffers before the first step, in the first record: `zerotrain plan` predicts it
        self.setup_mem = torch.cuda.memory_allocated(d.device) if on_gpu else None
        run = config["run"]
        self.writer = (
            MetricsWriter(run_dir, start_step, run["tensorboard"], run["wandb"], run["wandb_project"], config)
            if d.is_main
            else None
        )
        self.clock = PhaseClock(time_phases, on_gpu)
        self.progress = _progress(d.is_main, start_step, max_steps)
        self.gpu_clocks = None
        if on_gpu and d.is_main:  # rank 0's GPU: its SM clock and power in every log record
            from zerotrain.clocks import ClockMonitor

            self.gpu_clocks = ClockMonitor.start(d.device)
        self.profiled = False  # a step of this window ran under the profiler
        self.restart()

    def restart(self) -> None:
        self.window_start, self.window_steps = time.perf_counter(), 0
        if self.gpu_clocks:
            self.gpu_clocks.window()  # drop the readings taken outside training steps

    def step_done(self, profiled: bool) -> None:
        self.window_steps += 1
        self.profiled = self.profiled or profiled
        if self.progress:
            self.progress.advance()

    def record(self, step: int, loss: float, lr: float, grad_norm, tokens_seen: int, extra: dict) -> None:
        """One log line and metrics.jsonl record for the window that ends at `step`; `extra` joins the record
        (fp16's loss scale and skipped steps)."""
        step_time = (time.perf_counter() - self.window_start) / self.window_steps
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": None if grad_norm is None else float(grad_norm),
            "step_time_s": step_time,
            "tokens_per_s": self.tokens_per_step / step_time,
            "mfu": None
            if self.peak is None
            else self.flops_per_token * self.tokens_per_step / step_time / self.d.world / self.peak,
            **peak_memory(self.d.device),
            "tokens_seen": tokens_seen,
            "elapsed_s": time.perf_counter() - self.started,
        }
        record.update(self.clock.per_step(self.window_steps))
        if self.gpu_clocks:
            record.update(self.gpu_clocks.window())
        if self.profiled:  # the profiler slowed these steps: `zerotrain bench` leaves them out
            record["profiled"], self.profiled = True, False
        if self.setup_mem is not None:
            record["setup_mem_bytes"], self.setup_mem = self.setup_mem, None
        record.update(extra)
        if self.writer:
            self.writer.write(record)
            self.print(format_line(record, self.max_steps))
        self.window_start, self.window_steps = time.perf_counter(), 0

    def print(self, line: str) -> None:
        if self.d.is_main:
            _print(self.progress, line)

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
        if self.gpu_clocks:
            self.gpu_clocks.close()
        if self.writer:
            self.writer.close()


class PhaseClock:
    """With train.time_phases: seconds spent in forward, backward and the optimizer step, summed over a log
    window. Each lap synchronizes the GPU (a host-device sync per phase: only when asked for)."""

    def __init__(self, enabled: bool, on_gpu: bool):
        self.enabled, self.on_gpu = enabled, on_gpu
        self.totals, self.last = {}, 0.0

    def lap(self, phase: str | None) -> None:
        if not self.enabled:
            return
        if self.on_gpu:
            import torch

            torch.cuda.synchronize()
        now = time.perf_counter()
        if phase:
            self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now

    def per_step(self, steps: int) -> dict:
        out = {k: v / max(steps, 1) for k, v in self.totals.items()}
        self.totals = {}
        return out


# ------------------------------------------------------------------------------------------------ console


class _Progress:
    """A rich progress bar on interactive terminals (rank 0); metric lines print above it."""

    def __init__(self, start: int, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self.task = self.bar.add_task("train", total=total, completed=start)
        self.bar.start()

    def advance(self) -> None:
        self.bar.update(self.task, advance=1)

    def stop(self) -> None:
        self.bar.stop()


def _progress(enabled: bool, start: int, total: int) -> _Progress | None:
    return _Progress(start, total) if enabled and sys.stdout.isatty() else None


def _print(progress: _Progress | None, line: str) -> None:
    if progress:
        progress.bar.console.print(line, highlight=False, markup=False)
    else:
        print(line, flush=True)
