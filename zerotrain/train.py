"""`zerotrain train`: setup -> loop -> final save.

Reading order: `train` runs `preflight.preflight` (everything that needs no process group; the `--nproc` parent
runs it too, before it launches anything), joins the process group, locks the run dir (runlock.py; the `--nproc`
parent holds it for its ranks), then `run` sets up with named functions
(`build_model`, `build_engine`, `restore`), and runs the loop: one optimizer step = grad_accum × (forward,
backward, engine.step()) in `optimizer_step`, a log line on log steps, `evaluate_and_report` on eval steps, and
`checkpoint.save(engine, state, ...)` with the `TrainState` that is the checkpoint's client state.
"""

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from zerotrain import UserError, checkpoint, dsconfig, faults, partial_offload, runconfig, runlock, watchdog
from zerotrain.data import BatchSampler, eval_batches
from zerotrain.metrics import PhaseClock, StepLog
from zerotrain.model import flops_per_token
from zerotrain.preflight import Plan, preflight, prepare_run_dir
from zerotrain.watchdog import Watchdog


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


def param_groups(model, weight_decay: float) -> tuple[list[dict], list[list[str]]]:
    """AdamW groups — decay on the weight matrices of linear layers only, not on biases, LayerNorms or the
    (tied) embeddings — and the parameter names of each group in order (checkpoints record them).

    The embeddings get a group of their own, apart from the small tensors: ZeRO-1/2 split each group's elements
    evenly across ranks, and with the vocabulary embedding (95% of the no-decay elements) in one group with the
    biases and LayerNorms, one rank got the embedding and another the hundreds of small tensors, whose per-tensor
    Python in DeepSpeed's optimizer step made the other ranks wait for it every step (docs/performance.md)."""
    decay, embeddings, small = ([], []), ([], []), ([], [])
    for name, p in model.named_parameters():
        ndim = len(getattr(p, "ds_shape", p.shape))  # a ZeRO-3 partition is flat; ds_shape is the tensor's
        embedding = name.startswith(("transformer.wte", "transformer.wpe")) or "embed" in name
        names, params = embeddings if embedding else small if ndim < 2 else decay
        names.append(name)
        params.append(p)
    chosen = [(g, wd) for g, wd in ((decay, weight_decay), (embeddings, 0.0), (small, 0.0)) if g[1]]
    return [{"params": g[1], "weight_decay": wd} for g, wd in chosen], [g[0] for g, _ in chosen]


# ------------------------------------------------------------------------------------------------ the run


def _rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _reduce_epilogue_without_host_wait(optimizer) -> bool:
    """ZeRO-2 with overlap_comm ends every micro-step's backward with the host waiting for the whole GPU
    (torch.cuda.synchronize in DeepSpeed's independent_gradient_partition_epilogue) before it drops the reduced
    gradients, so the GPU idles while the host then launches the next micro-step, and the last bucket's reduction is
    waited for. Here the compute stream waits for the reduction stream instead: every later kernel still runs after the
    reductions, the reduce buffers are recorded on the reduction stream for the caching allocator, and only the host
    no longer blocks (what it gains: docs/benchmarks.md).
    Returns whether it applies: DeepSpeed's ZeRO-1/2 optimizer with a reduction stream (ZeRO-3's epilogue waits on
    its own stream, not the device)."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if (
        not isinstance(optimizer, DeepSpeedZeroOptimizer)
        or optimizer.reduction_stream is None
        or not optimizer.overlap_comm
    ):
        return False
    original = optimizer.independent_gradient_partition_epilogue
    accelerator = get_accelerator()

    def epilogue():
        accelerator.synchronize = lambda *_: accelerator.current_stream().wait_stream(optimizer.reduction_stream)
        try:
            original()
        finally:
            del accelerator.synchronize  # the accelerator class's own method again

    optimizer.independent_gradient_partition_epilogue = epilogue
    return True


def _reseed(seed: int, step: int, rank: int) -> None:
    """A resume on another number of ranks continues no rank's RNG streams: each rank seeds its own from
    (run.seed, step, rank), so the run stays repeatable, but dropout masks differ from the straight run's."""
    import torch

    s = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


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


def _grad_norm(model):
    """L2 norm of all gradients (a device tensor: no host sync here)."""
    import torch

    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in model.parameters() if p.grad is not None])
    )


