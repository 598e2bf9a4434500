"""The Adam moments of a ZeRO-3 partial offload (deepspeed.offload_optimizer_ratio below 1) in its checkpoints.

DeepSpeed 0.19.8 steps the sub-groups a partial offload keeps on the GPU with `stage3.backup_optimizer` (a torch
AdamW) and the others with DeepSpeedCPUAdam, and its checkpoints save DeepSpeedCPUAdam's state only: the GPU-stepped
sub-groups would restart their moments from zero on every resume, and DeepSpeed's universal conversion would find no
state for them. Around a save their moments are lent to the CPU optimizer's state, so they are written in the same
place and format as every other sub-group's (the step as DeepSpeedCPUAdam keeps it, an int); after a load they are
handed back to the optimizer that steps them.
"""

from __future__ import annotations

from contextlib import contextmanager


def gpu_stepped(engine) -> list:
    """The fp32 partitions of the sub-groups a partial offload steps on the GPU (stage3.subgroup_to_device), in
    sub-group order; none without a partial offload, or on a CPU-only machine where every sub-group is 'cpu'."""
    opt = engine.optimizer
    devices = getattr(opt, "subgroup_to_device", None) or {}
    if getattr(opt, "backup_optimizer", None) is None:
        return []
    return [opt.fp32_partitioned_groups_flat[i] for i, device in sorted(devices.items()) if device != "cpu"]


@contextmanager
def moments_in_saved_state(engine):
    """Around engine.save_checkpoint: the GPU-stepped sub-groups' moments in the state DeepSpeed saves."""
    opt = engine.optimizer
    lent = []
    for p in gpu_stepped(engine):
        moments = opt.backup_optimizer.state.get(p)
        if moments and p not in opt.optimizer.state:
            opt.optimizer.state[p] = {**moments, "step": int(moments["step"])}
            lent.append(p)
    try:
        yield
    finally:
        for p in lent:
            del opt.optimizer.state[p]


def restore_moments(engine) -> int:
    """After engine.load_checkpoint (native or universal): the loaded moments of the GPU-stepped sub-groups go to
    the optimizer that steps them. Returns how many of those sub-groups the checkpoint had none for (one written
    before this fix, or by a run without offload's Adam state in this layout): they restart theirs from zero."""
    import torch

    opt = engine.optimizer
    missing = 0
    for p in gpu_stepped(engine):
        moments = opt.optimizer.state.pop(p, None)
        if not moments or "exp_avg" not in moments:
            missing += 1
            continue
        step = torch.tensor(float(moments["step"]), dtype=torch.float32)  # where torch's AdamW keeps it (not fused)
        opt.backup_optimizer.state[p] = {**moments, "step": step}
    return missing
