"""The rules about keys and values one at a time: "auto" outside the Hugging Face integration, unknown keys
at every level (did you mean), removed, deprecated and dotted keys, JSON types, and ranges."""

import json
import math
import re

from zerotrain.dsconfig.findings import Finding, _close, _Context, _fmt
from zerotrain.dsconfig.from_run import DEEPSPEED_AUTO_KEYS
from zerotrain.dsconfig.schema import (
    _MISSING,
    DEEPSPEED_VERSION,
    DEPRECATED_ZERO_KEYS,
    FP16_LOSS_SCALING_KEYS,
    REMOVED_TOP_LEVEL_KEYS,
    REMOVED_ZERO_KEYS,
    SCHEMA,
    ZERO_ALIASES,
    _as_int,
    _get,
    _is_number,
    _out_of_range,
)


def _auto_keys(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _auto_keys(v, f"{prefix}{k}.")
    elif value == "auto":
        yield prefix[:-1]


def _rule_auto(ctx: _Context):
    if ctx.hf:
        return
    for key in _auto_keys(ctx.config):
        if key in DEEPSPEED_AUTO_KEYS:
            continue
        yield Finding(
            "error",
            key,
            '"auto" is filled in only by the Hugging Face Trainer/Accelerate integration; '
            "plain DeepSpeed reads it as a string",
            "give a value (or pass --hf if this config is for the HF Trainer)",
        )


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
