"""Hugging Face models on zerotrain's fast path vs the plain path and vs the raw peer, on one GPU.

  python benchmarks/hf_fast_path.py --shape tinyllama-1.1b --variants plain-z2,fast-z2,liger-z2,fast-z3,peer-z2 --out DIR

Makes a Llama-shaped model directory with random weights (save_pretrained; the GPT-2 BPE as its tokenizer, vocabulary
--vocab) and Shakespeare tokenized with it, then runs each variant in its own process (so no engine's memory leaks
into the next one's peak) for --steps steps and appends one JSON line per variant to DIR/hf_fast_path.jsonl: median
tokens/s and MFU over the steps after the first log interval (compilation and warm-up excluded), peak allocated GPU
memory, and the planner's prediction for the same run. Variants, NAME-zSTAGE:
  plain   `zerotrain train` with train.hf_fast_path = false (transformers' code as it is)
  fast    `zerotrain train` as configured by default (fused loss; compiled layers at ZeRO 0-2, Liger Kernel at ZeRO-3)
  compile fused loss + compiled decoder layers, no Liger Kernel
  liger   fused loss + Liger Kernel, eager layers
  persist as fast, with every parameter persistent under ZeRO-3 (deepspeed.zero3_persistent_params = "on"; "auto",
          the default, turns it on where the GPU holds every parameter)
  release as fast, with DeepSpeed's default persistence under ZeRO-3 (gathered layers released after use)
  mel0    as fast, with DeepSpeed's zero_optimization.memory_efficient_linear = false (ZeRO-3's own autograd function
          around every Linear off)
  compiled fused loss + compiled decoder layers at ZeRO-3, every parameter kept gathered: an experiment zerotrain
          itself refuses, run through benchmarks/z3_compiled_probe.py (do its losses match ZeRO-2's?)
  offload as fast, with the whole optimizer offloaded to the CPU (DeepSpeedCPUAdam; deepspeed.offload_optimizer)
  auto    as fast, deepspeed.offload_optimizer = "auto": the least offload the planner says fits this machine
  bf16m   as fast, deepspeed.master_weights = "bf16" (bf16 master weights and Adam moments, no offload)
  super   offload with DeepSpeed's SuperOffload (offload_optimizer.super_offload: a CPU-Adam worker process that steps
          each sub-group while backward runs; only without gradient clipping, so train.grad_clip = 0)
  zenflow offload with DeepSpeed's ZenFlow (zero_optimization.zenflow: the top 10% of gradient columns step on the GPU
          every step, the rest accumulate and step on the CPU every 4 steps, overlapped with the next steps)
  peer    the raw peer: transformers LlamaForCausalLM under deepspeed.initialize, as its documentation shows
          (benchmarks/memory_probe.py hf), timed after --warm steps
Each zerotrain variant also records the peak host RAM of the training process tree (proportional set size, sampled
every 0.2 s) beside the planner's host figure for the same run, and the planner's GPU peak, both from the run's own
preflight (so offload "auto" and persistence "auto" are planned as the run resolved them). With
--extra=--train.profile_steps=2 a variant's profile summary and benchmarks/idle_gaps.py's reading of its trace land
beside its log (NAME.profile.json, NAME.gaps.txt).
"""

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "plain": ["--train.hf_fast_path=false"],
    "fast": [],
    "compile": ["--train.liger=off", "--train.compile=auto"],
    "liger": ["--train.compile=none", "--train.liger=on"],
    # ZeRO-3 with every parameter persistent (never released after use: on one GPU a partition is the whole tensor)
    "persist": ["--deepspeed.zero3_persistent_params=on"],
    "release": ["--deepspeed.zero3_persistent_params=off"],
    # ZeRO-3 without DeepSpeed's memory_efficient_linear (its autograd function around every Linear, DS_MERGES)
    "mel0": [],
    # ZeRO-3 with compiled decoder layers, which zerotrain refuses: run through benchmarks/z3_compiled_probe.py
    "compiled": ["--train.compile=blocks", "--train.liger=off", "--deepspeed.zero3_persistent_params=on"],
    "offload": ["--deepspeed.offload_optimizer=cpu"],
    # DeepSpeed's bf16 master weights and Adam moments (6 bytes per parameter instead of 12), the optimizer on the GPU
    "bf16m": ["--deepspeed.master_weights=bf16"],
    "auto": ["--deepspeed.offload_optimizer=auto"],
    "super": ["--deepspeed.offload_optimizer=cpu", "--train.grad_clip=0"],
    "zenflow": ["--deepspeed.offload_optimizer=cpu"],
    # partial offload (ZeRO-Offload++'s ratio): that fraction of the optimizer on the CPU, the rest on the GPU
    "part50": ["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_optimizer_ratio=0.5"],
    "part25": ["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_optimizer_ratio=0.25"],
    "part10": ["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_optimizer_ratio=0.1"],
}
# ds_config entries merged over zerotrain's (deepspeed.config) for the variants that have no run-config key
DS_MERGES = {
    "mel0": {"zero_optimization": {"memory_efficient_linear": False}},
    "super": {"zero_optimization": {"offload_optimizer": {"super_offload": True, "cpuadam_cores_perc": 0.9}}},
    "zenflow": {
        "zero_optimization": {
            "zenflow": {
                "topk_ratio": 0.1,
                "select_strategy": "auto",
                "select_interval": "auto",
                "update_interval": None,  # the run's --grad-accum: ZenFlow makes it DeepSpeed's accumulation
                "full_warm_up_rounds": 0,
                "overlap_step": True,
            }
        }
    },
}


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="tinyllama-1.1b", help="a Llama preset of zerotrain.memory.LLAMA_PRESETS")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--variants", default="plain-z2,fast-z2,fast-z3,peer-z2")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-interval", type=int, default=5)
    p.add_argument("--warm", type=int, default=5, help="peer: steps before the clock starts")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--extra", default="", help="more --section.key=value overrides for zerotrain's variants")
    p.add_argument("--models", default="models")
    p.add_argument("--out", help="where the results go (needed for a run)")
    p.add_argument("--make-model-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--predict", help=argparse.SUPPRESS)  # a JSON list of overrides: print the run's plan
    return p.parse_args()


