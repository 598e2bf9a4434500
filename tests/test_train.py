"""Training with the real DeepSpeed engine on CPU (gloo), mostly in 2 processes launched by
`zerotrain train --nproc 2` — the same path a user takes."""

import math
import os
import time

import pytest

from conftest import assert_clean_failure, metrics, run_ok, train_losses, val_losses, write_config, zerotrain

pytestmark = pytest.mark.slow


def test_stages_follow_the_same_loss_trajectory(stage_runs):
    reference = train_losses(stage_runs[0])
    assert sorted(reference) == list(range(1, 13))
    assert reference[12] < reference[1] - 0.5  # it learns
    for stage in (1, 2, 3):
        losses = train_losses(stage_runs[stage])
        for step, loss in reference.items():
            assert losses[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), (stage, step)
        assert val_losses(stage_runs[stage])[12] == pytest.approx(val_losses(stage_runs[0])[12], rel=1e-4)


def test_run_directory_layout_and_metrics(stage_runs):
    run = stage_runs[2]
    for name in ("config.toml", "ds_config.json", "metrics.jsonl", "tokenizer/zerotrain_tokenizer.json"):
        assert (run / name).is_file(), name
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_12"
    assert os.readlink(ckpts / "final") == "step_12"
    assert os.readlink(ckpts / "best") in ("step_6", "step_12")
    assert (ckpts / "step_6" / "zerotrain.json").is_file() and not list(ckpts.glob(".tmp*"))
    rows = metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    for key in ("step", "loss", "lr", "grad_norm", "step_time_s", "tokens_per_s", "mfu", "peak_mem_bytes"):
        assert key in train_rows[0], key
    assert train_rows[0]["mfu"] is None  # no peak-FLOPs figure for a CPU
    assert all(r["tokens_per_s"] > 0 and r["peak_mem_bytes"] > 0 and r["grad_norm"] > 0 for r in train_rows)
    assert train_rows[0]["lr"] == pytest.approx(3e-3 / 5) and train_rows[-1]["lr"] < train_rows[5]["lr"]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_is_bitwise_exact(stage_runs, tmp_path, char_data, stage):
    """6 steps, resume, 6 more steps == 12 straight steps, to the last bit (dropout on, so RNG state matters)."""
    straight = stage_runs[stage]
    cfg = write_config(
        tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, zero_stage=stage, dropout=0.1
    )
    run_ok("train", cfg, "--nproc", 2, f"--run.resume={straight}/checkpoints/step_6")
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(straight)
    assert sorted(resumed) == list(range(7, 13))
    assert all(resumed[s] == original[s] for s in resumed), (resumed, original)
    assert val_losses(tmp_path / "resumed")[12] == val_losses(straight)[12]


def test_resume_refuses_a_checkpoint_with_other_parameter_groups(stage_runs, tmp_path, char_data):
    """Checkpoints from before the embeddings got their own AdamW group hold two groups' optimizer states: resuming
    one names init_from (weights, fresh optimizer) instead of failing inside DeepSpeed."""
    import json
    import shutil

    old = tmp_path / "old" / "checkpoints" / "step_6"
    shutil.copytree(stage_runs[2] / "checkpoints" / "step_6", old)
    manifest = json.loads((old / "zerotrain.json").read_text())
    decay, embeddings, small = manifest["param_group_names"]
    (old / "zerotrain.json").write_text(json.dumps(manifest | {"param_group_names": [decay, embeddings + small]}))
    cfg = write_config(tmp_path / "r.toml", out_dir=tmp_path / "resumed", data_dir=char_data, dropout=0.1)
    assert_clean_failure(
        zerotrain("train", cfg, "--nproc", 2, f"--run.resume={old}"),
        "2 optimizer parameter groups",
        f"--run.init_from={old}",
    )


def test_process_killed_mid_save_keeps_previous_checkpoint(stage_runs, tmp_path, char_data):
    cfg = write_config(
        tmp_path / "k.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=2,
        dropout=0.1,
        save_interval=4,
        eval_interval=12,
    )
    started = time.monotonic()
    crashed = zerotrain(
        "train", cfg, "--nproc", 2, env={"ZEROTRAIN_FAULT": "save:8:1"}
    )  # rank 1 SIGKILLed inside the step-8 save
    assert crashed.returncode != 0
    assert time.monotonic() - started < 120  # the surviving rank was stopped, not left hanging
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_4"
    assert not (ckpts / "step_8").exists() and (ckpts / ".tmp_step_8").exists()  # the partial write is quarantined
    # run.resume = "auto" is not set in this config: continuing needs it, and must reproduce the straight run
    run_ok("train", cfg, "--nproc", 2, "--run.resume=auto")
    assert (ckpts / "latest").read_text() == "step_12" and not list(ckpts.glob(".tmp*"))
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 13))  # records of the crashed steps 5-8 were replaced
    original = train_losses(stage_runs[2])
    assert all(losses[s] == original[s] for s in losses)


