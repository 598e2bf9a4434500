"""The reliability suite: bad inputs and faults across the verbs, each ending in a non-zero exit, exactly one `error:`
line, no traceback, and nothing published changed.

The table runs each case through `cli.main` in this process (the verbs' whole code path, torch imported once), on
copies of one tiny trained run; the faults that need ranks (a full or read-only disk inside the ranks, a stalled rank,
a killed launcher) start real `train --nproc 2` runs and are marked slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, assert_clean_failure, run_ok, tree_digest, write_config, zerotrain

EXIT_USER_ERROR = 2


@dataclass
class Workspace:
    """One tiny run (2 steps, ZeRO-2, a checkpoint at step 2) and its export, shared by the table's cases: a case that
    damages something damages a copy (`copy_run`)."""

    root: Path
    data: Path
    config: Path
    run: Path
    export: Path
    tmp: Path = field(default=Path())

    def copy_run(self) -> Path:
        out = self.tmp / "run"
        shutil.copytree(self.run, out, symlinks=True)
        return out

    def ckpt(self, run: Path) -> Path:
        return run / "checkpoints" / "step_2"

    def copy_export(self) -> Path:
        out = self.tmp / "export"
        shutil.copytree(self.export, out)
        return out

    def copy_data(self) -> Path:
        out = self.tmp / "data"
        shutil.copytree(self.data, out)
        return out

    def config_for(self, **values) -> Path:
        values = {"out_dir": self.tmp / "out", "data_dir": self.data, **values}
        return write_config(self.tmp / "c.toml", **values)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, char_data) -> Workspace:
    root = tmp_path_factory.mktemp("reliability")
    config = write_config(
        root / "c.toml", out_dir=root / "run", data_dir=char_data, max_steps=2, eval_interval=2, save_interval=2
    )
    run_ok("train", config)
    run_ok("export", root / "run", "--out", root / "export")
    return Workspace(root, char_data, config, root / "run", root / "export")


def _optim_shard(ckpt: Path) -> Path:
    return next(ckpt.glob("*optim_states.pt"))


def _poison(ckpt: Path) -> None:
    """NaN into the fp32 master partition of a ZeRO-2 checkpoint, as a diverged run's save held before zerotrain
    checked weights before publishing them."""
    import torch

    shard = _optim_shard(ckpt)
    state = torch.load(shard, map_location="cpu", weights_only=False)
    with torch.no_grad():
        state["optimizer_state_dict"]["single_partition_of_fp32_groups"][0][0] = float("nan")
    torch.save(state, shard)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _manifest(run: Path, **changes) -> None:
    path = run / "checkpoints" / "step_2" / "zerotrain.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


# Each case: (id, setup(ws) -> argv, the words its error line must hold). setup may damage copies under ws.tmp.
def _missing_shard(ws):
    run = ws.copy_run()
    _optim_shard(ws.ckpt(run)).unlink()
    return run


def _bad_manifest(ws):
    run = ws.copy_run()
    _write(ws.ckpt(run) / "zerotrain.json", "{ not json")
    return run


def _truncated_pt(ws):
    run = ws.copy_run()
    _truncate(_optim_shard(ws.ckpt(run)))
    return run


def _poisoned(ws):
    run = ws.copy_run()
    _poison(ws.ckpt(run))
    return run


def _poisoned_export(ws):
    from safetensors.torch import load_file, save_file

    out = ws.copy_export()
    tensors = load_file(str(out / "model.safetensors"))
    next(iter(tensors.values()))[0] = float("nan")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _corpus(ws, text: bytes | str = "hello world\n" * 50) -> Path:
    return _write(ws.tmp / "corpus.txt", text)


def _prepare(ws, *extra, source=None):
    return ["data", "prepare", "--source", source or _corpus(ws), "--tokenizer", "char", *extra]


def _train(ws, *overrides, **config):
    return ["train", ws.config_for(**config), *overrides]


CASES = [
    # ---- data prepare
    ("prepare-missing-source", lambda ws: _prepare(ws, "--out", ws.tmp / "d", source=ws.tmp / "nope.txt"), "not found"),
    ("prepare-empty-source", lambda ws: _prepare(ws, "--out", ws.tmp / "d", source=_corpus(ws, "")), "no text"),
    (
        "prepare-non-utf8",
        lambda ws: _prepare(ws, "--out", ws.tmp / "d", source=_corpus(ws, b"ok \xff\xfe\x80 bad\n" * 20)),
        "UTF-8",
    ),
    (
        "prepare-unknown-tokenizer",
        lambda ws: ["data", "prepare", "--source", _corpus(ws), "--tokenizer", "nope", "--out", ws.tmp / "d"],
        "tokenizer",
    ),
    ("prepare-out-is-a-file", lambda ws: _prepare(ws, "--out", _write(ws.tmp / "f", "x")), str(Path("f"))),
    ("prepare-val-fraction-above-1", lambda ws: _prepare(ws, "--out", ws.tmp / "d", "--val-fraction", "1.5"), "val"),
    ("prepare-val-fraction-negative", lambda ws: _prepare(ws, "--out", ws.tmp / "d", "--val-fraction", "-0.1"), "val"),
    ("prepare-over-other-data", lambda ws: _prepare(ws, "--out", ws.copy_data()), "--overwrite"),
    ("prepare-corrupt-meta", lambda ws: _prepare(ws, "--out", _corrupt_meta(ws)), "--overwrite"),
    # ---- train: the run config
    ("train-missing-config", lambda ws: ["train", ws.tmp / "nope.toml"], "nope.toml"),
    ("train-config-not-toml", lambda ws: ["train", _write(ws.tmp / "bad.toml", "[run\nout_dir = ")], "bad.toml"),
    (
        "train-config-non-utf8",
        lambda ws: ["train", _write(ws.tmp / "bad.toml", b"[run]\nout_dir = '\xff'\n")],
        "bad.toml",
    ),
    ("train-unknown-key", lambda ws: _train(ws, "--train.nope=1"), "train.nope"),
    ("train-wrong-type", lambda ws: _train(ws, "--train.max_steps=abc"), "train.max_steps"),
    ("train-lr-nan", lambda ws: _train(ws, "--train.lr=nan"), "train.lr"),
    ("train-lr-inf", lambda ws: _train(ws, "--train.lr=inf"), "train.lr"),
    ("train-lr-zero", lambda ws: _train(ws, "--train.lr=0"), "train.lr"),
    ("train-lr-negative", lambda ws: _train(ws, "--train.lr=-1"), "train.lr"),
    ("train-min-lr-nan", lambda ws: _train(ws, "--train.min_lr=nan"), "train.min_lr"),
    ("train-grad-clip-inf", lambda ws: _train(ws, "--train.grad_clip=inf"), "train.grad_clip"),
    ("train-micro-batch-zero", lambda ws: _train(ws, "--train.micro_batch_size=0"), "train.micro_batch_size"),
    ("train-keep-last-zero", lambda ws: _train(ws, "--train.keep_last=0"), "train.keep_last"),
    ("train-stall-timeout-negative", lambda ws: _train(ws, "--run.stall_timeout=-1"), "run.stall_timeout"),
    ("train-zero-stage-5", lambda ws: _train(ws, "--deepspeed.zero_stage=5"), "zero_stage"),
    ("train-dtype-unknown", lambda ws: _train(ws, "--deepspeed.dtype=fp8"), "deepspeed.dtype"),
    ("train-override-without-dashes", lambda ws: _train(ws, "train.lr=1"), "--section.key=value"),
    ("train-seq-len-beyond-block", lambda ws: _train(ws, "--train.seq_len=64"), "block_size"),
    ("train-vocab-too-small", lambda ws: _train(ws, "--model.vocab_size=10"), "model.vocab_size"),
    ("train-n-head-not-dividing", lambda ws: _train(ws, "--model.n_head=3"), "n_head"),
    (
        "train-batch-not-dividing",
        lambda ws: _train(ws, "--nproc", "2", "--train.global_batch_size=12"),
        "multiple of 8",
    ),
    ("train-nproc-zero", lambda ws: _train(ws, "--nproc", "0"), "--nproc"),
    ("train-nproc-negative", lambda ws: _train(ws, "--nproc", "-1"), "--nproc"),
    ("train-nproc-far-beyond-cores", lambda ws: _train(ws, "--nproc", "100000"), "--force-nproc"),
    # the micro_batch_size=100000 on an 8 GB host: the memory check plans it (14.7 GiB of activations per rank)
    (
        "train-micro-batch-beyond-host-memory",
        lambda ws: _train(ws, "--train.micro_batch_size=100000", "--host-memory", "8GiB"),
        "would not fit (host RAM",
    ),
    # ---- train: data
    ("train-data-missing", lambda ws: _train(ws, data_dir=ws.tmp / "nodata"), "nodata"),
    ("train-data-not-prepared", lambda ws: _train(ws, data_dir=_mkdir(ws.tmp / "empty")), "zerotrain data prepare"),
    ("train-data-corrupt-meta", lambda ws: _train(ws, data_dir=_corrupt_meta(ws)), "meta.json"),
    ("train-data-bad-magic", lambda ws: _train(ws, data_dir=_bad_shard(ws, b"GARBAGE!")), "bad magic"),
    ("train-data-truncated-shard", lambda ws: _train(ws, data_dir=_truncated_shard(ws)), "train.bin"),
    ("train-data-tokenizer-missing", lambda ws: _train(ws, data_dir=_without_tokenizer(ws)), "tokenizer"),
    # tiny data (16 train sequences of 33 tokens, 1 val sequence): smaller than one batch, refused before any rank
    (
        "train-data-smaller-than-a-micro-batch",
        lambda ws: _train(ws, "--train.micro_batch_size=32", "--train.eval_interval=0", data_dir=_tiny_data(ws)),
        "train.micro_batch_size 16 or less",
    ),
    (
        "train-data-smaller-than-a-micro-batch-times-world",
        lambda ws: _train(ws, "--nproc", "2", "--train.micro_batch_size=9", data_dir=_tiny_data(ws)),
        "micro_batch_size 9 × world 2",
    ),
    (
        "train-data-val-without-a-sequence",
        lambda ws: _train(ws, data_dir=_tiny_data(ws, val_fraction=0.04)),
        "fewer than one sequence of 33",
    ),
    (
        "train-data-smaller-than-a-batch-of-short-sequences",
        lambda ws: _train(ws, "--train.seq_len=4", "--train.micro_batch_size=2000", data_dir=_tiny_data(ws)),
        "more data",
    ),
    # ---- train: the run directory and the checkpoint to start from
    ("train-out-dir-is-a-file", lambda ws: _train(ws, out_dir=_write(ws.tmp / "file", "x")), "file"),
    ("train-out-dir-is-the-data", lambda ws: _train(ws, "--overwrite", out_dir=ws.data), "data.dir"),
    ("train-out-dir-holds-a-run", lambda ws: _train(ws, out_dir=ws.copy_run()), "--overwrite"),
    ("train-resume-missing-path", lambda ws: _train(ws, f"--run.resume={ws.tmp / 'nowhere'}"), "does not exist"),
    ("train-resume-missing-shard", lambda ws: _train(ws, f"--run.resume={_missing_shard(ws)}"), "missing"),
    ("train-resume-corrupt-manifest", lambda ws: _train(ws, f"--run.resume={_bad_manifest(ws)}"), "zerotrain.json"),
    (
        "train-resume-manifest-of-another-version",
        lambda ws: _train(ws, f"--run.resume={_future_manifest(ws)}"),
        "incompatible",
    ),
    ("train-init-from-missing-shard", lambda ws: _train(ws, f"--run.init_from={_missing_shard(ws)}"), "missing"),
    # ---- export
    ("export-missing-path", lambda ws: ["export", ws.tmp / "nope", "--out", ws.tmp / "hf"], "does not exist"),
    ("export-not-a-checkpoint", lambda ws: ["export", _mkdir(ws.tmp / "empty"), "--out", ws.tmp / "hf"], "no complete"),
    ("export-missing-shard", lambda ws: ["export", _missing_shard(ws), "--out", ws.tmp / "hf"], "missing"),
    ("export-corrupt-manifest", lambda ws: ["export", _bad_manifest(ws), "--out", ws.tmp / "hf"], "zerotrain.json"),
    ("export-truncated-shard", lambda ws: ["export", _truncated_pt(ws), "--out", ws.tmp / "hf"], "optim_states.pt"),
    ("export-non-finite-weights", lambda ws: ["export", _poisoned(ws), "--out", ws.tmp / "hf"], "non-finite"),
    ("export-out-is-a-file", lambda ws: ["export", ws.run, "--out", _write(ws.tmp / "f", "x")], "f"),
    ("export-out-not-empty", lambda ws: ["export", ws.run, "--out", ws.copy_export()], "--overwrite"),
    # ---- generate
    ("generate-missing-path", lambda ws: ["generate", ws.tmp / "nope"], "does not exist"),
    ("generate-top-k-negative", lambda ws: ["generate", ws.run, "--top-k", "-3"], "--top-k"),
    ("generate-temperature-nan", lambda ws: ["generate", ws.run, "--temperature", "nan"], "--temperature"),
    ("generate-temperature-negative", lambda ws: ["generate", ws.run, "--temperature", "-1"], "--temperature"),
    ("generate-max-new-tokens-zero", lambda ws: ["generate", ws.run, "--max-new-tokens", "0"], "--max-new-tokens"),
    ("generate-prompt-outside-vocab", lambda ws: ["generate", ws.run, "--prompt", "Zebra €"], "vocabulary"),
    ("generate-missing-shard", lambda ws: ["generate", _missing_shard(ws)], "missing"),
    ("generate-corrupt-manifest", lambda ws: ["generate", _bad_manifest(ws)], "zerotrain.json"),
    ("generate-truncated-shard", lambda ws: ["generate", _truncated_pt(ws)], "optim_states.pt"),
    ("generate-non-finite-weights", lambda ws: ["generate", _poisoned(ws)], "non-finite"),
    ("generate-non-finite-export", lambda ws: ["generate", _poisoned_export(ws)], "non-finite"),
    ("generate-export-corrupt-config", lambda ws: ["generate", _export_bad_config(ws)], "config.json"),
    # ---- checkpoint info / convert
    ("info-missing-path", lambda ws: ["checkpoint", "info", ws.tmp / "nope"], "does not exist"),
    ("info-corrupt-manifest", lambda ws: ["checkpoint", "info", _bad_manifest(ws)], "zerotrain.json"),
    ("convert-fp32-without-out", lambda ws: ["checkpoint", "convert", ws.run, "--to", "fp32"], "--out"),
    (
        "convert-fp32-out-exists",
        lambda ws: ["checkpoint", "convert", ws.run, "--to", "fp32", "--out", _write(ws.tmp / "w.safetensors", "x")],
        "--overwrite",
    ),
    (
        "convert-fp32-missing-shard",
        lambda ws: ["checkpoint", "convert", _missing_shard(ws), "--to", "fp32", "--out", ws.tmp / "w.safetensors"],
        "missing",
    ),
    (
        "convert-universal-missing-shard",
        lambda ws: ["checkpoint", "convert", _missing_shard(ws), "--to", "universal"],
        "missing",
    ),
    # ---- config and plan
    ("config-check-missing-file", lambda ws: ["config", "check", ws.tmp / "nope.json"], "nope.json"),
    ("config-check-not-json", lambda ws: ["config", "check", _write(ws.tmp / "bad.json", "{ nope")], "bad.json"),
    (
        "config-check-non-utf8",
        lambda ws: ["config", "check", _write(ws.tmp / "bad.json", b'{"a": "\xff"}')],
        "bad.json",
    ),
    ("config-check-huge-file", lambda ws: ["config", "check", _sparse_json(ws.tmp / "huge.json")], "too large"),
    ("config-explain-missing-file", lambda ws: ["config", "explain", ws.tmp / "nope.json"], "nope.json"),
    ("plan-unknown-model", lambda ws: ["plan", "--model", "gpt-nonsense"], "gpt-nonsense"),
    ("doctor-explain-missing-path", lambda ws: ["doctor", "explain", ws.tmp / "nope.log"], "nope.log"),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _corrupt_meta(ws) -> Path:
    data = ws.copy_data()
    _write(data / "meta.json", "{ truncated")
    return data


def _bad_shard(ws, magic: bytes) -> Path:
    data = ws.copy_data()
    shard = data / "train.bin"
    shard.write_bytes(magic + shard.read_bytes()[len(magic) :])
    return data


def _truncated_shard(ws) -> Path:
    data = ws.copy_data()
    (data / "train.bin").write_bytes((data / "train.bin").read_bytes()[:10])
    return data


def _tiny_data(ws, val_fraction: float = 0.1) -> Path:
    """A prepared directory of 540 train tokens (16 sequences of 33) and 60 val tokens (1 sequence); with
    val_fraction 0.04, 24 val tokens (no sequence)."""
    from zerotrain.data import prepare

    out = ws.tmp / f"tiny-{val_fraction}"
    prepare(str(_corpus(ws)), "char", out, val_fraction=val_fraction)
    return out


def _sparse_json(path: Path) -> Path:
    """A 17 MiB JSON file that writes almost nothing: a hole after its first bytes."""
    with path.open("wb") as f:
        f.write(b'{"train_batch_size": 8')
        f.truncate(17 * 2**20)
    return path


def _without_tokenizer(ws) -> Path:
    data = ws.copy_data()
    shutil.rmtree(data / "tokenizer")
    return data


def _future_manifest(ws) -> Path:
    run = ws.copy_run()
    _manifest(run, version=99)
    return run


def _export_bad_config(ws) -> Path:
    out = ws.copy_export()
    _write(out / "config.json", "{ nope")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(case, ws, tmp_path, capsys, monkeypatch):
    from zerotrain import cli

    name, setup, needle = case
    ws.tmp = tmp_path
    monkeypatch.chdir(tmp_path)
    published = {p: tree_digest(p) for p in (ws.run, ws.data, ws.export)}
    argv = [str(a) for a in setup(ws)]
    copies = {p: tree_digest(p) for p in tmp_path.iterdir() if p.is_dir()}
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "RANK" not in os.environ, "the case got as far as a process group: refuse it in preflight"
    assert code == EXIT_USER_ERROR, (code, out, err)
    assert len(errors) == 1 and "Traceback" not in out + err, err
    assert needle in errors[0], errors[0]
    assert {p: tree_digest(p) for p in published} == published  # nothing the run published changed
    assert {p: tree_digest(p) for p in copies if p.exists()} == copies  # nor the damaged copies it was given
    assert not list(tmp_path.glob("**/.*.tmp")) and not list(tmp_path.glob("**/.tmp_*"))  # no temporary left behind


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------------------ faults in the ranks


def _popen_train(*args, output=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "zerotrain", "train", *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=output,
        stderr=output,
        text=True,
    )


def _wait_for_steps(run_dir: Path, n: int, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while not metrics.exists() or len(metrics.read_text().splitlines()) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.2)


def _ranks(proc: subprocess.Popen) -> dict[int, "psutil.Process"]:  # noqa: F821
    import psutil

    ranks = {}
    for p in psutil.Process(proc.pid).children(recursive=True):
        rank = p.environ().get("RANK")
        if rank is not None:
            ranks[int(rank)] = p
    return ranks


def _alive(processes) -> list[int]:
    import psutil

    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs at tmp_path/mnt (size in bytes), for a disk that fills; skipped where mounting is not allowed."""
    mounted = []

    def mount(size: int) -> Path:
        where = tmp_path / "mnt"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip() or 'not root'})")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.slow
