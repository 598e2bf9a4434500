"""ds_config lint: every rule, each finding `(level, key, message, fix)`, collected and never stopping at the first.

Levels: "error" means DeepSpeed rejects the config or silently does something else than it says;
"warning" means it runs but slower or riskier than it needs to; "info" explains what was derived.
Imports neither torch nor DeepSpeed; engine.py runs DeepSpeed's own parser as the last word.
"""

import copy
import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from zerotrain import UserError, memory
from zerotrain.dsconfig.parse import parse_config_text
from zerotrain.dsconfig.schema import (
    _MISSING,
    COMMUNICATION_DTYPES,
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    DEEPSPEED_VERSION,
    DEPRECATED_ZERO_KEYS,
    FP16_LOSS_SCALING_KEYS,
    OFFLOAD_DEVICES,
    OFFLOADABLE_OPTIMIZERS,
    OPTIMIZER_REPLACEMENTS,
    REMOVED_TOP_LEVEL_KEYS,
    REMOVED_ZERO_KEYS,
    SCHEDULER_REQUIRED_PARAMS,
    SCHEMA,
    TORCH_OPTIMIZERS,
    TORCH_SCHEDULERS,
    WARMUP_MAX_LR_DEFAULT,
    ZERO_ALIASES,
    ZERO_TESTED_OPTIMIZERS,
    _as_int,
    _enabled,
    _get,
    _is_number,
    _offload_device,
    _out_of_range,
    _section,
    _stage,
    _without_auto,
)


@dataclass(frozen=True)
class Finding:
    level: str
    """error | warning | info"""
    key: str
    """dotted path of the offending key, e.g. zero_optimization.stage"""
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


LEVELS = ("error", "warning", "info")


# GPUs `--gpu` may name: memory in GiB and whether the tensor cores do bf16 (Ampere and later).
# NVIDIA datasheets. The memory planner has its own view of a GPU; the two should be unified.
def gpu_spec(name: str) -> tuple[int, bool]:
    """(memory in bytes, bf16 support) of a GPU named like `h100`, `A100-40GB`, `RTX 4090` (the planner's table)."""
    return memory.gpu_memory_from_name(name)


def _fmt(n) -> str:
    if isinstance(n, int) and not isinstance(n, bool):
        return f"{n:,}" if abs(n) < 10**15 else f"{n:.3e}"
    return f"{n:g}" if isinstance(n, float) else repr(n)


