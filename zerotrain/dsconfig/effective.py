"""`zerotrain config explain`: the effective ds_config, every key relevant to it with DeepSpeed's default
filled in and what it does."""

from zerotrain.dsconfig.schema import (
    _MISSING,
    BF16_DEFAULTS,
    DESCRIPTIONS,
    FP16_DEFAULTS,
    OFFLOAD_OPTIMIZER_DEFAULTS,
    OFFLOAD_PARAM_DEFAULTS,
    TOP_LEVEL_DEFAULTS,
    ZERO_ALIASES,
    ZERO_DEFAULTS,
    ZERO_KEYS_BY_STAGE,
    _enabled,
    _get,
    _stage,
)


def explain(config: dict) -> list[tuple[str, object, bool, str]]:
    """Rows (key, effective value, is DeepSpeed's default, what it does) for every key relevant to the config:
    the batch triple, precision, clipping, the ZeRO keys of its stage, offload sections, and any other key set."""
    cfg = config
    stage = _stage(cfg)
    rows: list[tuple[str, object, bool, str]] = []
    shown = set()

    def add(key, default):
        value = _get(cfg, key, _MISSING)
        is_default = value is _MISSING
        rows.append((key, default if is_default else value, is_default, DESCRIPTIONS.get(key, "")))
        shown.add(key)

    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "steps_per_print",
        "communication_data_type",
        "wall_clock_breakdown",
    ):
        add(key, TOP_LEVEL_DEFAULTS[key])
    if _enabled(cfg, "fp16"):
        for key, default in FP16_DEFAULTS.items():
            add(f"fp16.{key}", default)
    else:
        add("bf16.enabled", False)
        if _enabled(cfg, "bf16"):
            for key, default in BF16_DEFAULTS.items():
                if key != "enabled":
                    add(f"bf16.{key}", default)
    zero_defaults = dict(ZERO_DEFAULTS, overlap_comm=stage == 3)  # overlap_comm's default depends on the stage
    for key in ZERO_KEYS_BY_STAGE[stage] or ("stage",):
        add(f"zero_optimization.{key}", zero_defaults[key])
    for which, defaults in (
        ("offload_optimizer", OFFLOAD_OPTIMIZER_DEFAULTS),
        ("offload_param", OFFLOAD_PARAM_DEFAULTS),
    ):
        if isinstance(_get(cfg, f"zero_optimization.{which}"), dict):
            for key, default in defaults.items():
                add(f"zero_optimization.{which}.{key}", default)
    for key, value in _leaves(cfg):
        if key not in shown and not any(key.startswith(s + ".") for s in shown):
            rkey = key
            if key.startswith("zero_optimization."):  # describe aliases under the documented spelling
                sub = key.split(".", 1)[1]
                alias = {v: k for k, v in ZERO_ALIASES.items()}.get(sub)
                rkey = f"zero_optimization.{alias}" if alias else key
            rows.append((key, value, False, DESCRIPTIONS.get(rkey, "(set in the file)")))
    return rows


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("params",):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v
