"""What a plan is asked about besides the model: a GPU by name or amount (its memory and bf16 support), and a
ds_config read into a RunShape."""

from dataclasses import replace

from zerotrain import UserError
from zerotrain.memory.shapes import GiB, MiB, RunShape

# Usable memory as torch.cuda.get_device_properties().total_memory reports it (MiB), and bf16 support.
GPUS = {
    "h200": (143_158, True),
    "gh200": (97_871, True),
    "h100": (81_559, True),
    "h100-nvl": (95_830, True),
    "h800": (81_559, True),
    "a100-80gb": (81_251, True),
    "a100": (81_251, True),
    "a100-40gb": (40_537, True),
    "a800": (81_251, True),
    "l40s": (46_068, True),
    "l40": (46_068, True),
    "a6000": (48_677, True),
    "l4": (22_563, True),
    "a10": (22_731, True),
    "a10g": (22_731, True),
    "rtx4090": (24_217, True),
    "rtx3090": (24_268, True),
    "v100-32gb": (32_501, False),
    "v100": (16_151, False),
    "t4": (15_095, False),
    "p100": (16_280, False),
}


def parse_size(text: str, what: str = "--host-memory") -> int:
    """Bytes of an amount such as `125GiB`, `64G` (GiB), `500MB`, `2TiB`; a bare number is GiB."""
    import re

    amount = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(TiB|TB|T|GiB|GB|G|MiB|MB|M)?", text.strip(), flags=re.IGNORECASE)
    if not amount or float(amount.group(1)) <= 0:
        raise UserError(f"{what} {text!r} is not a size; write it like 125GiB, 64G or 500MiB")
    scale = {
        "tib": 1024 * GiB,
        "t": 1024 * GiB,
        "tb": 10**12,
        "gib": GiB,
        "g": GiB,
        "gb": 10**9,
        "mib": MiB,
        "m": MiB,
        "mb": 10**6,
    }
    return int(float(amount.group(1)) * scale[(amount.group(2) or "GiB").lower()])


def gpu_memory_from_name(name: str) -> tuple[int, bool]:
    """(bytes, bf16 support) for `h100`, `A100-40GB`, `RTX 4090`, or an amount such as `80GiB` / `40GB`."""
    import difflib
    import re

    text = name.strip()
    amount = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GiB|GB|G|MiB|MB)?", text, flags=re.IGNORECASE)
    if amount:
        unit = (amount.group(2) or "GiB").lower()
        scale = {"gib": GiB, "g": GiB, "gb": 10**9, "mib": MiB, "mb": 10**6}[unit]
        return int(float(amount.group(1)) * scale), True
    key = re.sub(r"[\s_]", "", text.lower()).replace("geforce", "").replace("nvidia", "")
    if key not in GPUS:
        close = difflib.get_close_matches(key, GPUS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown GPU {name!r}{hint}; give a name ({', '.join(GPUS)}) or an amount such as 80GiB")
    mib, bf16 = GPUS[key]
    return mib * MiB, bf16


def run_from_ds_config(cfg: dict, base: RunShape) -> RunShape:
    """Fill a RunShape from a ds_config dict (the keys the planner cares about; everything else is ignored)."""

    def num(value, name):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f'ds_config {name} = {value!r}: the planner needs a number here ("auto" is only filled in by the HF Trainer)'
            )
        return int(value)

    zero = cfg.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise UserError("ds_config zero_optimization must be an object")
    changes = {}
    if "train_micro_batch_size_per_gpu" in cfg:
        changes["micro_batch"] = num(cfg["train_micro_batch_size_per_gpu"], "train_micro_batch_size_per_gpu")
    if "gradient_accumulation_steps" in cfg:
        changes["grad_accum"] = num(cfg["gradient_accumulation_steps"], "gradient_accumulation_steps")
    if (cfg.get("bf16") or {}).get("enabled") is True:
        changes["dtype"] = "bf16"
        half = cfg["bf16"]
        both = half.get("bf16_master_weights_and_grads") is True and half.get("bf16_optimizer_states") is True
        changes["master_weights"] = "bf16" if both else "fp32"
    elif (cfg.get("fp16") or {}).get("enabled") is True:
        changes["dtype"] = "fp16"
    elif "bf16" in cfg or "fp16" in cfg:
        changes["dtype"] = "fp32"
    data_types = cfg.get("data_types") or {}
    if isinstance(data_types, dict) and "grad_accum_dtype" in data_types:
        changes["grad_accum_dtype"] = (
            "fp32" if str(data_types["grad_accum_dtype"]).lower() in ("fp32", "float32", "float") else "auto"
        )
    if "stage" in zero:
        changes["zero_stage"] = num(zero["stage"], "zero_optimization.stage")
    for key, attr in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
        entry = zero.get(key)
        if isinstance(entry, dict) and entry.get("device"):
            changes[attr] = str(entry["device"])
    offload_opt = zero.get("offload_optimizer")
    if isinstance(offload_opt, dict) and "ratio" in offload_opt:
        ratio = offload_opt["ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise UserError(f"ds_config zero_optimization.offload_optimizer.ratio = {ratio!r}: give a number in (0, 1]")
        changes["offload_ratio"] = float(ratio)
    for key, attr in (
        ("reduce_bucket_size", "reduce_bucket_size"),
        ("allgather_bucket_size", "allgather_bucket_size"),
        ("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
        ("prefetch_bucket_size", "prefetch_bucket_size"),
        ("stage3_max_live_parameters", "max_live_parameters"),
        ("max_live_parameters", "max_live_parameters"),
        ("stage3_param_persistence_threshold", "param_persistence_threshold"),
        ("param_persistence_threshold", "param_persistence_threshold"),
        ("sub_group_size", "sub_group_size"),
    ):
        if key in zero:
            changes[attr] = num(zero[key], f"zero_optimization.{key}")
    if "overlap_comm" in zero:
        changes["overlap_comm"] = bool(zero["overlap_comm"])
    if "contiguous_gradients" in zero:
        changes["contiguous_gradients"] = bool(zero["contiguous_gradients"])
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("type"), str):
        kind = opt["type"].lower()
        changes["optimizer"] = "sgd" if kind == "sgd" else "adamw"
    return replace(base, **changes)