def make_model_dir(a) -> Path:
    """A Llama-shaped directory with random weights and the GPT-2 BPE as its tokenizer (bf16 safetensors)."""
    import torch
    import transformers

    from zerotrain.memory import LLAMA_PRESETS

    path = Path(a.models) / f"{a.shape}-v{a.vocab}"
    if (path / "config.json").exists():
        return path
    tokenizer = ROOT / "data/shakespeare-gpt2/tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        sys.exit(
            f"{tokenizer} missing: zerotrain data prepare --source shakespeare --tokenizer gpt2 --out data/shakespeare-gpt2"
        )
    cfg = transformers.LlamaConfig(**{**LLAMA_PRESETS[a.shape], "vocab_size": a.vocab, "max_position_embeddings": 8192})
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(path))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / f, path / f)
    return path


def prepare_data(model_dir: Path) -> Path:
    out = ROOT / "data" / f"shakespeare-{model_dir.name}"
    subprocess.run(
        [sys.executable, "-m", "zerotrain", "data", "prepare", "--source", "shakespeare", "--tokenizer", str(model_dir)]
        + ["--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out


def overrides(a, model_dir: Path, data: Path, stage: int, variant: str, run_dir: Path) -> list[str]:
    return [
        f"--run.out_dir={run_dir}",
        "--run.resume=",
        "--run.checkpoints=false",
        "--run.tensorboard=false",
        f"--data.dir={data}",
        f"--model.hf={model_dir}",
        f"--train.max_steps={a.steps}",
        f"--train.log_interval={a.log_interval}",
        "--train.eval_interval=0",
        "--train.early_stop_patience=0",
        f"--train.micro_batch_size={a.micro_batch}",
        f"--train.grad_accum={a.grad_accum}",
        f"--train.seq_len={a.seq_len}",
        f"--deepspeed.zero_stage={stage}",
        f"--deepspeed.activation_checkpointing={'true' if a.checkpointing else 'false'}",
        *VARIANTS[variant],
        *a.extra.split(),
    ]


def predict(args: list[str]) -> dict:
    """The planner's GPU peak and host RAM for the run these overrides describe, as its preflight plans it on this
    machine (one GPU). Run in a process of its own: preflight asks the GPU its size."""
    import torch

    from zerotrain.preflight import memory_check, preflight
    from zerotrain.runconfig import load_run_config

    cfg = load_run_config(str(ROOT / "configs/smollm2-shakespeare.toml"), args)
    plan = preflight(cfg, 1, overwrite=True)
    mc = memory_check(plan, 1, torch.cuda.is_available())
    return {
        "planned_peak_gib": mc.planned.per_gpu["peak_allocated"] / 2**30,
        "planned_host_gib": mc.host_needed(mc.planned) / 2**30,
        "planned_run": mc.run.describe(),
        "offload_choice": plan.offload_choice,
    }


def run_measuring_host(cmd: list[str], log: Path) -> tuple[int, int]:
    """Run cmd; return its exit code and the peak PSS of its process tree (sampled every 0.2 s)."""
    import psutil
    from host_memory_probe import tree_pss  # benchmarks/, this script's folder

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        root, peak, done = psutil.Process(proc.pid), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_pss(root))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    return rc, peak[0]


def run_zerotrain(a, model_dir: Path, data: Path, stage: int, variant: str, log: Path) -> dict:
    run_dir = Path("/tmp/hf_fast_path") / f"{model_dir.name}-{variant}-z{stage}"
    args = overrides(a, model_dir, data, stage, variant, run_dir)
    if variant in DS_MERGES:
        merge = log.with_suffix(".ds.json")
        merged = copy.deepcopy(DS_MERGES[variant])
        if "zenflow" in merged["zero_optimization"]:
            # ZenFlow sets gradient_accumulation_steps to update_interval (zenflow/engine.py configure_zenflow): the
            # same value keeps the batch per optimizer step that of the other variants
            merged["zero_optimization"]["zenflow"]["update_interval"] = a.grad_accum
        merge.write_text(json.dumps(merged, indent=1))
        args.append(f"--deepspeed.config={merge.resolve()}")
    entry = ["benchmarks/z3_compiled_probe.py"] if variant == "compiled" else ["-m", "zerotrain"]
    cmd = [sys.executable, *entry, "train", "configs/smollm2-shakespeare.toml", *args, "--overwrite"]
    started = time.time()
    rc, host_peak = run_measuring_host(cmd, log)
    row = {"rc": rc, "wall_s": round(time.time() - started, 1), "host_peak_gib": host_peak / 2**30}
    planned = subprocess.run(
        [sys.executable, __file__, "--predict", json.dumps(args)], cwd=ROOT, capture_output=True, text=True
    )
    if planned.returncode == 0:
        row |= json.loads(planned.stdout.strip().splitlines()[-1])
    else:
        row["planned_error"] = planned.stderr.strip().splitlines()[-1:]
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in steps if "loss" in r]
    late = [r for r in steps if r["step"] > a.log_interval and not r.get("profiled")] or steps
    if late:
        row |= {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in late),
            "mfu": statistics.median(r["mfu"] for r in late) if late[0].get("mfu") is not None else None,
            "peak_gib": max(r["peak_mem_bytes"] for r in steps) / 2**30,
            "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"],
        }
    applied = [line for line in log.read_text().splitlines() if "kernels" in line or "fast" in line.lower()]
    row["startup"] = applied[:3]
    keep_profile(run_dir, log)
    return row


