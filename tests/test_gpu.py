"""On an NVIDIA GPU (run on the GPU machine: `python -m pytest -m gpu`): bf16 ZeRO-2 and ZeRO-3 training
on 1 GPU, then export and generation from the GPU checkpoint."""

import os

import pytest

from conftest import metrics, run_ok, train_losses, write_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def need_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need an NVIDIA GPU; deselect them with -m 'not gpu'")
    # A test module that sets DS_ACCELERATOR=cpu at import (the ds_config rule tests once did) sends every training run of a
    # whole-suite session to DeepSpeed's CPU accelerator.
    assert os.environ.get("DS_ACCELERATOR", "cuda") == "cuda", "DS_ACCELERATOR is set to a non-GPU accelerator"


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_training_on_one_gpu_then_export(tmp_path, char_data, stage):
    cfg = write_config(
        tmp_path / "g.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=stage,
        max_steps=30,
        eval_interval=30,
        save_interval=30,
    )
    cfg.write_text(cfg.read_text().replace('dtype = "fp32"', 'dtype = "auto"'))
    r = run_ok("train", cfg)
    assert "bf16" in r.stdout
    losses = train_losses(tmp_path / "run")
    assert losses[30] < losses[1] - 0.5
    # rank 0's GPU clock and power through NVML (zerotrain/clocks.py), in the records and the step lines
    clocked = [row for row in metrics(tmp_path / "run") if "gpu_sm_clock_mhz" in row]
    assert clocked and " MHz" in r.stdout
    for row in clocked:
        assert 100 < row["gpu_sm_clock_mhz"] <= row["gpu_max_sm_clock_mhz"] + 1
        assert 0 < row["gpu_power_w"] <= 1.5 * row["gpu_power_limit_w"]
        assert 0 <= row["gpu_power_capped"] <= 1 and 0 <= row["gpu_thermal_capped"] <= 1
    run_ok("export", tmp_path / "run", "--out", tmp_path / "hf")
    text = run_ok(
        "generate", tmp_path / "hf", "--prompt", "The king", "--max-new-tokens", 20, "--device", "cuda"
    ).stdout
    assert text.startswith("The king")


