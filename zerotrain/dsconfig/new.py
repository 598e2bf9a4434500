"""`zerotrain config new`: a ds_config from intent (model, GPUs, batch), with stage, offload and micro-batch
chosen by the memory planner; the Hugging Face Trainer's "auto" form, and an Accelerate config beside it."""

import copy
from dataclasses import dataclass

from zerotrain import UserError, memory
from zerotrain.dsconfig.lint import gpu_spec
from zerotrain.dsconfig.schema import FP16_DEFAULTS


@dataclass(frozen=True)
class Layout:
    stage: int
    offload_optimizer: str  # none | cpu
    offload_param: str  # none | cpu
    micro_batch: int
    accumulation: int
    world: int
    reason: str
    offload_ratio: float = 1.0  # the fraction of the optimizer on the CPU (below 1: ZeRO-3's partial offload)


def choose_layout(
    model: memory.ModelShape,
    gpus: int,
    nodes: int,
    gpu_memory_bytes: int,
    micro_batch: int | None,
    global_batch: int | None,
    seq_len: int,
    dtype: str = "bf16",
    host_memory_bytes: int | None = None,
) -> Layout:
    """Stage, offload, micro-batch and accumulation from the memory planner: its recommendation (the fastest
    configuration that fits with 10% headroom) among micro-batches up to 32 — or the given one — that divide
    the per-GPU share of the global batch. With host_memory_bytes, the layout must also fit a node's host RAM."""
    world = gpus * nodes
    if global_batch is not None and global_batch % world:
        raise UserError(f"--global-batch {global_batch} is not divisible by {world} GPUs; use a multiple of {world}")
    per_gpu = global_batch // world if global_batch else None
    if micro_batch is not None:
        if per_gpu is not None and per_gpu % micro_batch:
            raise UserError(
                f"--global-batch {global_batch} is not divisible by --micro-batch {micro_batch} × "
                f"{world} GPUs = {micro_batch * world}; use a multiple of {micro_batch * world}"
            )
        candidates = [micro_batch]
    else:
        candidates = [m for m in (1, 2, 4, 8, 16, 32) if per_gpu is None or per_gpu % m == 0]
    ours = model.impl == "zerotrain"  # Hugging Face models: planned as transformers' code runs them (no fused loss)
    run = memory.RunShape(
        gpus_per_node=gpus,
        nodes=nodes,
        micro_batch=candidates[0],
        seq_len=seq_len,
        dtype=dtype,
        fused_loss=ours,
        compile="auto" if ours else "none",
    )
    best = memory.recommend(model, run, gpu_memory_bytes, candidates, host_memory=host_memory_bytes)
    if best is None:
        host = f" and {host_memory_bytes / 2**30:.0f} GiB of host RAM per node" if host_memory_bytes else ""
        raise UserError(
            f"{model.name} ({model.n_params / 1e6:,.0f}M parameters) with micro-batch {candidates[0]} × {seq_len} tokens "
            f"does not fit on {world} GPU(s) of {gpu_memory_bytes / 2**30:.0f} GiB{host} even with stage 3 and CPU "
            "offload; use more GPUs, a shorter --seq-len or a GPU with more memory"
        )
    r = best.run
    accumulation = per_gpu // r.micro_batch if per_gpu else 1
    where = {
        ("none", "none"): "",
        ("cpu", "none"): ", optimizer offloaded to CPU",
        ("cpu", "cpu"): ", optimizer and parameters offloaded to CPU",
    }[(r.offload_optimizer, r.offload_params)]
    if r.offload_ratio < 1:
        where = f", {r.offload_ratio:.0%} of the optimizer offloaded to CPU (the rest steps on the GPU)"
    if r.activation_checkpointing:
        where += (
            ", with activation checkpointing in the model (model.gradient_checkpointing_enable(), or "
            "deepspeed.activation_checkpointing = true in a zerotrain run)"
        )
    reason = (
        f"stage {r.zero_stage}{where}, micro-batch {r.micro_batch}: the plan needs {best.gpu_bytes_needed / 2**30:.1f} GiB "
        f"per GPU of {gpu_memory_bytes / 2**30:.0f} GiB (peak allocated {best.per_gpu['peak_allocated'] / 2**30:.1f} GiB; "
        f"zerotrain plan --model {model.name} --gpus {gpus} shows every option)"
    )
    return Layout(
        r.zero_stage, r.offload_optimizer, r.offload_params, r.micro_batch, accumulation, world, reason, r.offload_ratio
    )


TARGETS = ("deepspeed", "hf-trainer", "accelerate")


