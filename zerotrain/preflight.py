"""Everything `zerotrain train` checks before any process group exists: data, model shape, batch triple, dtype,
the run directory and the checkpoint to start from. The `--nproc` parent runs it before it launches a rank, and
every rank again on its own view of the filesystem; each problem is a UserError that names the fix. `Plan` is what
it derives, and all the trainer's setup reads from it.
"""

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zerotrain import UserError, checkpoint, dsconfig, runconfig
from zerotrain.data import TokenData
from zerotrain.distributed import gpu_has_bf16, has_gpu
from zerotrain.gpt_config import GPTConfig, config_from_preset

if TYPE_CHECKING:  # zerotrain.hf imports transformers; the trainer imports it only for model.hf runs
    from zerotrain import memory
    from zerotrain.hf import HFModelInfo

RUN_ARTIFACTS = (
    "config.toml",
    "ds_config.json",
    "metrics.jsonl",
    "checkpoints",
    "tb",
    "tokenizer",
    ".wandb_id",
    "profile",
)


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
    dtype: str  # bf16, fp16 or fp32, "auto" resolved for this machine
    hf: "HFModelInfo | None" = (
        None  # model.hf: the Hugging Face model to fine-tune (plan.model then only carries its shape)
    )
    init_from_hf: str = ""  # model.init_from_hf: HF GPT-2 weights that start zerotrain's model
    resume_universal: bool = False  # run.resume is loaded through its DeepSpeed universal copy (zerotrain/universal.py)
    batch_was: dsconfig.Batch | None = None  # run.resume's batch, when this run splits the global batch otherwise
    offload_choice: str = ""  # deepspeed.offload_optimizer = "auto": what the planner chose and why, one line


def _model_config(cfg: runconfig.RunConfig, vocab_size: int, from_checkpoint: dict | None, what: str) -> GPTConfig:
    m = cfg.model
    shape = {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(m, k) is not None}
    if from_checkpoint is None:
        model = config_from_preset(m.preset, **shape, dropout=m.dropout, vocab_size=m.vocab_size or vocab_size)
    else:  # continuing from a checkpoint: its shape rules, and explicit keys must agree with it
        saved = GPTConfig(**from_checkpoint)
        clashes = [
            f"model.{k} = {v} but the checkpoint has {getattr(saved, k)}"
            for k, v in shape.items()
            if getattr(saved, k) != v
        ]
        if m.vocab_size is not None and m.vocab_size != saved.vocab_size:
            clashes.append(f"model.vocab_size = {m.vocab_size} but the checkpoint has {saved.vocab_size}")
        if clashes:
            raise UserError(f"{what}: {'; '.join(clashes)}; drop those keys or use a matching checkpoint")
        model = dataclasses.replace(saved, dropout=m.dropout)
    problems = [
        f"model.{k} must be > 0"
        for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
        if getattr(model, k) <= 0
    ]
    if not problems and model.n_embd % model.n_head:
        problems.append(
            f"model.n_embd {model.n_embd} is not divisible by model.n_head {model.n_head}; choose an n_head that divides it"
        )
    if problems:
        raise UserError("; ".join(problems))
    return model


def _holds_run(run_dir: Path) -> bool:
    """Training happened there: a complete checkpoint or recorded metrics. (A start that failed before its
    first step leaves only config files, and may be retried without ceremony.)"""
    metrics_file = run_dir / "metrics.jsonl"
    return bool(checkpoint.step_tags(run_dir / "checkpoints")) or (
        metrics_file.is_file() and metrics_file.stat().st_size > 0
    )


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _check_inputs_apart(cfg: runconfig.RunConfig, run_dir: Path) -> None:
    """The run writes config files and the tokenizer into out_dir, checkpoints under it, and --overwrite deletes
    RUN_ARTIFACTS there (a data dir's tokenizer/ among them): out_dir must not be, hold or lie inside what it reads."""
    inputs = [("data.dirs" if cfg.data.dirs else "data.dir", d) for d in cfg.data.dirs or [cfg.data.dir]]
    inputs += [(k, v) for k, v in (("run.init_from", cfg.run.init_from), ("model.hf", cfg.model.hf)) if v]
    inputs += [("model.init_from_hf", cfg.model.init_from_hf)] if cfg.model.init_from_hf else []
    for key, value in inputs:
        source = Path(value)
        if not source.exists():  # a name that is no local path (what the checks of that key report)
            continue
        if source.resolve() == run_dir.resolve():
            where = "is"
        elif _inside(source, run_dir):
            where = "contains"
        elif _inside(run_dir, source):
            where = "lies inside"
        else:
            continue
        raise UserError(
            f"run.out_dir {run_dir} {where} {key} {source}, which the run reads: training (and --overwrite) would "
            f"write into or delete it; choose another run.out_dir"
        )