def _raise_if_diverged(loss_sum, step: int, ckpt_dir: Path) -> None:
    """Collective: every rank learns whether any rank's loss is non-finite."""
    import torch
    import torch.distributed as dist

    bad = (~torch.isfinite(loss_sum)).float()
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise _diverged(step, ckpt_dir)


def _diverged(step: int, ckpt_dir: Path, what: str = "the loss is") -> UserError:
    """The divergence line: names the newest checkpoint whose weights were checked finite, or says there is none."""
    last = checkpoint.last_finite(ckpt_dir)
    if last is None:
        return UserError(
            f"{what} not finite at step {step}: training diverged before any checkpoint with finite weights was "
            f"saved; start over (--overwrite) with a lower train.lr or more train.warmup_steps (or bf16 instead of fp16)"
        )
    return UserError(
        f"{what} not finite at step {step}: training diverged; continue from {ckpt_dir / last}, the last checkpoint "
        f"with finite weights (--run.resume={ckpt_dir / last}), with a lower train.lr or more train.warmup_steps "
        f"(or bf16 instead of fp16)"
    )


def _local_weights(engine) -> list:
    """The weights this rank owns: ZeRO-1/2's and ZeRO-3's fp32 master partitions, BF16_Optimizer's and
    FP16_Optimizer's flat fp32 groups, else the module's parameters (ZeRO-3: their local partitions). A non-finite
    master always shows in the 16-bit copy made from it, so either is enough to tell."""
    optimizer = engine.optimizer
    for name in (
        "single_partition_of_fp32_groups",  # ZeRO-1/2
        "fp32_partitioned_groups_flat",  # ZeRO-3
        "fp32_groups_flat_partition",  # BF16_Optimizer (ZeRO-1 with fp32 gradient sums)
        "fp32_groups_flat",  # FP16_Optimizer (stage 0)
    ):
        groups = getattr(optimizer, name, None)
        if groups and all(hasattr(g, "isfinite") for g in groups) and any(g.numel() for g in groups):
            return [g for g in groups if g.numel()]  # (NVMe offload swaps them out, leaving empty ones: below)
    return [getattr(p, "ds_tensor", p) for p in engine.module.parameters()]


def weights_finite(engine, d) -> bool:
    """Collective: whether every rank's own weights are finite. One fused max-|w| per rank (torch._foreach_norm with
    ord inf, exact and overflow-free: NaN and inf propagate) and one all-reduce; costs a read of this rank's
    partition, at save steps only. `.item()` syncs the host: a save does anyway."""
    import torch

    from zerotrain import distributed

    tensors = [t.detach() for t in _local_weights(engine)]
    finite = True
    if tensors:
        finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf"))).max()).item())
    return not distributed.max_over_ranks(int(not finite), d)


def _check_cpu_adam_can_build(on_gpu: bool) -> None:
    """Optimizer offload runs DeepSpeedCPUAdam, compiled on first use: a C++ compiler, and on GPU builds the
    CUDA toolkit, must be there — say so before DeepSpeed fails deep in a JIT build."""
    if not (shutil.which("c++") or shutil.which("g++")):
        raise UserError(
            'deepspeed.offload_optimizer needs a C++ compiler to build DeepSpeed\'s CPUAdam; install g++ or set offload_optimizer = "none"'
        )
    if on_gpu:
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is None:
            raise UserError(
                "deepspeed.offload_optimizer builds DeepSpeed's CPUAdam with the CUDA toolkit, and CUDA_HOME/nvcc is not found; "
                'install the toolkit (or set CUDA_HOME) or set offload_optimizer = "none"'
            )


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


def sample_text(engine, plan: Plan, d, step: int) -> str:
    """plan.cfg.train.sample_prompt continued by sample_tokens tokens. Each rank samples the same text from the same
    seed with the same fixed number of forwards (model.sample never stops early): under ZeRO-3 every forward is a
    collective parameter gather, and no rank may stop before the others (HF's synced_gpus, by construction)."""
    import torch

    from zerotrain.model import sample

    t = plan.cfg.train
    tokenizer = plan.data[0].tokenizer()
    ids = [int(i) for i in tokenizer.encode(t.sample_prompt)] or [tokenizer.eos_id or 0]
    generator = torch.Generator(device=d.device).manual_seed(plan.cfg.run.seed + step)
    engine.eval()
    with torch.no_grad():
        out = sample(
            engine,
            torch.tensor([ids], dtype=torch.long, device=d.device),
            plan.seq_len,
            plan.model.vocab_size,
            t.sample_tokens,
            temperature=0.8,
            top_k=200,
            generator=generator,
        )
    engine.train()
    return tokenizer.decode(out[0].tolist())


