"""`zerotrain plan`'s front end: the model and run shapes from --model, a run config, a ds_config and the flags; one
GPU's memory from --gpu-memory or nvidia-smi; the node's host RAM from --host-memory, the cgroup limit or
/proc/meminfo; and the printed plan (the per-stage table, notes, the recommendation). The arithmetic is the memory
package's; cli.py parses the flags and calls these. No torch import: plan answers instantly.
"""

from pathlib import Path

from zerotrain import UserError

# cgroup v2, then v1: a container's memory limit, which the kernel's OOM killer enforces below the machine's RAM
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory(spec: str | None, root: str = "/") -> tuple[int | None, str]:
    """Bytes of host RAM one node may use: --host-memory when given, else the smaller of this process's cgroup
    memory limit and MemTotal in /proc/meminfo (the OOM killer acts at whichever is lower); (None, why) when
    neither can be read. `root` lets tests point at a fake /sys and /proc."""
    from zerotrain import memory

    if spec:
        return memory.parse_size(spec), f"{spec} (--host-memory)"
    found = []
    for path in CGROUP_LIMITS:
        try:
            text = Path(root, path.lstrip("/")).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            found.append((int(text), "cgroup limit"))
        break
    try:
        for line in Path(root, "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append((int(line.split()[1]) * 1024, "/proc/meminfo"))
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        return None, "unknown (pass --host-memory)"
    amount, source = min(found)
    return amount, f"{amount / 2**30:.1f} GiB ({source}; --host-memory overrides)"


def gpu_memory(spec: str | None) -> tuple[int | None, str]:
    """Bytes of one GPU from --gpu-memory (a name such as h100, or an amount such as 80GiB), else from
    nvidia-smi when there is one (no torch import: plan must start instantly)."""
    import shutil
    import subprocess

    from zerotrain import memory

    if spec:
        return memory.gpu_memory_from_name(spec)[0], spec
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.splitlines()
            mib, name = out[0].split(",", 1)
            return int(mib) * 2**20, f"{name.strip()} (detected)"
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return None, "unknown (pass --gpu-memory)"


def cache_dir() -> Path:
    """zerotrain's cache: $XDG_CACHE_HOME/zerotrain, else ~/.cache/zerotrain."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zerotrain"


def _host_key() -> dict:
    """What a CPU Adam rate depends on: the host, the cores this process may use, the torch build."""
    import os
    import platform

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from importlib.metadata import version

    return {"host": platform.node(), "cores": cores, "torch": version("torch")}


def measure_cpu_adam(n_params: int = 4_000_000, seconds: float = 0.5) -> float:
    """Parameters per second one process's AdamW steps on this host's CPU with all its cores: torch's fused CPU
    AdamW on fp32 tensors, the same work per parameter as DeepSpeedCPUAdam (which offload runs, and whose import alone
    takes seconds); how far apart the two are is measured by benchmarks/cpu_adam_rate.py (docs/memory.md). About a
    second with the torch import."""
    import torch

    param = torch.nn.Parameter(torch.zeros(n_params))
    param.grad = torch.randn(n_params)
    return optimizer_rate(torch.optim.AdamW([param], lr=1e-4, fused=True), n_params, seconds)


def optimizer_rate(optimizer, n_params: int, seconds: float) -> float:
    """Parameters per second of optimizer.step() over n_params, timed for `seconds` after a first step."""
    import time

    optimizer.step()  # the first step allocates the moments
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or steps < 2:
        optimizer.step()
        steps += 1
    return steps * n_params / elapsed


def cpu_adam_rate(measure: bool = False) -> tuple[float | None, str]:
    """(parameters/s, where from) of CPU Adam on this host: measured now when asked (and cached in cache_dir()),
    else the cached figure when it was measured on this host with these cores and this torch; (None, how to get
    one) otherwise. `plan` stays instant: it measures only with --measure-cpu-adam."""
    import json
    from datetime import date

    path, key = cache_dir() / "cpu_adam.json", _host_key()
    if measure:
        rate = measure_cpu_adam()
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            **key,
            "params_per_s": rate,
            "method": "torch.optim.AdamW(fused=True), fp32",
            "date": str(date.today()),
        }
        path.write_text(json.dumps(record) + "\n")
        return rate, f"measured now on {key['cores']} cores, cached in {path}"
    try:
        cached = json.loads(path.read_text())
        if all(cached.get(k) == v for k, v in key.items()) and cached["params_per_s"] > 0:
            return float(cached["params_per_s"]), f"measured on this host {cached.get('date', '')} ({path})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None, "not measured on this host: `zerotrain plan --measure-cpu-adam` (about a second, then cached)"


def model_shape(m, vocab_size: int | None = None):
    """The ModelShape of a run config's [model] section (zerotrain's GPT): its preset with the keys it sets."""
    from zerotrain import memory

    return memory.gpt2_shape(
        m.preset,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_embd=m.n_embd,
        block_size=m.block_size,
        vocab_size=vocab_size if vocab_size is not None else m.vocab_size,
        dropout=m.dropout,
    )


def run_shape(cfg, gpus_per_node: int = 1, nodes: int = 1, dtype: str | None = None):
    """The RunShape of a zerotrain run config on `gpus_per_node` × `nodes` ranks (dtype: the resolved one, else the
    config's with "auto" read as bf16; offload_optimizer "auto" read as none, the bottom of the planner's ladder)."""
    from zerotrain import memory

    m, t, ds = cfg.model, cfg.train, cfg.deepspeed
    partial = ds.offload_optimizer_ratio < 1
    dtype = dtype or ("bf16" if ds.dtype == "auto" else ds.dtype)
    return memory.RunShape(
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        micro_batch=t.micro_batch_size,
        grad_accum=t.grad_accum,
        zero_stage=ds.zero_stage,
        offload_optimizer="none"
        if ds.offload_optimizer == "auto"
        else ds.offload_optimizer,  # auto: see resolve_offload
        offload_ratio=ds.offload_optimizer_ratio,
        sub_group_size=memory.PARTIAL_OFFLOAD_SUB_GROUP if partial else memory.RunShape.sub_group_size,
        offload_params=ds.offload_params,
        activation_checkpointing=ds.activation_checkpointing,
        contiguous_gradients=ds.zero_stage >= 2,
        overlap_comm=gpus_per_node * nodes > 1,
        dtype=dtype,
        grad_accum_dtype=ds.grad_accum_dtype,
        master_weights=ds.master_weights,
        compile=t.compile if (t.hf_fast_path or not m.hf) else "none",
        fused_loss=t.fused_loss and (t.hf_fast_path or not m.hf),
        liger=_plans_liger(cfg, dtype),
        param_persistence_threshold=memory.ALL_PERSISTENT
        if ds.zero3_persistent_params == "on"
        else memory.RunShape.param_persistence_threshold,  # auto: see preflight.resolve_persistence
        seq_len=t.seq_len or (m.block_size or memory.GPT2_PRESETS.get(m.preset, {}).get("block_size", 1024)),
    )


def _plans_liger(cfg, dtype: str) -> bool:
    """Whether a model.hf run on a GPU gets Liger Kernel's modules (kernels/hf.py apply: train.liger "on", or "auto"
    where the decoder layers are not compiled, in bf16/fp16, for a model type Liger Kernel patches, installed)."""
    import importlib.util
    import json
    from pathlib import Path

    from zerotrain.memory import LIGER_MODEL_TYPES
    from zerotrain.runconfig import compiles, uses_liger

    m, t, ds = cfg.model, cfg.train, cfg.deepspeed
    if not (m.hf and t.hf_fast_path):
        return False
    try:
        model_type = json.loads((Path(m.hf) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    return uses_liger(
        t,
        True,
        compiles(t, ds.zero_stage, True),
        dtype,
        model_type in LIGER_MODEL_TYPES,
        lambda: importlib.util.find_spec("liger_kernel") is not None,
    )


def plan_inputs(args):
    """ModelShape and RunShape from --config (a zerotrain run), --ds-config and the flags, flags winning; whether
    the offload is "auto" (--offload-optimizer auto, or the run config's), to be chosen by the planner; and whether
    ZeRO-3's parameter persistence is the run config's "auto", chosen the same way."""
    import dataclasses
    from pathlib import Path

    from zerotrain import memory

    run = memory.RunShape(micro_batch=8)
    model_spec = args.model
    auto = args.offload_optimizer == "auto"
    persist_auto = False
    if args.config:
        from zerotrain.runconfig import load_run_config

        cfg = load_run_config(args.config, [])
        m = cfg.model
        if model_spec is None:  # a Hugging Face model from its config.json, else zerotrain's GPT
            model = memory.resolve_model(f"hf:{m.hf}") if m.hf else model_shape(m)
        overlap = args.gpus is not None and args.gpus * (args.nodes or 1) > 1
        run = dataclasses.replace(run_shape(cfg), overlap_comm=overlap)
        auto = auto or (args.offload_optimizer is None and cfg.deepspeed.offload_optimizer == "auto")
        persist_auto = cfg.deepspeed.zero3_persistent_params == "auto" and not args.ds_config
    if model_spec is not None:
        model = memory.resolve_model(model_spec)
    elif not args.config:
        raise UserError(
            "name a model: --model gpt2-xl (or llama3-8b, hf:DIR, dims:L,HEADS,HIDDEN), or --config RUN.toml"
        )
    if args.ds_config:
        from zerotrain.dsconfig import load_user_config

        if not Path(args.ds_config).is_file():
            raise UserError(f"--ds-config {args.ds_config} not found")
        run = memory.run_from_ds_config(load_user_config(args.ds_config), run)
    flags = {
        "gpus_per_node": args.gpus,
        "nodes": args.nodes,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "grad_accum": args.grad_accum,
        "grad_accum_dtype": args.grad_accum_dtype,
        "master_weights": args.master_weights,
        "dtype": args.dtype,
        "optimizer": args.optimizer,
        "attention": args.attention,
        "offload_optimizer": None if auto else args.offload_optimizer,
        "offload_params": args.offload_params,
        "offload_ratio": args.offload_ratio,
    }
    run = dataclasses.replace(run, **{k: v for k, v in flags.items() if v is not None})
    if run.offload_ratio < 1:
        run = dataclasses.replace(run, sub_group_size=min(run.sub_group_size, memory.PARTIAL_OFFLOAD_SUB_GROUP))
    if args.activation_checkpointing:
        run = dataclasses.replace(run, activation_checkpointing=True)
    if not args.config and model.impl != "zerotrain":
        # a Hugging Face model named without a zerotrain run config is planned as transformers' code runs it (the
        # HF Trainer, Accelerate, raw DeepSpeed); `--config RUN.toml` plans zerotrain's fast path for it
        run = dataclasses.replace(run, fused_loss=False, compile="none")
    if args.seq_len is None and not args.config:
        run = dataclasses.replace(
            run, seq_len=min(model.max_positions, 1024) if model.impl != "hf-llama" else min(model.max_positions, 2048)
        )
    return model, run, auto, persist_auto


def print_inference(model, ip, gpu_bytes: int | None, gpu_name: str) -> None:
    """Weights, KV cache, activations and CUDA context of an inference plan, and whether they fit."""
    print(model.describe())
    print(f"inference, batch {ip.batch} × context {ip.context}, {ip.dtype}; GPU: {gpu_name}")
    for label, value in (
        ("weights", ip.weights),
        ("KV cache", ip.kv_cache),
        ("activations", ip.activations),
        ("CUDA context", ip.overhead),
        ("total", ip.total),
    ):
        print(f"  {label:<13} {value / 2**30:9.2f} GiB")
    if gpu_bytes:
        print(f"  {'fits' if ip.total <= gpu_bytes else 'does NOT fit'} in {gpu_bytes / 2**30:.1f} GiB")


def step_seconds(p, cpu_adam_rate: float | None) -> float | None:
    """Seconds of CPU Adam per optimizer step of an offload plan at `cpu_adam_rate` parameters/s; None without a
    rate or without offload."""
    from zerotrain import memory

    if cpu_adam_rate is None or p.run.offload_optimizer == "none":
        return None
    return memory.optimizer_step_seconds(p.model, p.run, cpu_adam_rate)


def print_plans(
    model,
    run,
    plans: list,
    best,
    gpu_bytes: int | None,
    gpu_name: str,
    host_bytes: int | None = None,
    host_name: str = "",
    cpu_adam: tuple[float | None, str] = (None, ""),
) -> None:
    """The per-GPU table of every planned configuration, host RAM and checkpoint size, the CPU Adam time of offload
    rows at `cpu_adam` = (parameters/s, where from), the notes, and the fastest configuration that fits with 10%
    headroom (`best`, from memory.recommend)."""
    from rich.console import Console
    from rich.table import Table

    from zerotrain import memory

    console = Console(highlight=False, width=max(Console().width, 110))
    console.print(model.describe())
    console.print(
        f"{run.world} GPU{'s' if run.world > 1 else ''} ({run.gpus_per_node} per node × {run.nodes} node{'s' if run.nodes > 1 else ''}), "
        f"micro-batch {run.micro_batch} × {run.seq_len} tokens, accumulation {run.grad_accum}"
        f"{' (summed in fp32)' if run.grad_accum_dtype == 'fp32' else ''}, {run.dtype}"
        f"{', bf16 master weights' if memory.bf16_master(run) else ''}"
        f"{', activation checkpointing' if run.activation_checkpointing else ''}; GPU memory: "
        + (f"{gpu_bytes / 2**30:.1f} GiB, {gpu_name}" if gpu_bytes else gpu_name)
    )
    gib = lambda x: f"{x / 2**30:.2f}"
    table = Table(
        title="per GPU, GiB: the terms alive at the peak, which add up to alloc (peak allocated); reserved = the allocator's "
        "peak; need = reserved + CUDA context and NCCL",
        title_justify="left",
        box=None,
    )
    for col in (
        "ZeRO",
        "offload",
        "params",
        "grads",
        "optim",
        "activ",
        "buffers",
        "alloc",
        "reserved",
        "need",
        "fits",
        "host/node",
        "CPU step",
        "peak in",
    ):
        table.add_column(col, justify="left" if col in ("ZeRO", "offload") else "right", no_wrap=col == "fits")
    for p in plans:
        r, g = p.run, p.per_gpu
        offload = ", ".join(
            f"{what} {where}"
            for what, where in (("opt", r.offload_optimizer), ("params", r.offload_params))
            if where != "none"
        ).replace("opt cpu", f"opt cpu {r.offload_ratio:.0%}" if r.offload_ratio < 1 else "opt cpu")
        step = step_seconds(p, cpu_adam[0])
        fits = (
            ""
            if not gpu_bytes
            else "yes"
            if p.fits(gpu_bytes, 0.10, host_bytes)
            else "tight"
            if p.fits(gpu_bytes, 0.0, host_bytes)
            else "NO (host)"
            if p.fits(gpu_bytes, 0.0)
            else "NO"
        )
        table.add_row(
            str(r.zero_stage),
            offload or "-",
            gib(g["params"]),
            gib(g["grads"]),
            gib(g["optimizer"]),
            gib(g["activations"]),
            gib(g["buffers"]),
            gib(g["peak_allocated"]),
            gib(g["peak_reserved"]),
            gib(p.gpu_bytes_needed),
            fits,
            f"{p.host_ram_per_node / 2**30:.0f}",
            "-" if r.offload_optimizer == "none" else "?" if step is None else f"{step:.2f} s",
            p.peak_phase,
        )
    console.print(table)
    first = plans[0]
    console.print(
        f"host/node: host RAM per node in GiB ({run.gpus_per_node} ranks, their pinned offload buffers, loading the "
        f"weights; resuming adds {max(p.host_terms['resuming'] for p in plans) / 2**30:.0f} GiB at most for the optimizer shard"
        + (f"; the node has {host_name}" if host_bytes else "; not checked against a node's RAM: pass --host-memory")
        + "); "
        f"checkpoint on disk: {first.checkpoint_bytes / 2**30:.1f} GiB"
        + "".join(f"; NVMe for ZeRO-{p.run.zero_stage}: {p.nvme_bytes / 2**30:.1f} GiB" for p in plans if p.nvme_bytes)
    )
    if any(p.run.offload_optimizer != "none" for p in plans):
        rate, source = cpu_adam
        console.print(
            "CPU step: seconds of CPU Adam per optimizer step, which offload runs after backward without overlap; "
            + (f"at {rate / 1e9:.2f}G parameters/s ({source})" if rate else source)
        )
    if any(p.run.zero_stage == 3 and p.run.param_persistence_threshold >= memory.ALL_PERSISTENT for p in plans):
        console.print(
            "ZeRO-3 keeps every parameter gathered (deepspeed.zero3_persistent_params, auto: it fits with 10% to "
            "spare), so forward and backward gather nothing"
        )
    for note in dict.fromkeys(note for p in plans for note in p.notes):
        console.print(f"note: {note}")
    if gpu_bytes:
        if best:
            r = best.run
            accum = run.grad_accum * run.micro_batch / r.micro_batch
            keep = (
                f", accumulation {int(accum)} keeps the global batch"
                if accum == int(accum) and r.micro_batch != run.micro_batch
                else ""
            )
            step = step_seconds(best, cpu_adam[0])
            console.print(
                f"recommended: ZeRO-{r.zero_stage}"
                + (f", offload optimizer {r.offload_optimizer}" if r.offload_optimizer != "none" else "")
                + (f" (ratio {r.offload_ratio:g})" if r.offload_ratio < 1 else "")
                + (f", offload params {r.offload_params}" if r.offload_params != "none" else "")
                + (
                    ", activation checkpointing"
                    if r.activation_checkpointing and not run.activation_checkpointing
                    else ""
                )
                + f", micro-batch {r.micro_batch}{keep} — {best.gpu_bytes_needed / 2**30:.1f} of {gpu_bytes / 2**30:.1f} GiB"
                + (f"; CPU Adam {step:.2f} s per optimizer step" if step is not None else "")
            )
            if r.offload_optimizer != "none":
                console.print(
                    f"  as run-config keys: deepspeed.zero_stage = {r.zero_stage}, {memory.describe_offload(r)}"
                )
        else:
            console.print(
                "nothing fits with 10% headroom: add GPUs, shorten --seq-len"
                + ("" if run.activation_checkpointing else ", or use --activation-checkpointing")
            )
