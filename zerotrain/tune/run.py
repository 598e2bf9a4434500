"""The verb: the settings (TuneArgs), everything checked and derived before anything is written (setup), the whole
run (tune: setup, search, the winner's configs, the reports) and the winner written as configs (write_winner)."""

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from zerotrain import UserError, memory
from zerotrain.preflight import async_io_builds, check_nvme_path
from zerotrain.tune.grid import (
    MICRO_BATCHES,
    Candidate,
    Limits,
    add_partial_offload,
    enumerate_candidates,
    prune,
    size_text,
    what_would_fit,
)
from zerotrain.tune.report import prediction_error, write_reports
from zerotrain.tune.search import Measure, Search, load_state, search
from zerotrain.tune.stepmodel import default_hardware, predict_terms

TARGETS = ("zerotrain", "deepspeed", "hf-trainer", "accelerate")


@dataclass
class TuneArgs:
    config: str
    nproc: int = 1
    budget_minutes: float = 30.0
    global_batch: int | None = None
    target: str = "zerotrain"
    out: str = "tune-results"
    gpu_memory: str | None = None
    host_memory: str | None = None
    headroom: float = 0.10
    micro_batches: list[int] | None = None
    warmup_steps: int = 3
    steps: int = 10
    exhaustive: bool = False
    max_measure: int | None = None
    min_measure: int = 3
    stop_slower_by: float = 0.10
    overwrite: bool = False
    resume: bool = False
    overrides: list[str] = field(default_factory=list)  # --section.key=value for the config and every run

    def signature(self) -> dict:
        """The settings a --resume must share with the call it continues (the budget and --max-measure may grow)."""
        keys = ("config", "nproc", "global_batch", "gpu_memory", "host_memory", "headroom", "micro_batches")
        keys += ("warmup_steps", "steps", "exhaustive", "overrides")
        return {k: getattr(self, k) for k in keys}


# the keys tune chooses: an override of one of them would be overridden in every measurement
TUNED_KEYS = (
    "deepspeed.zero_stage",
    "deepspeed.offload_optimizer",
    "deepspeed.offload_params",
    "deepspeed.activation_checkpointing",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.global_batch_size",
)


def model_of(cfg) -> memory.ModelShape:
    """The planner's shape of the run's model: model.hf's config.json, else zerotrain's GPT with the data's vocabulary."""
    from zerotrain import planning

    if cfg.model.hf:
        config = Path(cfg.model.hf) / "config.json"
        if not config.is_file():
            raise UserError(f"model.hf {cfg.model.hf} has no config.json; point it at a Hugging Face model directory")
        return memory.shape_from_hf_config(json.loads(config.read_text()), cfg.model.hf)
    vocab = cfg.model.vocab_size
    data_dir = cfg.data.dir or (cfg.data.dirs[0] if cfg.data.dirs else "")
    meta = Path(data_dir) / "meta.json"
    if vocab is None:
        if not meta.is_file():
            raise UserError(
                f"data.dir {data_dir or '(unset)'} holds no prepared data; run `zerotrain data prepare ... --out DIR` "
                "and set data.dir"
            )
        vocab = int(json.loads(meta.read_text())["vocab_size"])
    return planning.model_shape(cfg.model, vocab)


