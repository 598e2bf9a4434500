"""Processes and process groups: joining a launcher's ranks, starting local ranks with the DeepSpeed
launcher (`--nproc`), and the few collectives the training loop needs outside DeepSpeed."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world: int
    local_world: int
    device: "object"  # torch.device
    control_group: "object"  # a gloo group for host-side flags; None means the default group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_launcher() -> bool:
    """True inside ranks started by a launcher (deepspeed, torchrun, zerotrain --nproc, SLURM+torchrun)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA's and ROCm's: without either there is no GPU to ask about


def has_gpu() -> bool:
    """Whether this process sees a GPU. torch (2-3 s to import) is asked only where a GPU driver exists, so that
    `train --nproc N` on a CPU machine checks the run and starts the ranks without it."""
    if not any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def world_size() -> int:
    return int(os.environ["WORLD_SIZE"]) if in_launcher() else 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_not_a_bare_multitask_launch() -> None:
    """`srun` or `mpirun` without torchrun starts several tasks but sets no RANK: each would train alone
    and all would write one out_dir."""
    from zerotrain import UserError

    for var, launcher in (("SLURM_NTASKS", "srun"), ("OMPI_COMM_WORLD_SIZE", "mpirun"), ("PMI_SIZE", "mpirun")):
        if not in_launcher() and int(os.environ.get(var, "1") or 1) > 1:
            raise UserError(
                f"{launcher} started {os.environ[var]} tasks but none knows its rank; start one task per node running "
                f"`torchrun --nproc_per_node N -m zerotrain train ...`, or use `deepspeed` / `zerotrain train --nproc N`"
            )


def init(timeout_minutes: float = 30) -> Dist:
    """Join the process group (NCCL on GPUs, gloo on CPU, as DeepSpeed's accelerator picks); a lone
    process becomes a world of one. `timeout_minutes` bounds every collective's wait (train sets it from
    run.stall_timeout: process_group_timeout_minutes)."""
    if not in_launcher():
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    import deepspeed
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world)))
    timeout = timedelta(minutes=timeout_minutes)
    deepspeed.init_distributed(verbose=False, timeout=timeout)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        # host flags without a device sync; a new group takes the backend's default timeout unless told
        control = dist.new_group(backend="gloo", timeout=timeout)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        device = torch.device("cpu")
        control = None
    return Dist(rank, local_rank, world, local_world, device, control)


def process_group_timeout_minutes(stall_timeout_s: float) -> float:
    """The process group's timeout for a run.stall_timeout: 60 s beyond it, so the watchdog names the stalled rank
    before gloo or NCCL give up with their own error; 30 minutes (torch's default) when the watchdog is off."""
    return (stall_timeout_s + 60) / 60 if stall_timeout_s > 0 else 30


def max_over_ranks(value: int, d: Dist) -> int:
    """The largest of each rank's value, on every rank (over gloo: no device sync). With one rank, the value."""
    if d.world == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.control_group)
    return int(t.item())


def all_gather_object(obj, d: Dist) -> list:
    import torch.distributed as dist

    out = [None] * d.world
    dist.all_gather_object(out, obj, group=d.control_group)
    return out


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    dist.barrier(group=d.control_group)


# ------------------------------------------------------------------------------------------ local launch


# Ranks per CPU core beyond which a CPU-only --nproc is taken for a typo: each rank is a whole Python process with
# torch, DeepSpeed and gloo (docs/memory.md: CPU_PROCESS_HOST_RAM), and they time-share the cores.
CPU_RANKS_PER_CORE = 4