def keep_profile(run_dir: Path, log: Path) -> None:
    """With --extra=--train.profile_steps=N: the run's profile summary beside its log, and benchmarks/idle_gaps.py's
    reading of its trace (the run directories are removed after each part of gpu_offload.sh)."""
    summary, trace = run_dir / "profile/summary-rank0.json", run_dir / "profile/trace-rank0.json.gz"
    if summary.exists():
        shutil.copy(summary, log.with_suffix(".profile.json"))
    if trace.exists():
        gaps = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/idle_gaps.py"), str(trace), "--top", "15"],
            capture_output=True,
            text=True,
        )
        log.with_suffix(".gaps.txt").write_text(gaps.stdout + gaps.stderr)


def run_peer(a, stage: int, log: Path, out: Path) -> dict:
    shape = f"llama:{a.shape}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "benchmarks/memory_probe.py", "hf"]
    cmd += [
        "--model",
        shape,
        "--zero",
        str(stage),
        "--micro-batch",
        str(a.micro_batch),
        "--grad-accum",
        str(a.grad_accum),
    ]
    cmd += ["--seq-len", str(a.seq_len), "--steps", str(a.steps), "--warm", str(a.warm), "--vocab", str(a.vocab)]
    cmd += ["--out", str(out / "peer")] + (["--checkpointing"] if a.checkpointing else [])
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    rows = (
        (out / "peer" / "measurements.jsonl").read_text().splitlines()
        if (out / "peer/measurements.jsonl").exists()
        else []
    )
    last = json.loads(rows[-1]) if rows and rc == 0 else {}
    return {"rc": rc, "tokens_per_s": last.get("tokens_per_s"), "peak_gib": (last.get("peak_allocated") or 0) / 2**30}


def main() -> int:
    a = parse_args()
    if a.predict:
        print(json.dumps(predict(json.loads(a.predict))))
        return 0
    if a.make_model_only:
        make_model_dir(a)
        return 0
    if not a.out:
        sys.exit("hf_fast_path.py: --out DIR is needed")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # The model is made in a process of its own: one made here would hold GPU memory through every variant's run
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--make-model-only"], check=True)
    model_dir = make_model_dir(a)
    data = prepare_data(model_dir)
    for name in a.variants.split(","):
        variant, _, stage = name.rpartition("-z")
        log = out / f"{a.shape}-{name}.log"
        if variant == "peer":
            row = run_peer(a, int(stage), log, out)
        else:
            row = run_zerotrain(a, model_dir, data, int(stage), variant, log)
        row = {
            "shape": a.shape,
            "variant": name,
            "micro_batch": a.micro_batch,
            "grad_accum": a.grad_accum,
            "seq_len": a.seq_len,
            "checkpointing": a.checkpointing,
            "gpu": _gpu_name(),
            **row,
        }
        print(json.dumps(row), flush=True)
        with open(out / "hf_fast_path.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


def _gpu_name() -> str:
    """Asked of nvidia-smi, so this process never holds GPU memory of its own."""
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        return "cpu"
    return names.splitlines()[0].strip() if names.strip() else "cpu"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