def setup(a: TuneArgs):
    """Everything tune checks and derives before it writes or runs anything: the model, the run, the candidates
    pruned and predicted, the limits and the hardware model. Bad input raises UserError here."""
    from zerotrain import planning
    from zerotrain.dsconfig import derive_batch
    from zerotrain.runconfig import load_run_config

    for name, value, low in (("--nproc", a.nproc, 1), ("--steps", a.steps, 1), ("--warmup-steps", a.warmup_steps, 0)):
        if value < low:
            raise UserError(f"{name} must be ≥ {low}, got {value}")
    if not a.budget_minutes > 0:
        raise UserError(f"--budget-minutes must be positive, got {a.budget_minutes:g}")
    if a.target not in TARGETS:
        raise UserError(f"unknown --for {a.target!r}; choose one of {', '.join(TARGETS)}")
    micro = sorted(set(a.micro_batches or MICRO_BATCHES))
    if micro[0] < 1:
        raise UserError("--micro-batch values must be ≥ 1")
    if not Path(a.config).is_file():
        raise UserError(f"run config {a.config} not found")
    for o in a.overrides:
        key = o.removeprefix("--").split("=", 1)[0]
        if key in TUNED_KEYS:
            what = "--global-batch" if key == "train.global_batch_size" else "--micro-batch or --global-batch"
            hint = what if key.startswith("train.") else "the grid"
            raise UserError(f"--{key} is what tune chooses; drop it (set the search with {hint})")
    out = Path(a.out)
    if a.resume and a.overwrite:
        raise UserError("--resume continues the results in --out and --overwrite replaces them; pass one")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (a.overwrite or a.resume):
        raise UserError(
            f"{out} is not empty; pass --resume to continue it, --overwrite to replace it, or choose another --out"
        )
    cfg = load_run_config(a.config, a.overrides)
    model = model_of(cfg)
    gpu_detected, device = planning.gpu_memory(None)
    on_gpu = gpu_detected is not None
    gpu_bytes = planning.gpu_memory(a.gpu_memory)[0] if a.gpu_memory else gpu_detected
    host_bytes = memory.parse_size(a.host_memory) if a.host_memory else planning.host_memory(None)[0]
    dtype = cfg.deepspeed.dtype if cfg.deepspeed.dtype != "auto" else ("bf16" if on_gpu else "fp32")
    run = replace(planning.run_shape(cfg, a.nproc, 1, dtype), overlap_comm=on_gpu and a.nproc > 1)
    if not on_gpu:  # as train's memory check plans a CPU run: buckets no bigger than the model (preflight.memory_check)
        n = model.n_params
        run = replace(
            run,
            reduce_bucket_size=min(run.reduce_bucket_size, n),
            allgather_bucket_size=min(run.allgather_bucket_size, n),
            prefetch_bucket_size=min(run.prefetch_bucket_size, n),
        )
    global_batch = a.global_batch or derive_batch(cfg.train, a.nproc).global_size
    nvme_path = cfg.deepspeed.nvme_path
    if nvme_path:  # a directory tune can write to, as train checks it where NVMe is used
        check_nvme_path(replace(cfg.deepspeed, offload_optimizer="auto"))  # the directory only: async_io is asked below
    cands = enumerate_candidates(global_batch, a.nproc, micro, nvme=bool(nvme_path))
    limits = Limits(
        gpu_bytes,
        host_bytes,
        a.headroom,
        a.nproc,
        on_gpu,
        bool(cfg.model.hf or cfg.run.init_from),
        nvme_free=shutil.disk_usage(nvme_path).free if nvme_path else None,
        async_io=bool(nvme_path) and async_io_builds(),
    )
    prune(cands, model, run, limits)
    cands = add_partial_offload(cands, model, run, limits)
    fitting = [c for c in cands if not c.pruned]
    if not fitting:
        where = f"{a.nproc} {'GPU' if on_gpu or a.gpu_memory else 'rank'}(s)" + (
            f" of {size_text(gpu_bytes)}" if gpu_bytes else ""
        )
        host = f" and {size_text(host_bytes)} of host RAM" if host_bytes else ""
        raise UserError(
            f"none of the {len(cands)} configurations of {model.name} ({model.n_params / 1e6:,.1f}M parameters, global "
            f"batch {global_batch} × {run.seq_len} tokens) fits {where}{host} with {a.headroom:.0%} headroom; "
            f"what would: {what_would_fit(model, run, limits, cands)}"
        )
    hw = default_hardware(on_gpu, device)
    for c in fitting:
        c.terms = predict_terms(c, model, run, hw)
        c.predicted_s = sum(c.terms.values())
    if not a.exhaustive:
        first = min(fitting, key=lambda c: c.predicted_s or 0.0)
        cost = hw.startup_s + (a.warmup_steps + a.steps) * (first.predicted_s or 0.0)
        if cost > 60 * a.budget_minutes:
            raise UserError(
                f"--budget-minutes {a.budget_minutes:g} is too small to measure one configuration (about {cost:.0f} s "
                f"each here: starting the ranks and {a.warmup_steps + a.steps} steps); give at least "
                f"{math.ceil(cost / 60 * 3)} to measure three, or fewer --steps"
            )
    return cfg, model, run, cands, fitting, limits, hw, global_batch, device if on_gpu else "CPU"


