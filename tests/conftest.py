"""Tiny fixtures: a deterministic corpus, prepared data, helpers that run the real CLI (and so the
real DeepSpeed engine, over gloo on CPU) in subprocesses, and ds_configs for the tests of zerotrain/dsconfig/."""

import copy
import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="the whole suite, slow multi-process tests included (what CI runs); without it, the quick tier",
    )


def quick_tier(config) -> bool:
    """The quick tier (no `slow` tests) is the default for local work. `--full`, a `-m` expression or a test named
    by its node id (file.py::test) runs what was asked for."""
    named = any("::" in arg for arg in config.args)
    return not (config.getoption("--full") or config.getoption("markexpr") or named)


def pytest_report_header(config):
    if quick_tier(config):
        return "quick tier: tests marked slow are deselected; `python -m pytest --full` runs the whole suite"
    return None


def pytest_collection_modifyitems(config, items):
    """Slow tests are left out of the quick tier (see quick_tier). Tests marked gpu need an NVIDIA GPU: on machines
    without one they are deselected, not skipped. With one, the tests that use CUDA in the pytest process itself run
    last, so that a GPU in exclusive-process compute mode is free for the training runs the other gpu tests start."""
    import torch

    if quick_tier(config):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    if torch.cuda.is_available():
        items.sort(
            key=lambda item: item.get_closest_marker("cuda_in_process") is not None
        )  # stable: order kept otherwise
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def make_corpus(n_chars: int = 60_000, seed: int = 0) -> str:
    """Pseudo-English with enough structure for a tiny model's loss to fall quickly."""
    rng = random.Random(seed)
    words = (
        "the king and queen of the realm speak to their people in the hall while a fool sings "
        "of love and war and gold upon the hill where shepherds keep their flock by night"
    ).split()
    lines = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".")
    return "\n".join(lines) + "\n"