def check_nproc(nproc: int, force: bool = False) -> None:
    """Refuse a --nproc that is not a number of ranks, or more ranks than this machine has GPUs (or, without GPUs,
    far more than it has CPU cores) unless force says that is meant."""
    from zerotrain import UserError

    if nproc < 1:
        raise UserError(
            f"--nproc {nproc} starts no ranks; pass --nproc 1 or more, or leave it out to train in this process"
        )
    if has_gpu():
        import torch

        gpus = torch.cuda.device_count()
        if nproc > gpus and not force:
            raise UserError(
                f"--nproc {nproc} but this machine has {gpus} GPU{'s' if gpus != 1 else ''}; lower --nproc to {gpus} "
                f"or fewer, or pass --force-nproc to put several ranks on one GPU"
            )
        return
    cores = os.cpu_count() or 1
    if nproc > CPU_RANKS_PER_CORE * cores and not force:
        raise UserError(
            f"--nproc {nproc} but this machine has no GPU and {cores} CPU cores; lower --nproc to at most "
            f"{CPU_RANKS_PER_CORE * cores}, or pass --force-nproc to start them anyway"
        )


def visible_gpus(env=os.environ) -> list[str]:
    """CUDA_VISIBLE_DEVICES as a list (empty when unset)."""
    return [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]


def launcher_command(nproc: int, zerotrain_args: list[str], env=os.environ, port: int | None = None) -> list[str]:
    """The command that runs `python -m zerotrain ARGS` as nproc local ranks: DeepSpeed's per-node launcher
    (deepspeed.launcher.launch, which starts the ranks, watches them and stops all when one fails), given the
    world that the `deepspeed` front end (deepspeed.launcher.runner) would make for `--num_gpus N` or
    `--include localhost:IDS` on one node. Calling it directly spares one process importing torch and DeepSpeed
    (about 3 s per launch). The GPUs are CUDA_VISIBLE_DEVICES' first nproc, else 0..nproc-1."""
    import base64
    import json

    from zerotrain import UserError

    visible = visible_gpus(env)
    if visible and len(visible) < nproc:
        raise UserError(
            f"--nproc {nproc} but CUDA_VISIBLE_DEVICES lists {len(visible)} GPUs; lower --nproc or list more devices"
        )
    devices = [int(v) if v.isdigit() else v for v in visible[:nproc]] if visible else list(range(nproc))
    world = base64.urlsafe_b64encode(json.dumps({"localhost": devices}).encode()).decode()
    return [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        f"--world_info={world}",
        "--master_addr=127.0.0.1",
        f"--master_port={port or free_port()}",
        "--no_local_rank",
        "--log_level=critical",  # its one error line repeats the whole command; launch_local reports the ranks' own
        "--module",
        "zerotrain",
        *zerotrain_args,
    ]


def launcher_line(nproc: int, zerotrain_args: list[str], env=os.environ) -> str:
    """The `deepspeed` command a user would type for the same launch (what `train --nproc` prints)."""
    visible = visible_gpus(env)
    where = f"--include localhost:{','.join(visible[:nproc])}" if visible else f"--num_gpus {nproc}"
    return f"deepspeed {where} --no_local_rank --module zerotrain {' '.join(map(str, zerotrain_args))}"


# ------------------------------------------------------------------------------------------ rank errors
#
# Ranks started by launch_local do not print their errors: each writes it to a file in the folder named by
# ERRORS_DIR (rank_N.json: the line, its time, whether it is only the echo of another rank's end, the traceback),
# and the launching process prints the first rank's line as its one `error:` line, the tracebacks gathered in a log
# file it names.

ERRORS_DIR = "ZEROTRAIN_ERRORS_DIR"
# A rank whose collective failed because a peer went away reports that echo, not the cause.
_PEER_LOST = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket closed",
    "communicator was aborted",
    "remote process exited",
)


def is_io_failure(e: BaseException) -> bool:
    """A failure of the filesystem rather than of zerotrain: a refused or failed read or write, a full disk (torch's
    writer reports one as a RuntimeError)."""
    text = str(e)
    return isinstance(e, OSError) or "iostream error" in text or "file write failed" in text