def new_config(
    model: str,
    gpus: int,
    nodes: int = 1,
    gpu: str | None = None,
    micro_batch: int | None = None,
    global_batch: int | None = None,
    seq_len: int | None = None,
    target: str = "deepspeed",
    host_memory: str | None = None,
) -> tuple[dict, list[str]]:
    """A ds_config for a zerotrain preset on `gpus` × `nodes` GPUs, and notes saying what was chosen and why."""
    from zerotrain.runconfig import TrainSection  # torch-free: the optimizer defaults zerotrain trains with

    shape = memory.resolve_model(model)
    if target not in TARGETS:
        raise UserError(f"unknown --for {target!r}; choose one of {', '.join(TARGETS)}")
    for name, value in (
        ("--gpus", gpus),
        ("--nodes", nodes),
        ("--micro-batch", micro_batch),
        ("--global-batch", global_batch),
        ("--seq-len", seq_len),
    ):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    notes = []
    if gpu is None:
        gpu = "a100-80gb"
        notes.append("no --gpu given: assumed an 80 GiB A100 (bf16)")
    gpu_memory, bf16 = gpu_spec(gpu)
    seq = seq_len or min(shape.max_positions, 1024 if shape.impl != "hf-llama" else 2048)
    if seq > shape.max_positions:
        raise UserError(f"--seq-len {seq} exceeds {model}'s {shape.max_positions} positions")
    host_bytes = memory.parse_size(host_memory) if host_memory else None
    dtype = "bf16" if bf16 else "fp16"
    layout = choose_layout(shape, gpus, nodes, gpu_memory, micro_batch, global_batch, seq, dtype, host_bytes)
    notes.append(layout.reason)
    h = shape.hidden
    zero: dict = {"stage": layout.stage}
    if layout.stage >= 1:
        # Bucket sizes from the model width, the rule of thumb the Hugging Face DeepSpeed integration fills
        # "auto" with (transformers/integrations/deepspeed.py, HfTrainerDeepSpeedConfig.trainer_config_finalize).
        zero["overlap_comm"] = layout.world > 1
        zero["contiguous_gradients"] = layout.stage >= 2
        zero["reduce_bucket_size"] = h * h
        if layout.stage < 3:
            zero["allgather_bucket_size"] = h * h
    if layout.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": layout.offload_optimizer, "pin_memory": True}
        if layout.offload_ratio < 1:  # DeepSpeed splits in whole sub-groups: small ones put the split on the ratio
            zero["offload_optimizer"]["ratio"] = layout.offload_ratio
            zero["sub_group_size"] = memory.PARTIAL_OFFLOAD_SUB_GROUP
    if layout.offload_param != "none":
        zero["offload_param"] = {"device": layout.offload_param, "pin_memory": True}
    if layout.stage == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * h * h)
        zero["stage3_param_persistence_threshold"] = 10 * h
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    t = TrainSection()
    config: dict = {
        "train_batch_size": layout.micro_batch * layout.accumulation * layout.world,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.accumulation,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": [t.beta1, t.beta2], "eps": 1e-8, "weight_decay": t.weight_decay},
        },
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    if bf16:
        config["bf16"] = {"enabled": True}
    else:
        config["fp16"] = dict(FP16_DEFAULTS, enabled=True)  # dynamic loss scaling from 2^16
        notes.append(f"{gpu} has no bf16: fp16 with dynamic loss scaling")
    notes.append(
        f"global batch {config['train_batch_size']} = micro {layout.micro_batch} × accumulation "
        f"{layout.accumulation} × world {layout.world}"
    )
    if target == "hf-trainer":
        config = _hf_variant(config)
        notes.append('"auto" fields are filled by the Hugging Face Trainer from its TrainingArguments')
    return config, notes


def _hf_variant(config: dict) -> dict:
    """The "auto" form the transformers DeepSpeed docs show: batch, clipping, precision, optimizer and scheduler
    values come from TrainingArguments, bucket sizes from the model's hidden size."""
    cfg = copy.deepcopy(config)
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        cfg[key] = "auto"
    cfg["optimizer"] = {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
    }
    cfg["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": "auto",
            "warmup_max_lr": "auto",
            "warmup_num_steps": "auto",
            "total_num_steps": "auto",
        },
    }
    precision = "bf16" if "bf16" in cfg else "fp16"
    cfg[precision]["enabled"] = "auto"
    zero = cfg["zero_optimization"]
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if key in zero:
            zero[key] = "auto"
    return cfg


def accelerate_config(ds_config_path: str, gpus: int, nodes: int, stage: int) -> dict:
    """An Accelerate config that launches with the ds_config file. mixed_precision and the other keys Accelerate
    reads from the ds_config are left out: with deepspeed_config_file set, Accelerate refuses them
    (accelerate/utils/dataclasses.py DeepSpeedPlugin._deepspeed_config_checks)."""
    ds: dict = {"deepspeed_config_file": ds_config_path, "zero3_init_flag": stage == 3}
    if nodes > 1:
        ds["deepspeed_multinode_launcher"] = "standard"
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": ds,
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": nodes,
        "num_processes": gpus * nodes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
