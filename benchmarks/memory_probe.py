"""Measure per-GPU memory of one training configuration, for calibrating `zerotrain plan`.

One configuration per process (so nothing leaks from an earlier engine into the peak), started by torchrun:

  torchrun --nproc_per_node 2 benchmarks/memory_probe.py zerotrain --model gpt2 --zero 2 --micro-batch 16 --out DIR
  torchrun --nproc_per_node 2 benchmarks/memory_probe.py hf --model hf-gpt2:gpt2-xl --zero 3 --micro-batch 4 --out DIR

`zerotrain` runs zerotrain's own trainer (`zerotrain.train.train`) for a few steps without checkpoints and
reads its metrics; `hf` runs a randomly initialised transformers model (GPT2LMHeadModel or LlamaForCausalLM
with SDPA attention) under raw DeepSpeed the way its documentation shows, with torch's fused AdamW. Both
report, per rank 0: allocated bytes after setup, peak allocated and peak reserved over the whole process
(torch.cuda.max_memory_*). One JSON line is appended to DIR/measurements.jsonl; with --snapshot, rank 0
also dumps a CUDA allocator trace (torch.cuda.memory._dump_snapshot) for reading where the peak comes from.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from zerotrain.memory import LLAMA_PRESETS as LLAMA_SHAPES  # transformers LlamaConfig arguments


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("impl", choices=("zerotrain", "hf"))
    p.add_argument("--model", required=True, help="zerotrain: a preset; hf: hf-gpt2:PRESET or llama:SHAPE")
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    p.add_argument("--offload-optimizer", default="none")
    p.add_argument("--offload-params", default="none")
    p.add_argument(
        "--offload-ratio", type=float, default=1.0, help="ZeRO-3 with --offload-optimizer cpu: the share on the CPU"
    )
    p.add_argument("--compile", default="none", choices=("none", "blocks", "auto"), help="zerotrain: train.compile")
    p.add_argument("--plain-loss", action="store_true", help="zerotrain: train.fused_loss=false (the full fp32 logits)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warm", type=int, default=0, help="hf: steps run before the clock starts (tokens/s)")
    p.add_argument("--vocab", type=int, default=0, help="hf llama: vocabulary instead of the preset's")
    p.add_argument("--data", default="data/shakespeare-gpt2")
    p.add_argument("--snapshot", action="store_true")
    p.add_argument("--out", required=True)
    return p.parse_args()


def config_name(a) -> str:
    return (
        f"{a.impl}-{a.model.replace(':', '-')}-z{a.zero}-mb{a.micro_batch}-ga{a.grad_accum}-t{a.seq_len}-{a.dtype}"
        f"{'-ckpt' if a.checkpointing else ''}{'-oo' + a.offload_optimizer if a.offload_optimizer != 'none' else ''}"
        f"{f'-r{a.offload_ratio:g}' if a.offload_ratio < 1 else ''}"
        f"{'-op' + a.offload_params if a.offload_params != 'none' else ''}"
        f"{'-compiled' if a.impl == 'zerotrain' and a.compile == 'blocks' else ''}{'-plainloss' if a.plain_loss else ''}"
        f"-w{os.environ.get('WORLD_SIZE', '1')}"
    )


def run_zerotrain(a, out: Path) -> dict:
    from zerotrain.runconfig import load_run_config
    from zerotrain.train import train

    run_dir = Path("/tmp/memprobe") / config_name(a)  # the same on every rank
    overrides = [
        f"--run.out_dir={run_dir}",
        "--run.checkpoints=false",
        "--run.tensorboard=false",
        f"--data.dir={a.data}",
        f"--model.preset={a.model}",
        f"--train.max_steps={a.steps}",
        "--train.log_interval=1",
        "--train.eval_interval=0",
        "--train.early_stop_patience=0",
        f"--train.micro_batch_size={a.micro_batch}",
        f"--train.grad_accum={a.grad_accum}",
        f"--train.seq_len={a.seq_len}",
        f"--deepspeed.zero_stage={a.zero}",
        f"--deepspeed.dtype={a.dtype}",
        f"--deepspeed.activation_checkpointing={'true' if a.checkpointing else 'false'}",
        f"--deepspeed.offload_optimizer={a.offload_optimizer}",
        f"--deepspeed.offload_params={a.offload_params}",
        f"--deepspeed.offload_optimizer_ratio={a.offload_ratio}",
        f"--train.compile={a.compile}",
        f"--train.fused_loss={'false' if a.plain_loss else 'true'}",
    ]
    cfg = load_run_config("configs/gpt2-124m.toml", overrides)
    train(cfg, overwrite=True)
    records = (
        [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if (run_dir / "metrics.jsonl").exists()
        else []
    )
    steps = [r for r in records if "loss" in r]
    if not steps:
        return {}
    return {
        "setup_allocated": next((r["setup_mem_bytes"] for r in steps if "setup_mem_bytes" in r), None),
        "peak_allocated": steps[-1]["peak_mem_bytes"],
        "peak_reserved": steps[-1].get("peak_reserved_bytes"),
        "peak_allocated_per_step": [r["peak_mem_bytes"] for r in steps],
        "loss": steps[-1]["loss"],
        "tokens_per_s": steps[-1]["tokens_per_s"],
    }


def run_hf(a) -> dict:
    import deepspeed
    import torch
    import transformers

    deepspeed.init_distributed()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    family, _, shape = a.model.partition(":")
    if family == "hf-gpt2":
        from zerotrain.gpt_config import PRESETS

        s = PRESETS[shape]
        cfg = transformers.GPT2Config(
            n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], n_positions=1024, vocab_size=50257
        )
    else:
        cfg = transformers.LlamaConfig(**{**LLAMA_SHAPES[shape], **({"vocab_size": a.vocab} if a.vocab else {})})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)  # fp32, as from_pretrained loads by default
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    zero = {"stage": a.zero, "overlap_comm": True, "contiguous_gradients": True}
    if a.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": a.offload_optimizer, "pin_memory": True}
        if a.offload_ratio < 1:  # as zerotrain writes it (dsconfig/from_run.py)
            from zerotrain.memory import PARTIAL_OFFLOAD_SUB_GROUP

            zero["offload_optimizer"]["ratio"] = a.offload_ratio
            zero["sub_group_size"] = PARTIAL_OFFLOAD_SUB_GROUP
    if a.offload_params != "none":
        zero["offload_param"] = {"device": a.offload_params, "pin_memory": True}
    ds_config = {
        "train_micro_batch_size_per_gpu": a.micro_batch,
        "gradient_accumulation_steps": a.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        a.dtype: {"enabled": True},
    }
    if a.offload_optimizer != "none":
        ds_config["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.1}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=True)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    setup = torch.cuda.memory_allocated()
    g = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
    peaks, t0 = [], time.perf_counter()
    for step in range(a.warm + a.steps):
        if step == a.warm:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        for _ in range(a.grad_accum):
            ids = (
                torch.randint(0, cfg.vocab_size, (a.micro_batch, a.seq_len), generator=g)
                .pin_memory()
                .cuda(non_blocking=True)
            )
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
        peaks.append(torch.cuda.max_memory_allocated())
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / a.steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {
        "setup_allocated": setup,
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
        "peak_allocated_per_step": peaks,
        "loss": loss.item(),
        "tokens_per_s": a.micro_batch * a.grad_accum * a.seq_len * world / step_s,
    }


def main() -> int:
    a = parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    rank = int(os.environ.get("RANK", "0"))
    if a.snapshot and rank == 0:
        torch.cuda.memory._record_memory_history(max_entries=400_000)
    started = time.time()
    result = run_zerotrain(a, out) if a.impl == "zerotrain" else run_hf(a)
    if rank != 0:
        return 0
    import deepspeed
    import transformers

    name = config_name(a)
    if a.snapshot:
        torch.cuda.memory._dump_snapshot(str(out / f"{name}.pickle"))
    row = {
        "name": name,
        "impl": a.impl,
        "model": a.model,
        "gpus": int(os.environ.get("WORLD_SIZE", "1")),
        "zero_stage": a.zero,
        "micro_batch": a.micro_batch,
        "grad_accum": a.grad_accum,
        "seq_len": a.seq_len,
        "dtype": a.dtype,
        "activation_checkpointing": a.checkpointing,
        "offload_optimizer": a.offload_optimizer,
        "offload_params": a.offload_params,
        "offload_ratio": a.offload_ratio,
        **({"compile": a.compile, "fused_loss": not a.plain_loss} if a.impl == "zerotrain" else {}),
        **result,
        "gpu": torch.cuda.get_device_name(),
        "gpu_total_bytes": torch.cuda.get_device_properties(0).total_memory,
        "versions": f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
    }
    with open(out / "measurements.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        "MEASURED",
        name,
        f"setup {result.get('setup_allocated', 0) / 2**30:.2f} GiB",
        f"peak {result.get('peak_allocated', 0) / 2**30:.2f} GiB reserved {result.get('peak_reserved', 0) / 2**30:.2f} GiB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