def zerotrain(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m zerotrain ARGS` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("RANK", None)
    full_env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "zerotrain", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO,
    )


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def val_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in metrics(run_dir) if "val_loss" in r}


TINY_CONFIG = """
[run]
out_dir = "{out_dir}"
seed = 7
tensorboard = false

[data]
dir = "{data_dir}"

[model]
preset = "tiny"
n_layer = 2
n_head = 2
n_embd = 32
block_size = 32
dropout = {dropout}

[train]
max_steps = {max_steps}
micro_batch_size = 4
grad_accum = 1
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5
eval_interval = {eval_interval}
eval_iters = 4
log_interval = 1
save_interval = {save_interval}
keep_last = 5

[deepspeed]
zero_stage = {zero_stage}
dtype = "fp32"
"""


def write_config(path: Path, **values) -> Path:
    defaults = dict(dropout=0.0, max_steps=12, eval_interval=6, save_interval=6, zero_stage=2)
    path.write_text(TINY_CONFIG.format(**(defaults | values)))
    return path


def once_per_run(make):
    """For a session fixture: under pytest-xdist (`-n`), its value is made once per pytest run, not once per worker.
    The first worker to ask makes it, under a lock, and leaves it pickled beside the workers' temp dirs; the others
    wait for it and read it (the runs it names stay in the first worker's temp dir, which all can read). Its
    dependencies are resolved before the lock is taken, so two such fixtures never wait on each other."""

    @functools.wraps(make)
    def fixture(tmp_path_factory, *args, **kwargs):
        if not os.environ.get("PYTEST_XDIST_WORKER"):
            return make(tmp_path_factory, *args, **kwargs)
        import fcntl
        import pickle

        shared = tmp_path_factory.getbasetemp().parent  # this run's pytest-N, above popen-gw0, popen-gw1, ...
        with open(shared / f"{make.__name__}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = shared / f"{make.__name__}.pickle"
            if done.is_file():
                return pickle.loads(done.read_bytes())
            value = make(tmp_path_factory, *args, **kwargs)
            done.write_bytes(pickle.dumps(value))
            return value

    return fixture


@pytest.fixture(scope="session")
@once_per_run
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus())
    return path


@pytest.fixture(scope="session")
@once_per_run
def char_data(tmp_path_factory, corpus_file) -> Path:
    from zerotrain.data import prepare

    out = tmp_path_factory.mktemp("data") / "char"
    prepare(str(corpus_file), "char", out)
    return out


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Bad input: non-zero exit, one `error:` line naming the fix, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def run_ok(*args, **kw):
    r = zerotrain(*args, **kw)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


# The stage-0 run of stage_runs, whose losses tests/golden/losses.json holds (tests/golden/make_golden_losses.py).
GOLDEN_RUN = {"zero_stage": 0, "dropout": 0.1}


@pytest.fixture(scope="session")
@once_per_run
def stage_runs(tmp_path_factory, char_data):
    """The same 12-step run (dropout on) under ZeRO 0, 1, 2 and 3 in 2 processes, checkpoints at 6 and 12."""
    root = tmp_path_factory.mktemp("stages")
    runs = {}
    for stage in (0, 1, 2, 3):
        cfg = write_config(
            root / f"s{stage}.toml",
            out_dir=root / f"s{stage}",
            data_dir=char_data,
            **(GOLDEN_RUN | {"zero_stage": stage}),
        )
        run_ok("train", cfg, "--nproc", 2)
        runs[stage] = root / f"s{stage}"
    return runs


# Global batch 12 (micro 2 × accumulation 3 × 2 ranks): 1, 2 and 3 ranks all split it, so a resume keeps it.
BATCH_12 = ("--train.micro_batch_size=2", "--train.grad_accum=3")


@pytest.fixture(scope="session")
@once_per_run
def straight_runs(tmp_path_factory, char_data):
    """8 steps on 2 ranks with global batch 12, dropout 0 and fp32, at ZeRO-2 and ZeRO-3; checkpoints at 4 and 8.
    The straight runs the resumes of tests/test_resume.py are held against."""
    root = tmp_path_factory.mktemp("straight")
    runs = {}
    for stage in (2, 3):
        cfg = write_config(
            root / f"s{stage}.toml",
            out_dir=root / f"s{stage}",
            data_dir=char_data,
            zero_stage=stage,
            max_steps=8,
            save_interval=4,
            eval_interval=8,
        )
        run_ok("train", cfg, "--nproc", 2, *BATCH_12)
        runs[stage] = root / f"s{stage}"
    return runs


@pytest.fixture(scope="session")
@once_per_run
def two_rank_run(tmp_path_factory, char_data):
    """The plain single-host run: ZeRO-2, `zerotrain train --nproc 2`, 6 steps, dropout 0, no eval or checkpoint.
    {"run": its out_dir, "losses": its train losses, "shm_left": the DeepSpeed CPU all-reduce buffers in /dev/shm
    named by its rendezvous port after it ended (None without /dev/shm)}. tests/test_launch.py holds its launches to
    these losses; tests/test_distributed.py checks that the run removed its buffers. The port, from the launch line,
    keeps other runs' buffers out (pytest -n runs them alongside)."""
    import re

    root = tmp_path_factory.mktemp("two-rank")
    cfg = write_config(
        root / "ref.toml", out_dir=root / "ref", data_dir=char_data, max_steps=6, eval_interval=0, save_interval=0
    )
    shm = Path("/dev/shm")
    r = run_ok("train", cfg, "--nproc", 2)
    port = re.search(r"rendezvous 127\.0\.0\.1:(\d+)", r.stdout).group(1)
    return {
        "run": root / "ref",
        "losses": train_losses(root / "ref"),
        "shm_left": set(shm.glob(f"deepspeed_allreduce_buffer_*_{port}_*")) if shm.is_dir() else None,
    }


@pytest.fixture(scope="session")
@once_per_run
def sigterm_run(tmp_path_factory, char_data):
    """A long 2-rank ZeRO-2 run stopped by SIGTERM once 5 steps are logged; while it runs, a second `train` into its
    run dir is tried, plain and with --overwrite. Records what happened for tests/test_cli.py (the second train is
    refused) and tests/test_train.py (SIGTERM finishes the step, saves and exits): one launch for both.
    {"cfg", "run", "pid", "second": [CompletedProcess], "returncode", "out", "lock_left"}"""
    import signal
    import time

    root = tmp_path_factory.mktemp("sigterm")
    run = root / "run"
    cfg = write_config(
        root / "t.toml",
        out_dir=run,
        data_dir=char_data,
        zero_stage=2,
        max_steps=100_000,
        save_interval=0,
        eval_interval=0,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerotrain", "train", str(cfg), "--nproc", "2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (run / ".zerotrain.lock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the first run never locked its out_dir"
            time.sleep(0.2)
        second = [zerotrain("train", cfg, *flags) for flags in (("--nproc", 2), ("--nproc", 2, "--overwrite"))]
        metrics_file = run / "metrics.jsonl"
        while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 5):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never logged 5 steps"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "cfg": cfg,
        "run": run,
        "pid": proc.pid,
        "second": second,
        "returncode": proc.returncode,
        "out": out,
        "lock_left": (run / ".zerotrain.lock").exists(),
    }


def tree_digest(path: Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests, untouched tree."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ ds_configs


def keys_at(findings, level):
    return {f.key for f in findings if f.level == level}


def errors(findings):
    return [f for f in findings if f.level == "error"]


# Configs written the way DeepSpeed's tutorials and the HF docs write them.
GUIDE_ZERO1_WARMUP_DECAY = {
    "train_batch_size": 64,
    "train_micro_batch_size_per_gpu": 8,
    "gradient_accumulation_steps": 4,
    "steps_per_print": 100,
    "gradient_clipping": 1.0,
    "optimizer": {"type": "Adam", "params": {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}},
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-4, "warmup_num_steps": 1000, "total_num_steps": 10000},
    },
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 1, "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, "overlap_comm": True},
}
GUIDE_ZERO2_OFFLOAD = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 1.0,
    "fp16": {
        "enabled": True,
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-5, "betas": [0.8, 0.999], "eps": 1e-8, "weight_decay": 3e-7}},
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "allgather_partitions": True,
        "allgather_bucket_size": 2e8,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 2e8,
        "contiguous_gradients": True,
    },
}
GUIDE_ZERO3_OFFLOAD = {
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 4,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 3e-5, "warmup_num_steps": 500}},
    "zero_optimization": {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 1e9,
        "reduce_bucket_size": 1e6,
        "stage3_prefetch_bucket_size": 943718,
        "stage3_param_persistence_threshold": 1e4,
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}
GUIDES = {
    "zero1-warmupdecay": (GUIDE_ZERO1_WARMUP_DECAY, 2, "a100"),
    "zero2-offload": (GUIDE_ZERO2_OFFLOAD, 4, "v100"),
    "zero3-offload": (GUIDE_ZERO3_OFFLOAD, 2, "h100"),
}


# A clean ds_config, and with_(a__b=value): BASE with one key set (None removes it), as each rule test uses it.
BASE = {
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "bf16": {"enabled": True},
    "zero_optimization": {"stage": 2, "overlap_comm": True},
}


def with_(**changes):
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


def write_ds_config(tmp_path, config, name="ds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config) if isinstance(config, dict) else config)
    return path