def _auto_keys(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _auto_keys(v, f"{prefix}{k}.")
    elif value == "auto":
        yield prefix[:-1]


# ------------------------------------------------------------------------------------------------ rules


@dataclass
class _Context:
    config: dict  # as written, "auto" values included
    view: dict  # "auto" values left out: what the other rules reason about
    world: int | None
    bf16_gpu: bool | None
    gpu_memory: int | None
    hf: bool
    model_params: int | None
    fits_without_offload: Callable | None


def _rule_auto(ctx: _Context):
    if ctx.hf:
        return
    for key in _auto_keys(ctx.config):
        yield Finding(
            "error",
            key,
            '"auto" is filled in only by the Hugging Face Trainer/Accelerate integration; '
            "plain DeepSpeed reads it as a string",
            "give a value (or pass --hf if this config is for the HF Trainer)",
        )


def _close(key: str, valid) -> list[str]:
    return difflib.get_close_matches(key, list(valid), n=2, cutoff=0.75)


def _rule_keys(ctx: _Context):
    """Unknown keys at every level (did you mean), removed and deprecated keys."""
    config = ctx.config
    for key in config:
        if key in REMOVED_TOP_LEVEL_KEYS:
            yield Finding(
                "error",
                key,
                f"DeepSpeed {DEEPSPEED_VERSION} rejects {key!r}: {REMOVED_TOP_LEVEL_KEYS[key]}",
                f"remove {key!r}",
            )
        elif key == "allgather_size" and isinstance(config.get("zero_optimization"), bool):
            yield Finding(
                "warning",
                key,
                'allgather_size belongs to the deprecated "zero_optimization": true form',
                'use "zero_optimization": {"stage": 1, "allgather_bucket_size": N}',
            )
        elif key == "bfloat16":
            yield Finding(
                "warning",
                key,
                '"bfloat16" is the old name of "bf16" (precision_config.py keeps it for backwards compatibility)',
                'rename it to "bf16"',
            )
        elif key not in SCHEMA and _dotted_section(key):
            nested = "..."
            for part in reversed(key.split(".")):
                nested = f"{{{json.dumps(part)}: {nested}}}"
            yield Finding(
                "error",
                key,
                f"{key!r} is a dotted path, but DeepSpeed reads nested objects, not dotted keys: "
                "this setting has no effect",
                f"nest it: {nested[1:-1]}",
            )
        elif key not in SCHEMA:
            close = _close(key, SCHEMA)
            if close:  # a near-miss of a real key: DeepSpeed ignores unknown top-level keys, so the setting is lost
                yield Finding(
                    "error",
                    key,
                    f"unknown key {key!r}: DeepSpeed ignores unknown top-level keys, so this "
                    f"setting has no effect (did you mean {close[0]!r}?)",
                    f"rename it to {close[0]!r}",
                )
            else:
                yield Finding(
                    "warning", key, f"unknown key {key!r}; DeepSpeed ignores it", "remove it or check the spelling"
                )
    if isinstance(config.get("zero_optimization"), bool):
        yield Finding(
            "warning",
            "zero_optimization",
            '"zero_optimization": true/false is the deprecated form',
            f'use "zero_optimization": {{"stage": {int(config["zero_optimization"])}}}',
        )
    yield from _unknown_in_sections(config, SCHEMA, "")


def _dotted_section(key: str) -> bool:
    """A top-level key such as "zero_optimization.stage" that names a key of a section."""
    head, _, rest = key.partition(".")
    return bool(rest) and (isinstance(SCHEMA.get(head), dict) or SCHEMA.get(head) == "dict")


def _unknown_in_sections(config: dict, schema: dict, prefix: str):
    for key, sub_schema in schema.items():
        section = config.get(key)
        if not isinstance(sub_schema, dict) or not isinstance(section, dict):
            continue
        where = f"{prefix}{key}"
        for sub in section:
            path = f"{where}.{sub}"
            if where == "zero_optimization" and sub in REMOVED_ZERO_KEYS:
                yield Finding(
                    "error",
                    path,
                    f"DeepSpeed {DEEPSPEED_VERSION} rejects {sub!r}: {REMOVED_ZERO_KEYS[sub]}",
                    f"remove {sub!r}",
                )
            elif where == "zero_optimization" and sub in DEPRECATED_ZERO_KEYS:
                yield Finding(
                    "warning",
                    path,
                    f"{sub!r} is deprecated (DeepSpeed converts it with a warning)",
                    f"use {DEPRECATED_ZERO_KEYS[sub]} instead",
                )
            elif where in ("bf16", "bfloat16") and sub in FP16_LOSS_SCALING_KEYS:
                yield Finding(
                    "error",
                    path,
                    f"bf16 has no loss scaling: {sub!r} is an fp16 setting and DeepSpeed "
                    "rejects unknown keys in the bf16 section",
                    f"remove {sub!r}",
                )
            elif sub not in sub_schema:
                close = _close(sub, sub_schema)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                fix = (
                    f"rename it to {close[0]!r}" if close else f"remove it; valid keys: {', '.join(sorted(sub_schema))}"
                )
                yield Finding("error", path, f"unknown key {sub!r} in {where}{hint}; DeepSpeed rejects the config", fix)
        if where == "zero_optimization":
            for alias, name in ZERO_ALIASES.items():
                if alias in section and name in section:
                    yield Finding(
                        "warning",
                        f"{where}.{alias}",
                        f"{alias!r} and {name!r} are the same field, given twice",
                        f"keep only {alias!r}",
                    )
        yield from _unknown_in_sections(section, sub_schema, f"{where}.")


# Ranges beyond the JSON type. Aliased zero keys are listed by both spellings through _range_key.
POSITIVE = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "steps_per_print",
    "gradient_predivide_factor",
    "zero_optimization.reduce_bucket_size",
    "fp16.loss_scale_window",
    "fp16.min_loss_scale",
    "fp16.hysteresis",
    "hybrid_engine.max_out_tokens",
    "optimizer.params.lr",
    "optimizer.params.eps",
    "scheduler.params.warmup_num_steps",
    "scheduler.params.total_num_steps",
)
NON_NEGATIVE = (
    "gradient_clipping",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.sub_group_size",
    "zero_optimization.prefetch_bucket_size",
    "zero_optimization.param_persistence_threshold",
    "zero_optimization.model_persistence_threshold",
    "zero_optimization.max_live_parameters",
    "zero_optimization.max_reuse_distance",
    "zero_optimization.zero_hpz_partition_size",
    "zero_optimization.offload_param.buffer_count",
    "zero_optimization.offload_param.buffer_size",
    "zero_optimization.offload_param.max_in_cpu",
    "zero_optimization.offload_optimizer.buffer_count",
    "fp16.loss_scale",
    "fp16.initial_scale_power",
    "optimizer.params.weight_decay",
    "scheduler.params.warmup_min_lr",
    "scheduler.params.warmup_max_lr",
)
UNIT_INTERVAL = ("zero_optimization.offload_optimizer.ratio", "zero_optimization.offload_optimizer.cpuadam_cores_perc")
NUMERIC_PARAMS = {
    "optimizer.params.lr": "float",
    "optimizer.params.eps": "float",
    "optimizer.params.weight_decay": "float",
    "scheduler.params.warmup_num_steps": "int",
    "scheduler.params.total_num_steps": "int",
    "scheduler.params.warmup_min_lr": "float",
    "scheduler.params.warmup_max_lr": "float",
}