# ------------------------------------------------------------------------------------------------ resume state


class TrainState:
    """Everything a resumed run needs beyond DeepSpeed's own state; `state_dict()` is exactly the checkpoint's
    client state (under the key "zerotrain"), and `load_state_dict()` takes it back."""

    def __init__(self, sampler: BatchSampler, run_config: dict, d):
        self.step = 0  # optimizer steps taken
        self.tokens_seen = 0
        self.best_val_loss = float("inf")
        self.evals_since_best = 0
        self.last_val_loss: float | None = None  # the newest evaluation's; the manifest records it
        self.sampler = sampler  # its position is the data position
        self.run_config = run_config
        self._d = d

    def state_dict(self) -> dict:
        """Collective: every rank's RNG states are gathered, so each rank restores its own."""
        from zerotrain.distributed import all_gather_object

        return {
            "zerotrain": {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "sampler": self.sampler.state_dict(),
                "rng": all_gather_object(_rng_state(), self._d),
                "best_val_loss": self.best_val_loss,
                "evals_since_best": self.evals_since_best,
                "run_config": self.run_config,
            }
        }

    def load_state_dict(self, client: dict) -> None:
        zt = client["zerotrain"]
        self.step, self.tokens_seen = zt["step"], zt["tokens_seen"]
        self.best_val_loss, self.evals_since_best = zt["best_val_loss"], zt["evals_since_best"]
        self.sampler.load_state_dict(zt["sampler"])
        if len(zt["rng"]) == self._d.world:
            _set_rng_state(zt["rng"][self._d.rank])
        else:
            _reseed(self.run_config["run"]["seed"], self.step, self._d.rank)


# ------------------------------------------------------------------------------------------------ setup


def build_model(plan: Plan, ds_config: dict, d, say):
    """The model on this rank's device, with its fast kernels; returns (model, what was applied, for the startup line)."""
    import deepspeed
    import torch

    from zerotrain.model import GPT, Block

    t, ds = plan.cfg.train, plan.cfg.deepspeed
    on_gpu = d.device.type == "cuda"
    torch.manual_seed(plan.cfg.run.seed)  # same seed on every rank: identical initial weights whatever the ZeRO stage
    compiled = runconfig.compiles(t, ds.zero_stage, on_gpu)
    if plan.hf:
        from zerotrain import hf
        from zerotrain.kernels import hf as hf_kernels

        model = hf.load(plan.hf, plan.dtype, ds_config, ds.zero_stage, ds.activation_checkpointing)
        say(f"fine-tuning {plan.hf.describe()}")
        block_classes = hf.decoder_layer_classes(model)
        fast = hf_kernels.apply(model, t, d.device, plan.dtype, compiled, set(block_classes))
    else:
        with torch.device(d.device):
            model = GPT(plan.model)
        model.gradient_checkpointing = ds.activation_checkpointing
        model.lm_head.fused_loss = t.fused_loss
        if compiled:
            model.compile_blocks()  # compiles lazily, on the first forward
        block_classes = [Block]
    per_block = ds.zero_stage == 3 and ds.zero3_gather_per_block and bool(block_classes)
    applied = (
        (["compiled blocks"] if compiled and not plan.hf else [])
        + (["parameters gathered per block"] if per_block else [])
        + (["parameters kept gathered"] if ds.zero_stage == 3 and ds.zero3_persistent_params == "on" else [])
    )
    if plan.hf:
        applied += fast
    else:
        from zerotrain import kernels

        applied += kernels.apply(
            model, t, d.device, plan.dtype, compiled=compiled, zero_stage=ds.zero_stage, whole_blocks=per_block
        )
    if per_block:
        deepspeed.utils.set_z3_leaf_modules(
            model, block_classes
        )  # one gather, one release, one gradient hook per block
    if plan.init_from:
        weights = checkpoint.load_fp32_state_dict(*plan.init_from)
        checkpoint.check_finite(weights, plan.init_from[0] / plan.init_from[1])
        model.load_state_dict(weights)
        say(f"weights from {plan.init_from[0] / plan.init_from[1]} (fresh optimizer and schedule)")
    elif plan.init_from_hf:
        from zerotrain import hf

        model.load_state_dict(hf.gpt2_weights(plan.init_from_hf)[1])
        say(f"weights from the Hugging Face GPT-2 in {plan.init_from_hf} (fresh optimizer and schedule)")
    return model, applied


