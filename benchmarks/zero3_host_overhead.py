"""ZeRO-3's host-side cost per optimizer step against ZeRO-2, on a model too small for compute to hide it: a 30-layer
Llama of hidden 64 (SmolLM2's depth), one rank, 2 micro-steps per step, every ZeRO-3 parameter persistent and each
decoder layer a ZeRO-3 leaf module (as zerotrain runs a model.hf at ZeRO-3 on one GPU). Runs on the CPU (DeepSpeed's
CPU accelerator); what it measures is Python in DeepSpeed's hooks, which a GPU's host pays too.
    RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29611 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 \\
      python benchmarks/zero3_host_overhead.py --stage 3 [--no-memory-efficient-linear] [--profile]
Prints one JSON line: the stage and the mean ms per optimizer step over --steps after 3 warm ones; --profile prints
cProfile's top functions by their own time first. Compare stages side by side in one sitting (the CPU is noisy)."""

import argparse
import cProfile
import json
import pstats
import time

import deepspeed
import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, choices=(2, 3), required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--no-memory-efficient-linear",
        action="store_true",
        help="zero_optimization.memory_efficient_linear = false (F.linear left as torch's)",
    )
    ap.add_argument(
        "--zero",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="another zero_optimization entry, e.g. stage3_prefetch_bucket_size=0 (repeatable)",
    )
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=30,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    zero = {"stage": a.stage, "contiguous_gradients": True, "overlap_comm": False}
    if a.stage == 3:
        zero["stage3_param_persistence_threshold"] = 2**40
        if a.no_memory_efficient_linear:
            zero["memory_efficient_linear"] = False
    for item in a.zero:
        key, _, value = item.partition("=")
        zero[key] = json.loads(value)
    ds = {
        "train_batch_size": 2,
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 2,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    model = transformers.LlamaForCausalLM(cfg)
    if a.stage == 3:
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        deepspeed.utils.set_z3_leaf_modules(model, [LlamaDecoderLayer])
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), config=ds)
    x = torch.randint(0, cfg.vocab_size, (1, 64))

    def step():
        for _ in range(2):
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()

    for _ in range(3):
        step()
    prof = cProfile.Profile() if a.profile else None
    if prof:
        prof.enable()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    ms = 1000 * (time.perf_counter() - start) / a.steps
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    print(
        json.dumps(
            {
                "stage": a.stage,
                "memory_efficient_linear": not a.no_memory_efficient_linear,
                "zero": a.zero,
                "ms_per_step": ms,
            }
        )
    )


if __name__ == "__main__":
    main()
