"""`zerotrain config new`: every generated config passes check and DeepSpeed's parser, offload only where the
plan needs it, the Hugging Face "auto" form, and the files the verb writes."""

import json

import pytest

from zerotrain import UserError, memory
from zerotrain.dsconfig.engine import engine_findings
from zerotrain.dsconfig.lint import check
from zerotrain.dsconfig.new import choose_layout, new_config

from conftest import assert_clean_failure, errors, zerotrain

GRID = [
    (model, gpus, gpu)
    for model in (*memory.GPT2_PRESETS, "smollm2-135m", "llama3-8b")
    for gpus in (1, 2, 4, 8)
    for gpu in ("h100", "a100-40gb", "v100", "rtx4090")
]


def test_every_generated_config_passes_check_and_deepspeed():
    for model, gpus, gpu in GRID:
        for target in ("deepspeed", "hf-trainer"):
            try:
                config, _ = new_config(model, gpus, gpu=gpu, target=target)
            except UserError as e:  # only an 8B model on few 16-24 GiB GPUs may be refused
                assert "does not fit" in str(e) and model == "llama3-8b" and gpu in ("v100", "rtx4090") and gpus <= 2, e
                continue
            hf = target == "hf-trainer"
            findings = check(config, world_size=gpus, gpu=gpu, hf_integration=hf)
            assert not errors(findings), (model, gpus, gpu, target, findings)
            assert not engine_findings(config, gpus, hf), (model, gpus, gpu, target)
    with pytest.raises(UserError, match="does not fit"):
        new_config("llama3-8b", 1, gpu="v100")
    config, _ = new_config("gpt2-large", 4, nodes=2, gpu="h100", global_batch=512, seq_len=512)
    assert (
        config["train_batch_size"]
        == 512
        == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * 8
    )
    assert not errors(check(config, world_size=8, gpu="h100"))


def test_layout_uses_offload_only_when_needed():
    xl = memory.resolve_model("gpt2-xl")
    small_gpu = choose_layout(xl, 1, 1, 16 * 2**30, 1, None, 1024)
    assert small_gpu.offload_optimizer == "cpu"
    big_gpu = choose_layout(xl, 8, 1, 80 * 2**30, None, None, 1024)
    assert big_gpu.offload_optimizer == "none" and big_gpu.stage == 1 and big_gpu.micro_batch >= 4
    assert memory.plan(xl, memory.RunShape(gpus_per_node=8, micro_batch=big_gpu.micro_batch, zero_stage=1)).fits(
        80 * 2**30, 0.10
    )
    with pytest.raises(UserError, match="not divisible"):
        choose_layout(xl, 8, 1, 80 * 2**30, None, 100, 1024)
    with pytest.raises(UserError, match="does not fit"):
        choose_layout(memory.resolve_model("llama3-8b"), 1, 1, 16 * 2**30, 8, None, 1024)


def test_generated_hf_config_uses_auto_fields_and_buckets_from_hidden_size():
    deepspeed, _ = new_config("gpt2-medium", 8, gpu="h100")
    zero = deepspeed["zero_optimization"]
    assert zero["reduce_bucket_size"] == 1024**2
    hf, _ = new_config("gpt2-medium", 8, gpu="h100", target="hf-trainer")
    assert hf["train_micro_batch_size_per_gpu"] == "auto" and hf["bf16"]["enabled"] == "auto"
    assert hf["scheduler"]["params"]["total_num_steps"] == "auto"


def test_cli_new_and_explain(tmp_path):
    out = tmp_path / "ds.json"
    r = zerotrain("config", "new", "--model", "gpt2", "--gpus", 2, "--gpu", "h100", "--global-batch", 64, "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["train_batch_size"] == 64
    assert "global batch 64 = micro" in r.stderr
    assert_clean_failure(
        zerotrain("config", "new", "--model", "gpt2", "--gpus", 2, "--out", out, "--no-engine"), "exists"
    )
    assert zerotrain("config", "check", out, "--world-size", 2, "--gpu", "h100").returncode == 0
    ex = zerotrain("config", "explain", out, "--no-engine", "--json")
    keys = {row["key"]: row for row in json.loads(ex.stdout)["keys"]}
    assert keys["zero_optimization.allgather_partitions"]["default"] is True
    assert_clean_failure(zerotrain("config", "new", "--model", "gpt5", "--gpus", 2), "unknown model")


def test_cli_new_for_accelerate_writes_a_yaml_accelerate_loads(tmp_path):
    out = tmp_path / "ds.json"
    r = zerotrain(
        "config",
        "new",
        "--model",
        "gpt2-xl",
        "--gpus",
        4,
        "--nodes",
        2,
        "--gpu",
        "a100-40gb",
        "--for",
        "accelerate",
        "--out",
        out,
        "--no-engine",
    )
    assert r.returncode == 0, r.stderr
    yaml_path = tmp_path / "accelerate_config.yaml"
    import accelerate.commands.config.config_args as accelerate

    loaded = accelerate.ClusterConfig.from_yaml_file(str(yaml_path))
    assert loaded.num_processes == 8 and loaded.num_machines == 2
    assert loaded.deepspeed_config["deepspeed_config_file"] == str(out)
    assert loaded.mixed_precision is None  # Accelerate refuses it next to a deepspeed_config_file


def test_cli_new_fits_the_host_ram_it_is_given():
    from tests.conftest import assert_clean_failure, zerotrain

    r = zerotrain("config", "new", "--model", "gpt2-xl", "--gpus", 1, "--gpu", "h100", "--host-memory", "30GiB")
    assert r.returncode == 0, r.stderr
    # an 8B model on one H200 with 125 GiB: the whole optimizer on the host would not fit it, part of it does
    r = zerotrain("config", "new", "--model", "llama3-8b", "--gpus", 1, "--gpu", "h200", "--host-memory", "125GiB")
    assert r.returncode == 0, r.stderr
    zero = json.loads(r.stdout)["zero_optimization"]
    assert zero["stage"] == 3 and 0 < zero["offload_optimizer"]["ratio"] < 1 and zero["sub_group_size"] == 10**7
    assert "of the optimizer offloaded to CPU (the rest steps on the GPU)" in r.stderr
    assert_clean_failure(
        zerotrain("config", "new", "--model", "llama3-8b", "--gpus", 1, "--gpu", "h100", "--host-memory", "125GiB"),
        "does not fit on 1 GPU(s) of 80 GiB and 125 GiB of host RAM per node",
    )
    assert_clean_failure(zerotrain("config", "new", "--model", "gpt2", "--gpus", 1, "--host-memory", "x"), "not a size")
