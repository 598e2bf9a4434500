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
  peer    the raw peer: transformers LlamaForCausalLM under deepspeed.initialize, as its documentation shows
          (benchmarks/memory_probe.py hf), timed after --warm steps
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
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
    p.add_argument("--out", required=True)
    p.add_argument("--make-model-only", action="store_true", help=argparse.SUPPRESS)
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


def planned_peak(args: list[str]) -> float | None:
    """The planner's peak allocated bytes for the run these overrides describe (one GPU)."""
    from zerotrain import memory, planning
    from zerotrain.runconfig import load_run_config

    cfg = load_run_config(str(ROOT / "configs/smollm2-shakespeare.toml"), args)
    config = json.loads((Path(cfg.model.hf) / "config.json").read_text())
    model = memory.shape_from_hf_config(config, cfg.model.hf)
    return memory.plan(model, planning.run_shape(cfg, 1, 1, "bf16")).per_gpu["peak_allocated"]


def run_zerotrain(a, model_dir: Path, data: Path, stage: int, variant: str, log: Path) -> dict:
    run_dir = Path("/tmp/hf_fast_path") / f"{model_dir.name}-{variant}-z{stage}"
    args = overrides(a, model_dir, data, stage, variant, run_dir)
    cmd = [sys.executable, "-m", "zerotrain", "train", "configs/smollm2-shakespeare.toml", *args, "--overwrite"]
    started = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    row = {"rc": rc, "wall_s": round(time.time() - started, 1), "planned_peak_gib": planned_peak(args) / 2**30}
    metrics = run_dir / "metrics.jsonl"
    steps = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in steps if "loss" in r]
    late = [r for r in steps if r["step"] > a.log_interval] or steps
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
    return row


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
    if a.make_model_only:
        make_model_dir(a)
        return 0
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