def _check_run_dir(cfg: runconfig.RunConfig, run_dir: Path, overwrite: bool, resume_from, init_from) -> None:
    """An out_dir holding a run is only ever continued by that same run; nothing in it is replaced unless
    --overwrite says so, and --overwrite may not delete the checkpoint this run starts from. Nor may out_dir be, hold
    or lie inside an input of the run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run.out_dir {run_dir} is a file; give a directory (new, or one holding this run)")
    if overwrite:
        for key, source in (("run.resume", resume_from), ("run.init_from", init_from)):
            if source and _inside(source[0], run_dir):
                raise UserError(
                    f"--overwrite would delete {key} {source[0] / source[1]}, which lies in run.out_dir {run_dir}; "
                    f"copy it elsewhere first or choose another out_dir"
                )
    _check_inputs_apart(cfg, run_dir)
    if overwrite or not _holds_run(run_dir):
        return
    if not cfg.run.resume:
        raise UserError(
            f'run.out_dir {run_dir} already holds a run; set run.resume = "auto" to continue it, '
            f"pass --overwrite to replace it, or choose another out_dir"
        )
    if resume_from and not _inside(resume_from[0], run_dir):
        raise UserError(
            f"run.out_dir {run_dir} already holds a run and run.resume names another run's checkpoint; "
            f"continue that checkpoint in a new out_dir, or pass --overwrite to replace this one"
        )
    saved_cfg = run_dir / "config.toml"
    if saved_cfg.is_file():
        import tomllib

        saved, now = tomllib.loads(saved_cfg.read_text()), runconfig.to_dict(cfg)
        diffs = [
            f"{sec}.{k}"
            for sec in ("model", "data")
            for k in set(saved.get(sec, {})) | set(now[sec])
            if saved.get(sec, {}).get(k) != now[sec].get(k)
        ]
        if diffs:
            raise UserError(
                f"run.out_dir {run_dir} holds a different run ({', '.join(sorted(diffs))} differ); "
                f"choose another out_dir or pass --overwrite to replace it"
            )
    if resume_from:
        newest = checkpoint.newest(run_dir / "checkpoints")
        from_step = checkpoint.read_manifest(*resume_from)["step"]
        if newest and checkpoint.step_of(newest) > from_step:
            raise UserError(
                f"run.resume {resume_from[0] / resume_from[1]} (step {from_step}) is older than {newest} in the same run; "
                f"to branch from it, continue it in a new run.out_dir"
            )


def resume_batch(
    t: runconfig.TrainSection, world: int, manifest: dict, where: Path
) -> tuple[dsconfig.Batch, dsconfig.Batch | None]:
    """The batch a resumed run trains with, and the checkpoint's batch when that was split otherwise.

    The global batch carries over: with the batch keys (micro_batch_size, grad_accum, global_batch_size) the
    checkpoint's run was given, another world size keeps its global batch by changing the accumulation (the
    micro-batch too, to the largest that divides, when it must). Keys changed since, so that the global batch
    changes, are refused unless train.allow_batch_change says that is meant."""
    saved = manifest.get("batch")
    if saved is None:  # written before checkpoints recorded their batch
        if world != manifest["world_size"] and not t.global_batch_size:
            raise UserError(
                f"checkpoint {where} does not record its global batch (an older zerotrain wrote it) and this run has "
                f"{world} ranks, not {manifest['world_size']}; set train.global_batch_size to the global batch it trained with"
            )
        return dsconfig.derive_batch(t, world), None
    was = dsconfig.Batch(saved["micro"], saved["accum"], saved["world"])
    total = was.global_size
    keys = {
        "micro_batch_size": t.micro_batch_size,
        "grad_accum": t.grad_accum,
        "global_batch_size": t.global_batch_size,
    }
    if keys != saved["keys"] or (total % world and t.allow_batch_change):  # what the batch keys ask for now
        asked = dsconfig.derive_batch(t, world)
        if asked.global_size != total and not t.allow_batch_change:
            raise UserError(
                f"checkpoint {where} trained with global batch {total} ({was.split()}) and "
                f"train.micro_batch_size / grad_accum / global_batch_size now give {asked.global_size} "
                f"({asked.split()}); set them back, or train.global_batch_size = {total}, to keep it, "
                f"or pass --train.allow_batch_change=true to train on with {asked.global_size}"
            )
        return asked, (was if asked != was else None)
    if total % world:
        divisors = [n for n in range(1, total + 1) if total % n == 0]
        raise UserError(
            f"checkpoint {where} trained with global batch {total} ({was.split()}), which {world} "
            f"ranks cannot split evenly; resume on a number of ranks that divides {total} "
            f"({', '.join(map(str, divisors[:8]))}{', ...' if len(divisors) > 8 else ''}), or pass "
            f"--train.allow_batch_change=true to train on with {t.micro_batch_size} × {t.grad_accum} × {world}"
        )
    per_rank = total // world
    micro = next(m for m in range(min(t.micro_batch_size, per_rank), 0, -1) if per_rank % m == 0)
    batch = dsconfig.Batch(micro, per_rank // micro, world)
    return batch, (was if batch != was else None)


def _needs_universal(manifest: dict, stage: int, world: int, where: Path) -> bool:
    """Whether run.resume must be loaded through its universal copy: ZeRO-1/2/3 shards load only into the world
    size and stage that wrote them (ZeRO-0 keeps whole optimizer states on every rank: any world size loads it).
    To or from ZeRO-0, only fp32 runs convert: a bf16/fp16 ZeRO-0 optimizer is DeepSpeed's mixed-precision wrapper."""
    saved_stage, saved_world = manifest["zero_stage"], manifest["world_size"]
    if saved_stage == stage and (saved_world == world or stage == 0):
        return False
    if 0 in (saved_stage, stage) and manifest["dtype"] != "fp32":
        raise UserError(
            f"checkpoint {where} was written at ZeRO-{saved_stage} in {manifest['dtype']} and this run uses ZeRO-{stage}: "
            f"zerotrain converts to and from ZeRO-0 in fp32 only; resume it at deepspeed.zero_stage = {saved_stage}"
            + (" (any number of ranks)" if saved_stage == 0 else "")
            + ", or start a new run from its weights with run.init_from"
        )
    return True