def build_engine(model, plan: Plan, ds_config: dict, d):
    """DeepSpeed's engine around the model and its AdamW; returns (engine, parameter-group names, notes)."""
    import deepspeed
    import torch

    t, ds = plan.cfg.train, plan.cfg.deepspeed
    groups, group_names = param_groups(model, t.weight_decay)
    if plan.resume_from:  # optimizer states are stored per group: another grouping cannot be loaded
        saved_groups = checkpoint.read_manifest(*plan.resume_from).get("param_group_names")
        if saved_groups is not None and saved_groups != group_names:
            where = plan.resume_from[0] / plan.resume_from[1]
            raise UserError(
                f"{where} was saved with {len(saved_groups)} optimizer parameter groups and this zerotrain builds "
                f"{len(group_names)} (older checkpoints kept the embeddings with the biases); resume it with the zerotrain "
                f"that wrote it, or start from its weights with a fresh optimizer: --run.init_from={where}"
            )
    if dsconfig.uses_config_optimizer(ds_config):
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    else:
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=1e-8, fused=True)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    notes = []
    if d.device.type == "cuda" and ds.reduce_without_host_wait and _reduce_epilogue_without_host_wait(engine.optimizer):
        notes.append("reductions without host waits")
    return engine, group_names, notes


def convert_for_resume(plan: Plan, d, say) -> None:
    """Collective. run.resume written by another world size or ZeRO stage: rank 0 makes (or finds) its universal copy
    while the other ranks wait for it in the gather below; a failure reaches every rank. The process group's timeout
    bounds the wait: convert a large checkpoint beforehand with `zerotrain checkpoint convert CKPT --to universal`."""
    from zerotrain import distributed, universal

    problem = None
    if d.is_main:
        try:
            universal.convert(*plan.resume_from, say=say)
        except UserError as e:
            problem = str(e)
    problem = distributed.all_gather_object(problem, d)[0]
    if problem:
        raise UserError(problem)


def scheduled_groups(engine) -> list[dict]:
    """The parameter groups whose lr the schedule sets: the optimizer's, and under DeepSpeed 0.19.8's partial
    offload (ZeRO-3, offload ratio below 1) those of stage3's backup_optimizer too, the torch AdamW that steps the
    sub-groups kept on the GPU. Its first group is a copy taken when the engine was built (its others are the same
    dicts as the optimizer's): without this, those parameters would train at the starting lr whatever the schedule
    (measured on an H100: the 3B ratio-0.5 run's loss 13.7 after one step against 11.1, docs/log)."""
    groups = list(engine.optimizer.param_groups)
    backup = getattr(engine.optimizer, "backup_optimizer", None)
    if backup is not None:
        groups += [g for g in backup.param_groups if not any(g is h for h in groups)]
    return groups