# Keys whose DeepSpeed default is None, so an explicit null means "not set" (TOP_LEVEL_DEFAULTS, the pydantic
# Optional fields); a null anywhere else is rejected by DeepSpeed or breaks the engine later.
NULL_MEANS_DEFAULT = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "steps_per_print",
    "communication_data_type",
    "seq_parallel_communication_data_type",
    "zero_optimization.overlap_comm",
    "zero_optimization.offload_optimizer",
    "zero_optimization.offload_param",
    "zero_optimization.offload_optimizer.nvme_path",
    "zero_optimization.offload_param.nvme_path",
)


def _range_key(path: str) -> str:
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "zero_optimization":
        parts[1] = ZERO_ALIASES.get(parts[1], parts[1])
    return ".".join(parts)


def _type_problem(expected: str, value) -> str | None:
    if expected == "int":
        if _as_int(value) is None:
            return "an integer"
    elif expected == "float":
        if not _is_number(value):
            return "a number"
    elif expected == "bool":
        if not isinstance(value, bool):
            return "true or false"
    elif expected == "str":
        if not isinstance(value, str):
            return "a string"
    elif expected == "list":
        if not isinstance(value, list):
            return "a list"
    elif (expected == "dict" or isinstance(expected, dict)) and not isinstance(value, dict):
        return "an object ({...})"
    return None


def _typed_leaves(config: dict, schema: dict, prefix: str = ""):
    for key, value in config.items():
        if key not in schema:
            continue
        expected = schema[key]
        if key == "zero_optimization" and isinstance(value, bool):
            continue  # the deprecated boolean form, reported by _rule_keys
        yield f"{prefix}{key}", expected, value
        if isinstance(expected, dict) and isinstance(value, dict):
            yield from _typed_leaves(value, expected, f"{prefix}{key}.")


def _rule_types_and_ranges(ctx: _Context):
    leaves = list(_typed_leaves(ctx.view, SCHEMA))
    for path, key_type in NUMERIC_PARAMS.items():
        value = _get(ctx.view, path)
        if value is not _MISSING:
            leaves.append((path, key_type, value))
    for path, expected, value in leaves:
        if value is None and _range_key(path) in NULL_MEANS_DEFAULT:
            continue  # DeepSpeed reads null as "not set" here
        if _out_of_range(value):
            yield Finding(
                "error",
                path,
                f"{json.dumps(value)[:24]} is beyond the 64-bit range DeepSpeed stores "
                "settings in (JSON's 1e400 reads as infinity)",
                "give a realistic value",
            )
            continue
        wanted = _type_problem(expected, value)
        if wanted:
            kinds: dict[type, str] = {str: "a string ", list: "a list ", dict: "an object "}
            got = kinds.get(type(value), "")
            if expected == "int" and _is_number(value):
                fix = f"use a whole number such as {int(value)}"
            elif isinstance(value, str) and expected in ("int", "float") and _parses_as_number(value):
                fix = f"write it without quotes: {value.strip()}"
            else:
                fix = f"give {wanted}"
            yield Finding("error", path, f"must be {wanted}, got {got}{json.dumps(value)[:40]}", fix)
            continue
        rkey = _range_key(path)
        if rkey in POSITIVE and _is_number(value) and value <= 0:
            yield Finding("error", path, f"must be > 0, got {_fmt(value)}", "give a positive value")
        elif rkey in NON_NEGATIVE and _is_number(value) and value < 0:
            yield Finding("error", path, f"must be >= 0, got {_fmt(value)}", "give a value of 0 or more")
        elif rkey in UNIT_INTERVAL and _is_number(value) and not 0 <= value <= 1:
            yield Finding("error", path, f"must be between 0 and 1, got {_fmt(value)}", "give a fraction in [0, 1]")
    stage = _get(ctx.view, "zero_optimization.stage")
    if _as_int(stage) is not None and stage not in (0, 1, 2, 3):
        yield Finding(
            "error",
            "zero_optimization.stage",
            f"ZeRO stage must be 0, 1, 2 or 3, got {_fmt(stage)}",
            "use 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)",
        )
    betas = _get(ctx.view, "optimizer.params.betas")
    if betas is not _MISSING and not (
        isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        yield Finding(
            "error",
            "optimizer.params.betas",
            f"must be two numbers in [0, 1), got {json.dumps(betas)[:40]}",
            "e.g. [0.9, 0.95]",
        )


def _parses_as_number(text: str) -> bool:
    """A JSON number in quotes ("2", "5e8"); not "nan", "inf" or "1_000", which float() would also take."""
    return re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", text.strip()) is not None and math.isfinite(
        float(text)
    )


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _divisors(n: int, limit: int = 8, largest: int = 65_536) -> list[int]:
    """The first `limit` divisors of n, among world sizes up to `largest` (bounded: n may be huge)."""
    return [d for d in range(1, min(n, largest) + 1) if n % d == 0][:limit]


