"""Time to a validation loss on this CPU: the zerotrain demo (2 processes, DeepSpeed ZeRO-2) against the
single-process plain-PyTorch nanoGPT recipe (benchmarks/plain_pytorch_baseline.py), both evaluated every 100
steps on the same validation windows. Each command is timed from its start, as a user would see it.

    python benchmarks/cpu_time_to_loss.py --data data/shakespeare-char --target 1.9
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time


def timed_evals(cmd: list[str]) -> tuple[list[tuple[float, int, float]], float]:
    """Run cmd; return (seconds since start, step, val loss) for each evaluation line, and the total wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    evals = []
    for line in proc.stdout:
        m = re.match(r"(?:eval step|iter) (\d+) \| val loss ([\d.]+)", line)
        if m:
            evals.append((time.perf_counter() - start, int(m.group(1)), float(m.group(2))))
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed")
    return evals, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/shakespeare-char")
    p.add_argument("--target", type=float, default=1.9)
    p.add_argument("--run-dir", default="runs/time-to-loss")
    a = p.parse_args()
    shutil.rmtree(a.run_dir, ignore_errors=True)
    commands = {
        "plain PyTorch, 1 process (nanoGPT CPU recipe, 2000 steps)": [
            sys.executable,
            "benchmarks/plain_pytorch_baseline.py",
            "--data",
            a.data,
            "--eval-interval",
            "100",
        ],
        "zerotrain demo, 2 processes, ZeRO-2 (configs/shakespeare-char.toml)": [
            sys.executable,
            "-m",
            "zerotrain",
            "train",
            "configs/shakespeare-char.toml",
            "--nproc",
            "2",
            f"--data.dir={a.data}",
            f"--run.out_dir={a.run_dir}",
            "--train.eval_interval=100",
        ],
    }
    rows = []
    for name, cmd in commands.items():
        evals, total = timed_evals(cmd)
        hit = next(((t, s, v) for t, s, v in evals if v <= a.target), None)
        rows.append(
            {
                "run": name,
                "first_eval_at_or_below_target": None
                if hit is None
                else {"seconds": round(hit[0], 1), "step": hit[1], "val_loss": hit[2]},
                "final_val_loss": evals[-1][2],
                "final_step": evals[-1][1],
                "total_seconds": round(total, 1),
            }
        )
    print(json.dumps(rows, indent=1))
    print(f"\n| run | first val loss <= {a.target} | final val loss | total wall |\n|---|---|---|---|")
    for r in rows:
        hit = r["first_eval_at_or_below_target"]
        reached = f"{hit['seconds']} s (step {hit['step']}, {hit['val_loss']})" if hit else "not reached"
        print(f"| {r['run']} | {reached} | {r['final_val_loss']} (step {r['final_step']}) | {r['total_seconds']} s |")


if __name__ == "__main__":
    main()
