"""DeepSpeed's own autotuner (`deepspeed --autotuning run`) against `zerotrain tune` on the model of the CPU tune bar
(tests/test_tune.py: the tiny GPT, 2 layers × 32 wide, 32 tokens, fp32, char data) on the same ranks: the time each
spends, the configuration each chooses and that configuration's speed, then both choices measured again under the
same two harnesses so that the speeds compare (issue #27, docs/log/2026-12-07-ds-autotuner-compare.md).

    python benchmarks/ds_autotuner_compare.py [--work DIR] [--nproc 2] [--budget-minutes 4] [--repeats 3]
                                              [--pythonpath DIR]

1. DeepSpeed's autotuner drives benchmarks/ds_autotuner_train.py (zerotrain's GPT in a plain deepspeed.initialize
   loop) with "fast" mode (micro-batch per ZeRO stage, stages 0-3), a maximum train batch of the bar's global batch
   (8) and its throughput metric (samples/s over profile steps 3-5). Two things it needs that a CPU machine lacks:
   the `tabulate` package (`pip install deepspeed[autotuning]`; --pythonpath names a folder that has it) and a
   device count of --nproc (the CPU accelerator counts NUMA nodes unless LOCAL_SIZE says otherwise; the launcher's
   --num_gpus is applied after the autotuner reads the count, deepspeed/launcher/runner.py), so LOCAL_SIZE is set.
2. `zerotrain tune` on the bar's config, --micro-batch 1 2 4 (the same global batch 8), its own grid (stage ×
   offload × activation checkpointing), --budget-minutes for measuring.
3. Both chosen configurations, alternately, --repeats times under (A) the autotuner's script with each one's
   ds_config (the autotuner's ds_config_optimal.json; tune's ds_config.json from --for deepspeed) and (B) a
   `zerotrain train` run measured as tune measures (zerotrain.tune.search.measure).

Prints a table and writes WORK/results.json.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRAIN = REPO / "benchmarks" / "ds_autotuner_train.py"
GLOBAL_BATCH = 8  # the bar's: micro_batch_size 4 × grad_accum 1 × 2 ranks
SEQ_LEN = 32


def load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def prepare(work: Path) -> tuple[Path, Path]:
    """The bar's data and run config (tests/conftest.py: make_corpus, char data, TINY_CONFIG)."""
    from tests.conftest import make_corpus, write_config
    from zerotrain.data import prepare as prepare_data

    (work / "corpus.txt").write_text(make_corpus())
    data = work / "char"
    prepare_data(str(work / "corpus.txt"), "char", data)
    config = write_config(work / "tiny.toml", out_dir=work / "run", data_dir=data, max_steps=6)
    return data, config


def autotuner_config(work: Path) -> Path:
    """zerotrain's ds_config for the bar at ZeRO-0 on CPU (dsconfig/from_run.py: clipping 1.0, no printing) with the
    batch left to the autotuner, every stage, and the autotuning section."""
    cfg = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": "all"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "autotuning": {
            "enabled": True,
            "fast": True,
            "metric": "throughput",
            "start_profile_step": 3,
            "end_profile_step": 5,
            "max_train_batch_size": GLOBAL_BATCH,
            "results_dir": str(work / "ds_results"),
            "exps_dir": str(work / "ds_exps"),
            "overwrite": True,
        },
    }
    path = work / "ds_autotuning.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def clean_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE"):
        if k not in extra:
            env.pop(k, None)
    return env


