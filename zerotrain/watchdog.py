"""The training watchdog: a stalled rank is named and every rank stops; ranks end with the launcher that started them.

`Watchdog`: the training loop says what it is doing (`progress("step 12: backward")`, two attribute writes, no I/O
on the hot path); a daemon thread writes run_dir/.heartbeat/rank_N.json every few seconds (a beat counter, a
progress counter, what the rank last did, its pid and host) and reads the other ranks' files. A rank whose beat has
not changed for run.stall_timeout seconds is silent (stopped, hung in the kernel, its host gone); a rank whose
progress has not changed for that long is stuck (a hung GPU kernel, a stalled read, a collective waiting for a silent
rank). Either ends the run on every rank that can still act: one line naming the stalled rank(s) and what they last
did goes to the launcher (distributed.report_to_launcher) and the process exits, leaving the last published checkpoint
as it was (publishing is atomic: checkpoint.py). A silent rank on this host is killed, as a SIGSTOPped process cannot
act on a SIGTERM. Files rather than the rendezvous store: the store is served from rank 0's process, and a stopped
rank 0 would take it down too. Staleness is judged on the reader's own monotonic clock (when did the counter last
change), so the hosts' clocks need not agree. In a large world a rank reads only its own, rank 0's and the next
rank's files (rank 0 reads all), so the shared filesystem sees a few reads per rank and interval; a rank that is only
stuck itself waits half a timeout longer before it acts (when it has peers), so the rank that watches a silent one speaks
first.

`exit_with_launcher`: ranks of `zerotrain train --nproc` die when the zerotrain process that launched them does, even
by SIGKILL (which no handler sees): a parent-death signal for the rank's direct parent, and a thread that watches the
zerotrain process itself, which is two launcher processes up.
"""

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

PARENT_PID = "ZEROTRAIN_PARENT_PID"  # set by distributed.launch_local for its ranks: the pid to die with
STALL_EXIT = 3  # the exit code of a rank the watchdog stopped
WATCH_ALL = 32  # up to this many ranks, every rank reads every heartbeat


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22): with the pid, it names one process. None
    when it is gone, or dead and not yet reaped (a zombie keeps its /proc entry until its parent waits for it)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def exit_with_launcher(poll_s: float = 0.5) -> None:
    """Under `zerotrain train --nproc`: end this process when the zerotrain process that launched it is gone. Linux
    only (prctl, /proc); elsewhere nothing is done."""
    pid = int(os.environ.get(PARENT_PID, "0") or 0)
    if not pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1  # linux/prctl.h
    try:  # the direct parent is DeepSpeed's launch.py: if it is killed, so is this rank
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    started = os.environ.get(PARENT_PID + "_START") or process_start(pid)

    def end() -> None:
        import shutil

        from zerotrain.distributed import ERRORS_DIR

        shutil.rmtree(os.environ.get(ERRORS_DIR, ""), ignore_errors=True)  # the launcher's, which it cannot remove now
        os.kill(os.getpid(), signal.SIGKILL)  # nothing of this rank is worth finishing without its launcher

    def watch():
        while process_start(pid) == started:
            time.sleep(poll_s)
        end()

    if process_start(pid) != started or started is None:
        end()
    threading.Thread(target=watch, name="zerotrain-launcher-watch", daemon=True).start()


