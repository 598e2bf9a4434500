"""Metrics: peak-FLOPs table and MFU, peak memory, the one-line step report, and the writers
(metrics.jsonl, TensorBoard, optionally Weights & Biases)."""

import json
import os
import resource
import sys
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
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device), "peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}
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
        held = [why for why, key in (("power", "gpu_power_capped"), ("thermal", "gpu_thermal_capped")) if r.get(key, 0) >= 0.5]
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

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool, wandb: bool, wandb_project: str, config: dict):
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
                print("run.wandb is on but wandb is not installed (pip install wandb); logging locally only", file=sys.stderr)
            else:
                self.wandb = wandb_lib.init(project=wandb_project, dir=str(run_dir), config=config,
                                            name=run_dir.name, resume="allow", id=_wandb_id(run_dir))

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
