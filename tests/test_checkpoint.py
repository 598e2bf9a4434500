"""zerotrain/checkpoint.py through `zerotrain checkpoint info` and `zerotrain checkpoint convert`: what a real
checkpoint holds, whether it is complete, and its fp32 and Hugging Face forms."""

import json
import shutil

import pytest

from zerotrain import checkpoint

from conftest import assert_clean_failure, run_ok, tree_digest, zerotrain


def test_missing_files_names_each_rank_that_lost_its_shard(tmp_path):
    folder = tmp_path / "step_4"
    folder.mkdir()
    for name in ("zero_pp_rank_0_mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        (folder / name).write_bytes(b"")
    manifest = {"zero_stage": 3, "world_size": 2}
    assert checkpoint.missing_files(tmp_path, "step_4", manifest) == [
        "rank 1's model states",
        "rank 1's optimizer shard",
    ]
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert checkpoint.missing_files(tmp_path, "step_4", {"zero_stage": 0, "world_size": 4}) == []
    assert checkpoint.missing_files(tmp_path, "step_4", {"zero_stage": 2, "world_size": 2}) == [
        "rank 1's optimizer shard"
    ]


@pytest.mark.slow
def test_info_on_a_real_checkpoint(straight_runs):
    r = run_ok("checkpoint", "info", straight_runs[3])
    out = r.stdout
    assert "checkpoints/step_8" in out and "step 8, 3,072 tokens seen" in out
    assert "ZeRO-3, 2 ranks, fp32, global batch 12 = micro 2 × accumulation 3 × world 2" in out
    assert "complete: every rank's shard present" in out and "size on disk" in out
    report = json.loads(run_ok("checkpoint", "info", straight_runs[3], "--json").stdout)
    assert report["missing"] == [] and report["tokens_seen"] == 8 * 12 * 32 and report["bytes"] > 0
    assert report["zero_stage"] == 3 and report["world_size"] == 2 and report["dtype"] == "fp32"


@pytest.mark.slow
def test_convert_to_fp32_gives_the_consolidated_weights(straight_runs, tmp_path):
    import torch
    from safetensors.torch import load_file

    before = tree_digest(straight_runs[3] / "checkpoints")
    out = tmp_path / "weights.safetensors"
    r = run_ok("checkpoint", "convert", straight_runs[3], "--to", "fp32", "--out", out)
    assert f"wrote {out}" in r.stdout
    saved = load_file(str(out))
    reference = checkpoint.load_fp32_state_dict(*checkpoint.resolve(straight_runs[3]))
    assert saved.keys() == reference.keys()
    assert all(saved[k].dtype == torch.float32 and torch.equal(saved[k], reference[k]) for k in reference)
    assert_clean_failure(
        zerotrain("checkpoint", "convert", straight_runs[3], "--to", "fp32", "--out", out), "exists", "--overwrite"
    )
    assert tree_digest(straight_runs[3] / "checkpoints") == before


@pytest.mark.slow
def test_convert_to_hf_is_the_verified_export(straight_runs, tmp_path):
    r = run_ok("checkpoint", "convert", straight_runs[2], "--to", "hf", "--out", tmp_path / "hf")
    assert "verified: max |logit diff|" in r.stdout and (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_info_and_convert_refuse_bad_input(straight_runs, tmp_path):
    partial = tmp_path / "partial" / "step_4"
    shutil.copytree(straight_runs[2] / "checkpoints" / "step_4", partial)
    (partial / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    r = zerotrain("checkpoint", "info", partial)
    assert r.returncode == 1 and "INCOMPLETE: rank 1's optimizer shard missing" in r.stdout
    assert_clean_failure(zerotrain("checkpoint", "info", tmp_path / "nowhere"), "does not exist")
    assert_clean_failure(zerotrain("checkpoint", "convert", partial, "--to", "fp32"), "--to fp32 needs --out")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    assert_clean_failure(
        zerotrain("checkpoint", "convert", straight_runs[2], "--to", "universal", "--out", occupied),
        "is not a universal copy",
        "--overwrite",
    )
    assert [p.name for p in occupied.iterdir()] == ["mine.txt"]


def test_last_finite_is_the_newest_checkpoint_checked_finite(tmp_path):
    for step, finite in ((2, True), (4, True), (6, None)):
        folder = tmp_path / f"step_{step}"
        folder.mkdir()
        manifest = {"step": step} | ({"weights_finite": True} if finite else {})
        (folder / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoint.last_finite(tmp_path) == "step_4"  # step_6 was written without the check
    assert checkpoint.last_finite(tmp_path / "nowhere") is None


def test_check_finite_names_a_tensor_holding_nan_or_inf():
    import torch

    checkpoint.check_finite({"a": torch.ones(3), "steps": torch.tensor([1, 2])}, "ckpt")
    with pytest.raises(checkpoint.UserError, match=r"ckpt holds non-finite weights \(1 of 2 tensors, e.g. b\)"):
        checkpoint.check_finite({"a": torch.ones(3), "b": torch.tensor([1.0, float("inf")])}, "ckpt")