def preflight(cfg: runconfig.RunConfig, world: int, overwrite: bool = False) -> Plan:
    """Check the run before launching it; every problem is a UserError naming the fix."""
    dirs = cfg.data.dirs or [cfg.data.dir]
    data = [TokenData(p) for p in dirs]
    if len({d.tokenizer_fingerprint() for d in data}) > 1:
        raise UserError(
            f"data.dirs were prepared with different tokenizers ({', '.join(str(d.path) for d in data)}); prepare them with one tokenizer"
        )
    weights = cfg.data.weights or [1.0] * len(data)

    run_dir = Path(cfg.run.out_dir)
    resume_from = init_from = None
    if cfg.run.resume == "auto":
        newest = None if overwrite else checkpoint.newest(run_dir / "checkpoints")
        resume_from = (run_dir / "checkpoints", newest) if newest else None
    elif cfg.run.resume:
        resume_from = checkpoint.resolve(cfg.run.resume)
    if cfg.run.init_from:
        init_from = checkpoint.resolve(cfg.run.init_from)
        checkpoint.check_complete(*init_from, checkpoint.read_manifest(*init_from))  # before any rank loads it
    _check_run_dir(cfg, run_dir, overwrite, resume_from, init_from)

    source = resume_from or init_from
    saved_model = checkpoint.read_manifest(*source)["model"] if source else None
    what = f"run.resume {cfg.run.resume}" if resume_from else f"run.init_from {cfg.run.init_from}"
    hf_info = None
    if cfg.model.hf:
        from zerotrain import hf

        hf_info = hf.inspect(cfg.model.hf)
        hf.check_tokenizer(hf_info, data[0].path)
        if resume_from and checkpoint.read_manifest(*resume_from).get("hf") is None:
            raise UserError(
                f"run.resume {cfg.run.resume} is a checkpoint of zerotrain's own model, not of {cfg.model.hf}; "
                f"resume a model.hf run, or drop model.hf"
            )
        # the shape, for the FLOPs count, the data checks and the manifest; the weights come from the directory
        model = GPTConfig(
            n_layer=hf_info.n_layer,
            n_head=hf_info.n_head,
            n_embd=hf_info.hidden,
            block_size=hf_info.block_size,
            vocab_size=hf_info.vocab_size,
            dropout=0.0,
        )
    elif cfg.model.init_from_hf and not resume_from:
        from zerotrain import hf

        info = hf.inspect(cfg.model.init_from_hf)
        if info.model_type != "gpt2":
            raise UserError(
                f"model.init_from_hf {cfg.model.init_from_hf} is a {info.model_type} model; it must be GPT-2 "
                f"(fine-tune other models with model.hf)"
            )
        model = GPTConfig(
            n_layer=info.n_layer,
            n_head=info.n_head,
            n_embd=info.hidden,
            block_size=info.block_size,
            vocab_size=info.vocab_size,
            dropout=cfg.model.dropout,
        )
    else:
        model = _model_config(cfg, data[0].vocab_size, saved_model, what)
    seq_len = cfg.train.seq_len or model.block_size
    if seq_len > model.block_size:
        raise UserError(
            f"train.seq_len {seq_len} is larger than the model's block_size {model.block_size}; "
            f"lower train.seq_len or raise model.block_size"
        )
    for d in data:
        d.check_fits(model.vocab_size, seq_len)
    batch_was, universal = None, False
    if not resume_from:
        batch = dsconfig.derive_batch(cfg.train, world)
    else:
        manifest = checkpoint.read_manifest(*resume_from)
        where = resume_from[0] / resume_from[1]
        checkpoint.check_complete(*resume_from, manifest)
        universal = _needs_universal(manifest, cfg.deepspeed.zero_stage, world, where)
        batch, batch_was = resume_batch(cfg.train, world, manifest, where)
    on_gpu = has_gpu()
    dtype = dsconfig.resolve_dtype(cfg.deepspeed.dtype, "cuda" if on_gpu else "cpu", not on_gpu or gpu_has_bf16())
    if cfg.deepspeed.master_weights == "bf16" and dtype != "bf16":
        raise UserError(
            f'deepspeed.master_weights = "bf16" needs bf16 training and dtype = "auto" trains in {dtype} here; '
            'set deepspeed.dtype = "bf16" (on a GPU that has it) or master_weights = "fp32"'
        )
    if resume_from:
        if (saved_master := manifest.get("master_weights", "fp32")) != cfg.deepspeed.master_weights:
            raise UserError(
                f"checkpoint {where} keeps {saved_master} master weights and this run {cfg.deepspeed.master_weights} "
                f'ones; set deepspeed.master_weights = "{saved_master}" to resume it, or start a new run with run.init_from'
            )
        if manifest["dtype"] != dtype:
            raise UserError(
                f"checkpoint {where} was trained in {manifest['dtype']} and this run would use {dtype}; "
                f'set deepspeed.dtype = "{manifest["dtype"]}" to resume it, or start a new run with run.init_from'
            )
        saved_accum, accum = (
            manifest.get("grad_accum_dtype", manifest["dtype"]),
            dsconfig.grad_accum_dtype(cfg.deepspeed, dtype),
        )
        if (
            saved_accum != accum and cfg.deepspeed.zero_stage == 1
        ):  # ZeRO-1 in bf16 with fp32 sums is DeepSpeed's BF16_Optimizer
            raise UserError(
                f"checkpoint {where} summed gradients in {saved_accum} and this run would sum them in {accum}: at ZeRO-1 "
                f"that is another DeepSpeed optimizer with other checkpoint files; set deepspeed.grad_accum_dtype = "
                f'"{"fp32" if saved_accum == "fp32" else "auto"}" to resume it, or start a new run with run.init_from'
            )
    plan = Plan(
        cfg,
        model,
        seq_len,
        batch,
        data,
        weights,
        run_dir,
        resume_from,
        init_from,
        overwrite,
        dtype,
        hf_info,
        cfg.model.init_from_hf if not resume_from else "",
        universal,
        batch_was,
    )
    check_nvme_path(cfg.deepspeed)
    plan.offload_choice = resolve_offload(plan, world, on_gpu)
    resolve_persistence(plan, world, on_gpu)
    check_memory(plan, world, on_gpu)
    check_data_holds_a_batch(data, seq_len, batch)
    return plan


