"""The single-process baseline the CPU demo is held to: nanoGPT's CPU Shakespeare recipe
(4 layers, 4 heads, 128 wide, block 64, batch 12, lr 1e-3 -> 1e-4 cosine over 2000 iterations, warmup 100,
beta2 0.99, weight decay 0.1, clip 1.0, dropout 0), written as a plain PyTorch loop over zerotrain's model
and data, no DeepSpeed.

It reports the wall time from process start to the first evaluation at or below --target, with the
same validation windows zerotrain's demo uses (480 windows of 64 evenly spread over val.bin), so the two
times compare directly.

    python benchmarks/plain_pytorch_baseline.py --data data/shakespeare-char --target 1.9
"""

import time

STARTED = time.perf_counter()  # before the heavy imports, as a command's wall clock would

import argparse
import json
import math
import os

import numpy as np
import torch

from zerotrain.data import BatchSampler, TokenData, eval_batches
from zerotrain.model import GPT, GPTConfig


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/shakespeare-char")
    p.add_argument("--target", type=float, default=1.9)
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = STARTED
    data = TokenData(a.data)
    torch.manual_seed(1337)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=data.vocab_size, dropout=0.0))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("transformer.w")]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.startswith("transformer.w"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99)
    )
    sampler = BatchSampler([data.train], [1.0], 64, 12, 0, 1, 1337)

    def lr_at(it):
        if it < 100:
            return 1e-3 * (it + 1) / 100
        ratio = (it - 100) / (a.max_iters - 100)
        return 1e-4 + 0.5 * (1 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    def evaluate():
        model.eval()
        with torch.no_grad():
            losses = [
                model(torch.from_numpy(x), torch.from_numpy(y)).item()
                for x, y in eval_batches(data.val, 64, 12, 40, 0, 1)
            ]
        model.train()
        return float(np.mean(losses))

    reached = None
    history = []
    for it in range(1, a.max_iters + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(it - 1)
        x, y = sampler.next_batch()
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if it % a.eval_interval == 0 or it == a.max_iters:
            val = evaluate()
            elapsed = time.perf_counter() - t0
            history.append({"step": it, "val_loss": round(val, 4), "elapsed_s": round(elapsed, 1)})
            print(f"iter {it} | val loss {val:.4f} | {elapsed:.1f} s", flush=True)
            if reached is None and val <= a.target:
                reached = history[-1]
    print(
        json.dumps(
            {
                "baseline": "plain PyTorch, nanoGPT CPU recipe",
                "threads": a.threads,
                "target": a.target,
                "first_eval_at_or_below_target": reached,
                "history": history,
            }
        )
    )


if __name__ == "__main__":
    main()