def _rule_batch(ctx: _Context):
    """train_batch_size = micro × accumulation × world (runtime/config.py _batch_assertion)."""
    if ctx.hf and any(ctx.config.get(k) == "auto" for k in BATCH_KEYS):
        return  # the Trainer fills these from its own arguments
    values = [ctx.view.get(k) for k in BATCH_KEYS]
    if any(v is not None and (_as_int(v) is None or v <= 0) for v in values):
        return  # reported by the type/range rule
    tb, mb, ga = (_as_int(v) for v in values)
    w = ctx.world
    ws = f" × world {w}" if w else ""
    if tb is None and mb is None:
        yield Finding(
            "error",
            "train_batch_size",
            "neither train_batch_size nor train_micro_batch_size_per_gpu is set; DeepSpeed needs at least one",
            "set train_micro_batch_size_per_gpu (and gradient_accumulation_steps)",
        )
        return
    if w is None:
        yield from _batch_without_world(tb, mb, ga)
        return
    if tb is not None and mb is not None and ga is not None:
        if tb != mb * ga * w:
            better = (
                f"gradient_accumulation_steps {tb // (mb * w)}"
                if tb % (mb * w) == 0
                else f"train_batch_size {mb * ga * w}"
            )
            yield Finding(
                "error",
                "train_batch_size",
                f"train_batch_size {tb} ≠ micro {mb} × accumulation {ga}{ws} = "
                f"{mb * ga * w}; DeepSpeed asserts they are equal",
                f"set {better}",
            )
        else:
            yield Finding("info", "train_batch_size", f"train_batch_size {tb} = micro {mb} × accumulation {ga}{ws}")
        return
    solved = _solve_batch(tb, mb, ga, w)
    if isinstance(solved, str):
        yield Finding(
            "error", "train_batch_size", solved, "make train_batch_size a multiple of the product of the others"
        )
        return
    tb2, mb2, ga2 = solved
    missing = ", ".join(k for k, v in zip(BATCH_KEYS, (tb, mb, ga)) if v is None)
    yield Finding(
        "info",
        "train_batch_size",
        f"derived {missing}: train_batch_size {tb2} = micro {mb2} × accumulation {ga2}{ws}",
        f"write the derived value{'s' if ',' in missing else ''} into the config to make it explicit",
    )


def _solve_batch(tb, mb, ga, w):
    """The full triple DeepSpeed would derive (runtime/config.py _set_batch_related_parameters), or a message
    when its integer division would not add up."""
    if tb is not None and mb is not None:
        if tb % (mb * w):
            return (
                f"train_batch_size {tb} is not divisible by micro {mb} × world {w} = {mb * w}; accumulation would be "
                f"{tb / (mb * w):.3g}, not a whole number"
            )
        return tb, mb, tb // (mb * w)
    if tb is not None:
        ga = ga or 1
        if tb % (ga * w):
            return (
                f"train_batch_size {tb} is not divisible by accumulation {ga} × world {w} = {ga * w}; the micro-batch "
                f"would be {tb / (ga * w):.3g}, not a whole number"
            )
        return tb, tb // (ga * w), ga
    ga = ga or 1
    return mb * ga * w, mb, ga