def test_a_stalled_rank_is_named_and_every_rank_stops(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=100_000)
    proc = _popen_train(
        cfg, "--nproc", 2, "--run.stall_timeout=8", "--train.save_interval=3", "--train.eval_interval=0"
    )
    try:
        _wait_for_steps(tmp_path / "run", 4, proc)
        ranks = _ranks(proc)
        ranks[1].send_signal(signal.SIGSTOP)  # as a hung GPU or a stalled NFS read looks from outside
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and took < 8 + 30, (took, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out + err, err
    assert "rank 1 stopped responding for 8 s" in errors[0] and "run.stall_timeout" in errors[0], errors[0]
    time.sleep(1)
    assert not _alive(ranks.values())
    from zerotrain import checkpoint

    ckpt_dir, tag = checkpoint.resolve(tmp_path / "run")  # the last published checkpoint is whole
    checkpoint.check_complete(ckpt_dir, tag, checkpoint.read_manifest(ckpt_dir, tag))


@pytest.mark.slow
def test_a_hung_rank_is_named_in_a_one_process_run(tmp_path, char_data):
    """One process, nobody else to watch it: its own watchdog thread sees its steps stop (a hung kernel or read;
    here the wait ZEROTRAIN_FAULT=hang injects after step 3's forward) and ends the run with the line."""
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=100_000)
    started = time.monotonic()
    r = zerotrain(
        "train", cfg, "--run.stall_timeout=4", "--train.save_interval=2", "--train.eval_interval=0",
        env={"ZEROTRAIN_FAULT": "hang:3:0"}, timeout=120,
    )  # fmt: skip
    assert r.returncode == 3 and time.monotonic() - started < 60, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert errors[0].startswith("error: no progress for 4 s (run.stall_timeout) on rank 0: rank 0 (pid"), errors[0]
    assert "last: step 3: forward" in errors[0], errors[0]
    from zerotrain import checkpoint

    ckpt_dir, tag = checkpoint.resolve(tmp_path / "run")  # step 2's checkpoint, published and whole
    assert tag == checkpoint.tag_for(2)
    checkpoint.check_complete(ckpt_dir, tag, checkpoint.read_manifest(ckpt_dir, tag))