def run_ds_autotuner(work: Path, data: Path, nproc: int, pythonpath: str | None) -> dict:
    path = ":".join(p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p)
    env = clean_env(LOCAL_SIZE=str(nproc), **({"PYTHONPATH": path} if path else {}))
    check = subprocess.run([sys.executable, "-c", "import tabulate"], env=env, capture_output=True)
    if check.returncode:
        sys.exit("DeepSpeed's autotuner needs `tabulate` (pip install deepspeed[autotuning]); or pass --pythonpath DIR")
    cfg = autotuner_config(work)
    cmd = ["deepspeed", "--autotuning", "run", "--num_gpus", str(nproc), str(TRAIN), "--data", str(data)]
    cmd += ["--deepspeed", "--deepspeed_config", str(cfg)]
    print("$", f"LOCAL_SIZE={nproc}", " ".join(cmd), flush=True)
    before = load()
    t0 = time.perf_counter()
    with open(work / "ds_autotuner.log", "w") as log:
        rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    results = work / "ds_results"
    summary = (results / "summary.txt").read_text() if (results / "summary.txt").exists() else ""
    if rc or not (results / "ds_config_optimal.json").exists():
        sys.exit(f"the autotuner failed (rc {rc}); see {work / 'ds_autotuner.log'}")
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            rows[cells[0]] = {"experiments": int(cells[1]), "best_samples_per_s": float(cells[2]), "best": cells[3]}
    m = re.search(r"Tuning completed in (\d+):(\d+):([\d.]+)\. Total number of experiments: (\d+)", summary)
    tuning_s = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    chosen = json.loads((results / "ds_config_optimal.json").read_text())
    exps = {}
    for d in sorted(results.iterdir()):
        if (d / "metrics.json").exists():
            c = json.loads((d / "ds_config.json").read_text())
            exps[d.name] = {
                "zero_stage": c["zero_optimization"]["stage"],
                "micro_batch": c["train_micro_batch_size_per_gpu"],
                "grad_accum": c["gradient_accumulation_steps"],
                "samples_per_s": json.loads((d / "metrics.json").read_text())["throughput"],
            }
    best = rows["global"]
    return {
        "command": f"LOCAL_SIZE={nproc} " + " ".join(cmd),
        "wall_s": wall,
        "tuning_s": tuning_s,
        "experiments": int(m.group(4)),
        "load_before": before,
        "load_after": load(),
        "chosen_name": best["best"],
        "chosen": {
            "zero_stage": chosen["zero_optimization"]["stage"],
            "micro_batch": chosen["train_micro_batch_size_per_gpu"],
            "grad_accum": chosen["gradient_accumulation_steps"],
            "global_batch": chosen["train_batch_size"],
        },
        "ds_config": str(results / "ds_config_optimal.json"),
        # the metric it chose by: samples/s (engine._autotuning_exit), × tokens per sample
        "own_tokens_per_s": best["best_samples_per_s"] * SEQ_LEN,
        "spaces": rows,
        "experiments_measured": exps,  # the chosen one's metrics.json is from the final `run` relaunch
    }


