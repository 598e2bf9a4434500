"""Tiny fixtures: a deterministic corpus, prepared data, and helpers that run the real CLI (and so the
real DeepSpeed engine, over gloo on CPU) in subprocesses."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true",
                     help="the whole suite, slow multi-process tests included (what CI runs); without it, the quick tier")


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
        items.sort(key=lambda item: item.get_closest_marker("cuda_in_process") is not None)  # stable: order kept otherwise
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def make_corpus(n_chars: int = 60_000, seed: int = 0) -> str:
    """Pseudo-English with enough structure for a tiny model's loss to fall quickly."""
    rng = random.Random(seed)
    words = ("the king and queen of the realm speak to their people in the hall while a fool sings "
             "of love and war and gold upon the hill where shepherds keep their flock by night").split()
    lines = []
    while sum(len(line) + 1 for line in lines) < n_chars:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".")
    return "\n".join(lines) + "\n"


def zerotrain(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m zerotrain ARGS` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("RANK", None)
    full_env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "zerotrain", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or REPO)


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


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus())
    return path


@pytest.fixture(scope="session")
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
def stage_runs(tmp_path_factory, char_data):
    """The same 12-step run (dropout on) under ZeRO 0, 1, 2 and 3 in 2 processes, checkpoints at 6 and 12."""
    root = tmp_path_factory.mktemp("stages")
    runs = {}
    for stage in (0, 1, 2, 3):
        cfg = write_config(root / f"s{stage}.toml", out_dir=root / f"s{stage}", data_dir=char_data,
                           **(GOLDEN_RUN | {"zero_stage": stage}))
        run_ok("train", cfg, "--nproc", 2)
        runs[stage] = root / f"s{stage}"
    return runs