def test_fp16_with_dynamic_loss_scaling(tmp_path, char_data):
    cfg = write_config(
        tmp_path / "h.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=2,
        max_steps=30,
        eval_interval=30,
        save_interval=30,
    )
    cfg.write_text(cfg.read_text().replace('dtype = "fp32"', 'dtype = "fp16"'))
    run_ok("train", cfg)
    rows = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert all(r["loss_scale"] >= 1 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5


def test_zero3_with_optimizer_and_parameter_offload_on_gpu(tmp_path, char_data):
    cfg = write_config(
        tmp_path / "o.toml",
        out_dir=tmp_path / "run",
        data_dir=char_data,
        zero_stage=3,
        max_steps=20,
        eval_interval=20,
        save_interval=20,
    )
    cfg.write_text(cfg.read_text().replace('dtype = "fp32"', 'dtype = "bf16"'))
    run_ok("train", cfg, "--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_params=cpu")
    losses = train_losses(tmp_path / "run")
    assert losses[20] < losses[1] - 0.5
    run_ok("export", tmp_path / "run", "--out", tmp_path / "hf")


def test_fast_path_follows_the_plain_loss_curve(tmp_path, char_data):
    """Compiled blocks, the GELU in cuBLASLt epilogues, matmul kernels timed per shape, FlashAttention-3 where it is
    installed and the fused, chunked loss (the GPU defaults) against eager blocks, separate GELU kernels, PyTorch's
    matmul kernels and attention and the full fp32 logits: the same run, the same curve (bf16 rounding differs, so
    within 2%)."""
    curves, flash3_noted = {}, {}
    for name, extra in (
        (
            "fast",
            [
                "--train.compile=blocks",
                "--train.fused_loss=true",
                "--train.fused_gelu=auto",
                "--train.tuned_matmuls=auto",
                "--train.flash_attention_3=auto",
            ],
        ),
        (
            "plain",
            [
                "--train.compile=none",
                "--train.fused_loss=false",
                "--train.fused_gelu=off",
                "--train.tuned_matmuls=off",
                "--train.flash_attention_3=off",
            ],
        ),
    ):
        cfg = write_config(
            tmp_path / f"{name}.toml",
            out_dir=tmp_path / name,
            data_dir=char_data,
            zero_stage=2,
            max_steps=60,
            eval_interval=60,
            save_interval=60,
        )
        cfg.write_text(cfg.read_text().replace('dtype = "fp32"', 'dtype = "bf16"'))
        out = run_ok("train", cfg, *extra).stdout
        assert ("compiled blocks" in out) == (name == "fast")
        assert ("GELU in cuBLASLt epilogues" in out) == (name == "fast")
        assert ("matmul kernels timed per shape" in out) == (name == "fast")
        flash3_noted[name] = "FlashAttention-3" in out
        curves[name] = train_losses(tmp_path / name)
    for step in (10, 30, 60):
        assert curves["fast"][step] == pytest.approx(curves["plain"][step], rel=0.02), step
    import torch  # CUDA in this process only after the runs (a GPU in exclusive-process mode)

    from zerotrain.kernels import flash3

    has_flash3 = flash3.flash3_unavailable(torch.device("cuda"), torch.bfloat16, 16) is None
    assert flash3_noted == {"fast": has_flash3, "plain": False}


def test_reduction_without_host_waits_gives_the_same_losses(tmp_path, char_data):
    """ZeRO-2 on 2 GPUs with accumulation and many small reduce buckets (so the double-buffered buckets are reused
    within every micro-step): the compute stream waiting for the reduction stream must give the losses of DeepSpeed's
    own host wait."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    buckets = tmp_path / "buckets.json"
    buckets.write_text('{"zero_optimization": {"reduce_bucket_size": 5000}}')
    curves = {}
    for wait in ("true", "false"):
        cfg = write_config(
            tmp_path / f"{wait}.toml",
            out_dir=tmp_path / wait,
            data_dir=char_data,
            zero_stage=2,
            max_steps=20,
            eval_interval=20,
            save_interval=20,
        )
        out = run_ok(
            "train",
            cfg,
            "--nproc",
            2,
            "--train.grad_accum=4",
            "--train.compile=none",
            f"--deepspeed.reduce_without_host_wait={wait}",
            f"--deepspeed.config={buckets}",
        ).stdout
        assert ("reductions without host waits" in out) == (wait == "true")
        curves[wait] = train_losses(tmp_path / wait)
    assert curves["true"][20] < curves["true"][1] - 0.5
    for step in range(1, 21):
        assert curves["true"][step] == pytest.approx(curves["false"][step], rel=1e-3), step


def test_fp32_gradient_sums_follow_the_bf16_curve(tmp_path, char_data):
    """deepspeed.grad_accum_dtype = "fp32" on GPUs with the defaults (compiled blocks, overlapped reductions ending in
    stream waits): ZeRO-2 (its fp32 gradient partition) and ZeRO-1 (DeepSpeed's BF16_Optimizer) give the curve of bf16
    sums; the rounding differs, so within 2%."""
    import json

    import torch

    nproc = 2 if torch.cuda.device_count() >= 2 else 1
    curves = {}
    for name, stage, sums in (("z2-bf16", 2, "auto"), ("z2-fp32", 2, "fp32"), ("z1-fp32", 1, "fp32")):
        cfg = write_config(
            tmp_path / f"{name}.toml",
            out_dir=tmp_path / name,
            data_dir=char_data,
            zero_stage=stage,
            max_steps=30,
            eval_interval=30,
            save_interval=30,
        )
        cfg.write_text(cfg.read_text().replace('dtype = "fp32"', 'dtype = "bf16"'))
        out = run_ok(
            "train", cfg, "--nproc", nproc, "--train.grad_accum=4", f"--deepspeed.grad_accum_dtype={sums}"
        ).stdout
        assert ("gradients summed in fp32" in out) == (sums == "fp32")
        ds_config = json.loads((tmp_path / name / "ds_config.json").read_text())
        assert ds_config.get("data_types") == ({"grad_accum_dtype": "fp32"} if sums == "fp32" else None)
        curves[name] = train_losses(tmp_path / name)
    assert curves["z2-bf16"][30] < curves["z2-bf16"][1] - 0.5
    for name in ("z2-fp32", "z1-fp32"):
        for step in (10, 20, 30):
            assert curves[name][step] == pytest.approx(curves["z2-bf16"][step], rel=0.02), (name, step)
    run_ok("export", tmp_path / "z1-fp32", "--out", tmp_path / "hf")
