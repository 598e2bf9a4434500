"""Host RAM of a `zerotrain train` run, measured against what its memory check predicts (zerotrain/preflight.py).

Runs the training command and samples the proportional set size (PSS: shared pages split among the processes that
map them, so the sum over processes is what the node holds) of the launcher and every rank it starts, every 0.2 s;
the peak of that sum is compared with the planned host RAM per node. On the CPU the model states and activations
are in host RAM too, so this calibrates the planner's host terms on any machine.

    python benchmarks/host_memory_probe.py CONFIG.toml --nproc 2 [--section.key=value ...] [--json OUT.jsonl]
"""

import argparse
import json
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
        [*cmd, "--run.memory_check=false", "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    root, peak, done = psutil.Process(proc.pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss(root))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    done.set()
    sampler.join()
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
