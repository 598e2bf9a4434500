"""The ds_config DeepSpeed gets, built from the run config.

Derived values are printed by the trainer (`global batch 24 = micro 12 × accumulation 1 × world 2`);
a user ds_config named by `[deepspeed] config` is merged over the generated one, but may not contradict
what zerotrain derives (the batch triple, the learning-rate schedule).
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from zerotrain import UserError
from zerotrain.dsconfig.parse import check_size
from zerotrain.memory import ALL_PERSISTENT, PARTIAL_OFFLOAD_SUB_GROUP
from zerotrain.runconfig import RunConfig, TrainSection

# "auto" that DeepSpeed itself reads (zenflow_config.py: ZenFlow chooses when to select and when to update), not a
# placeholder for the Hugging Face integration to fill in
DEEPSPEED_AUTO_KEYS = {
    "zero_optimization.zenflow.select_strategy",
    "zero_optimization.zenflow.select_interval",
    "zero_optimization.zenflow.update_interval",
}

STEPS_PER_PRINT_NEVER = 2**31 - 1  # zerotrain prints its own metrics line; DeepSpeed's would duplicate it


@dataclass(frozen=True)
class Batch:
    micro: int
    accum: int
    world: int

    @property
    def global_size(self) -> int:
        return self.micro * self.accum * self.world

    def split(self) -> str:
        return f"micro {self.micro} × accumulation {self.accum} × world {self.world}"

    def describe(self) -> str:
        return f"global batch {self.global_size} = {self.split()}"


def derive_batch(train: TrainSection, world: int) -> Batch:
    """micro × accumulation × world = global; with global_batch_size set, accumulation is solved for."""
    if not train.global_batch_size:
        return Batch(train.micro_batch_size, train.grad_accum, world)
    per_step = train.micro_batch_size * world
    if train.global_batch_size % per_step:
        lower = max(per_step, train.global_batch_size // per_step * per_step)
        raise UserError(
            f"train.global_batch_size {train.global_batch_size} is not divisible by micro_batch_size {train.micro_batch_size} "
            f"× world {world} = {per_step}; use a multiple of {per_step} such as {lower} or {lower + per_step}"
        )
    return Batch(train.micro_batch_size, train.global_batch_size // per_step, world)


def resolve_dtype(requested: str, device_type: str, bf16_supported: bool) -> str:
    """auto -> bf16 on GPUs that support it, fp32 elsewhere (CPU matmuls are fastest in fp32)."""
    if requested == "auto":
        return "bf16" if device_type == "cuda" and bf16_supported else "fp32"
    if requested == "fp16" and device_type != "cuda":
        raise UserError('deepspeed.dtype = "fp16" needs a GPU; use "fp32" or "bf16" on CPU')
    if requested == "bf16" and not bf16_supported:
        raise UserError('this device does not support bf16; set deepspeed.dtype = "fp16" or "fp32"')
    return requested


def _offload(device: str, nvme_path: str, pin_memory: bool) -> dict:
    entry = {"device": device, "pin_memory": pin_memory}
    if device == "nvme":
        entry["nvme_path"] = nvme_path
    return entry


def grad_accum_dtype(ds, dtype: str) -> str:
    """The dtype DeepSpeed sums gradients in over a step's micro-batches: fp32 where asked for under bf16, else the
    training dtype (DeepSpeed's default)."""
    return "fp32" if dtype == "bf16" and ds.grad_accum_dtype == "fp32" else dtype


def uses_config_optimizer(ds_config: dict) -> bool:
    """True when DeepSpeed builds the optimizer from the ds_config (needed for offload, which runs
    DeepSpeedCPUAdam); otherwise zerotrain passes torch's AdamW."""
    return "optimizer" in ds_config


def build(cfg: RunConfig, batch: Batch, dtype: str, device_type: str) -> dict:
    t, ds = cfg.train, cfg.deepspeed
    assert ds.offload_optimizer != "auto", "preflight resolves offload_optimizer = auto before the ds_config is built"
    on_gpu = device_type == "cuda"
    zero: dict[str, object] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        # Overlapping gradient reduction with backward needs CUDA streams; on CPU it only adds copies.
        zero["overlap_comm"] = on_gpu and batch.world > 1
        zero["contiguous_gradients"] = ds.zero_stage >= 2
    if ds.offload_optimizer != "none":
        offload = _offload(ds.offload_optimizer, ds.nvme_path, on_gpu)
        if ds.offload_optimizer_ratio < 1:  # ZeRO-Offload++: the rest of the optimizer steps on the GPU
            offload["ratio"] = ds.offload_optimizer_ratio
            zero["sub_group_size"] = PARTIAL_OFFLOAD_SUB_GROUP
        zero["offload_optimizer"] = offload
    if ds.offload_params != "none":
        zero["offload_param"] = _offload(ds.offload_params, ds.nvme_path, on_gpu)
    if ds.zero_stage == 3:
        # Lets engine.save_16bit_model gather full weights instead of writing the empty [0]-shaped
        # partitions users report (DeepSpeed #3841).
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if ds.zero3_persistent_params == "on":  # preflight resolves "auto"
            zero["stage3_param_persistence_threshold"] = ALL_PERSISTENT
            # DeepSpeed's memory_efficient_linear swaps F.linear for an autograd Function that does not keep the
            # gathered weight's storage alive until backward, which only matters where parameters are released;
            # kept gathered, it is pure host cost (Function.apply binds its arguments through inspect.signature on
            # every call): about 50 ms a step on a 30-layer model (benchmarks/zero3_host_overhead.py).
            zero["memory_efficient_linear"] = False
    config = {
        "train_batch_size": batch.global_size,
        "train_micro_batch_size_per_gpu": batch.micro,
        "gradient_accumulation_steps": batch.accum,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": STEPS_PER_PRINT_NEVER,
        "wall_clock_breakdown": False,
    }
    if dtype == "bf16":
        half: dict[str, bool] = {"enabled": True}
        if ds.master_weights == "bf16":  # master weights, gradient partitions and Adam moments in bf16 (ZeRO 1-3)
            half |= {"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
        config["bf16"] = half
    elif dtype == "fp16":
        # Dynamic loss scaling (loss_scale 0) starting at 2^16, halving on overflow.
        config["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    if grad_accum_dtype(ds, dtype) != dtype:
        # ZeRO-2/3 sum each micro-step's gradient partition into an fp32 buffer; ZeRO-1 runs DeepSpeed's BF16_Optimizer,
        # which keeps an fp32 gradient of every parameter (runconfig.validate refuses stage 0 and offload)
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if ds.offload_optimizer != "none":
        # Offloaded optimizer states are updated on the CPU by DeepSpeedCPUAdam, which DeepSpeed only
        # builds from the config. Parameter groups (no decay on biases, norms, embeddings) still apply.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": [t.beta1, t.beta2], "eps": 1e-8, "weight_decay": t.weight_decay},
        }
    if ds.config:
        user = load_user_config(ds.config)
        threshold = get_dotted(user, "zero_optimization.stage3_param_persistence_threshold", default=None)
        if isinstance(threshold, int) and threshold < ALL_PERSISTENT:
            # parameters released again: DeepSpeed's default linear, unless the user's config sets it (merged below)
            zero.pop("memory_efficient_linear", None)
        config = merge_user_config(config, user)
    return config


def load_user_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"deepspeed.config {path} not found; give the path of a ds_config JSON file or leave it empty")
    check_size(p)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        hint = " (JSON has no comments: remove the // lines)" if "//" in p.read_text() else ""
        raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}{hint}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} must hold a JSON object")
    return doc