def run_zerotrain_tune(work: Path, config: Path, nproc: int, budget: float, steps: int, warmup: int) -> dict:
    out = work / "zt_tune"
    cmd = [sys.executable, "-m", "zerotrain", "tune", str(config), "--nproc", str(nproc), "--micro-batch", "1", "2"]
    cmd += ["4", "--steps", str(steps), "--warmup-steps", str(warmup), "--budget-minutes", f"{budget:g}"]
    cmd += ["--for", "deepspeed", "--out", str(out), "--overwrite"]
    print("$", " ".join(cmd), flush=True)
    before = load()
    t0 = time.perf_counter()
    with open(work / "zt_tune.log", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=clean_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        sys.exit(f"zerotrain tune failed (rc {rc}); see {work / 'zt_tune.log'}")
    doc = json.loads((out / "tune.json").read_text())
    w = next(c for c in doc["candidates"] if c["name"] == doc["winner"]["name"])
    counts = {}
    for c in doc["candidates"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    return {
        "command": " ".join(cmd),
        "wall_s": wall,
        "tuning_s": doc["elapsed_s"],
        "experiments": doc["measured"],
        "ended": doc.get("ended"),
        "candidates": len(doc["candidates"]),
        "statuses": counts,
        "load_before": before,
        "load_after": load(),
        "chosen_name": w["name"],
        "chosen": {
            "zero_stage": w["zero_stage"],
            "offload_optimizer": w["offload_optimizer"],
            "offload_params": w["offload_params"],
            "activation_checkpointing": w["activation_checkpointing"],
            "micro_batch": w["micro_batch"],
            "grad_accum": w["grad_accum"],
            "global_batch": w["micro_batch"] * w["grad_accum"] * nproc,
            "offload_optimizer_ratio": w["offload_optimizer_ratio"],
            "zero3_persistent_params": w["zero3_persistent_params"],
        },
        "ds_config": str(out / "ds_config.json"),
        "own_tokens_per_s": w["tokens_per_s"],
        "measured": [
            {"name": c["name"], "status": c["status"], "tokens_per_s": c["tokens_per_s"]}
            for c in doc["candidates"]
            if c["step_time_s"] is not None
        ],
    }


def harness_script(work: Path, data: Path, nproc: int, ds_config: str, ckpt: bool, tag: str, steps: int) -> dict:
    """(A) the autotuner's own script, plain DeepSpeed, this ds_config: median optimizer step after 3 warm-up."""
    out = work / f"harness_{tag}.json"
    cmd = ["deepspeed", "--num_gpus", str(nproc), str(TRAIN), "--data", str(data), "--steps", str(steps + 3)]
    cmd += ["--warmup-steps", "3", "--timing-out", str(out)] + (["--activation_checkpointing"] if ckpt else [])
    cmd += ["--deepspeed", "--deepspeed_config", ds_config]
    with open(work / f"harness_{tag}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=work, env=clean_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        sys.exit(f"harness A failed for {tag}; see {work / f'harness_{tag}.log'}")
    return json.loads(out.read_text())


def harness_zerotrain(work: Path, config: Path, nproc: int, chosen: dict, tag: str, steps: int) -> dict:
    """(B) a `zerotrain train` run of the configuration, measured as tune measures its candidates."""
    from zerotrain.tune import Candidate, Measure, measure

    c = Candidate(
        chosen["zero_stage"],
        chosen.get("offload_optimizer", "none"),
        chosen.get("offload_params", "none"),
        chosen.get("activation_checkpointing", False),
        chosen["micro_batch"],
        chosen["grad_accum"],
        offload_ratio=chosen.get("offload_optimizer_ratio", 1.0),
        persistent=chosen.get("zero3_persistent_params", False),
    )
    m = Measure(str(config), nproc, 3, steps, [], "auto", stop_slower_by=0.1)
    run_dir = work / "harness_zt" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    measure(c, m, run_dir, None, None)
    if c.status != "ok":
        sys.exit(f"harness B: {c.name} {c.status}; see {run_dir.parent / (c.name + '.log')}")
    return {"name": c.name, "step_time_s": c.step_time_s, "tokens_per_s": c.tokens_per_s}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="ds-autotuner-compare", help="working folder (replaced)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--budget-minutes", type=float, default=4.0, help="zerotrain tune's measuring budget")
    p.add_argument("--tune-steps", type=int, default=3, help="zerotrain tune --steps (the autotuner times 3)")
    p.add_argument("--tune-warmup", type=int, default=3, help="zerotrain tune --warmup-steps (the autotuner: 3)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each choice per harness")
    p.add_argument("--harness-steps", type=int, default=200, help="timed steps per harness run (after 3 warm-up)")
    p.add_argument("--pythonpath", default=None, help="a folder holding `tabulate`, for the autotuner only")
    a = p.parse_args()
    work = Path(a.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = datetime.now(timezone.utc)
    data, config = prepare(work)

    ds = run_ds_autotuner(work, data, a.nproc, a.pythonpath)
    print(f"autotuner: {ds['wall_s']:.0f} s, chose {ds['chosen_name']} {ds['chosen']}", flush=True)
    zt = run_zerotrain_tune(work, config, a.nproc, a.budget_minutes, a.tune_steps, a.tune_warmup)
    print(f"zerotrain tune: {zt['wall_s']:.0f} s, chose {zt['chosen_name']} {zt['chosen']}", flush=True)

    tools = {"deepspeed autotuner": ds, "zerotrain tune": zt}
    harness = {k: {"A": [], "B": []} for k in tools}
    for r in range(a.repeats):
        for i, (k, t) in enumerate(tools.items()):
            ckpt = t["chosen"].get("activation_checkpointing", False)
            res = harness_script(work, data, a.nproc, t["ds_config"], ckpt, f"{i}-{r}", a.harness_steps)
            harness[k]["A"].append(res["tokens_per_s"])
            res = harness_zerotrain(work, config, a.nproc, t["chosen"], f"{i}-{r}", a.harness_steps)
            harness[k]["B"].append(res["tokens_per_s"])
            print(f"  [{r + 1}/{a.repeats}] {k}: A {harness[k]['A'][-1]:.0f} tok/s, B {harness[k]['B'][-1]:.0f} tok/s")

    print()
    print(
        "| tool | time spent (whole command) | tuning / measuring | runs | chosen | own measure tok/s |"
        " A: plain DeepSpeed script tok/s | B: zerotrain train tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for k, t in tools.items():
        a_med, b_med = statistics.median(harness[k]["A"]), statistics.median(harness[k]["B"])
        print(
            f"| {k} | {t['wall_s']:.0f} s | {t['tuning_s']:.0f} s | {t['experiments']} | {t['chosen_name']} "
            f"(global {t['chosen']['global_batch']}) | {t['own_tokens_per_s']:.0f} | {a_med:.0f} "
            f"({', '.join(f'{x:.0f}' for x in harness[k]['A'])}) | {b_med:.0f} "
            f"({', '.join(f'{x:.0f}' for x in harness[k]['B'])}) |"
        )
    doc = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": vars(a),
        "tools": tools,
        "harness": harness,
        "load_end": load(),
    }
    (work / "results.json").write_text(json.dumps(doc, indent=1))
    print(f"\nresults: {work / 'results.json'}")


if __name__ == "__main__":
    main()
