"""Resume anywhere: a checkpoint written by 2 ranks goes on under 1 or 3 ranks, or at another ZeRO stage, through
DeepSpeed's universal checkpoint (zerotrain/universal.py), with the straight run's losses, optimizer state, learning
rate, token count and data position; and the batch rule that decides how the global batch is split (preflight.py)."""

import json
import shutil

import pytest

from zerotrain import UserError
from zerotrain.dsconfig import Batch
from zerotrain.preflight import resume_batch
from zerotrain.runconfig import TrainSection

from conftest import BATCH_12, assert_clean_failure, metrics, run_ok, train_losses, tree_digest, write_config, zerotrain

# ------------------------------------------------------------------------------------------------ the batch rule

SAVED = {
    "world_size": 2,
    "batch": {
        "micro": 2,
        "accum": 3,
        "world": 2,
        "global": 12,
        "keys": {"micro_batch_size": 2, "grad_accum": 3, "global_batch_size": 0},
    },
}


@pytest.mark.parametrize(
    "world,expected",
    [(2, Batch(2, 3, 2)), (1, Batch(2, 6, 1)), (3, Batch(2, 2, 3)), (4, Batch(1, 3, 4)), (6, Batch(2, 1, 6))],
)
def test_the_global_batch_is_kept_by_changing_the_accumulation(world, expected):
    batch, was = resume_batch(TrainSection(micro_batch_size=2, grad_accum=3), world, SAVED, "ckpt")
    assert batch == expected and batch.global_size == 12
    assert was == (None if world == 2 else Batch(2, 3, 2))


def test_a_global_batch_that_cannot_be_kept_is_refused_unless_asked_for():
    t = TrainSection(micro_batch_size=2, grad_accum=3)
    with pytest.raises(UserError, match=r"global batch 12 .*5 ranks cannot split evenly.*\(1, 2, 3, 4, 6, 12\)"):
        resume_batch(t, 5, SAVED, "ckpt")
    assert resume_batch(TrainSection(micro_batch_size=2, grad_accum=3, allow_batch_change=True), 5, SAVED, "c")[
        0
    ] == Batch(2, 3, 5)
    changed = TrainSection(micro_batch_size=2, grad_accum=2)  # the user asks for another split: global 8
    with pytest.raises(UserError, match=r"now give 8 \(micro 2 × accumulation 2 × world 2\).*allow_batch_change=true"):
        resume_batch(changed, 2, SAVED, "ckpt")
    changed.allow_batch_change = True
    assert resume_batch(changed, 2, SAVED, "ckpt") == (Batch(2, 2, 2), Batch(2, 3, 2))
    # other keys that give the same global batch are simply followed
    same = TrainSection(micro_batch_size=1, global_batch_size=12)
    assert resume_batch(same, 3, SAVED, "ckpt") == (Batch(1, 4, 3), Batch(2, 3, 2))


def test_a_checkpoint_without_its_batch_needs_the_global_batch_on_another_world_size():
    old = {"world_size": 2}
    assert resume_batch(TrainSection(micro_batch_size=2, grad_accum=3), 2, old, "c") == (Batch(2, 3, 2), None)
    with pytest.raises(UserError, match="set train.global_batch_size"):
        resume_batch(TrainSection(micro_batch_size=2, grad_accum=3), 1, old, "c")
    assert resume_batch(TrainSection(micro_batch_size=2, global_batch_size=12), 1, old, "c")[0] == Batch(2, 6, 1)


# ------------------------------------------------------------------------------------------------ real resumes


def _client_state(ckpt):
    """The zerotrain client state of a checkpoint (every rank's model-states file holds the same)."""
    import torch

    f = next(p for p in sorted(ckpt.glob("*model_states.pt")) if "rank_0" in p.name or p.name.startswith("mp_rank"))
    return torch.load(f, map_location="cpu", weights_only=False)["zerotrain"]


def _universal_states(ckpt):
    """{param: {fp32, exp_avg, exp_avg_sq}} and the step and parameter groups, from the checkpoint's universal copy:
    every rank's partitions merged by DeepSpeed, whatever world size and stage wrote them."""
    import torch

    from zerotrain import universal

    folder = universal.convert(ckpt.parent, ckpt.name, say=lambda *_: None) / ckpt.name / "zero"
    optim = torch.load(folder / "optimizer_state.pt", weights_only=False)
    states = {}
    for p in folder.iterdir():
        if (p / "exp_avg.pt").is_file():
            states[p.name] = {
                k: torch.load(p / f"{k}.pt", weights_only=False)["param"] for k in ("fp32", "exp_avg", "exp_avg_sq")
            }
            states[p.name]["step"] = torch.load(p / "step.pt", weights_only=False)
    return states, [{k: g[k] for k in ("lr", "betas", "eps", "weight_decay")} for g in optim["param_groups"]]


