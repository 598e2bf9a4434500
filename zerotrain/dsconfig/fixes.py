"""`zerotrain config check --fix`: a corrected copy of a ds_config and one line per change. Only unambiguous
fixes are applied; the re-check reports what needs a decision."""

import copy
import json

from zerotrain.dsconfig.findings import _close, _fmt
from zerotrain.dsconfig.key_rules import _dotted_section, _parses_as_number
from zerotrain.dsconfig.lint import gpu_spec
from zerotrain.dsconfig.schema import (
    FP16_LOSS_SCALING_KEYS,
    MAX_INT,
    OFFLOAD_DEVICES,
    OFFLOAD_OPTIMIZER_SCHEMA,
    OFFLOAD_PARAM_SCHEMA,
    OPTIMIZER_REPLACEMENTS,
    REMOVED_TOP_LEVEL_KEYS,
    SCHEMA,
    ZERO_ALIASES,
    ZERO_SCHEMA,
    _as_int,
    _enabled,
    _get,
    _stage,
)
from zerotrain.dsconfig.training_rules import BATCH_KEYS, _optimizer_kind, _solve_batch


def fix(
    config: dict, world_size: int | None = None, gpu: str | None = None, hf_integration: bool = False
) -> tuple[dict, list[str]]:
    """A corrected copy of the config and one line per change. Only unambiguous fixes are applied; what needs
    a decision (a missing total_num_steps, an nvme path) is left for the re-check to report."""
    cfg = copy.deepcopy(config)
    changes: list[str] = []
    _, bf16_gpu = gpu_spec(gpu) if gpu else (None, None)

    # dotted top-level keys ("zero_optimization.stage": 2) nested where they belong
    for key in [k for k in cfg if k not in SCHEMA and _dotted_section(k)]:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and last not in node:
            node[last] = cfg.pop(key)
            changes.append(f"nested {key} as {' -> '.join(key.split('.'))}")

    # numbers written as strings ("stage": "2"), where DeepSpeed expects a number
    changes += _fix_quoted_numbers(cfg, SCHEMA, "")

    # typos with one clear candidate
    for key in list(cfg):
        if key not in SCHEMA and key not in REMOVED_TOP_LEVEL_KEYS and key != "allgather_size" and "." not in key:
            close = _close(key, SCHEMA)
            if len(close) == 1 and close[0] not in cfg:
                cfg[close[0]] = cfg.pop(key)
                changes.append(f"renamed {key} -> {close[0]}")
    if "bfloat16" in cfg and "bf16" not in cfg:
        cfg["bf16"] = cfg.pop("bfloat16")
        changes.append("renamed bfloat16 -> bf16")
    if isinstance(cfg.get("zero_optimization"), bool):
        new = {"stage": int(cfg["zero_optimization"])}
        if "allgather_size" in cfg:
            new["allgather_bucket_size"] = cfg.pop("allgather_size")
        cfg["zero_optimization"] = new
        changes.append(f"replaced the boolean zero_optimization with {json.dumps(new)}")
    zero = cfg.get("zero_optimization")
    if isinstance(zero, dict):
        changes += _fix_zero(zero)
    for section, schema in SCHEMA.items():
        if isinstance(schema, dict) and isinstance(cfg.get(section), dict) and section != "zero_optimization":
            changes += _fix_typos_in(cfg[section], schema, section)

    # precision
    if _enabled(cfg, "fp16") and _enabled(cfg, "bf16"):
        if bf16_gpu is False:
            cfg["bf16"]["enabled"] = False
            changes.append("turned bf16 off (this GPU has no bf16), keeping fp16")
        else:
            cfg["fp16"]["enabled"] = False
            changes.append("turned fp16 off, keeping bf16 (fp16 and bf16 cannot both be on)")
    elif bf16_gpu and _enabled(cfg, "fp16"):
        cfg.pop("fp16")
        bf16 = cfg.get("bf16")
        cfg["bf16"] = {**(bf16 if isinstance(bf16, dict) else {}), "enabled": True}
        changes.append("switched fp16 -> bf16 (this GPU has bf16: no loss scaling needed)")
    if isinstance(cfg.get("bf16"), dict):
        for key in FP16_LOSS_SCALING_KEYS:
            if key in cfg["bf16"]:
                del cfg["bf16"][key]
                changes.append(f"removed bf16.{key} (bf16 has no loss scaling)")
    if _enabled(cfg, "bf16") and isinstance(cfg.get("fp16"), dict) and not _enabled(cfg, "fp16"):
        cfg.pop("fp16")
        changes.append("removed the disabled fp16 section (its loss-scaling keys do nothing under bf16)")

    # optimizer
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("type"), str) and _optimizer_kind(opt["type"]) is None:
        replacement = OPTIMIZER_REPLACEMENTS.get(opt["type"].lower())
        if replacement:
            changes.append(f"optimizer.type {opt['type']} -> {replacement} (DeepSpeed builds the same kernel from it)")
            opt["type"] = replacement
    params = _get(cfg, "optimizer.params")
    if isinstance(params, dict) and "max_grad_norm" in params:
        cfg["gradient_clipping"] = params.pop("max_grad_norm")
        changes.append(f"moved optimizer.params.max_grad_norm to gradient_clipping = {_fmt(cfg['gradient_clipping'])}")

    # batch triple
    if world_size and not (hf_integration and any(cfg.get(k) == "auto" for k in BATCH_KEYS)):
        changes += _fix_batch(cfg, world_size)

    # performance
    if isinstance(cfg.get("zero_optimization"), dict):
        zero, stage = cfg["zero_optimization"], _stage(cfg)
        if world_size and world_size > 1 and stage >= 1 and zero.get("overlap_comm", stage == 3) is False:
            zero["overlap_comm"] = True
            changes.append("set zero_optimization.overlap_comm = true (hide gradient reduction behind backward)")
    spp = _as_int(cfg.get("steps_per_print"))
    if spp is not None and 0 < spp < 10:
        cfg["steps_per_print"] = 100
        changes.append(f"steps_per_print {spp} -> 100")
    return cfg, changes