def _batch_without_world(tb, mb, ga):
    key = "train_batch_size"
    if tb is not None and mb is not None and ga is not None:
        if tb % (mb * ga):
            yield Finding(
                "error",
                key,
                f"train_batch_size {tb} is not a multiple of micro {mb} × accumulation {ga} = {mb * ga}; "
                "no world size makes it consistent",
                f"set train_batch_size to a multiple of {mb * ga}",
            )
        else:
            yield Finding(
                "info",
                key,
                f"consistent only with world size {tb // (mb * ga)}: train_batch_size {tb} = "
                f"micro {mb} × accumulation {ga} × world {tb // (mb * ga)}",
                "pass --world-size to check against yours",
            )
        return
    if tb is not None:
        per_rank = mb or ga or 1
        if tb % per_rank:
            yield Finding(
                "error",
                key,
                f"train_batch_size {tb} is not a multiple of {per_rank}; no world size divides it evenly",
                f"set train_batch_size to a multiple of {per_rank}",
            )
            return
        worlds = _divisors(tb // per_rank)
        if mb is not None:
            detail = ", ".join(f"{w} (accumulation {tb // (mb * w)})" for w in worlds)
        else:
            detail = ", ".join(f"{w} (micro {tb // ((ga or 1) * w)})" for w in worlds)
        yield Finding("info", key, f"consistent with world sizes {detail}", "pass --world-size to solve for yours")
        return
    yield Finding(
        "info",
        key,
        f"train_batch_size = micro {mb} × accumulation {ga or 1} × world: {mb * (ga or 1)} per GPU",
        "pass --world-size to see the global batch",
    )


def _rule_precision(ctx: _Context):
    cfg = ctx.view
    if _enabled(cfg, "fp16") and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        yield Finding(
            "error",
            "fp16.enabled",
            "fp16 and bf16 are both enabled; DeepSpeed asserts only one is",
            "keep bf16 on GPUs that support it (Ampere and later), else fp16",
        )
    fp16 = _section(cfg, "fp16")
    if not _enabled(cfg, "fp16") and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        scaling = [k for k in FP16_LOSS_SCALING_KEYS if k in fp16]
        if scaling:
            yield Finding(
                "warning",
                f"fp16.{scaling[0]}",
                f"loss-scaling keys ({', '.join(scaling)}) under bf16 do "
                "nothing: bf16 has fp32's exponent range and needs no loss scaling",
                "remove the fp16 section",
            )
    scale = fp16.get("loss_scale", 0)
    dynamic_keys = [k for k in FP16_LOSS_SCALING_KEYS if k != "loss_scale" and k in fp16]
    if _enabled(cfg, "fp16") and _is_number(scale) and scale != 0 and dynamic_keys:
        # precision_config.py: dynamic scaling only when loss_scale == 0; the other keys are its parameters
        yield Finding(
            "warning",
            "fp16.loss_scale",
            f"loss_scale {_fmt(scale)} is a static scale, so {', '.join(dynamic_keys)} "
            "(dynamic-scaling settings) do nothing, and a static scale cannot back off when gradients overflow",
            f"set loss_scale to 0 for dynamic scaling from 2^initial_scale_power, or remove {', '.join(dynamic_keys)}",
        )
    if ctx.bf16_gpu and _enabled(cfg, "fp16"):
        yield Finding(
            "warning",
            "fp16.enabled",
            "fp16 on a GPU with bf16: fp16 needs loss scaling and skips steps on "
            "overflow, bf16 trains at the same speed without either",
            'use "bf16": {"enabled": true} instead',
        )
    if ctx.bf16_gpu is False and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        yield Finding(
            "error",
            "bf16.enabled",
            'this GPU has no bf16 tensor cores; DeepSpeed raises "Type bf16 is not supported on your device"',
            'use "fp16": {"enabled": true} (dynamic loss scaling)',
        )
    accum = _section(cfg, "data_types").get("grad_accum_dtype")
    half = "bf16" if _enabled(cfg, "bf16") or _enabled(cfg, "bfloat16") else "fp16" if _enabled(cfg, "fp16") else None
    if isinstance(accum, str) and accum.lower() in ("fp32", "float32", "float") and half and _stage(cfg) == 0:
        # engine._do_optimizer_sanity_check: without ZeRO the model and accumulation dtypes must match
        yield Finding(
            "error",
            "data_types.grad_accum_dtype",
            f"fp32 gradient accumulation with {half} and no ZeRO: DeepSpeed "
            "raises NotImplementedError (unsupported mix of model_dtype and grad_accum_dtype) at initialize",
            "use ZeRO stage 1, 2 or 3, or remove data_types.grad_accum_dtype",
        )
    comm = cfg.get("communication_data_type")
    if isinstance(comm, str) and comm.lower() not in COMMUNICATION_DTYPES:
        yield Finding(
            "error",
            "communication_data_type",
            f"{comm!r} is not one of {', '.join(COMMUNICATION_DTYPES)}",
            'use "bf16", "fp16" or "fp32"',
        )


def _rule_offload(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    zero = _section(cfg, "zero_optimization")
    for which in ("offload_optimizer", "offload_param"):
        section = zero.get(which)
        if not isinstance(section, dict):
            continue
        device = section.get("device", "none")
        if isinstance(device, str) and device not in OFFLOAD_DEVICES:
            close = difflib.get_close_matches(device.lower(), OFFLOAD_DEVICES, n=1)
            fix = f"use {close[0]!r}" if close else 'use "cpu", "nvme" or "none"'
            yield Finding(
                "error",
                f"zero_optimization.{which}.device",
                f"offload device {device!r} is not one of "
                f"{', '.join(OFFLOAD_DEVICES)} (offloading to another GPU is not a thing)",
                fix,
            )
        if device == "nvme" and not section.get("nvme_path"):
            yield Finding(
                "error",
                f"zero_optimization.{which}.nvme_path",
                "nvme offload without nvme_path",
                "set nvme_path to a directory on a fast local NVMe disk",
            )
    if _offload_device(cfg, "offload_param") in ("cpu", "nvme") and stage != 3:
        yield Finding(
            "error",
            "zero_optimization.offload_param",
            f"offload_param works only at stage 3; at stage {stage} "
            "DeepSpeed ignores it and the parameters stay on the GPU",
            "set stage 3 or remove offload_param",
        )
    if _offload_device(cfg, "offload_optimizer") in ("cpu", "nvme") and stage == 0:
        yield Finding(
            "error",
            "zero_optimization.offload_optimizer",
            "offload_optimizer needs ZeRO stage 1, 2 or 3; at stage 0 it is ignored",
            "set stage 2 (ZeRO-Offload) or remove offload_optimizer",
        )
    ratio = _get(cfg, "zero_optimization.offload_optimizer.ratio")
    if _is_number(ratio) and ratio < 1 and stage != 3:
        yield Finding(
            "error",
            "zero_optimization.offload_optimizer.ratio",
            "partial offload (ratio < 1) is supported only at ZeRO stage 3 (zero/config.py offload_ratio_check)",
            "set stage 3 or ratio 1.0",
        )


def _rule_stage3_keys(ctx: _Context):
    stage = _stage(ctx.view)
    zero = _section(ctx.view, "zero_optimization")
    if stage == 3:
        return
    for key in zero:
        if key.startswith("stage3_") or key in ZERO_ALIASES.values():
            yield Finding(
                "warning",
                f"zero_optimization.{key}",
                f"{key} only affects ZeRO stage 3; at stage {stage} it is ignored",
                "remove it, or set stage 3 if you meant to partition parameters",
            )


def _optimizer_kind(name: str) -> str | None:
    """The name DeepSpeed resolves an optimizer "type" to, or None when it cannot build it."""
    if name.lower() in DEEPSPEED_OPTIMIZERS:
        return name.lower()
    if name in TORCH_OPTIMIZERS:
        return name.lower() if name.lower() in ("adam", "adamw", "adagrad") else name
    return None


def _rule_optimizer(ctx: _Context):
    cfg = ctx.view
    opt = _section(cfg, "optimizer")
    name = opt.get("type")
    offload = _offload_device(cfg, "offload_optimizer") in ("cpu", "nvme") and _stage(cfg) >= 1
    if not isinstance(name, str):
        if offload and "optimizer" not in ctx.config and not ctx.hf:
            yield Finding(
                "warning",
                "zero_optimization.offload_optimizer",
                'offload with no "optimizer" section: '
                "DeepSpeed then requires the optimizer your code passes to be its CPU optimizer "
                "(zero_force_ds_cpu_optimizer is true by default)",
                'add "optimizer": {"type": "AdamW", ...}',
            )
        return
    kind = _optimizer_kind(name)
    if kind is None:
        replacement = OPTIMIZER_REPLACEMENTS.get(name.lower())
        if replacement is None:
            close = _close(name.lower(), DEEPSPEED_OPTIMIZERS) or _close(name, TORCH_OPTIMIZERS)
            replacement = close[0] if close else None
        fix = (
            f'use "{replacement}"'
            if replacement
            else "use Adam, AdamW, Lamb, Lion, Adagrad, or a torch.optim class name"
        )
        yield Finding(
            "error",
            "optimizer.type",
            f"DeepSpeed cannot build optimizer {name!r}: it accepts "
            f"{', '.join(DEEPSPEED_OPTIMIZERS)} (any case) or a torch.optim class name",
            fix,
        )
        return
    allow_untested = cfg.get("zero_allow_untested_optimizer") is True
    if _stage(cfg) >= 1 and kind not in ZERO_TESTED_OPTIMIZERS and not allow_untested:
        yield Finding(
            "error",
            "optimizer.type",
            f'ZeRO refuses {name!r} unless "zero_allow_untested_optimizer": true '
            "(runtime/zero/utils.py tests Adam/AdamW, Adagrad, Lion, Muon)",
            "use AdamW, or set zero_allow_untested_optimizer to true",
        )
    if offload and kind not in OFFLOADABLE_OPTIMIZERS:
        yield Finding(
            "error",
            "optimizer.type",
            f"{name!r} has no CPU implementation for offload_optimizer; DeepSpeed has CPU Adam/AdamW, Adagrad and Lion",
            "use AdamW (DeepSpeedCPUAdam) or turn offload off",
        )
    if kind == "lamb":
        scale = _get(cfg, "fp16.loss_scale", 0)
        if _enabled(cfg, "fp16") and _is_number(scale) and scale != 0:
            yield Finding(
                "error",
                "fp16.loss_scale",
                "Lamb requires dynamic loss scaling (engine._do_sanity_check)",
                "set fp16.loss_scale to 0",
            )
    params = opt.get("params")
    if isinstance(params, dict) and "max_grad_norm" in params:
        yield Finding(
            "error",
            "optimizer.params.max_grad_norm",
            "DeepSpeed raises on max_grad_norm as an optimizer parameter",
            f'remove it and set "gradient_clipping": {_fmt(params["max_grad_norm"])}',
        )


def _rule_scheduler(ctx: _Context):
    cfg = ctx.view
    sched = _section(cfg, "scheduler")
    name = sched.get("type")
    if not isinstance(name, str):
        return
    if name not in DEEPSPEED_SCHEDULERS and name not in TORCH_SCHEDULERS:
        close = _close(name, DEEPSPEED_SCHEDULERS + TORCH_SCHEDULERS)
        yield Finding(
            "error",
            "scheduler.type",
            f"unknown scheduler {name!r}: DeepSpeed has {', '.join(DEEPSPEED_SCHEDULERS)} "
            "or takes a torch.optim.lr_scheduler class name",
            f"use {close[0]!r}" if close else "use WarmupDecayLR or WarmupCosineLR",
        )
        return
    params = sched.get("params")
    if not isinstance(params, dict):
        params = {}
    raw_params = _get(ctx.config, "scheduler.params", {})
    for required in SCHEDULER_REQUIRED_PARAMS.get(name, ()):
        if required not in params and not (
            ctx.hf and isinstance(raw_params, dict) and raw_params.get(required) == "auto"
        ):
            yield Finding(
                "error",
                f"scheduler.params.{required}",
                f"{name} needs {required}; building it fails without",
                f"set scheduler.params.{required}"
                + (" (the run's total optimizer steps)" if "steps" in required else ""),
            )
    total, warmup = params.get("total_num_steps"), params.get("warmup_num_steps", 1000)
    if name == "WarmupDecayLR" and _is_number(total) and _is_number(warmup) and total < warmup:
        yield Finding(
            "warning",
            "scheduler.params.total_num_steps",
            f"total_num_steps {_fmt(total)} < warmup_num_steps "
            f"{_fmt(warmup)}: the learning rate never finishes warming up",
            "raise total_num_steps or lower warmup_num_steps",
        )
    if name in WARMUP_MAX_LR_DEFAULT:
        lr = _get(cfg, "optimizer.params.lr")
        peak = params.get("warmup_max_lr", WARMUP_MAX_LR_DEFAULT[name])
        if _is_number(lr) and _is_number(peak) and not math.isclose(lr, peak, rel_tol=1e-9):
            said = "" if "warmup_max_lr" in params else f" (its default for {name})"
            yield Finding(
                "warning",
                "scheduler.params.warmup_max_lr",
                f"warmup_max_lr {_fmt(peak)}{said} differs from the "
                f"optimizer lr {_fmt(lr)}: the schedule overwrites the lr, so training peaks at {_fmt(peak)}",
                f"set warmup_max_lr to {_fmt(lr)} (or the lr you meant)",
            )


def _rule_model_features(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    if _get(cfg, "activation_checkpointing.partition_activations") is True:
        yield Finding(
            "warning",
            "activation_checkpointing.partition_activations",
            "acts only when the model checkpoints "
            "through deepspeed.checkpointing.checkpoint; zerotrain's GPT (and Hugging Face models) use "
            "torch.utils.checkpoint, where it does nothing",
            "remove it unless your model calls deepspeed.checkpointing",
        )
    zero = _section(cfg, "zero_optimization")
    gather = zero.get(
        "stage3_gather_16bit_weights_on_model_save",
        zero.get("gather_16bit_weights_on_model_save", zero.get("stage3_gather_fp16_weights_on_model_save")),
    )
    raw_gather = _get(ctx.config, "zero_optimization.stage3_gather_16bit_weights_on_model_save")
    if stage == 3 and gather is not True and not (ctx.hf and raw_gather == "auto"):
        yield Finding(
            "warning",
            "zero_optimization.stage3_gather_16bit_weights_on_model_save",
            "ZeRO-3 without "
            "stage3_gather_16bit_weights_on_model_save: save_16bit_model() (and the HF Trainer's final save) writes "
            "empty [0]-shaped tensors instead of the weights",
            "set it to true",
        )
    if cfg.get("gradient_allreduce_op") == "sum" and stage == 3:
        yield Finding(
            "error",
            "gradient_allreduce_op",
            "'sum' is not supported with ZeRO stage 3 (runtime/config.py)",
            'use "mean"',
        )
    if zero.get("compute_grad_norm") is False and stage not in (1, 2):
        yield Finding(
            "error",
            "zero_optimization.compute_grad_norm",
            "compute_grad_norm=false is supported only at stages 1 and 2",
            "remove it",
        )


TINY_BUCKET = 10_000  # elements: 20 KB messages in bf16, latency-bound on any interconnect
HUGE_BUCKET = 2_000_000_000  # elements: a 4-8 GB temporary buffer per bucket
ZERO2_LARGE_ACCUMULATION = 8


def _rule_performance(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    zero = _section(cfg, "zero_optimization")
    overlap = zero.get("overlap_comm", stage == 3)  # dynamic default: true only at stage 3 (zero/config.py)
    if ctx.world and ctx.world > 1 and stage >= 1 and overlap is False:
        yield Finding(
            "warning",
            "zero_optimization.overlap_comm",
            f"overlap_comm is off with {ctx.world} GPUs: each "
            "gradient reduction waits for the backward pass to finish instead of running beside it, adding its "
            "full time to every step",
            "set overlap_comm to true (costs about 4.5× reduce_bucket_size of buffers)",
        )
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size", "prefetch_bucket_size"):
        size = _as_int(zero.get(key))
        if size is None or (key.endswith("prefetch_bucket_size") and stage != 3):
            continue
        if key == "allgather_bucket_size" and stage == 3:
            continue
        where = f"zero_optimization.{key}"
        if 0 < size < TINY_BUCKET:
            yield Finding(
                "warning",
                where,
                f"{key} {size:,} elements is tiny: thousands of small collectives per step, each paying full latency",
                "use about hidden² elements (e.g. 5e7; DeepSpeed's default is 5e8)",
            )
        elif size > HUGE_BUCKET:
            yield Finding(
                "warning",
                where,
                f"{key} {size:,} elements needs a buffer of {size * 4 / 2**30:.1f} GiB in fp32",
                "use 5e8 (DeepSpeed's default) or less",
            )
        elif ctx.model_params and size > ctx.model_params and not key.endswith("prefetch_bucket_size"):
            yield Finding(
                "info",
                where,
                f"{key} {size:,} is larger than the model ({ctx.model_params:,} parameters): "
                "the reduction becomes one collective at the end of backward, with no overlap",
                f"use about {max(ctx.model_params // 8, TINY_BUCKET):,} for a few buckets per step",
            )
        elif ctx.model_params and size < min(1_000_000, ctx.model_params // 1000):
            yield Finding(
                "warning",
                where,
                f"{key} {size:,} means over 1,000 collectives per step for "
                f"{ctx.model_params:,} parameters; latency dominates",
                "use about hidden² elements",
            )
    if stage == 2:
        _, _, ga = _solved_triple(cfg, ctx.world)
        if ga and ga >= ZERO2_LARGE_ACCUMULATION:
            yield Finding(
                "info",
                "zero_optimization.stage",
                f"ZeRO-2 with accumulation {ga}: gradients are reduce-"
                f"scattered after every micro-batch ({ga} times per step); ZeRO-1 reduces once per step at the "
                "cost of a full 16-bit gradient buffer (2 bytes/param)",
                "use stage 1 if 2 bytes/param fit",
            )
    offloads = any(_offload_device(cfg, w) in ("cpu", "nvme") for w in ("offload_optimizer", "offload_param"))
    if ctx.fits_without_offload is not None and ctx.model_params and ctx.gpu_memory and offloads:
        plain = copy.deepcopy(cfg)
        for which in ("offload_optimizer", "offload_param"):
            _section(plain, "zero_optimization").pop(which, None)
        if ctx.fits_without_offload(plain, ctx.model_params, ctx.world or 1, ctx.gpu_memory):
            yield Finding(
                "warning",
                "zero_optimization.offload_optimizer",
                "the memory plan fits without offload: "
                "offloading moves the optimizer step to the CPU and adds PCIe transfers, typically making "
                "steps several times slower",
                "remove offload_optimizer / offload_param",
            )
    spp = _as_int(cfg.get("steps_per_print"))
    if spp is not None and 0 < spp < 10:
        yield Finding(
            "warning",
            "steps_per_print",
            f"steps_per_print {spp}: DeepSpeed logs every {spp} step(s), flooding "
            "the log (and the terminal I/O slows short steps)",
            "use 100 or more",
        )
    if cfg.get("wall_clock_breakdown") is True:
        yield Finding(
            "info",
            "wall_clock_breakdown",
            "wall_clock_breakdown synchronizes the device at every timer, slowing each step",
            "turn it off outside profiling",
        )


def _solved_triple(cfg: dict, world: int | None):
    tb, mb, ga = (_as_int(cfg.get(k)) for k in BATCH_KEYS)
    if ga is None and world and (tb or mb):
        solved = _solve_batch(tb, mb, ga, world)
        if not isinstance(solved, str):
            return solved
    return tb, mb, ga


RULES = (
    _rule_auto,
    _rule_keys,
    _rule_types_and_ranges,
    _rule_batch,
    _rule_precision,
    _rule_offload,
    _rule_stage3_keys,
    _rule_optimizer,
    _rule_scheduler,
    _rule_model_features,
    _rule_performance,
)


def check(
    config: dict,
    world_size: int | None = None,
    gpu: str | None = None,
    hf_integration: bool = False,
    model_params: int | None = None,
    fits_without_offload: Callable | None = None,
) -> list[Finding]:
    """Every finding for a ds_config, errors first. `fits_without_offload(config, model_params, world_size,
    gpu_memory_bytes) -> bool` is the memory planner's verdict, used to flag offload that is not needed."""
    if world_size is not None and world_size < 1:
        raise UserError(f"--world-size must be >= 1, got {world_size}")
    gpu_memory, bf16_gpu = gpu_spec(gpu) if gpu else (None, None)
    ctx = _Context(
        config,
        _without_auto(config),
        world_size,
        bf16_gpu,
        gpu_memory,
        hf_integration,
        model_params,
        fits_without_offload,
    )
    findings = [f for rule in RULES for f in rule(ctx)]
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def check_text(text: str, path: str = "ds_config", **kwargs) -> list[Finding]:
    """check() on the text of a file, with duplicate keys reported too; a UserError when it is not JSON."""
    config = parse_config_text(text, path)
    findings = duplicate_key_findings(text) + check(config, **kwargs)
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def duplicate_key_findings(text: str) -> list[Finding]:
    """Keys given twice in one object: JSON keeps the last silently, DeepSpeed's hjson loader refuses."""
    found = []

    def hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                found.append(key)
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return []
    return [
        Finding(
            "warning",
            key,
            f"{key!r} appears twice in one object; the last value wins and DeepSpeed's "
            "file loader (dict_raise_error_on_duplicate_keys) rejects the file",
            "keep one of them",
        )
        for key in dict.fromkeys(found)
    ]


def planner_fits_without_offload(model: memory.ModelShape):
    """The `fits_without_offload` hook of check(), answered by the memory planner for `model`."""

    def fits(config: dict, _params: int, world: int, gpu_memory: int) -> bool:
        run = memory.run_from_ds_config(_without_auto(config), memory.RunShape(gpus_per_node=world))
        return memory.plan(model, run).fits(gpu_memory, 0.10)

    return fits