def tune(a: TuneArgs, on_progress=print) -> dict:
    """The whole verb: setup (bad input stops here, before anything is written), the search, the winner's configs
    and the reports. Returns tune.json's summary."""
    cfg, model, run, cands, fitting, limits, hw, global_batch, device = setup(a)
    out = Path(a.out)
    elapsed_before = load_state(out, a.signature(), fitting) if a.resume else 0.0
    if out.exists() and a.overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    on_progress(
        f"tune {model.name} ({model.n_params / 1e6:,.1f}M parameters) on {a.nproc} × {device}: global batch "
        f"{global_batch} × {run.seq_len} tokens, {run.dtype}; {len(cands)} candidates, {len(cands) - len(fitting)} "
        f"pruned by the planner"
        + " ("
        + ", ".join(
            ([f"GPU {size_text(limits.gpu_bytes)}"] if limits.gpu_bytes else [])
            + ([f"host {size_text(limits.host_bytes)}"] if limits.host_bytes else [])
            + [f"{a.headroom:.0%} headroom"]
        )
        + ")"
    )
    for c in cands:
        if c.pruned:
            on_progress(f"  pruned {c.label}: {c.pruned}")
    overrides = [*a.overrides, *([f"--run.host_memory={a.host_memory}"] if a.host_memory else [])]
    if elapsed_before:
        done = [c for c in fitting if c.status != "not measured"]
        on_progress(f"resuming: {len(done)} measured in {elapsed_before:.0f} s by the earlier call(s)")
    m = Measure(a.config, a.nproc, a.warmup_steps, a.steps, overrides, run.grad_accum_dtype, a.stop_slower_by)
    s = Search(
        None if a.exhaustive else 60 * a.budget_minutes,
        a.exhaustive,
        a.max_measure,
        a.min_measure,
        a.stop_slower_by,
        a.signature(),
        elapsed_before,
    )
    started = time.monotonic()
    cal, ended = search(fitting, model, run, hw, m, s, out, on_progress)
    elapsed = elapsed_before + time.monotonic() - started
    ok = [c for c in fitting if c.status.startswith("ok")]
    winner = min(ok, key=lambda c: c.step_time_s or math.inf, default=None)
    written = []
    if winner:
        written = write_winner(cfg, winner, a, run.dtype, "cuda" if device != "CPU" else "cpu", out)
    summary = {
        "config": a.config,
        "model": model.name,
        "n_params": model.n_params,
        "nproc": a.nproc,
        "device": device,
        "dtype": run.dtype,
        "seq_len": run.seq_len,
        "global_batch": global_batch,
        "exhaustive": a.exhaustive,
        "budget_s": None if a.exhaustive else 60 * a.budget_minutes,
        "elapsed_s": elapsed,
        "ended": ended,
        "n_candidates": len(cands),
        "pruned": len(cands) - len(fitting),
        "measured": len([c for c in fitting if c.status != "not measured"]),
        "limits": {"gpu_bytes": limits.gpu_bytes, "host_bytes": limits.host_bytes, "headroom": limits.headroom},
        "hardware_model": hw.__dict__,
        "calibration": cal.how,
        "calibration_k": cal.k,
        "prediction_error": prediction_error(fitting),
        "winner": None
        if winner is None
        else {
            "name": winner.name,
            "label": winner.label,
            "step_time_s": winner.step_time_s,
            "tokens_per_s": winner.tokens_per_s,
        },
        "written": written,
    }
    write_reports(out, summary, cands)
    return summary


def write_winner(cfg, w: Candidate, a: TuneArgs, dtype: str, device_type: str, out: Path) -> list[str]:
    """The winner as a run config (tuned.toml), and with --for the ds_config / HF Trainer / Accelerate files."""
    from zerotrain import dsconfig
    from zerotrain.dsconfig.new import _hf_variant
    from zerotrain.runconfig import dumps_toml

    ds, t = cfg.deepspeed, cfg.train
    ds.zero_stage, ds.offload_optimizer, ds.offload_params = w.zero_stage, w.offload_optimizer, w.offload_params
    ds.offload_optimizer_ratio = w.offload_ratio
    if w.zero_stage == 3:  # as it was measured
        ds.zero3_persistent_params = "on" if w.persistent else "off"
    ds.activation_checkpointing = w.activation_checkpointing
    ds.grad_accum_dtype = w.grad_accum_dtype(ds.grad_accum_dtype)
    ds.master_weights = w.master_weights(ds.master_weights)
    t.micro_batch_size, t.grad_accum = w.micro_batch, w.grad_accum
    if t.global_batch_size:
        t.global_batch_size = w.micro_batch * w.grad_accum * a.nproc
    written = ["tuned.toml"]
    (out / "tuned.toml").write_text(
        f"# zerotrain tune's winner ({w.label}): zerotrain train {out / 'tuned.toml'} --nproc {a.nproc}\n"
        + dumps_toml(cfg)
    )
    if a.target == "zerotrain":
        return written
    config = dsconfig.build(cfg, dsconfig.Batch(w.micro_batch, w.grad_accum, a.nproc), dtype, device_type)
    if a.target == "hf-trainer":
        if "bf16" not in config and "fp16" not in config:  # an fp32 run: the Trainer's own args decide
            config["bf16"] = {"enabled": False}
        config = _hf_variant(config)
    (out / "ds_config.json").write_text(json.dumps(config, indent=2) + "\n")
    written.append("ds_config.json")
    if a.target == "accelerate":
        import yaml

        accel = dsconfig.accelerate_config(str(out / "ds_config.json"), a.nproc, 1, w.zero_stage)
        (out / "accelerate_config.yaml").write_text(yaml.safe_dump(accel, sort_keys=False))
        written.append("accelerate_config.yaml")
    return written