# ds_config entries that restate a run-config key: a user ds_config may repeat them, not contradict them,
# because checkpoints record the run config's values and resume checks rely on them.
OWNED_KEYS = {
    "train_batch_size": "[train] micro_batch_size / grad_accum / global_batch_size",
    "train_micro_batch_size_per_gpu": "[train] micro_batch_size",
    "gradient_accumulation_steps": "[train] grad_accum",
    "gradient_clipping": "[train] grad_clip",
    "zero_optimization.stage": "[deepspeed] zero_stage",
    "zero_optimization.offload_optimizer.device": "[deepspeed] offload_optimizer",
    "zero_optimization.offload_param.device": "[deepspeed] offload_params",
    "bf16.enabled": "[deepspeed] dtype",
    "bf16.bf16_master_weights_and_grads": "[deepspeed] master_weights",
    "bf16.bf16_optimizer_states": "[deepspeed] master_weights",
    "fp16.enabled": "[deepspeed] dtype",
}


def get_dotted(d, dotted: str, default="none"):
    """d["a"]["b"] for "a.b", or default where a level is missing or not an object."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def merge_user_config(generated: dict, user: dict) -> dict:
    """User entries win, except where they would contradict the run config."""
    problems = []
    for key, owner in OWNED_KEYS.items():
        theirs, ours = (
            get_dotted(user, key),
            get_dotted(generated, key, default=False if key.startswith(("bf16.", "fp16.")) else "none"),
        )
        if theirs != "none" and theirs != ours:
            problems.append(f"{key} = {theirs!r} contradicts the run's {ours!r} (set {owner} instead)")
    if "checkpoint" in user:
        problems.append(
            "'checkpoint' is set; zerotrain publishes checkpoints itself after every rank wrote its files — remove it"
        )
    if "scheduler" in user:
        problems.append(
            "'scheduler' is set; zerotrain schedules the learning rate from [train] lr, min_lr, warmup_steps — remove it"
        )
    autos = [k for k, v in _walk(user) if v == "auto" and k not in DEEPSPEED_AUTO_KEYS]
    if autos:
        problems.append(
            f'{", ".join(autos)} = "auto": "auto" is only filled in by the Hugging Face Trainer; give numbers'
        )
    zenflow = get_dotted(user, "zero_optimization.zenflow", default=None)
    update = get_dotted(user, "zero_optimization.zenflow.update_interval", default=None)
    accum = generated["gradient_accumulation_steps"]
    if isinstance(zenflow, dict) and update != accum:
        # ZenFlow makes update_interval DeepSpeed's gradient accumulation (zenflow/engine.py configure_zenflow);
        # "auto" (its default) varies it from step to step, which zerotrain's loop of grad_accum micro-steps cannot
        given = 'unset (ZenFlow: "auto")' if update is None else repr(update)
        problems.append(
            f"zero_optimization.zenflow.update_interval = {given} "
            "would be DeepSpeed's gradient accumulation "
            f"(ZenFlow sets it so) but the run accumulates train.grad_accum = {accum}; set update_interval to {accum}"
        )
    if zenflow is not None and generated["zero_optimization"]["stage"] == 3:
        # DeepSpeed 0.19.8's ZeRO-3 ZenFlow keeps every 2-D parameter transposed outside its module's forward and
        # backward hooks (zenflow/engine_stage3.py, zero/parameter_offload.py); zerotrain's 3B Llama run with it
        # died on its first step with a CUDA index-out-of-bounds assert (docs/log/2026-12-07-session26-one-h100.md)
        problems.append(
            "zero_optimization.zenflow at ZeRO-3 crashed zerotrain's runs with DeepSpeed 0.19.8 (a CUDA assert on the "
            "first step); use ZenFlow at deepspeed.zero_stage = 1 or 2, or deepspeed.offload_optimizer_ratio at ZeRO-3"
        )
    if problems:
        raise UserError("deepspeed.config: " + "; ".join(problems))
    merged = copy.deepcopy(generated)
    _deep_update(merged, user)
    return merged


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _deep_update(base: dict, over: dict) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
