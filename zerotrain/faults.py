"""Fault injection for the crash-safety and watchdog tests: ZEROTRAIN_FAULT=<where>:<step>:<rank> makes that rank
fail at that point of that step, as a real fault would. Unset (always, outside tests) every point is a no-op.

  save:S:R     SIGKILL during the save of step S, after the shards are written (a power cut, the OOM killer)
  convert:S:R  SIGKILL during `checkpoint convert` of step S's checkpoint
  hang:S:R     a hang after step S's first forward: on a GPU a kernel that spins for about 20 minutes (as a hung
               kernel does: the next host synchronization never returns), on a CPU a wait that never ends
"""

import os
import signal

ENV = "ZEROTRAIN_FAULT"
HANG_CYCLES = 2_000_000_000_000  # torch.cuda._sleep's unit: GPU clock cycles, about 1,000-1,300 s at 1.5-2 GHz


def point(where: str, step: int, rank: int, device=None) -> None:
    """Fail here if ZEROTRAIN_FAULT names this point, step and rank."""
    spec = os.environ.get(ENV)
    if not spec or spec != f"{where}:{step}:{rank}":
        return
    if where != "hang":
        os.kill(os.getpid(), signal.SIGKILL)
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda._sleep(HANG_CYCLES)  # queued: the rank goes on until it waits for the GPU, then waits for ever
        return
    import threading

    threading.Event().wait()  # releases the GIL, as a blocked read or collective does: the watchdog thread runs
