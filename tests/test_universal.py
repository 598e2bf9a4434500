"""zerotrain/universal.py: the universal copy of a checkpoint is made once beside it, atomically, from the original
only read, and trusted only while it matches its source and this DeepSpeed version."""

import json
import shutil

import pytest

from zerotrain import universal

from conftest import BATCH_12, run_ok, train_losses, tree_digest, write_config, zerotrain


def _fake_checkpoint(root):
    ckpt = root / "checkpoints" / "step_4"
    ckpt.mkdir(parents=True)
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    return ckpt


def _fake_copy(ckpt, **changes):
    folder = universal.folder_for(ckpt.parent, ckpt.name)
    (folder / ckpt.name / "zero").mkdir(parents=True)
    (folder / ckpt.name / "zero" / "optimizer_state.pt").write_bytes(b"x")
    record = {
        "format": universal.FORMAT,
        "version": universal.VERSION,
        "source_tag": ckpt.name,
        "source_files": universal._source_files(ckpt),
        "deepspeed": universal.deepspeed_version(),
    }
    (folder / universal.MANIFEST).write_text(json.dumps(record | changes))
    return folder


def test_a_copy_is_trusted_only_while_it_matches_its_source_and_deepspeed(tmp_path):
    ckpt = _fake_checkpoint(tmp_path)
    assert universal.stale_reason(ckpt.parent, ckpt.name) == "no universal copy"
    folder = _fake_copy(ckpt)
    assert universal.stale_reason(ckpt.parent, ckpt.name) is None
    (ckpt / "mp_rank_00_model_states.pt").write_bytes(b"other weights")  # the checkpoint was replaced since
    assert "made from other files" in universal.stale_reason(ckpt.parent, ckpt.name)
    shutil.rmtree(folder)
    _fake_copy(ckpt, deepspeed="0.0.1")
    assert "made by DeepSpeed 0.0.1" in universal.stale_reason(ckpt.parent, ckpt.name)


def test_pruning_a_checkpoint_takes_its_universal_copy_and_leftovers(tmp_path):
    from zerotrain import checkpoint

    ckpts = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (ckpts / f"step_{step}").mkdir(parents=True)
        (ckpts / f"step_{step}" / checkpoint.MANIFEST).write_text("{}")
        (ckpts / f"step_{step}.universal").mkdir()
    (ckpts / ".step_2.universal.tmp").mkdir()  # a conversion killed midway
    (ckpts / ".step_6.universal.tmp").mkdir()  # one that may be running now, of a kept checkpoint
    checkpoint.write_atomic(ckpts / "latest", "step_6")
    checkpoint.prune(ckpts, keep_last=2)
    assert sorted(p.name for p in ckpts.iterdir()) == [
        ".step_6.universal.tmp",
        "latest",
        "step_4",
        "step_4.universal",
        "step_6",
        "step_6.universal",
    ]


@pytest.mark.slow
def test_a_crash_mid_conversion_leaves_no_trusted_copy_and_the_next_resume_converts_again(
    straight_runs, tmp_path, char_data
):
    import torch

    from zerotrain import checkpoint

    run = tmp_path / "run"  # a private copy: the universal copy made beside it is this test's
    shutil.copytree(straight_runs[2], run, symlinks=True, ignore=shutil.ignore_patterns("*.universal"))
    ckpts = run / "checkpoints"
    step4 = ckpts / "step_4"
    before = tree_digest(step4)

    killed = zerotrain("checkpoint", "convert", step4, "--to", "universal", env={"ZEROTRAIN_FAULT": "convert:4:0"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, as a power cut would
    assert (ckpts / ".step_4.universal.tmp").is_dir() and not (ckpts / "step_4.universal").exists()
    assert "universal copy: none" in run_ok("checkpoint", "info", step4).stdout

    cfg = write_config(
        tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, max_steps=8, save_interval=4
    )
    r = run_ok("train", cfg, *BATCH_12, f"--run.resume={step4}")  # one rank
    assert "converting" in r.stdout and "converted in" in r.stdout
    assert (ckpts / "step_4.universal" / universal.MANIFEST).is_file() and not (
        ckpts / ".step_4.universal.tmp"
    ).exists()
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(straight_runs[2])
    assert max(abs(resumed[s] - original[s]) / original[s] for s in resumed) < 1e-4
    assert tree_digest(step4) == before

    # the conversion is exact: the fp32 masters of the universal copy are the consolidated checkpoint's, bit for bit
    reference = checkpoint.load_fp32_state_dict(ckpts, "step_4")
    zero = ckpts / "step_4.universal" / "step_4" / "zero"
    for name in reference:
        if (zero / name / "exp_avg.pt").is_file():
            assert torch.equal(torch.load(zero / name / "fp32.pt", weights_only=False)["param"], reference[name]), name

    # a copy made by another DeepSpeed is not trusted: reported, then made again
    manifest = ckpts / "step_4.universal" / universal.MANIFEST
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"deepspeed": "0.0.1"}))
    assert "not used: " in run_ok("checkpoint", "info", step4).stdout
    r = run_ok("checkpoint", "convert", step4, "--to", "universal")
    assert "made by DeepSpeed 0.0.1" in r.stdout and "converting again" in r.stdout
    assert json.loads(manifest.read_text())["deepspeed"] == universal.deepspeed_version()
    assert "up to date" in run_ok("checkpoint", "info", step4).stdout
    assert "converting" not in run_ok("checkpoint", "convert", step4, "--to", "universal").stdout  # cached
    assert tree_digest(step4) == before
