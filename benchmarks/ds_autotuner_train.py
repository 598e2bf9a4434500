"""A plain DeepSpeed training script for DeepSpeed's own autotuner (`deepspeed --autotuning tune|run`), used by
benchmarks/ds_autotuner_compare.py. It builds zerotrain's GPT (zerotrain/model.py) at the shape of the CPU tune bar
(tests/test_tune.py: 2 layers, 2 heads, 32 wide, 32 tokens, fp32, the char vocabulary of the prepared data), wraps
it with deepspeed.initialize(args=...) so that the ds_config comes from --deepspeed_config (a file, or the base64
string the autotuner passes), and trains on windows of zerotrain's prepared data.

    deepspeed --num_gpus 2 benchmarks/ds_autotuner_train.py --data DIR --deepspeed --deepspeed_config ds.json

With an "autotuning" section in the ds_config, the engine times forward, backward and step from
autotuning.start_profile_step to end_profile_step, writes its metrics file and exits the process itself
(runtime/engine.py, _autotuning_exit). Without one, it runs --steps optimizer steps and, with --timing-out, rank 0
writes the median optimizer-step time after --warmup-steps (the same measurement for any ds_config: the compare
script's common harness).
"""

import argparse
import base64
import json
import os
import statistics
import time

import deepspeed
import numpy as np
import torch

from zerotrain.data import TokenData
from zerotrain.dsconfig import uses_config_optimizer
from zerotrain.gpt_config import GPTConfig
from zerotrain.model import GPT
from zerotrain.train import param_groups


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="zerotrain prepared data (zerotrain data prepare)")
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=32)
    p.add_argument("--block_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--activation_checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (an autotuning run exits before)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timing-out", default=None, help="rank 0 writes the step times here (JSON)")
    p.add_argument("--local_rank", type=int, default=-1)  # the deepspeed launcher passes it
    p = deepspeed.add_config_arguments(p)
    return p.parse_args()


def read_ds_config(value: str) -> dict:
    """--deepspeed_config: a JSON file, or the base64 JSON the autotuner's experiments pass instead."""
    if os.path.isfile(value):
        with open(value) as f:
            return json.load(f)
    return json.loads(base64.urlsafe_b64decode(value).decode())


def main():
    args = parse_args()
    deepspeed.init_distributed(dist_backend="gloo")
    # as zerotrain's ranks do on CPU (distributed.py): the cores shared among this node's ranks, not each rank
    # taking all of them (with 2 ranks on 2 cores, torch's default ran this model's steps about 3x slower)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", 1)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    data = TokenData(args.data)
    torch.manual_seed(args.seed)  # identical initial weights on every rank, as zerotrain train does
    model = GPT(
        GPTConfig(
            n_layer=args.n_layer,
            n_head=args.n_head,
            n_embd=args.n_embd,
            block_size=args.block_size,
            vocab_size=data.vocab_size,
            dropout=0.0,
        )
    )
    model.gradient_checkpointing = args.activation_checkpointing  # as zerotrain train sets it
    groups, _ = param_groups(model, 0.1)
    # zerotrain's own choice (train.build_engine): DeepSpeed builds the optimizer when the ds_config names one (as
    # zerotrain's ds_config does for offload), else torch's fused AdamW
    if uses_config_optimizer(read_ds_config(args.deepspeed_config)):
        engine, *_ = deepspeed.initialize(args=args, model=model, model_parameters=groups)
    else:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
        engine, *_ = deepspeed.initialize(args=args, model=model, optimizer=opt)
    mb, gas = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    rank, world = engine.global_rank, engine.world_size
    rng = np.random.default_rng(args.seed + rank)
    train, T = data.train, args.block_size

    def batch():
        starts = rng.integers(0, len(train) - T - 1, size=mb)
        x = np.stack([train[s : s + T] for s in starts]).astype(np.int64)
        y = np.stack([train[s + 1 : s + T + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(x).to(engine.device), torch.from_numpy(y).to(engine.device)

    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        for _ in range(gas):
            x, y = batch()
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()  # with an "autotuning" section, exits the process once its profile steps are done
        times.append(time.perf_counter() - t0)
    if rank == 0 and args.timing_out:
        measured = times[args.warmup_steps :]
        step_s = statistics.median(measured)
        doc = {
            "zero_stage": engine.zero_optimization_stage(),
            "micro_batch": mb,
            "grad_accum": gas,
            "world": world,
            "global_batch": mb * gas * world,
            "seq_len": T,
            "step_times_s": times,
            "median_step_s": step_s,
            "tokens_per_s": mb * gas * world * T / step_s,
            "final_loss": float(loss.detach()),
        }
        with open(args.timing_out, "w") as f:
            json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
