"""Does compiling GPT blocks under ZeRO-3 change the numbers? Same seed, same Shakespeare batches, 6 steps of GPT-2
124M in bf16, one line of losses per variant in VARIANTS (eager, blocks as ZeRO-3 leaf modules, compiled leaf blocks,
and compiled leaf blocks with one change each; docs/performance.md has the table).
    torchrun --nproc_per_node 2 benchmarks/zero3_compile_check.py [VARIANT ...]"""

import os
import sys

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from deepspeed.utils import set_z3_leaf_modules

sys.path.insert(0, os.getcwd())
from zerotrain.gpt_config import config_from_preset
from zerotrain.model import GPT, Block

VARIANTS = {
    "eager": (False, False, None),
    "eager-leaf": (True, False, None),
    "compiled-leaf": (True, True, None),
    "compiled-leaf-noprefetch": (True, True, "noprefetch"),
    "compiled-leaf-sync": (True, True, "sync"),
    "compiled-leaf-fwdsync": (True, True, "fwdsync"),
    "compiled-leaf-bwdsync": (True, True, "bwdsync"),
    "compiled-leaf-nooverlap": (True, True, "nooverlap"),
    "compiled-leaf-bwdhook": (True, True, "bwdhook"),
    "compiled-leaf-bwdprehook": (True, True, "bwdprehook"),
    "compiled-leaf-ds-streams-wait": (True, True, "ds-wait"),
    "compiled-leaf-wait-ds-streams": (True, True, "wait-ds"),
    # which layer of torch.compile is involved: Dynamo alone, Dynamo + AOTAutograd, and Inductor's memory reuse
    "dynamo-eager-leaf": (True, "eager", None),
    "aot-eager-leaf": (True, "aot_eager", None),
    "compiled-leaf-nodonate": (True, True, "nodonate"),
    "compiled-leaf-noreuse": (True, True, "noreuse"),
    # the synchronization after DeepSpeed's own leaf-module gradient hook instead of before it
    "compiled-leaf-latesync": (True, True, "latesync"),
    # every parameter partitioned (no persistent biases and norms); gradients not copied into a flat buffer
    "compiled-leaf-persist0": (True, True, "persist0"),
    "compiled-leaf-nocontig": (True, True, "nocontig"),
    # what the host sees when DeepSpeed's leaf-module hook runs: the thread, the current stream, missing gradients
    "eager-leaf-probe": (True, False, "probe"),
    "compiled-leaf-probe": (True, True, "probe"),
    "compiled-leaf-default-wait": (True, True, "default-wait"),
}