def restore(engine, state: TrainState, plan: Plan, say) -> None:
    """Load run.resume's checkpoint into the engine (weights, optimizer) and the train state; through its universal
    copy when it was written by another world size or ZeRO stage (the ds_config then sets checkpoint.load_universal)."""
    from zerotrain import universal

    ckpt_dir, tag = plan.resume_from
    load_dir = universal.folder_for(ckpt_dir, tag) if plan.resume_universal else ckpt_dir
    # DeepSpeed's universal loaders copy the saved parameter groups' hyperparameters over the optimizer's, and at
    # ZeRO-3 the first group's onto every group (weight decay included); this run's own are put back.
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    if plan.resume_universal and plan.cfg.deepspeed.zero_stage == 0:
        load_path, client = load_dir / tag, universal.load_into_zero0(engine, load_dir / tag)
    else:
        load_path, client = engine.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
    if load_path is None:
        raise UserError(
            f"DeepSpeed found no loadable checkpoint at {ckpt_dir / tag}; pass a complete checkpoint to run.resume"
        )
    if plan.resume_universal:
        import torch

        for group, saved in zip(engine.optimizer.param_groups, hyper, strict=True):
            group.update(saved)
        # DeepSpeed 0.19.8's ZeRO-3 universal loader gives every group's state one and the same step tensor, which
        # AdamW advances in place once per group: with 3 groups the bias corrections would run 3 steps per step. It is
        # also a CPU tensor, where fused (GPU) AdamW wants it on the parameter's device, as torch's own init puts it.
        inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
        # (ZeRO-3 empties each group's params list between steps, so the state is walked by its keys.)
        on_device = any(g.get("fused") or g.get("capturable") for g in inner.param_groups)
        for p, param_state in inner.state.items():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].clone().to(p.device if on_device else "cpu")
    state.load_state_dict(client)
    how = ""
    if plan.resume_universal:
        m = checkpoint.read_manifest(ckpt_dir, tag)
        how = f" (written by {m['world_size']} ranks at ZeRO-{m['zero_stage']}, loaded through its universal copy)"
    say(f"resumed from {ckpt_dir / tag} at step {state.step}{how}")
    if missing := partial_offload.restore_moments(engine):
        say(
            f"warning: {ckpt_dir / tag} has no Adam moments for {missing} of the sub-groups this partial offload steps "
            f"on the GPU (written before zerotrain saved them): those restart from zero, so this resume is not exact"
        )
    if state.step >= plan.cfg.train.max_steps:
        say(
            f"nothing to do: the run is at step {state.step} and train.max_steps is {plan.cfg.train.max_steps}; "
            f"raise max_steps to train further"
        )


def manifest_for(plan: Plan, state: TrainState, d, group_names: list[list[str]]) -> dict:
    """What checkpoint.save writes beside the shards: enough to resume, export or refuse without loading them."""
    ds = plan.cfg.deepspeed
    return {
        "step": state.step,
        "tokens_seen": state.tokens_seen,
        "world_size": d.world,
        "zero_stage": ds.zero_stage,
        "batch": {
            "micro": plan.batch.micro,
            "accum": plan.batch.accum,
            "world": plan.batch.world,
            "global": plan.batch.global_size,
            # the keys it came from: a resume with the same keys keeps this global batch on any world size
            "keys": {k: getattr(plan.cfg.train, k) for k in ("micro_batch_size", "grad_accum", "global_batch_size")},
        },
        "dtype": plan.dtype,
        "grad_accum_dtype": dsconfig.grad_accum_dtype(ds, plan.dtype),
        "master_weights": ds.master_weights,
        "model": dataclasses.asdict(plan.model),
        "val_loss": state.last_val_loss,
        "tokenizer": plan.data[0].meta["tokenizer"],
        "param_group_names": group_names,
        "hf": str(plan.hf.path.resolve()) if plan.hf else None,
        "hf_config": plan.hf.config if plan.hf else None,
        "weights_finite": True,  # checked before every save (weights_finite); export and generate check again
    }


def _report_stall(line: str, speaker: bool) -> None:
    """The watchdog's line: to the launching process under `train --nproc`, else printed by one rank."""
    import sys

    from zerotrain import distributed

    if not distributed.report_to_launcher(line) and speaker:
        print(f"error: {line}", file=sys.stderr, flush=True)


def _stop_signals() -> list[int]:
    """SIGINT and SIGTERM are recorded, not obeyed at once: the loop ends after its step, with a checkpoint."""
    received: list[int] = []
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, _f: received.append(signum))
    return received


# ------------------------------------------------------------------------------------------------ the run