def describe_failure(e: BaseException) -> str:
    """One line for an exception that is not a UserError: a full disk, a refused write, a failed write inside torch,
    or else its type and first line."""
    import errno

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC or "iostream error" in text or "file write failed" in text:
        where = f" writing {e.filename}" if isinstance(e, OSError) and e.filename else ""
        return f"no space left on the device{where} ({text}); free space there or choose another run.out_dir"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {e.filename or 'a file'}: {e.strerror}; make it writable or choose another run.out_dir"
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror or text}: {e.filename}"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def report_to_launcher(line: str, traceback_text: str = "") -> bool:
    """Under launch_local: leave this rank's error for the launching process to print; False elsewhere."""
    folder = os.environ.get(ERRORS_DIR)
    if not folder or not in_launcher():
        return False
    import json

    rank = os.environ["RANK"]
    record = {
        "rank": int(rank),
        "line": line,
        "time": time.time(),
        "echo": any(p in (line + traceback_text).lower() for p in _PEER_LOST),
        "traceback": traceback_text,
    }
    try:
        tmp = Path(folder) / f".rank_{rank}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, Path(folder) / f"rank_{rank}.json")
    except OSError:
        return False
    return True


def report_finished(code: int = 0) -> None:
    """Under launch_local: tell the launching process this rank's work is done and flushed (rank_N.finished, holding
    the exit code the rank returns: 0, or a verdict such as doctor comm's 1 for a flagged rank, which is the
    command's answer and not a failure), so it need not wait for DeepSpeed's launcher, which notices its ranks' exits
    on a 1 s poll and then sleeps once more."""
    folder = os.environ.get(ERRORS_DIR)
    if folder and in_launcher():
        try:
            tmp = Path(folder) / f".rank_{os.environ['RANK']}.finished.tmp"
            tmp.write_text(str(code))
            os.replace(tmp, Path(folder) / f"rank_{os.environ['RANK']}.finished")
        except OSError:
            pass  # the launcher's own exit code still arrives, a second or two later


def _finished_codes(folder: Path, nproc: int) -> list[int] | None:
    """The exit codes every rank reported with report_finished, or None while one has not."""
    files = list(folder.glob("rank_*.finished"))
    if len(files) < nproc:
        return None
    codes = []
    for f in files:
        try:
            codes.append(int(f.read_text().strip() or 0))
        except (OSError, ValueError):
            codes.append(0)
    return codes


def _wait_for_ranks(runner: subprocess.Popen, folder: Path, nproc: int) -> tuple[int, bool]:
    """(exit code, whether the ranks reported it themselves). As soon as every rank has reported it finished
    (report_finished), the highest code they reported, and the launcher, idle in its poll by then, is killed with
    whatever is left of the ranks' exits; otherwise the launcher's exit code, where a rank that failed or died
    makes it non-zero. A rank's verdict (a non-zero code it reported) also ends the launcher with that code: when
    every rank reported, it is theirs."""
    while (code := runner.poll()) is None:
        if (codes := _finished_codes(folder, nproc)) is not None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
            return max(codes), True
        time.sleep(0.05)
    if (codes := _finished_codes(folder, nproc)) is not None:
        return max(codes), True
    return code, False


def _ranks_error(folder: Path, code: int, log_dir: Path | None) -> str:
    """The launching process's one line for ranks that ended with exit code `code`: the first rank's own error
    (one that is only the echo of a peer's end comes last), the tracebacks written to a log file it names."""
    import json
    import tempfile

    records = []
    for f in folder.glob("rank_*.json"):
        try:
            records.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (r["echo"], r["time"], r["rank"]))
    tracebacks = [r for r in records if r["traceback"]]
    log = None
    if tracebacks:
        text = "".join(f"==== rank {r['rank']}: {r['line']}\n{r['traceback']}\n" for r in tracebacks)
        for where in [log_dir, Path(tempfile.gettempdir())]:
            if where is None or not where.is_dir():
                continue
            try:
                log = where / f"zerotrain-rank-errors-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
                log.write_text(text)
                break
            except OSError:
                log = None
    if not records:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return (
            f"a rank {how} without reporting an error (the out-of-memory killer or kill -9: see `dmesg`); the last "
            f"published checkpoint is intact: continue with --run.resume=auto"
        )
    first = records[0]
    line = first["line"]
    if first["echo"]:
        line = (
            f"a rank ended without reporting an error (killed by the out-of-memory killer or kill -9? see `dmesg`), "
            f"and rank {first['rank']} lost its connection to it ({line[:160]}); the last published checkpoint is "
            f"intact: continue with --run.resume=auto"
        )
    elif first["traceback"] or len({r["line"] for r in records}) > 1:
        line = f"rank {first['rank']}: {line}"
    return line + (f" (rank tracebacks in {log})" if log else "")


