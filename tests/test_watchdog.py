"""zerotrain/watchdog.py: which rank a stall is blamed on, and when a launcher counts as gone. The whole of it, with
real ranks (a SIGSTOPped rank, a SIGKILLed launcher), is in tests/test_reliability.py."""

import json
import subprocess
import time

from zerotrain import watchdog
from zerotrain.distributed import process_group_timeout_minutes


def _beat(run_dir, rank, beat, progress, doing="step 3: backward"):
    folder = run_dir / ".heartbeat"
    folder.mkdir(exist_ok=True)
    record = {"beat": beat, "progress": progress, "doing": doing, "pid": 100 + rank, "host": "node7"}
    (folder / f"rank_{rank}.json").write_text(json.dumps(record))


def _watchdog(run_dir, world=2, timeout_s=5.0):
    w = watchdog.Watchdog(run_dir, 0, world, 0, report=None)  # a timeout of 0 starts no thread: _check by hand
    w.timeout = timeout_s
    return w


def test_a_rank_whose_heartbeat_stops_is_named_with_what_it_last_did(tmp_path):
    w = _watchdog(tmp_path)
    _beat(tmp_path, 0, 1, 1)
    _beat(tmp_path, 1, 1, 1, doing="step 3: forward")
    assert w._check(0.0) is None
    _beat(tmp_path, 0, 2, 1)  # rank 0 beats (waiting in a collective: no progress); rank 1 is silent
    assert w._check(4.0) is None  # within the timeout
    _beat(tmp_path, 0, 3, 1)
    line = w._check(6.0)
    assert line.startswith("rank 1 stopped responding for 5 s (run.stall_timeout)")
    assert "rank 1 (pid 101 on node7) last: step 3: forward" in line and "rank 0" not in line


def test_ranks_that_beat_but_make_no_progress_are_all_named(tmp_path):
    w = _watchdog(tmp_path)
    for beat in range(4):
        for rank in (0, 1):
            _beat(tmp_path, rank, beat, 7, doing=f"step 9: {'forward' if rank else 'backward'}")
        line = w._check(beat * 2.6)
        assert (line is None) == (beat * 2.6 <= 7.5)  # a stuck rank waits 1.5 timeouts, a silent one 1
    assert line.startswith("no progress for 5 s (run.stall_timeout) on rank 0, 1")
    assert "last: step 9: backward" in line and "last: step 9: forward" in line


def test_a_rank_alone_is_stuck_after_one_timeout(tmp_path):
    w = _watchdog(tmp_path, world=1)
    for beat in range(4):
        _beat(tmp_path, 0, beat, 7, doing="step 6: optimizer step")
        line = w._check(beat * 2.6)
        assert (line is None) == (beat * 2.6 <= 5)  # no peer to speak first: it acts at the timeout
    assert line.startswith("no progress for 5 s (run.stall_timeout) on rank 0: rank 0 (pid")


def test_a_rank_that_never_wrote_a_heartbeat_is_silent(tmp_path):
    w = _watchdog(tmp_path)
    for t in (0.0, 3.0, 6.0):
        _beat(tmp_path, 0, int(t), int(t))
        line = w._check(t)
    assert line.startswith("rank 1 stopped responding") and "rank 1: no heartbeat yet" in line


def test_the_thread_beats_at_once_and_close_removes_its_file(tmp_path):
    w = watchdog.Watchdog(tmp_path, 0, 1, 1000, report=None)  # beats at once, then every 5 s
    heartbeat = tmp_path / ".heartbeat" / "rank_0.json"
    deadline = time.monotonic() + 2
    while not heartbeat.exists():
        assert time.monotonic() < deadline, "no heartbeat within 2 s of the start"
        time.sleep(0.02)
    record = json.loads(heartbeat.read_text())
    assert record["beat"] == 1 and record["doing"] == "step 0: starting the loop"
    w.step = 4
    w.progress("forward")
    assert (w.progressed, w.doing) == (1, "forward")
    w.close()
    assert not (tmp_path / ".heartbeat").exists()


def test_a_dead_launcher_not_yet_reaped_counts_as_gone():
    child = subprocess.Popen(["sleep", "30"])
    assert watchdog.process_start(child.pid) is not None
    child.kill()
    time.sleep(0.3)  # dead, and a zombie until waited for
    assert watchdog.process_start(child.pid) is None
    child.wait()


def test_the_process_group_waits_a_minute_longer_than_the_watchdog():
    assert process_group_timeout_minutes(600) == 11
    assert process_group_timeout_minutes(10) == 70 / 60
    assert process_group_timeout_minutes(0) == 30  # the watchdog off: torch's default


def test_in_a_large_world_a_rank_reads_its_neighbour_and_rank_0_only(tmp_path):
    assert list(watchdog.Watchdog(tmp_path, 5, 8, 0, report=None).watched) == list(range(8))
    assert watchdog.Watchdog(tmp_path, 5, 100, 0, report=None).watched == [0, 5, 6]
    assert watchdog.Watchdog(tmp_path, 99, 100, 0, report=None).watched == [0, 99]
    assert list(watchdog.Watchdog(tmp_path, 0, 100, 0, report=None).watched) == list(range(100))
