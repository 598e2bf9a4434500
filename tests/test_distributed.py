import pytest

from zerotrain import UserError
from zerotrain.distributed import launcher_command, launcher_line


def world_of(cmd):
    import base64
    import json

    arg = next(a for a in cmd if a.startswith("--world_info="))
    return json.loads(base64.urlsafe_b64decode(arg.split("=", 1)[1]))


def test_launcher_is_deepspeeds_node_launcher_without_local_rank_argument():
    cmd = launcher_command(2, ["train", "c.toml"], env={})
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.launch"]
    assert world_of(cmd) == {"localhost": [0, 1]} and "--no_local_rank" in cmd and "--master_addr=127.0.0.1" in cmd
    assert cmd[-4:] == ["--module", "zerotrain", "train", "c.toml"]
    assert launcher_line(2, ["train", "c.toml"], env={}) == (
        "deepspeed --num_gpus 2 --no_local_rank --module zerotrain train c.toml"
    )


def test_launcher_keeps_to_cuda_visible_devices():
    cmd = launcher_command(2, ["train", "c.toml"], env={"CUDA_VISIBLE_DEVICES": "4,5,6"})
    assert world_of(cmd) == {"localhost": [4, 5]}
    assert "--include localhost:4,5 " in launcher_line(2, ["train"], env={"CUDA_VISIBLE_DEVICES": "4,5,6"})
    with pytest.raises(UserError, match="lists 3 GPUs"):
        launcher_command(4, ["train"], env={"CUDA_VISIBLE_DEVICES": "4,5,6"})


@pytest.mark.slow
def test_cpu_runs_leave_no_shared_memory_behind(two_rank_run):
    """DeepSpeed's CPU all-reduce creates ~69 MB /dev/shm files per rank and never removes them; a few
    hundred runs would fill /dev/shm. zerotrain unlinks them (checked around the session's plain 2-rank run)."""
    if two_rank_run["shm_left"] is None:
        pytest.skip("no /dev/shm here")
    assert two_rank_run["shm_left"] == set()


def _rank_error(folder, rank, line, when, echo=False, tb=""):
    import json

    record = {"rank": rank, "line": line, "time": when, "echo": echo, "traceback": tb}
    (folder / f"rank_{rank}.json").write_text(json.dumps(record))


def test_the_launcher_says_the_first_rank_error_and_names_the_tracebacks(tmp_path):
    from zerotrain.distributed import _ranks_error

    errors, logs = tmp_path / "errors", tmp_path / "logs"
    errors.mkdir(), logs.mkdir()
    _rank_error(errors, 0, "RuntimeError: Connection closed by peer", 1.0, echo=True, tb="Traceback ...\n")
    _rank_error(errors, 1, "no space left on the device writing x", 2.0, tb="Traceback ...\n")
    line = _ranks_error(errors, 1, logs)
    assert line.startswith("rank 1: no space left on the device writing x (rank tracebacks in ")
    log = next(logs.iterdir())
    assert str(log) in line and "==== rank 0" in log.read_text() and "==== rank 1" in log.read_text()


def test_the_same_user_error_on_every_rank_is_said_once_without_a_rank(tmp_path):
    from zerotrain.distributed import _ranks_error

    for rank in (0, 1):
        _rank_error(tmp_path, rank, "run.out_dir x already holds a run", float(rank))
    assert _ranks_error(tmp_path, 2, None) == "run.out_dir x already holds a run"
    assert "killed by SIGKILL" in _ranks_error(tmp_path / "none", -9, None)


def test_a_verdict_every_rank_reported_is_the_exit_code_and_a_silent_death_is_not(tmp_path):
    """doctor comm's ranks exit 1 when they flag a slow rank: that is the command's answer, reported by every rank
    (report_finished), so the launching process returns it; a launcher that exits non-zero with a rank that never
    reported is a failure (launch_local then says which rank and why)."""
    import subprocess

    from zerotrain.distributed import _wait_for_ranks

    for rank, code in ((0, "1"), (1, "0")):
        (tmp_path / f"rank_{rank}.finished").write_text(code)
    launcher = subprocess.Popen(["sh", "-c", "sleep 0.3; exit 1"], start_new_session=True)
    assert _wait_for_ranks(launcher, tmp_path, 2) == (1, True)
    (tmp_path / "rank_1.finished").unlink()
    launcher = subprocess.Popen(["sh", "-c", "exit 1"], start_new_session=True)
    assert _wait_for_ranks(launcher, tmp_path, 2) == (1, False)