def launch_local(nproc: int, zerotrain_args: list[str], log_dir: Path | None = None) -> int:
    """Run `python -m zerotrain <args>` as nproc local ranks through the DeepSpeed launcher and return
    its exit code; a rank's failure is a UserError carrying the first rank's error (tracebacks go to a log
    file in `log_dir`, or the temp folder, that the line names).

    A SIGINT/SIGTERM sent to this process is passed to the ranks themselves (not to the launcher, which
    would kill them after 30 s), so they finish the step, save and exit cleanly; a second signal kills
    everything. When a rank dies, DeepSpeed's launcher terminates the others, so nothing hangs; when this
    process dies, even by SIGKILL, the ranks see it within half a second, remove the errors folder and end
    (watchdog.exit_with_launcher), and DeepSpeed's launcher follows them."""
    import shutil
    import tempfile

    import psutil

    from zerotrain import UserError, watchdog

    port = free_port()
    cmd = launcher_command(nproc, zerotrain_args, port=port)
    # the rendezvous port is said: a hang at start-up or a buffer left in /dev/shm (named by it) can be traced to it
    print(f"launching {nproc} ranks (rendezvous 127.0.0.1:{port}): {launcher_line(nproc, zerotrain_args)}", flush=True)
    errors = Path(tempfile.mkdtemp(prefix="zerotrain-ranks-"))
    me = os.getpid()
    env = {
        **os.environ,
        ERRORS_DIR: str(errors),
        watchdog.PARENT_PID: str(me),
        watchdog.PARENT_PID + "_START": watchdog.process_start(me) or "",
    }
    try:
        runner = subprocess.Popen(cmd, start_new_session=True, env=env)
    except BaseException:
        shutil.rmtree(errors, ignore_errors=True)
        raise
    signals_seen = []

    def forward(signum, _frame):
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            os.killpg(runner.pid, signal.SIGKILL)
            return
        print(
            f"\nzerotrain: {signal.Signals(signum).name} received; ranks will finish the step, save and exit "
            f"(send it again to kill them now)",
            file=sys.stderr,
            flush=True,
        )
        for proc in _ranks(psutil.Process(runner.pid)):
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code, reported = _wait_for_ranks(runner, errors, nproc)
        if code != 0 and not reported:
            raise UserError(_ranks_error(errors, code, log_dir))
        return code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
        remove_shm_buffers("127.0.0.1", str(port))
        shutil.rmtree(errors, ignore_errors=True)


def remove_shm_buffers(master_addr: str, master_port: str, rank: int | None = None) -> None:
    """Unlink the /dev/shm files DeepSpeed's CPU shared-memory all-reduce creates per rank
    (deepspeed/ops/csrc/cpu/comm/shm.cpp: deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}, ~69 MB each)
    and never removes: without this every CPU run leaves them behind until /dev/shm is full. Safe once every
    rank has mapped them: a mapping outlives its name."""
    prefix = f"deepspeed_allreduce_buffer_{os.getuid()}_{master_addr}_{master_port}_"
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return
    for f in shm.glob(prefix + ("*" if rank is None else str(rank))):
        try:
            f.unlink()
        except OSError:
            pass


def _ranks(root):
    """The training processes under the launcher: the descendants that carry a RANK variable."""
    import psutil

    for proc in root.children(recursive=True):
        try:
            if "RANK" in proc.environ():
                yield proc
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