# Measured when this test was written (2-core CPU, fp32, gloo; `pytest -s` prints them): the largest relative
# difference of the losses of steps 5-8 from the straight run's was 8.4e-8 (one step off in the 7th digit) for
# ZeRO-2 and ZeRO-3 on 2 -> 1 and 2 -> 3 ranks and for ZeRO-3 on 2 -> ZeRO-0 on 1, and 0 for ZeRO-2 -> ZeRO-3 on
# 2 ranks; at step 8 the weights differed by at most 3.4e-5 and the Adam moments by 7.5e-7 of each tensor's
# largest value (the sums run in another order on another number of ranks).
@pytest.mark.slow
@pytest.mark.parametrize(
    "source,stage,nproc", [(2, 2, 1), (2, 2, 3), (3, 3, 1), (3, 3, 3), (2, 3, 2), (3, 0, 1)], ids=str
)
def test_resume_on_another_world_size_or_stage_follows_the_straight_run(
    straight_runs, tmp_path, char_data, source, stage, nproc
):

    from zerotrain import checkpoint

    straight = straight_runs[source]
    step4 = straight / "checkpoints" / "step_4"
    before = tree_digest(step4)
    cfg = write_config(
        tmp_path / "r.toml",
        out_dir=tmp_path / "resumed",
        data_dir=char_data,
        zero_stage=stage,
        max_steps=8,
        save_interval=4,
        eval_interval=8,
    )
    r = run_ok("train", cfg, *(["--nproc", nproc] if nproc > 1 else []), *BATCH_12, f"--run.resume={step4}")
    assert tree_digest(step4) == before  # the original is only read
    assert f"written by 2 ranks at ZeRO-{source}, loaded through its universal copy" in r.stdout
    if nproc != 2:
        accum = 6 // nproc
        assert (
            f"global batch 12 = micro 2 × accumulation {accum} × world {nproc} (was micro 2 × accumulation 3 × world 2)"
            in r.stdout
        )

    resumed_run = tmp_path / "resumed"
    resumed, original = train_losses(resumed_run), train_losses(straight)
    assert sorted(resumed) == [5, 6, 7, 8]
    worst = max(abs(resumed[s] - original[s]) / abs(original[s]) for s in resumed)
    print(f"ZeRO-{source} × 2 ranks -> ZeRO-{stage} × {nproc}: largest relative loss difference {worst:.2e}")
    assert worst < 1e-4, (resumed, original)
    rows = {r["step"]: r for r in metrics(resumed_run) if "loss" in r}
    straight_rows = {r["step"]: r for r in metrics(straight) if "loss" in r}
    for s in resumed:  # the LR schedule and the token count go on from the checkpoint's step
        assert rows[s]["lr"] == straight_rows[s]["lr"] and rows[s]["tokens_seen"] == straight_rows[s]["tokens_seen"]

    # at the common step 8: the same data position, the same weights, Adam moments, step and parameter groups
    ours, theirs = resumed_run / "checkpoints" / "step_8", straight / "checkpoints" / "step_8"
    a, b = _client_state(ours), _client_state(theirs)
    assert a["tokens_seen"] == b["tokens_seen"] == 8 * 12 * 32
    drawn = lambda s: s["draws"] * s["global_micro_batch"]  # noqa: E731 (sequences drawn, whatever the split)
    assert drawn(a["sampler"]) == drawn(b["sampler"]) == 8 * 12
    assert (a["sampler"]["epoch"], a["sampler"]["pos"]) == (b["sampler"]["epoch"], b["sampler"]["pos"])
    assert checkpoint.read_manifest(ours.parent, "step_8")["batch"]["global"] == 12
    (mine, groups), (straight_states, straight_groups) = _universal_states(ours), _universal_states(theirs)
    assert mine.keys() == straight_states.keys() and groups == straight_groups
    off = dict.fromkeys(("fp32", "exp_avg", "exp_avg_sq"), 0.0)  # largest |difference| / largest |value|, per tensor
    for name, s in straight_states.items():
        assert int(mine[name]["step"]) == int(s["step"]) == 8, name
        for key in off:
            off[key] = max(off[key], ((mine[name][key] - s[key]).abs().max() / s[key].abs().max()).item())
    print(f"  at step 8, largest difference relative to each tensor's largest value: {off}")
    assert all(v < 1e-4 for v in off.values()), off


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue(straight_runs, tmp_path, char_data):
    """Each with one error line naming the fix, before any rank starts, and nothing written."""
    step4 = straight_runs[2] / "checkpoints" / "step_4"
    partial = tmp_path / "partial" / "checkpoints" / "step_4"
    shutil.copytree(step4, partial, ignore=shutil.ignore_patterns("*zero_pp_rank_1_*"))
    before = tree_digest(partial.parent)
    cfg = write_config(tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, max_steps=8)
    cases = [
        ((f"--run.resume={partial}",), ("is incomplete", "rank 1's optimizer shard missing", "copy the whole")),
        ((f"--run.resume={step4}", "--model.n_embd=64"), ("model.n_embd = 64 but the checkpoint has 32",)),
        ((f"--run.resume={step4}", "--nproc", "5"), ("global batch 12", "cannot split evenly", "allow_batch_change")),
        ((f"--run.resume={step4}", "--nproc", "2", "--train.grad_accum=2"), ("now give 8", "allow_batch_change=true")),
        ((f"--run.resume={step4}", "--deepspeed.dtype=bf16"), ("trained in fp32", 'deepspeed.dtype = "fp32"')),
    ]
    for args, needles in cases:
        r = zerotrain("train", cfg, *BATCH_12, *args)  # a later override wins
        assert_clean_failure(r, *needles)
        assert "launching" not in r.stdout
    assert not (tmp_path / "resumed").exists() and tree_digest(partial.parent) == before
    assert_clean_failure(zerotrain("checkpoint", "convert", partial, "--to", "universal"), "is incomplete")
    assert not (partial.parent / "step_4.universal").exists()