def test_sigterm_finishes_the_step_saves_and_exits_cleanly(sigterm_run):
    """conftest's sigterm_run: SIGTERM after 5 logged steps of a 2-rank run (shared with tests/test_cli.py)."""
    out, cfg, run = sigterm_run["out"], sigterm_run["cfg"], sigterm_run["run"]
    assert sigterm_run["returncode"] == 0, out[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in out
    ckpts = run / "checkpoints"
    step = int((ckpts / "latest").read_text().removeprefix("step_"))
    assert step >= 5 and not (ckpts / "final").exists()
    last_logged = max(train_losses(run))
    assert last_logged == step  # the step in flight was finished, logged and saved
    run_ok("train", cfg, "--nproc", 2, "--run.resume=auto", f"--train.max_steps={step + 2}")
    assert sorted(train_losses(run))[-3:] == [step, step + 1, step + 2]


@pytest.mark.parametrize(
    "stage,offload",
    [
        (2, ["--deepspeed.offload_optimizer=cpu"]),
        (3, ["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_params=cpu"]),
        # ZeRO-Offload++'s partial offload: half the sub-groups step in DeepSpeedCPUAdam, half in torch's AdamW
        (3, ["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_optimizer_ratio=0.5"]),
    ],
)
def test_cpu_offload_matches_the_device_run(stage_runs, tmp_path, char_data, stage, offload):
    cfg = write_config(tmp_path / "o.toml", out_dir=tmp_path / "run", data_dir=char_data, zero_stage=stage, dropout=0.1)
    run_ok("train", cfg, "--nproc", 2, *offload, "--train.max_steps=6")
    ds_config = (tmp_path / "run" / "ds_config.json").read_text()
    assert '"offload_optimizer"' in ds_config and '"optimizer"' in ds_config
    if "--deepspeed.offload_optimizer_ratio=0.5" in offload:
        assert '"ratio": 0.5' in ds_config and '"sub_group_size": 10000000' in ds_config
    losses, reference = train_losses(tmp_path / "run"), train_losses(stage_runs[stage])
    for s in range(1, 7):  # DeepSpeedCPUAdam vs torch AdamW: same maths, different kernels
        assert losses[s] == pytest.approx(reference[s], rel=2e-3), s


PARTIAL_OFFLOAD_ENGINE = """
import json, torch, deepspeed
from zerotrain.train import scheduled_groups
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
groups = [
    {"params": [model[0].weight, model[1].weight], "weight_decay": 0.1},
    {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0},
]
config = {
    "train_batch_size": 1,
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.5}, "sub_group_size": 2048},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
}
engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
for group in scheduled_groups(engine):
    group["lr"] = 5e-5
print(json.dumps([g["lr"] for g in engine.optimizer.backup_optimizer.param_groups + engine.optimizer.param_groups]))
"""


@pytest.mark.slow
def test_the_schedule_reaches_the_sub_groups_a_partial_offload_steps_on_the_gpu(tmp_path):
    """DeepSpeed's partial offload steps the sub-groups it keeps on the GPU with stage3.backup_optimizer, whose
    first group is a copy made at start: the lr the loop sets must reach it too (a real ZeRO-3 engine, one rank;
    on the CPU the backup optimizer exists but every sub-group steps in DeepSpeedCPUAdam)."""
    import json
    import subprocess
    import sys

    from zerotrain.distributed import free_port

    env = os.environ | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", PARTIAL_OFFLOAD_ENGINE], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lrs = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(lrs) == 4 and set(lrs) == {5e-5}, lrs


PARTIAL_OFFLOAD_RESUME = """
import json, sys, types, torch, deepspeed
from pathlib import Path
from zerotrain import checkpoint, distributed, partial_offload, universal

d = distributed.init()
config = {
    "train_batch_size": 1,
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.5}, "sub_group_size": 2048},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1}},
}
data = [torch.randn(4, 64, generator=torch.Generator().manual_seed(s)) for s in range(4)]


def engine_with_gpu_stepped_sub_groups(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    # On a CPU-only machine DeepSpeed puts every sub-group on 'cpu'; "cpu:0" takes its GPU branch (the backup
    # optimizer steps it) while its tensors stay on this CPU: the half a GPU would keep.
    devices = engine.optimizer.subgroup_to_device
    for i in range(len(devices) // 2):
        devices[i] = "cpu:0"
    return engine


def train(engine, steps):
    losses = []
    for x in steps:
        loss = (engine(x) - x.flip(1)).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


a = engine_with_gpu_stepped_sub_groups(0)
assert len(partial_offload.gpu_stepped(a)) >= 1
train(a, data[:2])
state = types.SimpleNamespace(step=2, state_dict=lambda: {})
checkpoint.save(a, Path("ckpt"), state, {"zero_stage": 3, "world_size": 1, "step": 2, "dtype": "fp32"}, d, keep_last=2)
straight = train(a, data[2:])
resumed = {}
for how in ("restored", "not restored"):
    b = engine_with_gpu_stepped_sub_groups(1)
    b.load_checkpoint("ckpt", tag="step_2", load_optimizer_states=True, load_lr_scheduler_states=False)
    missing = partial_offload.restore_moments(b) if how == "restored" else None
    resumed[how] = {"missing": missing, "losses": train(b, data[2:])}
folder = universal.convert(Path("ckpt"), "step_2")  # resume-anywhere's path (DeepSpeed's ds_to_universal)
config["checkpoint"] = {"load_universal": True}
c = engine_with_gpu_stepped_sub_groups(1)
c.load_checkpoint(str(folder), tag="step_2", load_optimizer_states=True, load_lr_scheduler_states=False)
resumed["universal"] = {"missing": partial_offload.restore_moments(c), "losses": train(c, data[2:])}
print(json.dumps({"straight": straight, **resumed}))
"""


@pytest.mark.slow
def test_a_partial_offload_resume_keeps_the_adam_moments_of_the_sub_groups_stepped_on_the_gpu(tmp_path):
    """DeepSpeed 0.19.8 checkpoints DeepSpeedCPUAdam's state only; the sub-groups its partial offload steps on the
    GPU (backup_optimizer) are saved through checkpoint.save and restored after the load, native or through the
    universal copy: the resumed steps equal the straight run's, where without the restore they do not (a real
    one-rank ZeRO-3 engine on the CPU; without the save side, ds_to_universal finds no state for those sub-groups)."""
    import json
    import subprocess
    import sys

    from zerotrain.distributed import free_port

    env = os.environ | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu"}
    r = subprocess.run(
        [sys.executable, "-c", PARTIAL_OFFLOAD_RESUME], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["restored"]["missing"] == 0
    assert out["restored"]["losses"] == pytest.approx(out["straight"], rel=1e-6)
    assert out["not restored"]["losses"][1] != pytest.approx(out["straight"][1], rel=1e-3)
    assert out["universal"]["missing"] == 0
    assert out["universal"]["losses"] == pytest.approx(out["straight"], rel=1e-6)


@pytest.fixture(scope="module")
def bf16_zero3_run(tmp_path_factory, char_data):
    """2 steps of ZeRO-3 in bf16 on 2 ranks, checkpoint at 2, with deepspeed.offload_optimizer = "auto" (which the
    planner resolves to "none" on the CPU, so the run is the plain bf16 ZeRO-3 one): (out_dir, result), shared by
    the two tests below, one launch for both."""
    root = tmp_path_factory.mktemp("bf16-zero3")
    cfg = write_config(
        root / "a.toml",
        out_dir=root / "run",
        data_dir=char_data,
        zero_stage=3,
        max_steps=2,
        eval_interval=2,
        save_interval=2,
    )
    return root / "run", run_ok(
        "train", cfg, "--nproc", 2, "--deepspeed.dtype=bf16", "--deepspeed.offload_optimizer=auto"
    )


def test_offload_auto_is_resolved_before_the_run_and_said(bf16_zero3_run):
    """offload_optimizer = "auto" is chosen by the planner before the engine exists (on the CPU, where offloading moves
    nothing out of host RAM: none) and the line says which run-config keys it set."""
    run, r = bf16_zero3_run
    assert 'offload auto → deepspeed.offload_optimizer = "none"' in r.stdout
    assert '"offload_optimizer"' not in (run / "ds_config.json").read_text()


def test_accumulation_checkpointing_and_zero3_gathering_keep_the_trajectory(tmp_path, char_data):
    base = write_config(
        tmp_path / "a.toml", out_dir=tmp_path / "a", data_dir=char_data, max_steps=6, eval_interval=0, save_interval=0
    )
    run_ok("train", base, "--train.micro_batch_size=8")
    run_ok("train", base, "--run.out_dir=" + str(tmp_path / "b"), "--train.micro_batch_size=4", "--train.grad_accum=2")
    # the fused MLP function and the tuned linears (zerotrain/kernels/cublaslt.py; PyTorch's kernels on CPU) with recomputation
    run_ok(
        "train",
        base,
        "--run.out_dir=" + str(tmp_path / "c"),
        "--train.micro_batch_size=8",
        "--deepspeed.activation_checkpointing=true",
        "--train.fused_gelu=on",
        "--train.tuned_matmuls=on",
    )
    # ZeRO-3 in 2 ranks, the same 8 sequences per step: blocks gathered whole (the default) with accumulation,
    # recomputation and the fused MLP against layers gathered one by one
    z3 = ("--nproc", 2, "--deepspeed.zero_stage=3")
    blocks = run_ok(
        "train",
        base,
        *z3,
        "--run.out_dir=" + str(tmp_path / "d"),
        "--train.micro_batch_size=2",
        "--train.grad_accum=2",
        "--deepspeed.activation_checkpointing=true",
        "--train.fused_gelu=on",
        "--train.tuned_matmuls=on",
    )
    layers = run_ok(
        "train",
        base,
        *z3,
        "--run.out_dir=" + str(tmp_path / "e"),
        "--train.micro_batch_size=4",
        "--deepspeed.zero3_gather_per_block=false",
    )
    assert "parameters gathered per block" in blocks.stdout and "parameters gathered per block" not in layers.stdout
    assert "fused MLP" in blocks.stdout and "fused MLP" not in layers.stdout
    a, b, c, d, e = (train_losses(tmp_path / n) for n in "abcde")
    for s in range(1, 7):
        assert b[s] == pytest.approx(a[s], rel=1e-4)
        assert c[s] == pytest.approx(a[s], rel=1e-6)
        assert d[s] == pytest.approx(e[s], rel=1e-4)


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, char_data):
    """8 steps of ZeRO-2 in bf16 on one rank, evaluated at 8, writing TensorBoard events and an offline W&B run: the
    run directory, shared by test_bf16_on_cpu and test_tensorboard_and_offline_wandb_get_the_metrics (one launch)."""
    root = tmp_path_factory.mktemp("bf16")
    cfg = write_config(
        root / "b.toml", out_dir=root / "run", data_dir=char_data, max_steps=8, eval_interval=8, save_interval=0
    )
    run_ok(
        "train",
        cfg,
        "--deepspeed.dtype=bf16",
        "--run.tensorboard=true",
        "--run.wandb=true",
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    return root / "run"


def test_bf16_on_cpu(bf16_run):
    assert '"bf16": {\n    "enabled": true' in (bf16_run / "ds_config.json").read_text()
    losses = train_losses(bf16_run)
    assert all(math.isfinite(v) for v in losses.values()) and losses[8] < losses[1]


@pytest.mark.slow
def test_bf16_master_weights_train_resume_exactly_and_export(tmp_path, char_data):
    """deepspeed.master_weights = "bf16": DeepSpeed's bf16 master weights and Adam moments (half the optimizer's
    memory). The run learns, its checkpoints say so and resume to the bit, a resume that would switch to fp32 master
    weights is refused before anything loads, and the export reloads with the checkpoint's logits."""
    import json

    import torch

    common = ["--nproc", 2, "--deepspeed.dtype=bf16"]
    cfg = write_config(
        tmp_path / "a.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=8, eval_interval=8, save_interval=4
    )
    run_ok("train", cfg, *common, "--deepspeed.master_weights=bf16")
    assert json.loads((tmp_path / "run" / "ds_config.json").read_text())["bf16"] == {
        "enabled": True,
        "bf16_master_weights_and_grads": True,
        "bf16_optimizer_states": True,
    }
    step4 = tmp_path / "run" / "checkpoints" / "step_4"
    assert json.loads((step4 / "zerotrain.json").read_text())["master_weights"] == "bf16"
    optimizer = torch.load(next(step4.rglob("*optim_states.pt")), weights_only=False)["optimizer_state_dict"]
    assert {t.dtype for t in optimizer["single_partition_of_fp32_groups"]} == {torch.bfloat16}
    assert {s["exp_avg"].dtype for s in optimizer["base_optimizer_state"]["state"].values()} == {torch.bfloat16}
    straight = train_losses(tmp_path / "run")
    assert straight[8] < straight[1] - 0.3

    resume = write_config(
        tmp_path / "r.toml",
        out_dir=tmp_path / "resumed",
        data_dir=char_data,
        max_steps=8,
        eval_interval=8,
        save_interval=4,
    )
    assert_clean_failure(
        zerotrain("train", resume, *common, f"--run.resume={step4}"),
        "keeps bf16 master weights",
        'deepspeed.master_weights = "bf16"',
    )
    assert not (tmp_path / "resumed").exists()
    run_ok("train", resume, *common, "--deepspeed.master_weights=bf16", f"--run.resume={step4}")
    resumed = train_losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8] and all(resumed[s] == straight[s] for s in resumed), (resumed, straight)
    assert "verified" in run_ok("export", tmp_path / "run", "--out", tmp_path / "hf").stdout


def test_fp32_gradient_accumulation_at_zero1_resumes_exactly_and_exports(tmp_path, char_data):
    """bf16 with gradients summed in fp32 (deepspeed.grad_accum_dtype): at ZeRO-1 DeepSpeed switches to its BF16_Optimizer,
    whose checkpoints are other files; they resume to the bit, refuse a resume that would sum in bf16, and export."""
    import json

    from zerotrain import checkpoint

    common = ["--nproc", 2, "--deepspeed.dtype=bf16", "--train.grad_accum=4"]
    cfg = write_config(
        tmp_path / "a.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=1,
        dropout=0.1,
        max_steps=8,
        eval_interval=8,
        save_interval=4,
    )
    run_ok("train", cfg, *common, "--deepspeed.grad_accum_dtype=fp32")
    assert json.loads((tmp_path / "run" / "ds_config.json").read_text())["data_types"] == {"grad_accum_dtype": "fp32"}
    step4 = tmp_path / "run" / "checkpoints" / "step_4"
    assert sorted(p.name for p in step4.rglob("*optim_states.pt")) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert json.loads((step4 / "zerotrain.json").read_text())["grad_accum_dtype"] == "fp32"
    straight = train_losses(tmp_path / "run")
    assert straight[8] < straight[1] - 0.3

    cfg = write_config(
        tmp_path / "r.toml",
        out_dir=tmp_path / "resumed",
        data_dir=char_data,
        zero_stage=1,
        dropout=0.1,
        max_steps=8,
        eval_interval=8,
        save_interval=4,
    )
    assert_clean_failure(
        zerotrain("train", cfg, *common, f"--run.resume={step4}"),
        "summed gradients in fp32",
        'deepspeed.grad_accum_dtype = "fp32"',
    )
    run_ok("train", cfg, *common, "--deepspeed.grad_accum_dtype=fp32", f"--run.resume={step4}")
    resumed = train_losses(tmp_path / "resumed")
    assert sorted(resumed) == [5, 6, 7, 8] and all(resumed[s] == straight[s] for s in resumed), (resumed, straight)

    import torch

    state = checkpoint.load_fp32_state_dict(*checkpoint.resolve(tmp_path / "run"))
    module = torch.load(tmp_path / "run" / "checkpoints" / "step_8" / "mp_rank_00_model_states.pt", weights_only=False)[
        "module"
    ]
    assert set(module) <= set(state)
    for (
        name,
        weight,
    ) in module.items():  # every fp32 master lands on its parameter: it rounds to the bf16 weight trained
        assert state[name].dtype == torch.float32 and torch.equal(state[name].to(torch.bfloat16), weight), name
    run_ok("export", tmp_path / "run", "--out", tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_bf16_zero3_checkpoints_consolidate_and_export(bf16_zero3_run, tmp_path):
    """DeepSpeed names every bf16 run's shards bf16_zero_*, as it does BF16_Optimizer's (ZeRO-1 with fp32 sums): a
    ZeRO-3 bf16 checkpoint still consolidates through zero_to_fp32, every parameter in its shape, and exports."""
    import torch

    from zerotrain import checkpoint
    from zerotrain.model import GPT, GPTConfig

    run, _ = bf16_zero3_run
    assert '"bf16": {\n    "enabled": true' in (run / "ds_config.json").read_text()
    step2 = run / "checkpoints" / "step_2"
    assert sorted(p.name for p in step2.rglob("*optim_states.pt")) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    state = checkpoint.load_fp32_state_dict(*checkpoint.resolve(run))
    manifest = checkpoint.read_manifest(*checkpoint.resolve(run))
    shapes = {name: p.shape for name, p in GPT(GPTConfig(**manifest["model"])).state_dict().items()}
    assert {name: t.shape for name, t in state.items() if name in shapes} == shapes
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in state.values())
    run_ok("export", run, "--out", tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_init_from_and_weighted_data_mixing(stage_runs, tmp_path, char_data, corpus_file):
    from zerotrain.data import prepare

    other = tmp_path / "other"
    corpus = tmp_path / "more.txt"
    corpus.write_text(corpus_file.read_text()[::-1])  # same characters (so the same char tokenizer), different text
    prepare(str(corpus), "char", other)
    cfg = write_config(
        tmp_path / "m.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=3, eval_interval=3, save_interval=0
    )
    text = cfg.read_text().replace(f'dir = "{char_data}"', f'dirs = ["{char_data}", "{other}"]\nweights = [3.0, 1.0]')
    cfg.write_text(text)
    run_ok("train", cfg, f"--run.init_from={stage_runs[2]}")
    first = train_losses(tmp_path / "run")[1]
    fresh_first = train_losses(stage_runs[2])[1]
    assert first < fresh_first - 0.3  # started from the trained weights, not from scratch
    assert "step" in metrics(tmp_path / "run")[-1] and val_losses(tmp_path / "run")


def test_early_stopping_on_flat_val_loss(tmp_path, char_data):
    cfg = write_config(
        tmp_path / "e.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        max_steps=50,
        eval_interval=2,
        save_interval=0,
    )
    r = run_ok("train", cfg, "--train.lr=1e-12", "--train.min_lr=1e-12", "--train.early_stop_patience=2")
    assert "early stop" in r.stdout
    assert max(train_losses(tmp_path / "run")) == 6  # evals at 2 (best), 4, 6: two without improvement
    assert os.readlink(tmp_path / "run" / "checkpoints" / "final") == "step_6"


def test_tensorboard_and_offline_wandb_get_the_metrics(bf16_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(bf16_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("val_loss")] == [8]
    offline_runs = list((bf16_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1 and offline_runs[0].stat().st_size > 0


def test_gradient_norm_is_logged_at_every_stage_and_agrees(stage_runs):
    norms = {
        stage: {r["step"]: r["grad_norm"] for r in metrics(run) if "loss" in r} for stage, run in stage_runs.items()
    }
    assert all(
        n is not None and n > 0 for n in norms[0].values()
    )  # stage 0 keeps no norm of its own: zerotrain measures it
    for stage in (1, 2, 3):
        for step, norm in norms[0].items():
            assert norms[stage][step] == pytest.approx(norm, rel=1e-3), (stage, step)


def test_flash_attention_3_on_where_it_cannot_run_stops_with_the_reason(tmp_path, char_data):
    cfg = write_config(
        tmp_path / "f.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=2, eval_interval=0, save_interval=0
    )
    r = zerotrain("train", cfg, "--deepspeed.dtype=bf16", "--train.flash_attention_3=on")
    assert_clean_failure(r, 'train.flash_attention_3 = "on"', "cpu tensors", 'train.flash_attention_3 = "auto"')
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_divergence_stops_with_a_clear_line_and_publishes_no_checkpoint(tmp_path, char_data):
    from conftest import assert_clean_failure

    cfg = write_config(
        tmp_path / "n.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        max_steps=20,
        save_interval=2,
        eval_interval=0,
    )
    r = zerotrain(
        "train", cfg, "--train.lr=1e30", "--train.min_lr=1e29", "--train.grad_clip=0", "--train.log_interval=5"
    )
    assert_clean_failure(r, "training diverged", "train.lr")
    from zerotrain import checkpoint

    assert checkpoint.step_tags(tmp_path / "run" / "checkpoints") == []


def test_stage0_bf16_checkpoint_exports_the_fp32_master_weights(tmp_path, char_data):
    import torch

    from zerotrain import checkpoint

    cfg = write_config(
        tmp_path / "s.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=0,
        max_steps=4,
        eval_interval=4,
        save_interval=4,
    )
    run_ok("train", cfg, "--deepspeed.dtype=bf16")
    state = checkpoint.load_fp32_state_dict(*checkpoint.resolve(tmp_path / "run"))
    w = state["transformer.h.0.mlp.c_fc.weight"]
    assert (w.to(torch.bfloat16).float() != w).any()  # the fp32 masters, not the bf16 copies the module holds
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    run_ok("export", tmp_path / "run", "--out", tmp_path / "hf")