def optimizer_step(
    engine, sampler: BatchSampler, plan: Plan, d, clock: PhaseClock, loss_sum, measure_grad_norm: bool, watch: Watchdog
):
    """One optimizer step: grad_accum × (forward, backward, engine.step()). The micro-batch losses are summed into
    loss_sum on the device (no host sync). Returns the gradient norm when asked to measure it (stage 0 in fp32/fp16,
    whose optimizers record none), else None. Each phase tells the watchdog it began."""
    from torch.profiler import record_function

    grad_norm = None
    loss_sum.zero_()
    for micro in range(plan.batch.accum):
        # record_function names the phases in train.profile_steps traces (and costs microseconds otherwise)
        watch.progress("reading data")
        with record_function("zerotrain.data"):
            x, y = sampler.next_batch()
            x, y = _to_device(x, d.device), _to_device(y, d.device)
        clock.lap(None)
        watch.progress("forward")
        with record_function("zerotrain.forward"):
            loss = engine(x, y)
        faults.point("hang", watch.step, d.rank, d.device)  # tests only: ZEROTRAIN_FAULT=hang:STEP:RANK
        clock.lap("forward_s")
        watch.progress("backward")
        with record_function("zerotrain.backward"):
            engine.backward(loss)  # at the accumulation boundary this also reduces gradients across ranks
        clock.lap("backward_s")
        if measure_grad_norm and micro == plan.batch.accum - 1:
            grad_norm = _grad_norm(engine.module) / (_loss_scale(engine.optimizer) if plan.dtype == "fp16" else 1.0)
        watch.progress("optimizer step")
        with record_function("zerotrain.optimizer_step"):
            engine.step()  # DeepSpeed applies the optimizer only at the accumulation boundary
        clock.lap("optimizer_s")
        loss_sum += loss.detach()
    return grad_norm


def evaluate_and_report(engine, plan: Plan, d, state: TrainState, log: StepLog, started: float) -> tuple[str, ...]:
    """Validation loss (and a sample, with train.sample_prompt) at an eval step; updates the best loss. Returns
    ("best",) when this evaluation is the best so far: that checkpoint gets the `best` pointer."""
    from zerotrain.metrics import format_eval_line

    t = plan.cfg.train
    state.last_val_loss = val = evaluate(engine, plan, d)
    pointers = ()
    if val < state.best_val_loss:
        state.best_val_loss, state.evals_since_best, pointers = val, 0, ("best",)
    else:
        state.evals_since_best += 1
    text = sample_text(engine, plan, d, state.step) if t.sample_prompt else None  # every rank: collective under ZeRO-3
    if log.writer:
        record = {
            "step": state.step,
            "val_loss": val,
            "val_ppl": math.exp(min(val, 50)),
            "best_val_loss": state.best_val_loss,
            "elapsed_s": time.perf_counter() - started,
        }
        if text is not None:
            record["sample"] = text
        log.writer.write(record)
        log.print(format_eval_line(record))
        if text is not None:
            log.print(f"sample: {text!r}")
    return pointers


def describe_run(plan: Plan, d, n_params: int, notes: list[str], ds_config: dict, say) -> None:
    """The startup lines: the model, the batch, and what this run does (stage, dtype, world, kernels, lr, run dir)."""
    t, ds, m = plan.cfg.train, plan.cfg.deepspeed, plan.model
    vocab = f"vocab {m.vocab_size}" if plan.hf else f"vocab {m.vocab_size} padded to {m.padded_vocab_size}"
    say(
        f"model {n_params / 1e6:.2f}M parameters ({m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, {vocab}, "
        f"block {m.block_size})"
    )
    tokens_per_step = plan.batch.global_size * plan.seq_len
    say(f"{plan.batch.describe()} sequences of {plan.seq_len} tokens = {tokens_per_step:,} tokens per step")
    if plan.batch_was:
        say(f"{plan.batch.describe()} (was {plan.batch_was.split()})")
    what = [f"ZeRO stage {ds.zero_stage}", plan.dtype, f"{d.world} × {d.device.type}", *notes]
    say(", ".join([*what, f"lr {t.lr:g} -> {t.min_lr:g}", f"run dir {plan.run_dir}"]))
    say("ds_config: " + json.dumps(ds_config, separators=(",", ":")))


def train(cfg: runconfig.RunConfig, overwrite: bool = False) -> dict:
    """Run training as this process's rank; returns a summary (final step, losses, checkpoint tag)."""
    from zerotrain import distributed

    started = time.perf_counter()
    watchdog.exit_with_launcher()  # a rank of `train --nproc` ends with the process that launched it
    distributed.check_not_a_bare_multitask_launch()
    locked_by_parent = runlock.held_by_parent(Path(cfg.run.out_dir))
    if not locked_by_parent:  # a running run's dir is refused first, on every rank, before --overwrite could act
        runlock.check_free(Path(cfg.run.out_dir))
    plan = preflight(cfg, distributed.world_size(), overwrite)  # bad input fails before any process group exists
    d = distributed.init(distributed.process_group_timeout_minutes(cfg.run.stall_timeout))
    lock = None if locked_by_parent else take_run_lock(plan.run_dir, d)
    try:
        return run(plan, d, started)
    finally:
        if lock is not None:
            lock.release()


