"""Host RAM of a `zerotrain train` run, measured against what its memory check predicts (zerotrain/preflight.py).

Runs the training command and samples the proportional set size (PSS: shared pages split among the processes that
map them, so the sum over processes is what the node holds) of the launcher and every rank it starts, every 0.2 s;
the peak of that sum is compared with the planned host RAM per node. On the CPU the model states and activations
are in host RAM too, so this calibrates the planner's host terms on any machine.

    python benchmarks/host_memory_probe.py CONFIG.toml --nproc 2 [--section.key=value ...] [--json OUT.jsonl]

With --timeline, also says what the run had printed last when the peak came (model built, engine, step N), and
writes every sample with that line to the file, to find which phase a term belongs to.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    ap.add_argument("--timeline", help="write 'seconds  PSS GiB  last output line' for every sample to this file")
    args, overrides = ap.parse_known_args()

    import torch

    from zerotrain.preflight import memory_check, preflight
    from zerotrain.runconfig import load_run_config

    cfg = load_run_config(args.config, [*overrides, "--run.memory_check=false"])
    plan = preflight(cfg, args.nproc, overwrite=True)
    mc = memory_check(plan, args.nproc, torch.cuda.is_available())
    predicted = mc.host_needed(mc.planned)

    cmd = [sys.executable, "-m", "zerotrain", "train", args.config, "--nproc", str(args.nproc), *overrides]
    proc = subprocess.Popen(
        [*cmd, "--run.memory_check=false", "--overwrite"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # each line as it is printed, for --timeline
    )
    root, peak, done = psutil.Process(proc.pid), 0, threading.Event()
    started, lines, samples = time.perf_counter(), [""], []

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            pss = tree_pss(root)
            peak = max(peak, pss)
            samples.append((time.perf_counter() - started, pss, lines[-1]))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:  # streamed, so that each sample knows what the run had printed by then
        lines.append(line.rstrip()[:120])
    proc.wait()
    output = "\n".join(lines)
    done.set()
    sampler.join()
    if args.timeline:
        with open(args.timeline, "w") as f:
            f.writelines(f"{t:8.1f}  {pss / 2**30:6.2f}  {line}\n" for t, pss, line in samples)
        at_peak = max(samples, key=lambda s: s[1])
        print(f"peak at {at_peak[0]:.1f} s, after: {at_peak[2]}")
    if proc.returncode:
        sys.exit(f"training failed ({proc.returncode}):\n{output[-3000:]}")
    row = {
        "command": " ".join(cmd),
        "model": mc.model.name,
        "n_params": mc.model.n_params,
        "run": mc.run.describe(),
        "predicted_host_bytes": predicted,
        "measured_peak_pss_bytes": peak,
        "error": predicted / peak - 1,
    }
    print(
        f"{mc.model.name} {mc.model.n_params / 1e6:.1f}M, {mc.run.describe()}: predicted {predicted / 2**30:.2f} GiB, "
        f"measured peak PSS {peak / 2**30:.2f} GiB ({row['error']:+.1%})"
    )
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