class Watchdog:
    """One per rank, from the training loop's start to its end; see the module docstring."""

    def __init__(self, run_dir: Path, rank: int, world: int, timeout_s: float, report):
        self.dir = Path(run_dir) / ".heartbeat"
        self.rank, self.world, self.timeout = rank, world, timeout_s
        self.report = report  # report(line, speaker) once the run must stop, before the process exits; speaker: the
        # lowest rank still acting, the one to print the line where no launcher collects it
        self.step, self.doing, self.progressed = 0, "starting the loop", 0
        self.interval = max(0.2, min(5.0, timeout_s / 10))
        self._stop = threading.Event()
        self._seen: dict[int, tuple] = {}  # rank -> (beat, progress, beat changed at, progress changed at, record)
        everyone = rank == 0 or world <= WATCH_ALL
        self.watched = range(world) if everyone else sorted({0, rank, (rank + 1) % world})
        self._thread = None
        if timeout_s > 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run, name="zerotrain-watchdog", daemon=True)
            self._thread.start()

    def progress(self, doing: str) -> None:
        """What this rank is doing now in step `self.step`; called at every phase of a step (cheap: no I/O, no
        lock)."""
        self.doing = doing
        self.progressed += 1

    def close(self) -> None:
        """Stop watching (the loop is over) and remove this rank's heartbeat file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            (self.dir / f"rank_{self.rank}.json").unlink(missing_ok=True)
            try:
                self.dir.rmdir()  # the last rank to close removes the folder
            except OSError:
                pass

    # ---------------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        beat, host = 0, socket.gethostname()
        mine = self.dir / f"rank_{self.rank}.json"
        while True:  # a beat at once, then every interval
            beat += 1
            record = {
                "beat": beat,
                "progress": self.progressed,
                "doing": f"step {self.step}: {self.doing}",
                "pid": os.getpid(),
                "host": host,
            }
            try:
                tmp = mine.with_name(f".{mine.name}.tmp")
                tmp.write_text(json.dumps(record))
                os.replace(tmp, mine)
            except OSError:
                pass  # a full or read-only disk: the others will call this rank silent, and the run ends either way
            line = self._check(time.monotonic())
            if line and not self._stop.is_set():
                self._stop_run(line)
            if self._stop.wait(self.interval):
                return

    def _check(self, now: float) -> str | None:
        """The line to stop with, or None while every rank beats and progresses."""
        for r in self.watched:
            try:
                record = json.loads((self.dir / f"rank_{r}.json").read_text())
            except (OSError, ValueError):
                record = None
            beat, progress = (record["beat"], record["progress"]) if record else (None, None)
            if r not in self._seen:
                self._seen[r] = (beat, progress, now, now, record)
                continue
            old_beat, old_progress, beat_at, progress_at, old_record = self._seen[r]
            self._seen[r] = (
                beat,
                progress,
                now if beat != old_beat else beat_at,
                now if progress != old_progress else progress_at,
                record or old_record,
            )
        silent = [r for r, seen in self._seen.items() if now - seen[2] > self.timeout]
        # a stuck rank waits half a timeout longer, so that a rank watching a silent peer speaks first; alone, no wait
        patience = self.timeout * (1.5 if self.world > 1 else 1.0)
        stuck = [r for r, seen in self._seen.items() if now - seen[3] > patience]
        if not (silent or stuck):
            return None

        def last(r: int) -> str:
            record = self._seen[r][4]
            if record is None:
                return f"rank {r}: no heartbeat yet"
            return f"rank {r} (pid {record['pid']} on {record['host']}) last: {record['doing']}"

        if silent:
            return (
                f"rank {', '.join(map(str, silent))} stopped responding for {self.timeout:g} s (run.stall_timeout): "
                f"{'; '.join(last(r) for r in silent)}; every rank was stopped, the last published checkpoint is "
                f"intact; look at that rank's process and host (stopped, swapping, a hung GPU or filesystem), then "
                f"continue with --run.resume=auto"
            )
        return (
            f"no progress for {self.timeout:g} s (run.stall_timeout) on rank {', '.join(map(str, stuck))}: "
            f"{'; '.join(last(r) for r in stuck)}; every rank was stopped, the last published checkpoint is intact; "
            f"a rank whose last phase differs from the others' is the one that hung (a GPU kernel, a data read); raise "
            f"run.stall_timeout if a step, evaluation or save takes that long, then continue with --run.resume=auto"
        )

    def _stop_run(self, line: str) -> None:
        """Report the line, kill the silent ranks of this host (a stopped process obeys only SIGKILL), exit."""
        host, now = socket.gethostname(), time.monotonic()
        silent = {r for r, seen in self._seen.items() if now - seen[2] > self.timeout}
        for r in silent - {self.rank}:
            record = self._seen[r][4]
            if record and record["host"] == host and _is_rank(record["pid"], r):
                try:
                    os.kill(record["pid"], signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.report(line, self.rank == min(set(self.watched) - silent, default=self.rank))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(STALL_EXIT)  # the main thread is blocked (in a collective, most likely) and cannot be unwound


def _is_rank(pid: int, rank: int) -> bool:
    """Whether pid is still the process of that rank (not a reused pid)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"RANK={rank}".encode() in environ