def _fix_quoted_numbers(section: dict, schema: dict, where: str) -> list[str]:
    changes = []
    for key, value in section.items():
        expected = schema.get(key)
        if isinstance(expected, dict) and isinstance(value, dict):
            changes += _fix_quoted_numbers(value, expected, f"{where}{key}.")
        elif expected in ("int", "float") and isinstance(value, str) and value != "auto" and _parses_as_number(value):
            number = float(value)
            if abs(number) <= MAX_INT:
                section[key] = int(number) if expected == "int" and number.is_integer() else number
                changes.append(f"{where}{key} {value!r} -> {_fmt(section[key])} (a number, not a string)")
    return changes


def _fix_typos_in(section: dict, schema: dict, where: str) -> list[str]:
    changes = []
    for key in list(section):
        if key not in schema:
            close = _close(key, schema)
            if len(close) == 1 and close[0] not in section:
                section[close[0]] = section.pop(key)
                changes.append(f"renamed {where}.{key} -> {where}.{close[0]}")
    return changes


def _fix_zero(zero: dict) -> list[str]:
    changes = []
    if zero.get("cpu_offload") is not None:
        on = zero.pop("cpu_offload")
        if on and "offload_optimizer" not in zero:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        changes.append("replaced cpu_offload with offload_optimizer" if on else "removed cpu_offload: false")
    for old in ("cpu_offload_param", "cpu_offload_params"):
        if zero.get(old) is not None:
            on = zero.pop(old)
            if on and "offload_param" not in zero:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
            changes.append(f"replaced {old} with offload_param" if on else f"removed {old}: false")
    if "cpu_offload_use_pin_memory" in zero:
        pin = zero.pop("cpu_offload_use_pin_memory")
        for which in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(which), dict) and isinstance(pin, bool):
                zero[which]["pin_memory"] = pin
        changes.append("moved cpu_offload_use_pin_memory into the offload sections' pin_memory")
    if "stage3_gather_fp16_weights_on_model_save" in zero:
        value = zero.pop("stage3_gather_fp16_weights_on_model_save")
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", value)
        changes.append("renamed stage3_gather_fp16_weights_on_model_save -> stage3_gather_16bit_weights_on_model_save")
    changes += _fix_typos_in(zero, ZERO_SCHEMA, "zero_optimization")
    for which, schema in (("offload_optimizer", OFFLOAD_OPTIMIZER_SCHEMA), ("offload_param", OFFLOAD_PARAM_SCHEMA)):
        if isinstance(zero.get(which), dict):
            changes += _fix_typos_in(zero[which], schema, f"zero_optimization.{which}")
            device = zero[which].get("device")
            if isinstance(device, str) and device.lower() in OFFLOAD_DEVICES and device != device.lower():
                zero[which]["device"] = device.lower()
                changes.append(f"zero_optimization.{which}.device {device!r} -> {device.lower()!r}")
    stage = _as_int(zero.get("stage", 0))
    if stage in (0, 1, 2):
        for key in list(zero):
            if key.startswith("stage3_") or key in ZERO_ALIASES.values():
                del zero[key]
                changes.append(f"removed zero_optimization.{key} (stage 3 only; this config is stage {stage})")
        if isinstance(zero.get("offload_param"), dict):
            del zero["offload_param"]
            changes.append("removed offload_param (ignored below stage 3; set stage 3 if you need parameter offload)")
    if (
        stage == 3
        and zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("gather_16bit_weights_on_model_save"))
        is not True
    ):
        zero.pop("gather_16bit_weights_on_model_save", None)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        changes.append(
            "set stage3_gather_16bit_weights_on_model_save = true (else save_16bit_model writes empty weights)"
        )
    return changes


def _fix_batch(cfg: dict, world: int) -> list[str]:
    values = [cfg.get(k) for k in BATCH_KEYS]
    if any(v is not None and (_as_int(v) is None or v <= 0) for v in values):
        return []
    tb, mb, ga = (_as_int(v) for v in values)
    if mb is None and tb is None:
        return []
    if tb is not None and mb is not None and ga is not None:
        if tb == mb * ga * world:
            return []
        if tb % (mb * world) == 0:  # keep the global batch (it sets the optimisation), change accumulation
            cfg["gradient_accumulation_steps"] = tb // (mb * world)
            return [
                (
                    f"gradient_accumulation_steps {ga} -> {tb // (mb * world)}: train_batch_size {tb} = micro {mb} × "
                    f"accumulation {tb // (mb * world)} × world {world}"
                )
            ]
        cfg["train_batch_size"] = mb * ga * world
        return [f"train_batch_size {tb} -> {mb * ga * world} = micro {mb} × accumulation {ga} × world {world}"]
    solved = _solve_batch(tb, mb, ga, world)
    if isinstance(solved, str):
        return []
    for key, value in zip(BATCH_KEYS, solved):
        cfg[key] = value
    return [
        f"wrote the batch triple: train_batch_size {solved[0]} = micro {solved[1]} × accumulation {solved[2]} × world {world}"
    ]