@pytest.mark.slow
def test_a_zero0_checkpoint_resumes_at_zero2_with_its_rng(stage_runs, tmp_path, char_data):
    """ZeRO-0's optimizer is torch's AdamW, outside DeepSpeed's universal checkpoints: zerotrain writes its universal
    copy itself. On the same number of ranks every rank's RNG state goes on, so with dropout on the losses still
    follow the straight ZeRO-0 run."""
    step6 = stage_runs[0] / "checkpoints" / "step_6"
    before = tree_digest(step6)
    cfg = write_config(tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, zero_stage=2, dropout=0.1)
    r = run_ok("train", cfg, "--nproc", 2, f"--run.resume={step6}")
    assert "written by 2 ranks at ZeRO-0, loaded through its universal copy" in r.stdout
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(stage_runs[0])
    assert sorted(resumed) == list(range(7, 13))
    worst = max(abs(resumed[s] - original[s]) / abs(original[s]) for s in resumed)
    print(f"ZeRO-0 × 2 ranks -> ZeRO-2 × 2: largest relative loss difference {worst:.2e}")
    assert worst < 1e-4, (resumed, original)
    assert tree_digest(step6) == before


@pytest.mark.slow
def test_zero3_with_parameters_kept_gathered_resumes_as_partitioned_and_exports(straight_runs, tmp_path, char_data):
    """deepspeed.zero3_persistent_params = "on" (what "auto" picks on GPUs that hold the model) on the 2 CPU ranks of
    the straight ZeRO-3 run: its step-4 checkpoint goes on to the same losses, and the run's own checkpoint exports."""
    cfg = write_config(tmp_path / "r.toml", out_dir=tmp_path / "on", data_dir=char_data, zero_stage=3, max_steps=8)
    step4 = straight_runs[3] / "checkpoints" / "step_4"
    run_ok("train", cfg, "--nproc", 2, *BATCH_12, "--deepspeed.zero3_persistent_params=on", f"--run.resume={step4}")
    zero = json.loads((tmp_path / "on" / "ds_config.json").read_text())["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] >= 2**40  # above any parameter: all of them persist
    assert zero["memory_efficient_linear"] is False  # torch's F.linear: the same numbers as DeepSpeed's
    resumed, original = train_losses(tmp_path / "on"), train_losses(straight_runs[3])
    assert sorted(resumed) == [5, 6, 7, 8]
    assert all(resumed[s] == pytest.approx(original[s], rel=1e-5) for s in resumed), (resumed, original)
    run_ok("export", tmp_path / "on", "--out", tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_resume_into_an_offloaded_optimizer(straight_runs, tmp_path, char_data):
    """ZeRO-3 on 2 ranks -> ZeRO-2 on 1 rank with the optimizer offloaded to the CPU (DeepSpeedCPUAdam, built on
    first use): the universal copy loads there too."""
    cfg = write_config(tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, zero_stage=2, max_steps=8)
    step4 = straight_runs[3] / "checkpoints" / "step_4"
    run_ok("train", cfg, *BATCH_12, "--deepspeed.offload_optimizer=cpu", f"--run.resume={step4}")
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(straight_runs[3])
    worst = max(abs(resumed[s] - original[s]) / abs(original[s]) for s in resumed)
    print(f"ZeRO-3 × 2 ranks -> ZeRO-2 × 1 with CPU offload: largest relative loss difference {worst:.2e}")
    assert sorted(resumed) == [5, 6, 7, 8] and worst < 2e-3  # DeepSpeedCPUAdam vs torch AdamW: other kernels
