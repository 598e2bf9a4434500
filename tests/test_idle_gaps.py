"""benchmarks/idle_gaps.py on a small chrome trace: the gaps between GPU kernels, summed by what the host was doing."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "idle_gaps.py"


def test_gaps_are_put_down_to_the_host_work_and_the_launching_operator(tmp_path):
    events = [
        {"cat": "cpu_op", "name": "step", "pid": 1, "tid": 1, "ts": 0, "dur": 2000},
        {
            "cat": "cpu_op",
            "name": "aten::item",
            "pid": 1,
            "tid": 1,
            "ts": 100,
            "dur": 300,
        },  # host blocked: GPU runs dry
        {"cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 495, "dur": 20},
        {
            "cat": "cuda_runtime",
            "name": "cudaLaunchKernel",
            "pid": 1,
            "tid": 1,
            "ts": 500,
            "dur": 5,
            "args": {"correlation": 2},
        },
        {"cat": "kernel", "name": "first", "pid": 0, "tid": 7, "ts": 50, "dur": 100, "args": {"correlation": 1}},
        {"cat": "kernel", "name": "second", "pid": 0, "tid": 7, "ts": 510, "dur": 100, "args": {"correlation": 2}},
        {
            "cat": "kernel",
            "name": "third",
            "pid": 0,
            "tid": 8,
            "ts": 620,
            "dur": 100,
            "args": {"correlation": 3},
        },  # 10 us gap
    ]
    trace = tmp_path / "trace-rank0.json.gz"
    with gzip.open(trace, "wt") as f:
        json.dump({"traceEvents": events}, f)
    out = subprocess.run([sys.executable, str(SCRIPT), str(trace)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "RESULT 1 gaps over 50 us: 0.4 ms idle in 0.7 ms of trace"
    busy = lines[lines.index("RESULT -- host busy with, when the GPU ran dry:") + 1]
    launched = lines[lines.index("RESULT -- launched the kernel that ended the gap:") + 1]
    assert busy.split() == ["RESULT", "0.36", "ms", "aten::item", "<", "step"]
    assert launched.split() == ["RESULT", "0.36", "ms", "aten::mm", "<", "step"]
