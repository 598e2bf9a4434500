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
    config's with "auto" read as bf16)."""
    from zerotrain import memory

    m, t, ds = cfg.model, cfg.train, cfg.deepspeed
    return memory.RunShape(
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        micro_batch=t.micro_batch_size,
        grad_accum=t.grad_accum,
        zero_stage=ds.zero_stage,
        offload_optimizer=ds.offload_optimizer,
        offload_params=ds.offload_params,
        activation_checkpointing=ds.activation_checkpointing,
        contiguous_gradients=ds.zero_stage >= 2,
        overlap_comm=gpus_per_node * nodes > 1,
        dtype=dtype or ("bf16" if ds.dtype == "auto" else ds.dtype),
        grad_accum_dtype=ds.grad_accum_dtype,
        compile=t.compile if (t.hf_fast_path or not m.hf) else "none",
        fused_loss=t.fused_loss and (t.hf_fast_path or not m.hf),
        seq_len=t.seq_len or (m.block_size or memory.GPT2_PRESETS.get(m.preset, {}).get("block_size", 1024)),
    )


def plan_inputs(args):
    """ModelShape and RunShape from --config (a zerotrain run), --ds-config and the flags, flags winning."""
    import dataclasses
    from pathlib import Path

    from zerotrain import memory

    run = memory.RunShape(micro_batch=8)
    model_spec = args.model
    if args.config:
        from zerotrain.runconfig import load_run_config

        cfg = load_run_config(args.config, [])
        m = cfg.model
        if model_spec is None:
            model = model_shape(m)
        overlap = args.gpus is not None and args.gpus * (args.nodes or 1) > 1
        run = dataclasses.replace(run_shape(cfg), overlap_comm=overlap)
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
        "dtype": args.dtype,
        "optimizer": args.optimizer,
        "attention": args.attention,
        "offload_optimizer": args.offload_optimizer,
        "offload_params": args.offload_params,
    }
    run = dataclasses.replace(run, **{k: v for k, v in flags.items() if v is not None})
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
    return model, run


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


def print_plans(
    model,
    run,
    plans: list,
    best,
    gpu_bytes: int | None,
    gpu_name: str,
    host_bytes: int | None = None,
    host_name: str = "",
) -> None:
    """The per-GPU table of every planned configuration, host RAM and checkpoint size, the notes, and the fastest
    configuration that fits with 10% headroom (`best`, from memory.recommend)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(Console().width, 110))
    console.print(model.describe())
    console.print(
        f"{run.world} GPU{'s' if run.world > 1 else ''} ({run.gpus_per_node} per node × {run.nodes} node{'s' if run.nodes > 1 else ''}), "
        f"micro-batch {run.micro_batch} × {run.seq_len} tokens, accumulation {run.grad_accum}"
        f"{' (summed in fp32)' if run.grad_accum_dtype == 'fp32' else ''}, {run.dtype}"
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
        "peak in",
    ):
        table.add_column(col, justify="left" if col in ("ZeRO", "offload") else "right", no_wrap=col == "fits")
    for p in plans:
        r, g = p.run, p.per_gpu
        offload = ", ".join(
            f"{what} {where}"
            for what, where in (("opt", r.offload_optimizer), ("params", r.offload_params))
            if where != "none"
        )
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
            p.peak_phase,
        )
    console.print(table)
    first = plans[0]
    console.print(
        f"host/node: host RAM per node in GiB ({run.gpus_per_node} ranks, their pinned offload buffers, loading a checkpoint"
        + (f"; the node has {host_name}" if host_bytes else "; not checked against a node's RAM: pass --host-memory")
        + "); "
        f"checkpoint on disk: {first.checkpoint_bytes / 2**30:.1f} GiB"
        + "".join(f"; NVMe for ZeRO-{p.run.zero_stage}: {p.nvme_bytes / 2**30:.1f} GiB" for p in plans if p.nvme_bytes)
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
            console.print(
                f"recommended: ZeRO-{r.zero_stage}"
                + (f", offload optimizer {r.offload_optimizer}" if r.offload_optimizer != "none" else "")
                + (f", offload params {r.offload_params}" if r.offload_params != "none" else "")
                + (
                    ", activation checkpointing"
                    if r.activation_checkpointing and not run.activation_checkpointing
                    else ""
                )
                + f", micro-batch {r.micro_batch}{keep} — {best.gpu_bytes_needed / 2**30:.1f} of {gpu_bytes / 2**30:.1f} GiB"
            )
        else:
            console.print(
                "nothing fits with 10% headroom: add GPUs, shorten --seq-len"
                + ("" if run.activation_checkpointing else ", or use --activation-checkpointing")
            )