@pytest.mark.slow
def test_ranks_die_with_their_launcher(tmp_path, char_data):
    import psutil

    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=100_000)
    proc = _popen_train(
        cfg, "--nproc", 2, "--train.save_interval=0", "--train.eval_interval=0", output=subprocess.DEVNULL
    )
    try:
        _wait_for_steps(tmp_path / "run", 3, proc)
        tree = psutil.Process(proc.pid).children(recursive=True)  # DeepSpeed's launch.py and the ranks
        ranks = _ranks(proc)
        assert len(ranks) == 2
        errors_dir = Path(ranks[0].environ()["ZEROTRAIN_ERRORS_DIR"])
        proc.kill()  # SIGKILL: no handler of the launcher runs
        killed = time.monotonic()  # left unreaped a while (a zombie, as under a busy parent), then reaped
        time.sleep(1)
        proc.wait()
        while _alive(tree) and time.monotonic() - killed < 10:
            time.sleep(0.1)
        assert not _alive(tree), f"{len(_alive(tree))} processes outlived their launcher by 10 s"
        assert time.monotonic() - killed < 5
        assert not errors_dir.exists()  # the launcher's temporary folder went with the ranks
    finally:
        for pid in _alive(tree):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_full_disk_inside_the_ranks_is_one_line_and_keeps_the_last_checkpoint(tmp_path, char_data, tmpfs):
    disk = tmpfs(600 * 2**10)  # room for the run and one checkpoint of the tiny model, not two
    cfg = write_config(
        tmp_path / "c.toml", out_dir=disk / "run", data_dir=char_data, max_steps=4, save_interval=2, eval_interval=0
    )
    r = zerotrain("train", cfg, "--nproc", 2, timeout=300)
    assert r.returncode != 0
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left" in errors[0] and "step_2" in errors[0], r.stderr
    ckpts = disk / "run" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_2" and not list(ckpts.glob(".tmp*"))


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_one_line(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=6, save_interval=2)
    r = zerotrain("train", cfg, "--nproc", 2, env={"ZEROTRAIN_FAULT": "save:4:1"}, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "killed" in errors[0], r.stderr
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_2"


@pytest.mark.slow
def test_weights_that_are_not_finite_are_never_published(tmp_path, char_data):
    """lr 1e39 overflows float32 in the first update while the loss it was computed from is still finite."""
    cfg = write_config(
        tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=4, save_interval=1, eval_interval=0
    )
    huge = ("--train.lr=1e39", "--train.min_lr=0", "--train.grad_clip=0", "--train.log_interval=5")
    r = zerotrain("train", cfg, *huge, "--train.warmup_steps=1")
    line = assert_clean_failure(r, "the weights are not finite at step 1", "start over", "train.lr")
    assert "None" not in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    run_ok("train", cfg, "--overwrite", "--train.max_steps=2")
    r = zerotrain("train", cfg, "--run.resume=auto", *huge)
    line = assert_clean_failure(r, "the weights are not finite at step 3", "last checkpoint with finite weights")
    ckpts = tmp_path / "run" / "checkpoints"
    assert str(ckpts / "step_2") in line
    assert (ckpts / "latest").read_text() == "step_2" and not (ckpts / "step_3").exists()
    run_ok("train", cfg, f"--run.resume={ckpts / 'step_2'}", "--train.max_steps=3")  # the advice works


DISK_CASES = [
    # (id, argv for a disk of 64 KiB at `disk`, read-only or not, exit code, the words of the error line)
    ("export-onto-a-full-disk", lambda ws, disk: ["export", ws.run, "--out", disk / "hf"], False, 2, "free space"),
    (
        "convert-fp32-onto-a-full-disk",
        lambda ws, disk: ["checkpoint", "convert", ws.run, "--to", "fp32", "--out", disk / "w.safetensors"],
        False,
        2,
        "free space",
    ),
    (
        "train-into-a-read-only-disk",
        lambda ws, disk: _train(ws, "--nproc", "2", out_dir=disk / "run"),
        True,
        1,
        "Read-only",
    ),
    ("prepare-onto-a-read-only-disk", lambda ws, disk: _prepare(ws, "--out", disk / "d"), True, 1, "Read-only"),
]


@pytest.mark.parametrize("case", DISK_CASES, ids=[c[0] for c in DISK_CASES])
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing_behind(case, ws, tmp_path, tmpfs, capsys):
    from zerotrain import cli

    name, setup, read_only, exit_code, needle = case
    ws.tmp = tmp_path
    disk = tmpfs(64 * 2**10)
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    published = {p: tree_digest(p) for p in (ws.run, ws.data)}
    argv = [str(a) for a in setup(ws, disk)]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == exit_code and len(errors) == 1 and "Traceback" not in out + err, (code, err)
    assert needle in errors[0], errors[0]
    assert list(disk.iterdir()) == []  # no temporary file or folder left on the disk
    assert {p: tree_digest(p) for p in published} == published


def test_docs_reliability_names_only_tests_that_exist():
    """docs/reliability.md is the closing evidence of issue #26: every test and table row it names must exist."""
    import re

    doc = (REPO / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", doc)
    assert len(named) > 20
    for file, test in named:
        assert re.search(rf"^def {test}\(", (REPO / "tests" / file).read_text(), re.M), f"{file}::{test}"
    rows = {c[0] for c in CASES} | {c[0] for c in DISK_CASES}
    for row in re.findall(r"`(?:disk)?\[([a-z0-9-]+)\]`", doc):
        assert row in rows, row


def test_data_of_exactly_one_micro_batch_is_enough(tmp_path):
    """The data check's edges: 16 train sequences of 33 tokens take a micro-batch of 16 (or 8 × world 2), not 17."""
    from zerotrain import UserError
    from zerotrain.data import TokenData, prepare
    from zerotrain.dsconfig import Batch
    from zerotrain.preflight import check_data_holds_a_batch

    prepare(str(_write(tmp_path / "corpus.txt", "hello world\n" * 50)), "char", tmp_path / "d")
    data = [TokenData(tmp_path / "d")]
    check_data_holds_a_batch(data, 32, Batch(16, 1, 1))
    check_data_holds_a_batch(data, 32, Batch(8, 4, 2))
    with pytest.raises(UserError, match="train.micro_batch_size 16 or less"):
        check_data_holds_a_batch(data, 32, Batch(17, 1, 1))
