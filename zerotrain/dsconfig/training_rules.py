"""The rules about what the settings do together in a run: the batch triple, precision, offload, stage-3 keys
at other stages, the optimizer and scheduler DeepSpeed builds, model features, and performance."""

import copy
import difflib
import math

from zerotrain.dsconfig.findings import Finding, _close, _Context, _fmt
from zerotrain.dsconfig.schema import (
    COMMUNICATION_DTYPES,
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    FP16_LOSS_SCALING_KEYS,
    OFFLOAD_DEVICES,
    OFFLOADABLE_OPTIMIZERS,
    OPTIMIZER_REPLACEMENTS,
    SCHEDULER_REQUIRED_PARAMS,
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
    _section,
    _stage,
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
    sub_group = _get(cfg, "zero_optimization.sub_group_size")
    sub_group = sub_group if _is_number(sub_group) else 1e9  # DeepSpeed's default
    if _is_number(ratio) and 0 < ratio < 1 and stage == 3 and sub_group > 1e8:
        yield Finding(
            "info",
            "zero_optimization.sub_group_size",
            f"partial offload splits the optimizer in whole sub-groups (stage3.py _create_fp32_partitions): with "
            f"sub_group_size {sub_group:.0e} a model of a few billion parameters per rank has a handful of them, so "
            f"ratio {ratio} lands on the nearest fraction of that handful",
            "set zero_optimization.sub_group_size to 1e7 (what zerotrain writes with a ratio below 1)",
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
