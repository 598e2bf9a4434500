"""ds_config lint (`zerotrain config check`): every rule, each finding `(level, key, message, fix)`, collected and
never stopping at the first, errors first. The rules are in key_rules.py (keys, types, ranges) and
training_rules.py (batch, precision, offload, optimizer, scheduler, performance); findings.py says what a finding is.
Imports neither torch nor DeepSpeed; engine.py runs DeepSpeed's own parser as the last word.
"""

import json
from collections.abc import Callable

from zerotrain import UserError, memory
from zerotrain.dsconfig.findings import LEVELS, Finding, _Context
from zerotrain.dsconfig.key_rules import _rule_auto, _rule_keys, _rule_types_and_ranges
from zerotrain.dsconfig.parse import parse_config_text
from zerotrain.dsconfig.schema import _without_auto
from zerotrain.dsconfig.training_rules import (
    _rule_batch,
    _rule_model_features,
    _rule_offload,
    _rule_optimizer,
    _rule_performance,
    _rule_precision,
    _rule_scheduler,
    _rule_stage3_keys,
)


# GPUs `--gpu` may name: memory in GiB and whether the tensor cores do bf16 (Ampere and later).
# NVIDIA datasheets. The memory planner has its own view of a GPU; the two should be unified.
def gpu_spec(name: str) -> tuple[int, bool]:
    """(memory in bytes, bf16 support) of a GPU named like `h100`, `A100-40GB`, `RTX 4090` (the planner's table)."""
    return memory.gpu_memory_from_name(name)


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
