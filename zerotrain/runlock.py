"""The run directory's lock: one `zerotrain train` at a time writes an out_dir.

The process that starts a run (the `--nproc` parent, or rank 0 under an external launcher) holds an exclusive
`fcntl.flock` on `out_dir/.zerotrain.lock`, which records {pid, host, started}. The kernel drops a flock when its
holder dies, so a lock file whose flock is free was left by a dead run and is taken over; the pid is only consulted
where the filesystem has no flock. Ranks started by a `--nproc` parent find ZEROTRAIN_RUN_LOCK naming the lock
their parent holds and take none themselves."""

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from zerotrain import UserError

LOCK_NAME = ".zerotrain.lock"
HELD_BY_PARENT = "ZEROTRAIN_RUN_LOCK"  # set by the --nproc parent for its ranks: the lock file it holds


def lock_path(run_dir: Path) -> Path:
    return Path(run_dir).resolve() / LOCK_NAME


def held_by_parent(run_dir: Path) -> bool:
    return os.environ.get(HELD_BY_PARENT) == str(lock_path(run_dir))


def _read(f) -> dict:
    f.seek(0)
    try:
        info = json.loads(f.read() or b"{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(info: dict) -> bool:
    """Without flock: a holder on another host cannot be seen, so it counts as alive; here, its pid must exist."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info.get("pid", 0)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return int(info.get("pid", 0)) > 0


def _no_flock(e: OSError) -> bool:
    return e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _refusal(run_dir: Path, info: dict) -> UserError:
    pid, host = info.get("pid", "?"), info.get("host", "?")
    return UserError(
        f"run.out_dir {run_dir} is in use by a running zerotrain train (pid {pid} on {host}, started "
        f"{info.get('started', '?')}); wait for it to finish or stop it (kill -TERM {pid} saves and exits), "
        f"or choose another run.out_dir"
    )


def check_free(run_dir: Path) -> None:
    """Refuse a run dir a live run holds; reads only (any rank may call it, and nothing is written)."""
    try:
        f = open(lock_path(run_dir), "rb")
    except (FileNotFoundError, NotADirectoryError):
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(run_dir, _read(f)) from None
        except OSError as e:
            if _no_flock(e) and _pid_alive(info := _read(f)):
                raise _refusal(run_dir, info) from None
            return
        fcntl.flock(f, fcntl.LOCK_UN)


class RunLock:
    """An exclusive hold on run_dir; release() (or leaving the `with`) removes the lock file."""

    def __init__(self, run_dir: Path, say=None):
        self.run_dir = Path(run_dir)
        self.path = lock_path(run_dir)
        say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = open(self.path, "a+b")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _read(f)
                f.close()
                raise _refusal(self.run_dir, info) from None
            except OSError as e:
                if not _no_flock(e) or _pid_alive(_read(f)):
                    info = _read(f)
                    f.close()
                    raise _refusal(self.run_dir, info) from e
            # the file may have been released and unlinked between open and flock: then lock the new one
            try:
                if os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            f.close()
        self._file = f
        stale = _read(f)
        if stale:
            say(
                f"zerotrain: took over the lock of {self.run_dir} left by pid {stale.get('pid', '?')} on "
                f"{stale.get('host', '?')}, which is no longer running"
            )
        f.truncate(0)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
        f.flush()

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self._file.close()  # closing drops the flock
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