def run(name: str, leaf: bool, compiled: bool, change: str | None) -> list[float]:
    torch.manual_seed(0)
    model = GPT(config_from_preset("gpt2")).cuda()
    model.lm_head.fused_loss = True
    if leaf:
        set_z3_leaf_modules(model, [Block])
    if change == "nodonate":
        torch._functorch.config.donated_buffer = False
    if change == "noreuse":
        torch._inductor.config.allow_buffer_reuse = False
        torch._inductor.config.inplace_buffers = False
    if compiled:
        backend = compiled if isinstance(compiled, str) else "inductor"
        for block in model.transformer.h:
            block.forward = torch.compile(block.forward, backend=backend)
    for block in model.transformer.h:  # synchronize after every block's forward and/or backward
        if change in ("sync", "fwdsync"):
            block.register_forward_hook(lambda *a: torch.cuda.synchronize())
        if change in ("sync", "bwdsync"):
            block.register_full_backward_hook(lambda *a: torch.cuda.synchronize())
        if change == "bwdhook":  # the same autograd graph as bwdsync, no synchronization
            block.register_full_backward_hook(lambda *a: None)
        if change == "bwdprehook":
            block.register_full_backward_pre_hook(lambda *a: None)
    probe = {
        "hook_threads": set(),
        "acc_threads": set(),
        "hook_streams": set(),
        "acc_streams": set(),
        "grads_missing": 0,
        "hooks": 0,
    }
    if change == "probe":
        import threading

        def before_ds_hook(*_):
            probe["hooks"] += 1
            probe["hook_threads"].add(threading.get_ident())
            probe["hook_streams"].add(torch.cuda.current_stream().cuda_stream)
            probe["grads_missing"] += sum(p.grad is None for p in params_of[_[0]])

        def after_accumulate(p):
            probe["acc_threads"].add(threading.get_ident())
            probe["acc_streams"].add(torch.cuda.current_stream().cuda_stream)

        params_of = {}
        for block in model.transformer.h:
            params_of[block] = list(block.parameters())
            block.register_full_backward_hook(before_ds_hook)
            for p in params_of[block]:
                p.register_post_accumulate_grad_hook(after_accumulate)
    if change == "default-wait":

        def to_default(*_):
            engine.optimizer.reduce_and_partition_stream.wait_stream(torch.cuda.default_stream())
            torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())

        for block in model.transformer.h:
            block.register_full_backward_hook(to_default)
    zero = (
        {"stage": 3}
        | ({"stage3_prefetch_bucket_size": 0} if change == "noprefetch" else {})
        | ({"overlap_comm": False} if change == "nooverlap" else {})
        | ({"stage3_param_persistence_threshold": 0} if change == "persist0" else {})
        | ({"contiguous_gradients": False} if change == "nocontig" else {})
    )
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 2,
        "bf16": {"enabled": True},
        "zero_optimization": zero,
        "gradient_clipping": 1.0,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, fused=True)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    if change == "latesync":  # registered after DeepSpeed's leaf-module hook, so it runs after it
        for block in model.transformer.h:
            block.register_full_backward_hook(lambda *a: torch.cuda.synchronize())
    tokens = torch.from_numpy(np.fromfile("data/shakespeare-gpt2/train.bin", dtype=np.uint16).astype(np.int64))
    if change in (
        "ds-wait",
        "wait-ds",
    ):  # after each block's backward, order DeepSpeed's streams and the compute stream
        offload = engine.optimizer.parameter_offload
        streams = [engine.optimizer.reduce_and_partition_stream, offload._DeepSpeedZeRoOffload__allgather_stream]

        def fence(*_):
            current = torch.cuda.current_stream()
            for stream in streams:
                (stream.wait_stream(current) if change == "ds-wait" else current.wait_stream(stream))

        for block in model.transformer.h:
            block.register_full_backward_hook(fence)
    g = torch.Generator().manual_seed(1 + dist.get_rank())
    losses = []
    for _ in range(6):
        total = 0.0
        for _ in range(2):
            starts = torch.randint(0, len(tokens) - 1025, (8,), generator=g)
            batch = torch.stack([tokens[i : i + 1025] for i in starts.tolist()]).cuda()
            loss = engine(batch[:, :-1], batch[:, 1:])
            engine.backward(loss)
            engine.step()
            total += loss.item() / 2
        losses.append(round(total, 4))
    if change == "probe" and dist.get_rank() == 0:
        import threading

        print(
            f"PROBE {name}: main thread {threading.get_ident()} default stream {torch.cuda.default_stream().cuda_stream}; "
            f"leaf hooks ran on threads {probe['hook_threads']} streams {probe['hook_streams']}, {probe['hooks']} calls, "
            f"{probe['grads_missing']} parameter gradients missing then; gradient accumulation on threads {probe['acc_threads']} "
            f"streams {probe['acc_streams']}",
            flush=True,
        )
    engine.destroy()
    torch._functorch.config.donated_buffer = True
    torch._inductor.config.allow_buffer_reuse = torch._inductor.config.inplace_buffers = True
    torch._dynamo.reset()
    return losses


if __name__ == "__main__":
    deepspeed.init_distributed()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    for name in sys.argv[1:] or VARIANTS:
        losses = run(name, *VARIANTS[name])
        if dist.get_rank() == 0:
            print(f"CHECK {name:26s} {losses}", flush=True)
