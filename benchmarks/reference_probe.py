# Copied from ../shared/reference/probe_raw_deepspeed.py (the peers' probe), unchanged below this line.
# Reference probe: raw DeepSpeed ZeRO stages on GPT-2 shapes (a minimal GPT and the Hugging Face GPT2), step time, MFU and peak memory. Run with torchrun on the GPU machine.
import argparse
import gc
import json
import os
import time

import deepspeed
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", default="124m")
p.add_argument("--mb", type=int, default=16)
p.add_argument("--stages", default="0,1,2,3")
p.add_argument("--impls", default="own,hf")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warm", type=int, default=3)
p.add_argument("--opt", default="torchfused")
p.add_argument("--local_rank", type=int, default=0)
p.add_argument("--ckpt", type=int, default=0)
p.add_argument("--compile", type=int, default=0)
p.add_argument("--ga", type=int, default=1)
a = p.parse_args()
SHAPES = {"124m": (12, 12, 768), "350m": (24, 16, 1024), "774m": (36, 20, 1280), "xl": (48, 25, 1600)}
L, H, D = SHAPES[a.model]
T = 1024
V = 50304
deepspeed.init_distributed()
rank = int(os.environ.get("RANK", 0))
world = int(os.environ.get("WORLD_SIZE", 1))
torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
dev = torch.device("cuda")


class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.ln1 = nn.LayerNorm(D)
        s.qkv = nn.Linear(D, 3 * D)
        s.proj = nn.Linear(D, D)
        s.ln2 = nn.LayerNorm(D)
        s.fc = nn.Linear(D, 4 * D)
        s.fc2 = nn.Linear(4 * D, D)

    def forward(s, x):
        B, T_, C = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(C, 2)
        q, k, v = [t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v)]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, C)
        x = x + s.proj(y)
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte = nn.Embedding(V, D)
        s.wpe = nn.Embedding(T, D)
        s.h = nn.ModuleList([Block() for _ in range(L)])
        s.lnf = nn.LayerNorm(D)
        s.head = nn.Linear(D, V, bias=False)
        s.head.weight = s.wte.weight

    def forward(s, idx, tgt):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in s.h:
            x = torch.utils.checkpoint.checkpoint(b, x, use_reentrant=False) if a.ckpt else b(x)
        logits = s.head(s.lnf(x))
        return F.cross_entropy(logits.float().view(-1, V), tgt.view(-1))


def make(impl):
    if impl == "own":
        return GPT()
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=L, n_head=H, n_embd=D, vocab_size=V, n_positions=T)
    cfg._attn_implementation = "sdpa"
    m = GPT2LMHeadModel(cfg)
    if a.ckpt:
        m.gradient_checkpointing_enable()
    return m


n_params = None
results = []
for impl in a.impls.split(","):
    for stage in [int(s) for s in a.stages.split(",")]:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = make(impl)
        if a.compile and impl == "own":
            for b in model.h:
                b.compile()
        N = sum(p.numel() for p in model.parameters())
        cfg = {
            "train_micro_batch_size_per_gpu": a.mb,
            "gradient_accumulation_steps": a.ga,
            "bf16": {"enabled": True},
            "zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True},
            "gradient_clipping": 1.0,
            "steps_per_print": 10**9,
        }
        if a.opt == "dsfused":
            cfg["optimizer"] = {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}}
            eng, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
        else:
            opt = (
                torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
                if stage == 0
                else None
            )
            if stage == 0:
                eng, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
            else:
                cfg["optimizer"] = {
                    "type": "AdamW",
                    "params": {
                        "lr": 3e-4,
                        "betas": [0.9, 0.95],
                        "weight_decay": 0.1,
                        "torch_adam": True,
                        "adam_w_mode": True,
                    },
                }
                eng, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
        torch.cuda.reset_peak_memory_stats()
        g = torch.Generator(device="cpu").manual_seed(rank)
        times = []
        for i in range(a.warm + a.steps):
            xs = [
                (
                    torch.randint(0, V, (a.mb, T), generator=g).to(dev),
                    torch.randint(0, V, (a.mb, T), generator=g).to(dev),
                )
                for _ in range(a.ga)
            ]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x, y in xs:
                if impl == "own":
                    loss = eng(x, y)
                else:
                    loss = eng(input_ids=x, labels=y).loss
                eng.backward(loss)
                eng.step()
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            if i >= a.warm:
                times.append(t1 - t0)
        times.sort()
        med = times[len(times) // 2]
        peak = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
        tok_s = a.mb * a.ga * T * world / med
        flops_tok = 6 * N + 12 * L * H * (D // H) * T
        mfu = flops_tok * tok_s / world / 989e12
        r = dict(
            impl=impl,
            stage=stage,
            model=a.model,
            N=N,
            mb=a.mb,
            world=world,
            step_s=round(med, 4),
            tok_s=round(tok_s),
            mfu=round(mfu, 3),
            peak_gib=round(peak, 2),
            reserved_gib=round(reserved, 2),
            loss=round(loss.item(), 3),
            ckpt=a.ckpt,
            compile=a.compile,
            opt=a.opt,
            ga=a.ga,
        )
        if rank == 0:
            print("RESULT", json.dumps(r), flush=True)
        results.append(r)
        del eng, model
        gc.collect()
        torch.cuda.empty_cache()
if rank == 0 and os.environ.get("RESULTS_DIR"):
    with open(
        os.path.join(os.environ["RESULTS_DIR"], f"res_{a.model}_{a.opt}_{a.ckpt}_{a.compile}_{a.ga}.jsonl"), "a"
    ) as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
