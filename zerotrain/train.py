"""`zerotrain train`: setup -> loop -> final save.

Reading order: `preflight` checks everything that needs no process group (data, model shape, batch
triple, run directory) and is also run by the `--nproc` parent before it launches anything; `train` joins
the process group, builds the model and the DeepSpeed engine, restores a checkpoint, then runs the loop:
one optimizer step = grad_accum × (forward, backward, engine.step()).
"""

import dataclasses
import json
import math
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zerotrain import UserError, checkpoint, dsconfig, runconfig
from zerotrain.data import BatchSampler, TokenData, eval_batches
from zerotrain.model import GPTConfig, config_from_preset, flops_per_token

RUN_ARTIFACTS = ("config.toml", "ds_config.json", "metrics.jsonl", "checkpoints", "tb", "tokenizer", ".wandb_id")


def lr_at(step: int, t: runconfig.TrainSection) -> float:
    """Linear warmup to lr over warmup_steps, cosine decay to min_lr at lr_decay_steps (default
    max_steps), then flat. `step` counts optimizer steps from 0."""
    decay_steps = t.lr_decay_steps or t.max_steps
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if step >= decay_steps:
        return t.min_lr
    progress = (step - t.warmup_steps) / max(1, decay_steps - t.warmup_steps)
    return t.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on the weight matrices of linear layers only, not on biases, LayerNorms or
    the (tied) embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        skip = p.ndim < 2 or name.startswith(("transformer.wte", "transformer.wpe"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------------ preflight

@dataclass
class Plan:
    """Everything derived from the run config before any process group exists."""
    cfg: runconfig.RunConfig
    model: GPTConfig
    seq_len: int
    batch: dsconfig.Batch
    data: list[TokenData]
    weights: list[float]
    run_dir: Path
    resume_from: tuple[Path, str] | None  # (checkpoints dir, tag)
    init_from: tuple[Path, str] | None
    overwrite: bool


def _model_config(cfg: runconfig.RunConfig, vocab_size: int, from_checkpoint: dict | None, what: str) -> GPTConfig:
    m = cfg.model
    shape = {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(m, k) is not None}
    if from_checkpoint is None:
        return config_from_preset(m.preset, **shape, dropout=m.dropout, vocab_size=m.vocab_size or vocab_size)
    # Continuing from a checkpoint: its shape rules; explicit keys must agree with it.
    saved = GPTConfig(**from_checkpoint)
    clashes = [f"model.{k} = {v} but the checkpoint has {getattr(saved, k)}" for k, v in shape.items() if getattr(saved, k) != v]
    if m.vocab_size is not None and m.vocab_size != saved.vocab_size:
        clashes.append(f"model.vocab_size = {m.vocab_size} but the checkpoint has {saved.vocab_size}")
    if clashes:
        raise UserError(f"{what}: {'; '.join(clashes)}; drop those keys or use a matching checkpoint")
    return dataclasses.replace(saved, dropout=m.dropout)


def _holds_run(run_dir: Path) -> bool:
    return run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_ARTIFACTS)


def preflight(cfg: runconfig.RunConfig, world: int, overwrite: bool = False) -> Plan:
    """Check the run before launching it; every problem is a UserError naming the fix."""
    dirs = cfg.data.dirs or [cfg.data.dir]
    data = [TokenData(p) for p in dirs]
    if len({d.tokenizer_fingerprint() for d in data}) > 1:
        raise UserError(f"data.dirs were prepared with different tokenizers ({', '.join(str(d.path) for d in data)}); prepare them with one tokenizer")
    weights = cfg.data.weights or [1.0] * len(data)

    run_dir = Path(cfg.run.out_dir)
    resume_from = init_from = None
    if _holds_run(run_dir) and not overwrite:
        if not cfg.run.resume:
            raise UserError(f"run.out_dir {run_dir} already holds a run; set run.resume = \"auto\" to continue it, "
                            f"pass --overwrite to replace it, or choose another out_dir")
        saved_cfg = run_dir / "config.toml"
        if saved_cfg.is_file() and cfg.run.resume == "auto":
            import tomllib
            saved = tomllib.loads(saved_cfg.read_text())
            now = runconfig.to_dict(cfg)
            diffs = [f"{sec}.{k}" for sec in ("model", "data") for k in set(saved.get(sec, {})) | set(now[sec])
                     if saved.get(sec, {}).get(k) != now[sec].get(k)]
            if diffs:
                raise UserError(f"run.out_dir {run_dir} holds a different run ({', '.join(sorted(diffs))} differ); "
                                f"choose another out_dir or pass --overwrite to replace it")
    if cfg.run.resume == "auto":
        if not overwrite and checkpoint.read_pointer(run_dir / "checkpoints", "latest"):
            resume_from = checkpoint.resolve(run_dir)
    elif cfg.run.resume:
        resume_from = checkpoint.resolve(cfg.run.resume)
    if cfg.run.init_from:
        init_from = checkpoint.resolve(cfg.run.init_from)

    source = resume_from or init_from
    saved_model = checkpoint.read_manifest(*source)["model"] if source else None
    what = f"run.resume {cfg.run.resume}" if resume_from else f"run.init_from {cfg.run.init_from}"
    model = _model_config(cfg, data[0].vocab_size, saved_model, what)
    seq_len = cfg.train.seq_len or model.block_size
    if seq_len > model.block_size:
        raise UserError(f"train.seq_len {seq_len} is larger than the model's block_size {model.block_size}; "
                        f"lower train.seq_len or raise model.block_size")
    for d in data:
        d.check_fits(model.vocab_size, seq_len)
    batch = dsconfig.derive_batch(cfg.train, world)
    if resume_from:
        manifest = checkpoint.read_manifest(*resume_from)
        if manifest["world_size"] != world and cfg.deepspeed.zero_stage > 0:
            raise UserError(f"checkpoint {resume_from[0] / resume_from[1]} was written by {manifest['world_size']} ranks and this run has {world}; "
                            f"ZeRO optimizer shards do not reshape: resume with {manifest['world_size']} ranks, or start a new run with run.init_from")
        if manifest["zero_stage"] != cfg.deepspeed.zero_stage:
            raise UserError(f"checkpoint {resume_from[0] / resume_from[1]} was written with zero_stage {manifest['zero_stage']}, this run uses "
                            f"{cfg.deepspeed.zero_stage}; resume with the same stage, or start a new run with run.init_from")
    return Plan(cfg, model, seq_len, batch, data, weights, run_dir, resume_from, init_from, overwrite)


def _prepare_run_dir(plan: Plan, ds_config: dict) -> None:
    """Rank 0 only: clear it on --overwrite, then write config.toml, ds_config.json and the tokenizer."""
    run_dir = plan.run_dir
    if plan.overwrite:
        for name in RUN_ARTIFACTS:
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(run_dir / "config.toml", runconfig.dumps_toml(plan.cfg))
    checkpoint.write_atomic(run_dir / "ds_config.json", json.dumps(ds_config, indent=2) + "\n")
    shutil.copytree(plan.data[0].path / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)


# ------------------------------------------------------------------------------------------------ the run

def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_device(x: np.ndarray, device):
    import torch

    t = torch.from_numpy(x)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _loss_scale(optimizer) -> float | None:
    """Current dynamic loss scale: ZeRO optimizers expose cur_scale, the stage-0 FP16_Optimizer keeps it
    in loss_scale_config."""
    scaler = getattr(optimizer, "loss_scale_config", optimizer)
    return float(scaler.cur_scale) if hasattr(scaler, "cur_scale") else None


def evaluate(engine, plan: Plan, d) -> float:
    """Mean loss over eval_iters micro-batches per rank on each source's validation split, averaged
    over ranks and weighted by source. Every rank runs the same number of forwards (ZeRO-3 gathers
    parameters collectively)."""
    import torch
    import torch.distributed as dist

    t = plan.cfg.train
    engine.eval()
    per_source = torch.zeros(len(plan.data), device=d.device, dtype=torch.float32)
    with torch.no_grad():
        for i, source in enumerate(plan.data):
            for x, y in eval_batches(source.val, plan.seq_len, t.micro_batch_size, t.eval_iters, d.rank, d.world):
                per_source[i] += engine(_to_device(x, d.device), _to_device(y, d.device)).float()
    dist.all_reduce(per_source)
    engine.train()
    means = (per_source / (t.eval_iters * d.world)).tolist()  # host sync: once per evaluation
    return sum(w * m for w, m in zip(plan.weights, means)) / sum(plan.weights)


def train(cfg: runconfig.RunConfig, overwrite: bool = False) -> dict:
    """Run training as this process's rank; returns a summary (final step, losses, checkpoint tag)."""
    from zerotrain import distributed

    started = time.perf_counter()
    plan = preflight(cfg, distributed.world_size(), overwrite)  # bad input fails before any process group exists
    d = distributed.init()
    import deepspeed
    import torch
    import torch.distributed as dist

    from zerotrain.metrics import MetricsWriter, format_eval_line, format_line, peak_flops, peak_memory_bytes
    from zerotrain.model import GPT
    t, ds = cfg.train, cfg.deepspeed
    on_gpu = d.device.type == "cuda"
    from deepspeed.accelerator import get_accelerator
    dtype = dsconfig.resolve_dtype(ds.dtype, d.device.type, get_accelerator().is_bf16_supported())
    ds_config = dsconfig.build(cfg, plan.batch, dtype, d.device.type)
    say = print if d.is_main else (lambda *a, **k: None)

    if d.is_main:
        _prepare_run_dir(plan, ds_config)
    distributed.barrier(d)

    # Same seed on every rank: identical initial weights whatever the ZeRO stage.
    torch.manual_seed(cfg.run.seed)
    with torch.device(d.device):
        model = GPT(plan.model)
    model.gradient_checkpointing = ds.activation_checkpointing
    if plan.init_from:
        model.load_state_dict(checkpoint.load_fp32_state_dict(*plan.init_from))
        say(f"weights from {plan.init_from[0] / plan.init_from[1]} (fresh optimizer and schedule)")
    n_params = model.num_params()
    torch.manual_seed(cfg.run.seed + d.rank)  # dropout differs per rank

    groups = param_groups(model, t.weight_decay)
    if dsconfig.uses_config_optimizer(ds_config):
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=True)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    sampler = BatchSampler([s.train for s in plan.data], plan.weights, plan.seq_len, t.micro_batch_size, d.rank, d.world, cfg.run.seed)
    step, tokens_seen, best_val, evals_since_best = 0, 0, float("inf"), 0
    if plan.resume_from:
        ckpt_dir, tag = plan.resume_from
        load_path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise UserError(f"DeepSpeed found no loadable checkpoint at {ckpt_dir / tag}; pass a complete checkpoint to run.resume")
        zt = client["zerotrain"]
        step, tokens_seen, best_val, evals_since_best = zt["step"], zt["tokens_seen"], zt["best_val_loss"], zt["evals_since_best"]
        sampler.load_state_dict(zt["sampler"])
        if len(zt["rng"]) == d.world:
            _set_rng_state(zt["rng"][d.rank])
        say(f"resumed from {ckpt_dir / tag} at step {step}")

    tokens_per_step = plan.batch.global_size * plan.seq_len
    flops_tok = flops_per_token(plan.model, n_params, plan.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(d.device) if on_gpu else None)
    say(f"model {n_params / 1e6:.2f}M parameters ({plan.model.n_layer} layers, {plan.model.n_head} heads, {plan.model.n_embd} wide, "
        f"vocab {plan.model.vocab_size} padded to {plan.model.padded_vocab_size}, block {plan.model.block_size})")
    say(f"{plan.batch.describe()} sequences of {plan.seq_len} tokens = {tokens_per_step:,} tokens per step")
    say(f"ZeRO stage {ds.zero_stage}, {dtype}, {d.world} × {d.device.type}, lr {t.lr:g} -> {t.min_lr:g}, run dir {plan.run_dir}")
    say("ds_config: " + json.dumps(ds_config, separators=(",", ":")))

    writer = MetricsWriter(plan.run_dir, step, cfg.run.tensorboard, cfg.run.wandb, cfg.run.wandb_project,
                           runconfig.to_dict(cfg)) if d.is_main else None
    ckpt_dir = plan.run_dir / "checkpoints"
    stop_signal = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, _f: stop_signal.append(signum))

    def save(pointers=()) -> str:
        client = {"zerotrain": {"step": step, "tokens_seen": tokens_seen, "sampler": sampler.state_dict(),
                                "rng": distributed.all_gather_object(_rng_state(), d), "best_val_loss": best_val,
                                "evals_since_best": evals_since_best, "run_config": runconfig.to_dict(cfg)}}
        manifest = {"step": step, "tokens_seen": tokens_seen, "world_size": d.world, "zero_stage": ds.zero_stage,
                    "dtype": dtype, "model": dataclasses.asdict(plan.model), "val_loss": None if best_val == float("inf") else last_val,
                    "tokenizer": plan.data[0].meta["tokenizer"]}
        return checkpoint.save(engine, ckpt_dir, step, client, manifest, d, t.keep_last, pointers)

    last_val, last_saved, stop_reason = None, None, None
    loss_sum = torch.zeros((), device=d.device)
    window_start, window_steps = time.perf_counter(), 0
    progress = _progress(d.is_main, step, t.max_steps)
    while step < t.max_steps:
        lr = lr_at(step, t)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        loss_sum.zero_()
        for _ in range(plan.batch.accum):
            x, y = sampler.next_batch()
            loss = engine(_to_device(x, d.device), _to_device(y, d.device))
            engine.backward(loss)
            engine.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
            loss_sum += loss.detach()
        step += 1
        tokens_seen += tokens_per_step
        window_steps += 1
        if progress:
            progress.advance()

        if step % t.log_interval == 0 or step == t.max_steps:
            dist.all_reduce(loss_sum)
            train_loss = loss_sum.item() / (plan.batch.accum * d.world)  # host sync: only at log steps
            elapsed = time.perf_counter() - window_start
            step_time = elapsed / window_steps
            grad_norm = engine.get_global_grad_norm()
            record = {"step": step, "loss": train_loss, "lr": lr, "elapsed_s": time.perf_counter() - started,
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
                      "mfu": None if peak is None else flops_tok * tokens_per_step / step_time / d.world / peak,
                      "peak_mem_bytes": peak_memory_bytes(d.device), "tokens_seen": tokens_seen}
            if dtype == "fp16":
                record["loss_scale"], record["skipped_steps"] = _loss_scale(engine.optimizer), engine.skipped_steps
            if d.is_main:
                writer.write(record)
                _print(progress, format_line(record, t.max_steps))
            if not math.isfinite(train_loss):
                stop_reason = "non-finite loss"
            window_start, window_steps = time.perf_counter(), 0

        pointers = ()
        if t.eval_interval and (step % t.eval_interval == 0 or step == t.max_steps):
            last_val = evaluate(engine, plan, d)
            if last_val < best_val:
                best_val, evals_since_best, pointers = last_val, 0, ("best",)
            else:
                evals_since_best += 1
            if d.is_main:
                record = {"step": step, "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50)), "best_val_loss": best_val,
                          "elapsed_s": time.perf_counter() - started}
                writer.write(record)
                _print(progress, format_eval_line(record))
            if t.early_stop_patience and evals_since_best >= t.early_stop_patience:
                stop_reason = f"early stop: no better val loss in {evals_since_best} evaluations"
        if d.world > 1 and distributed.any_rank(bool(stop_signal), d) and not stop_signal:
            stop_signal.append(signal.SIGTERM)  # another rank was signalled
        if stop_signal and not stop_reason:
            stop_reason = f"stopped by {signal.Signals(stop_signal[0]).name}"
        ending = stop_reason is not None or step == t.max_steps
        if pointers or (t.save_interval and step % t.save_interval == 0) or ending:
            final = ("final",) if ending and not stop_signal else ()
            last_saved = save(pointers + final)
            say(f"saved checkpoint {ckpt_dir / last_saved}" + (f" ({', '.join(pointers + final)})" if pointers + final else ""))
            window_start, window_steps = time.perf_counter(), 0  # keep eval and save time out of step timing
        if stop_reason:
            say(f"{stop_reason} at step {step}; resume with --run.resume=auto" if stop_signal else f"{stop_reason} at step {step}")
            break

    if progress:
        progress.stop()
    if writer:
        writer.close()
    distributed.barrier(d)
    dist.destroy_process_group()
    return {"step": step, "val_loss": last_val, "best_val_loss": None if best_val == float("inf") else best_val,
            "checkpoint": str(ckpt_dir / last_saved) if last_saved else None, "stop_reason": stop_reason}


# ------------------------------------------------------------------------------------------------ console

def _progress(enabled: bool, start: int, total: int):
    """A rich progress bar on interactive terminals (rank 0); None elsewhere."""
    if not (enabled and sys.stdout.isatty()):
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    task = bar.add_task("train", total=total, completed=start)
    bar.start()
    bar.advance = lambda: bar.update(task, advance=1)
    return bar


def _print(progress, line: str) -> None:
    if progress:
        progress.console.print(line, highlight=False, markup=False)
    else:
        print(line, flush=True)
