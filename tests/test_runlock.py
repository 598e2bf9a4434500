"""The run directory's lock (zerotrain/runlock.py): a live holder refuses, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from zerotrain import UserError
from zerotrain.runlock import LOCK_NAME, RunLock, check_free


def test_a_held_lock_refuses_and_is_removed_on_release(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(UserError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            check_free(tmp_path / "run")
        with pytest.raises(UserError, match="choose another run.out_dir"):
            RunLock(tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    check_free(tmp_path / "run")  # free again


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    check_free(run)  # nobody holds it
    said = []
    with RunLock(run, say=said.append) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"left by pid {dead.pid}" in said[0] and "no longer running" in said[0]
    assert not (run / LOCK_NAME).exists()