def check_data_holds_a_batch(data: list[TokenData], seq_len: int, batch: "dsconfig.Batch") -> None:
    """Refuse data too small for one micro-step: the sampler cuts each train split into windows of seq_len+1 tokens
    and one micro-step draws micro × world of them, so fewer windows than that repeat sequences inside one step;
    evaluation samples its windows with repeats, so a val split smaller than an evaluation batch only repeats some
    (one without any window is refused when the data is read). Runs after the memory check, so a micro-batch that cannot fit is refused for that first."""
    need = batch.micro * batch.world
    asked = f"micro_batch_size {batch.micro}" + (f" × world {batch.world}" if batch.world > 1 else "")

    def smaller(have: int) -> str:
        return f"train.micro_batch_size {have // batch.world} or less" if have >= batch.world else "fewer processes"

    windows = sum((len(d.train) - 1) // seq_len for d in data)
    if windows < need:
        where = ", ".join(f"{d.path}/train.bin" for d in data)
        tokens = sum(len(d.train) for d in data)
        raise UserError(
            f"{where}: {tokens:,} tokens hold {windows:,} sequence{'s' * (windows != 1)} of {seq_len + 1} tokens, fewer than one micro-batch "
            f"of {need:,} ({asked}); use {smaller(windows)}, a smaller train.seq_len, or more data"
        )


def prepare_run_dir(plan: Plan, ds_config: dict) -> None:
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


# A rank's own host memory on the CPU (Python, torch, DeepSpeed and gloo), measured as the peak RSS of a tiny model's
# rank (docs/memory.md); on GPUs it is memory.PROCESS_HOST_RAM (the CUDA libraries too).
CPU_PROCESS_HOST_RAM = 600 * 2**20

# What glibc keeps of ZeRO-3's per-parameter tensors on the CPU, in copies of the model in the training dtype. Every
# micro-step ZeRO-3 allocates and frees a gathered copy of each parameter in forward, again in backward, and each
# parameter's gradient before it is reduce-scattered (b·N each); most are smaller than glibc's mmap threshold, which
# rises to 32 MiB after the first large free, so they live in its heap and their pages stay with the process when
# freed. Measured: the same ZeRO-3 run peaks 1.7 GiB lower with MALLOC_MMAP_THRESHOLD_=131072 (freed memory goes back
# to the OS), within 5% of the plan's allocated peak (docs/log/2026-12-07-offload-that-fits.md). ZeRO-1/2 keep their
# gradients in flat buffers, above the threshold.
CPU_ZERO3_HEAP_COPIES = 3

# DeepSpeed's SuperOffload (zero_optimization.offload_optimizer.super_offload, merged through deepspeed.config) runs
# its CPU Adam in a worker process of its own with its buffers (deepspeed/runtime/superoffload/superoffload_utils.py):
# on one H100 a 3.2B model's run measured 16.7 GiB of host RAM above the plan without them
# (docs/log/2026-12-07-offload-one-h100.md). Counted per rank as one more process and 4 bytes (an fp32 gradient)
# per parameter of its partition: 14.1 GiB for that run (72.5 GiB planned, −3.0%), fitted to it alone.
SUPER_OFFLOAD_BYTES_PER_PARAM = 4


@dataclass
class MemoryCheck:
    """What the memory check compares: the run as the planner sees it, its plan, and the limits of this machine."""

    model: "memory.ModelShape"
    run: "memory.RunShape"
    planned: "memory.MemoryPlan"
    gpu_bytes: int | None  # one GPU's memory; None on the CPU
    host_bytes: int | None  # one node's host RAM; None when it cannot be read
    host_name: str
    ranks_per_node: int
    loads_weights: bool  # resume, init_from or a Hugging Face model: weights are read into host RAM first
    resumes: bool = False  # run.resume: an optimizer shard is read into host RAM too
    nvme_free: int | None = None  # free bytes at deepspeed.nvme_path; None without one
    super_offload: bool = False  # DeepSpeed's SuperOffload, from the ds_config merged through deepspeed.config

    def host_needed(self, p: "memory.MemoryPlan") -> int:
        from zerotrain import memory

        need = p.host_ram_per_node - (0 if self.loads_weights else p.host_terms["loading"])
        need += p.host_terms["resuming"] if self.resumes else 0
        if self.super_offload:
            partition = SUPER_OFFLOAD_BYTES_PER_PARAM * p.model.n_params // p.run.world
            need += self.ranks_per_node * (memory.PROCESS_HOST_RAM + partition)
        if self.gpu_bytes is not None:
            return need
        # on the CPU a rank's "device" is host RAM: its model states and activations, without the CUDA libraries
        retained = 0
        if p.run.zero_stage == 3:
            retained = CPU_ZERO3_HEAP_COPIES * memory.DTYPE_BYTES[p.run.dtype] * p.model.n_params
        return need + self.ranks_per_node * (
            p.per_gpu["peak_allocated"] + retained + CPU_PROCESS_HOST_RAM - memory.PROCESS_HOST_RAM
        )

    def shortfalls(self, p: "memory.MemoryPlan", headroom: float = 0.0) -> list[str]:
        """What does not fit this machine, with `headroom` (a fraction) to spare: GPU, host RAM, NVMe space."""
        out = p.shortfalls(self.gpu_bytes, headroom, None)
        if self.host_bytes is not None and self.host_needed(p) > self.host_bytes * (1 - headroom):
            out.append(f"host RAM: needs {self.host_needed(p) / 2**30:.1f} of {self.host_name} per node")
        if p.nvme_bytes and (self.nvme_free is None or p.nvme_bytes > self.nvme_free * (1 - headroom)):
            free = "no deepspeed.nvme_path" if self.nvme_free is None else f"{self.nvme_free / 2**30:.1f} GiB free"
            out.append(f"NVMe: needs {p.nvme_bytes / 2**30:.1f} GiB, {free}")
        return out


def memory_check(plan: Plan, world: int, on_gpu: bool) -> MemoryCheck | None:
    """The run planned as it will start (None for a model the planner does not know)."""
    from zerotrain import memory, planning

    cfg = plan.cfg
    try:
        if plan.hf:
            model = memory.shape_from_hf_config(plan.hf.config, str(plan.hf.path))
        else:  # the shape as preflight resolved it (from a checkpoint, or the config and the data's vocabulary)
            m = plan.model
            preset = cfg.model.preset if cfg.model.preset in memory.GPT2_PRESETS else "gpt2"
            shape = {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")}
            model = memory.gpt2_shape(preset, **shape)
    except UserError:
        return None
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world)) or world
    run = dataclasses.replace(
        planning.run_shape(cfg, per_node, max(1, world // per_node), plan.dtype), seq_len=plan.seq_len
    )
    if not on_gpu:  # host pages that are never written cost nothing: DeepSpeed's buckets count up to the model's size
        n = model.n_params
        run = dataclasses.replace(
            run,
            reduce_bucket_size=min(run.reduce_bucket_size, n),
            allgather_bucket_size=min(run.allgather_bucket_size, n),
            prefetch_bucket_size=min(run.prefetch_bucket_size, n),
        )
    host_bytes, host_name = planning.host_memory(cfg.run.host_memory or None)
    gpu_bytes = None
    if on_gpu:
        import torch

        gpu_bytes = torch.cuda.get_device_properties(0).total_memory
    loads = bool(plan.resume_from or plan.init_from or plan.hf or plan.init_from_hf)
    nvme_free = shutil.disk_usage(cfg.deepspeed.nvme_path).free if cfg.deepspeed.nvme_path else None
    super_offload = False
    if cfg.deepspeed.config:
        from zerotrain.dsconfig import get_dotted, load_user_config

        user = load_user_config(cfg.deepspeed.config)
        super_offload = get_dotted(user, "zero_optimization.offload_optimizer.super_offload", default=False) is True
    return MemoryCheck(
        model,
        run,
        memory.plan(model, run),
        gpu_bytes,
        host_bytes,
        host_name,
        per_node,
        loads,
        bool(plan.resume_from),
        nvme_free,
        super_offload,
    )


def check_nvme_path(ds: runconfig.DeepSpeedSection) -> None:
    """deepspeed.nvme_path, where NVMe offload (or offload_optimizer = "auto") would put it, must be a writable directory:
    DeepSpeed's swapper otherwise fails deep inside engine construction, after the model has loaded."""
    if not ds.nvme_path or ("nvme" not in (ds.offload_optimizer, ds.offload_params) and ds.offload_optimizer != "auto"):
        return
    path = Path(ds.nvme_path)
    if not path.is_dir():
        raise UserError(
            f"deepspeed.nvme_path {path} {'is not a directory' if path.exists() else 'does not exist'}; create it on a "
            f"fast local disk (mkdir -p {path}) or point nvme_path at one"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(
            f"deepspeed.nvme_path {path} is not writable by this user; chmod it, or point nvme_path at a directory you own"
        )
    if "nvme" in (ds.offload_optimizer, ds.offload_params) and not async_io_builds():
        raise UserError(
            "NVMe offload needs DeepSpeed's async_io op, which cannot be built here (libaio is missing): "
            "apt-get install libaio-dev (zerotrain doctor checks it), or offload to cpu"
        )


def async_io_builds() -> bool:
    """Whether DeepSpeed's async_io op (NVMe offload) can be built here: its builder's own probe for libaio, as
    `zerotrain doctor` and ds_report ask it; nothing is compiled."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            from deepspeed.ops.op_builder import AsyncIOBuilder

            return bool(AsyncIOBuilder().is_compatible(False))
        except Exception:  # noqa: BLE001 - a probe that fails means it cannot be built, as in ds_report
            return False


# GPU headroom of the offload chosen for offload_optimizer = "auto", as `plan` and `config new` recommend with: the
# reserved-memory allowance is not a 5% prediction (docs/memory.md), and fragmentation grows over a long run.
AUTO_OFFLOAD_HEADROOM = 0.10


def resolve_offload(plan: Plan, world: int, on_gpu: bool) -> str:
    """deepspeed.offload_optimizer = "auto": the least offload that fits this machine (memory.offload_ladder: none, a
    partial offload ratio, the whole optimizer, parameters too, NVMe), written into plan.cfg.deepspeed so that the
    ds_config and the memory check use it. Returns the line saying what was chosen ("" when not asked)."""
    from zerotrain import memory

    ds = plan.cfg.deepspeed
    if ds.offload_optimizer != "auto":
        return ""
    ds.offload_optimizer, ds.offload_optimizer_ratio = "none", 1.0
    mc = memory_check(plan, world, on_gpu)
    if mc is None:
        return 'offload auto: the planner does not know this model; trained with offload_optimizer = "none"'
    chosen = memory.smallest_offload(
        mc.model,
        mc.run,
        lambda p: not mc.shortfalls(p, AUTO_OFFLOAD_HEADROOM),
        nvme=bool(ds.nvme_path) and async_io_builds(),
    )
    if chosen is None:  # nothing fits: the memory check refuses the run and names the cheapest change
        return ""
    r = chosen.run
    ds.offload_optimizer, ds.offload_params, ds.offload_optimizer_ratio = (
        r.offload_optimizer,
        r.offload_params,
        r.offload_ratio,
    )
    where = [f"GPU {chosen.gpu_bytes_needed / 2**30:.1f} of {mc.gpu_bytes / 2**30:.1f} GiB"] if mc.gpu_bytes else []
    where.append(f"host {mc.host_needed(chosen) / 2**30:.1f} GiB of {mc.host_name}")
    return f"offload auto → {memory.describe_offload(r)} ({', '.join(where)}; the least offload that fits with 10% to spare)"


def resolve_persistence(plan: Plan, world: int, on_gpu: bool) -> None:
    """deepspeed.zero3_persistent_params = "auto" at stage 3: "on" where the run, every parameter kept gathered, fits
    the GPU with AUTO_OFFLOAD_HEADROOM to spare (and parameters are not offloaded), else "off"."""
    ds = plan.cfg.deepspeed
    if ds.zero3_persistent_params != "auto":
        return
    ds.zero3_persistent_params = "off"
    if ds.zero_stage != 3 or ds.offload_params != "none" or not on_gpu:
        return
    mc = memory_check(plan, world, on_gpu)
    if mc is not None and all_persistent_fits(mc):
        ds.zero3_persistent_params = "on"


def all_persistent_fits(mc: MemoryCheck) -> bool:
    """Whether the checked run, every parameter kept gathered, fits its GPU and host with AUTO_OFFLOAD_HEADROOM."""
    from zerotrain import memory

    if not mc.gpu_bytes:
        return False
    run = memory.persisting(mc.model, mc.run, lambda p: not mc.shortfalls(p, AUTO_OFFLOAD_HEADROOM))
    return run.param_persistence_threshold == memory.ALL_PERSISTENT


def check_memory(plan: Plan, world: int, on_gpu: bool) -> None:
    """Plan the run's memory before anything loads and refuse what would not fit: one GPU's memory (on GPUs) and the
    node's host RAM (run.host_memory, else detected). On the CPU the model states and activations live in host RAM
    too. The message names the largest term and the cheapest change that fits."""
    from zerotrain import memory

    if not plan.cfg.run.memory_check or (mc := memory_check(plan, world, on_gpu)) is None:
        return
    problems = mc.shortfalls(mc.planned)
    if not problems:
        return
    largest, size = mc.planned.largest_term()
    fix = "no single change fits: add GPUs or nodes, or shorten train.seq_len"
    for label, changed in memory.changes_cheapest_first(mc.run):
        p = memory.plan(mc.model, changed)
        judge = mc
        if p.nvme_bytes:  # NVMe needs a path (judged by its free space when set) and DeepSpeed's async_io op
            if not on_gpu or not async_io_builds():
                continue
            judge = mc if mc.nvme_free is not None else dataclasses.replace(mc, nvme_free=p.nvme_bytes * 2)
        if not judge.shortfalls(p):
            parts = [f"GPU {p.gpu_bytes_needed / 2**30:.1f} GiB"] if on_gpu else []
            parts.append(f"host {mc.host_needed(p) / 2**30:.1f} GiB")
            parts += [f"NVMe {p.nvme_bytes / 2**30:.0f} GiB"] if p.nvme_bytes else []
            fix = f"cheapest change that fits: {label} → {', '.join(parts)}"
            break
    raise UserError(
        f"this run would not fit ({'; '.join(problems)}); largest term: {largest} {size / 2**30:.1f} GiB per "
        f"{'GPU' if on_gpu else 'rank'}, planned for {mc.model.name} with {mc.run.describe()}; {fix}; or set "
        f"run.memory_check = false to start anyway"
    )