def take_run_lock(run_dir: Path, d) -> "runlock.RunLock | None":
    """Rank 0 locks the run dir; every rank learns whether it could, so all stop together when it could not."""
    from zerotrain import distributed

    lock, refused = None, None
    if d.is_main:
        try:
            lock = runlock.RunLock(run_dir)
        except UserError as e:
            refused = str(e)
    refused = distributed.all_gather_object(refused, d)[0]
    if refused:
        raise UserError(refused)
    return lock


def run(plan: Plan, d, started: float) -> dict:
    """The run itself, on every rank, once preflight passed and the process group exists."""
    from zerotrain import distributed

    cfg = plan.cfg
    import torch
    import torch.distributed as dist

    from zerotrain.profiling import StepProfiler, format_summary

    t, ds = cfg.train, cfg.deepspeed
    ds_config = dsconfig.build(cfg, plan.batch, plan.dtype, d.device.type)
    if plan.offload_choice and d.is_main:
        print(plan.offload_choice)
    if plan.resume_universal and ds.zero_stage > 0:  # ZeRO-0: zerotrain loads it (universal.load_into_zero0)
        ds_config["checkpoint"] = {"load_universal": True}
    say = print if d.is_main else (lambda *a, **k: None)
    # Each rank ran preflight on its own view of the filesystem; all must start from the same checkpoint.
    views = distributed.all_gather_object((plan.resume_from, plan.init_from), d)
    if any(v != views[0] for v in views):
        raise UserError(
            f"ranks disagree on the checkpoint to start from ({views}); put run.out_dir on a filesystem every rank sees alike"
        )
    if ds.offload_optimizer != "none":
        _check_cpu_adam_can_build(d.device.type == "cuda")
    if d.is_main:
        prepare_run_dir(plan, ds_config)
    distributed.barrier(d)
    if plan.resume_universal:
        convert_for_resume(plan, d, say)

    # ---- setup: model, engine, state
    model, notes = build_model(plan, ds_config, d, say)
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # zero.Init partitions: full sizes
    torch.manual_seed(cfg.run.seed + d.rank)  # dropout differs per rank
    engine, group_names, engine_notes = build_engine(model, plan, ds_config, d)
    sampler = BatchSampler(
        [s.train for s in plan.data], plan.weights, plan.seq_len, plan.batch.micro, d.rank, d.world, cfg.run.seed
    )
    state = TrainState(sampler, runconfig.to_dict(cfg), d)
    if plan.resume_from:
        restore(engine, state, plan, say)
    if dsconfig.grad_accum_dtype(ds, plan.dtype) != plan.dtype:
        notes.append("gradients summed in fp32")
    describe_run(plan, d, n_params, notes + engine_notes, ds_config, say)
    log = StepLog(
        plan.run_dir,
        runconfig.to_dict(cfg),
        d,
        state.step,
        t.max_steps,
        tokens_per_step=plan.batch.global_size * plan.seq_len,
        flops_per_token=flops_per_token(plan.model, n_params, plan.seq_len),
        started=started,
        time_phases=t.time_phases,
    )
    profiler = StepProfiler(
        t.profile_steps, t.max_steps, state.step, plan.run_dir / "profile", d.rank, d.device.type == "cuda"
    )
    ckpt_dir = plan.run_dir / "checkpoints"
    stop_signal = _stop_signals()
    # Stage 0 in fp32/fp16 keeps torch's optimizer or DeepSpeed's FP16_UnfusedOptimizer, which record no
    # (or a loss-scaled) gradient norm; there the loop measures it, on log steps only.
    own_grad_norm = ds.zero_stage == 0 and plan.dtype in ("fp32", "fp16")
    last_saved, stop_reason = None, None
    loss_sum = torch.zeros((), device=d.device)
    engine.train()  # from_pretrained returns a model in eval mode: without this, dropout would only start after the first evaluation
    watch = Watchdog(plan.run_dir, d.rank, d.world, cfg.run.stall_timeout, _report_stall)

    # ---- the loop: one optimizer step = grad_accum × (forward, backward, engine.step())
    try:
        while state.step < t.max_steps:
            profiler.maybe_start(state.step + 1)
            lr = lr_at(state.step, t)
            watch.step = state.step + 1
            for group in scheduled_groups(engine):
                group["lr"] = lr
            logging = (state.step + 1) % t.log_interval == 0 or state.step + 1 == t.max_steps
            grad_norm = optimizer_step(engine, sampler, plan, d, log.clock, loss_sum, own_grad_norm and logging, watch)
            state.step += 1
            state.tokens_seen += plan.batch.global_size * plan.seq_len
            log.step_done(profiler.active(state.step))
            if summary := profiler.maybe_stop(state.step):
                log.print(format_summary(summary) + f"; trace in {profiler.out_dir}")

            if logging:  # the one host sync of a step, on log steps only
                dist.all_reduce(loss_sum)
                train_loss = loss_sum.item() / (plan.batch.accum * d.world)
                if not math.isfinite(train_loss):  # the same all-reduced value on every rank: all stop together
                    raise _diverged(state.step, ckpt_dir)
                grad_norm = grad_norm if own_grad_norm else engine.get_global_grad_norm()
                fp16 = plan.dtype == "fp16"
                extra = (
                    {"loss_scale": _loss_scale(engine.optimizer), "skipped_steps": engine.skipped_steps} if fp16 else {}
                )
                log.record(state.step, train_loss, lr, grad_norm, state.tokens_seen, extra)

            pointers = ()
            if t.eval_interval and (state.step % t.eval_interval == 0 or state.step == t.max_steps):
                watch.progress("evaluation")
                pointers = evaluate_and_report(engine, plan, d, state, log, started)
                if t.early_stop_patience and state.evals_since_best >= t.early_stop_patience:
                    stop_reason = f"early stop: no better val loss in {state.evals_since_best} evaluations"

            # A signal reaches each process at its own moment; all ranks act on one all-reduced answer, so the
            # collective save below is entered by every rank or by none.
            watch.progress("agreeing on a stop signal")
            signum = distributed.max_over_ranks(stop_signal[0] if stop_signal else 0, d)
            if signum and not stop_reason:
                stop_reason = f"stopped by {signal.Signals(signum).name}"
            ending = stop_reason is not None or state.step == t.max_steps
            if cfg.run.checkpoints and (pointers or (t.save_interval and state.step % t.save_interval == 0) or ending):
                watch.progress("saving a checkpoint")
                if not logging:  # never publish a checkpoint of diverged weights
                    _raise_if_diverged(loss_sum, state.step, ckpt_dir)
                if not weights_finite(engine, d):  # a finite loss can still be followed by an update to inf or NaN
                    raise _diverged(state.step, ckpt_dir, "the weights are")
                marks = pointers + (("final",) if ending and not signum else ())
                manifest = manifest_for(plan, state, d, group_names)
                last_saved = checkpoint.save(engine, ckpt_dir, state, manifest, d, t.keep_last, marks)
                log.print(f"saved checkpoint {ckpt_dir / last_saved}" + (f" ({', '.join(marks)})" if marks else ""))
                log.restart()  # keep eval and save time out of step timing
            if stop_reason:
                log.print(
                    f"{stop_reason} at step {state.step}" + ("; continue with --run.resume=auto" if signum else "")
                )
                break
    finally:
        watch.close()

    # ---- teardown
    log.close()
    distributed.barrier(d)
    engine.destroy()  # DeepSpeed's own teardown: removes its hooks and releases its buffers before the group goes
    dist.destroy_process_group()
    if d.device.type != "cuda":  # every rank mapped DeepSpeed's shared-memory buffers long ago; drop their names
        master = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "")
        distributed.remove_shm_buffers(*master, d.rank)
    os.environ["ZEROTRAIN_RANK_FINISHED"] = "1"  # cli.main_exit may skip interpreter teardown now
    best = None if state.best_val_loss == float("inf") else state.best_val_loss
    return {
        "step": state.step,
        "val_loss": state.last_val_loss,
        "best_val_loss": best,
        "checkpoint": str(ckpt_dir / last_saved) if last_saved else None,
        "stop_reason": stop_reason,
    }
