"""The ds_config a zerotrain run gets: the batch triple, dtype, ZeRO sections per stage, a user ds_config merged
over it, and each preset's passing `config check`."""

import json

import pytest

from zerotrain import UserError
from zerotrain.dsconfig.from_run import Batch, build, derive_batch, resolve_dtype
from zerotrain.dsconfig.lint import check
from zerotrain.runconfig import RunConfig, TrainSection

from conftest import REPO, errors


def test_batch_triple_is_derived_and_described():
    b = derive_batch(TrainSection(micro_batch_size=8, grad_accum=4), world=2)
    assert (b.micro, b.accum, b.world, b.global_size) == (8, 4, 2, 64)
    assert b.describe() == "global batch 64 = micro 8 × accumulation 4 × world 2"
    b = derive_batch(TrainSection(micro_batch_size=8, global_batch_size=512), world=4)
    assert b.accum == 16


def test_batch_triple_that_does_not_divide_names_the_fix():
    with pytest.raises(
        UserError, match=r"not divisible by micro_batch_size 8 × world 3 = 24; use a multiple of 24 such as 96 or 120"
    ):
        derive_batch(TrainSection(micro_batch_size=8, global_batch_size=100), world=3)


def test_generated_config_per_stage_and_dtype():
    cfg = RunConfig()
    cfg.deepspeed.zero_stage = 3
    ds = build(cfg, Batch(4, 2, 2), "bf16", "cuda")
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"] == {"enabled": True} and "fp16" not in ds
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["zero_optimization"]["overlap_comm"] is True
    assert "optimizer" not in ds  # torch's AdamW is passed in
    cfg.deepspeed.offload_optimizer = "cpu"
    cfg.deepspeed.offload_params = "cpu"
    ds = build(cfg, Batch(4, 1, 1), "fp16", "cpu")
    assert ds["fp16"]["loss_scale"] == 0  # dynamic
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeedCPUAdam for offload


def test_partial_offload_ratio_reaches_the_ds_config_and_deepspeeds_parser():
    from zerotrain.dsconfig import engine_findings

    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload_optimizer = 3, "cpu"
    ds = build(cfg, Batch(4, 1, 2), "bf16", "cuda")
    assert (
        "ratio" not in ds["zero_optimization"]["offload_optimizer"] and "sub_group_size" not in ds["zero_optimization"]
    )
    cfg.deepspeed.offload_optimizer_ratio = 0.35
    ds = build(cfg, Batch(4, 1, 2), "bf16", "cuda")
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True, "ratio": 0.35}
    assert zero["sub_group_size"] == 10_000_000  # DeepSpeed splits in whole sub-groups: small ones land on the ratio
    assert ds["optimizer"]["type"] == "AdamW"  # the CPU's share steps in DeepSpeedCPUAdam, built from the config
    assert not [f for f in engine_findings(ds, 2) if f.level == "error"]  # DeepSpeed 0.19.8's own parser takes it


def test_persistent_parameters_reach_the_ds_config_only_at_stage_3_when_on():
    from zerotrain.dsconfig import engine_findings

    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.zero3_persistent_params = 3, "on"
    zero = build(cfg, Batch(4, 1, 2), "bf16", "cuda")["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 2**40  # above any parameter: all of them persist
    assert zero["memory_efficient_linear"] is False  # nothing is released: torch's F.linear, without the host cost
    assert not [f for f in engine_findings({"train_batch_size": 8, "zero_optimization": zero}, 2) if f.level == "error"]
    cfg.deepspeed.zero3_persistent_params = "off"
    released = build(cfg, Batch(4, 1, 2), "bf16", "cuda")["zero_optimization"]
    assert "stage3_param_persistence_threshold" not in released and "memory_efficient_linear" not in released
    cfg.deepspeed.zero_stage, cfg.deepspeed.zero3_persistent_params = 2, "on"
    assert "stage3_param_persistence_threshold" not in build(cfg, Batch(4, 1, 2), "bf16", "cuda")["zero_optimization"]


def test_a_merged_ds_config_that_releases_parameters_again_gets_deepspeeds_linear_back(tmp_path):
    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.zero3_persistent_params = 3, "on"
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 100_000}}))
    cfg.deepspeed.config = str(user)
    zero = build(cfg, Batch(4, 1, 1), "bf16", "cuda")["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 100_000 and "memory_efficient_linear" not in zero
    user.write_text(json.dumps({"zero_optimization": {"memory_efficient_linear": True}}))
    assert build(cfg, Batch(4, 1, 1), "bf16", "cuda")["zero_optimization"]["memory_efficient_linear"] is True


def test_bf16_master_weights_reach_the_ds_config_as_deepspeeds_two_switches():
    from zerotrain.dsconfig import engine_findings

    cfg = RunConfig()
    cfg.deepspeed.master_weights = "bf16"
    ds = build(cfg, Batch(4, 1, 2), "bf16", "cuda")
    assert ds["bf16"] == {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
    assert not [f for f in engine_findings(ds, 2) if f.level == "error"]
    cfg.deepspeed.master_weights = "fp32"
    assert build(cfg, Batch(4, 1, 2), "bf16", "cuda")["bf16"] == {"enabled": True}


def test_a_user_ds_config_cannot_switch_the_master_weights_behind_the_run_config(tmp_path):
    """Checkpoints record deepspeed.master_weights and resumes check it: a merged ds_config may not change it."""
    cfg = RunConfig()
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"bf16": {"enabled": True, "bf16_master_weights_and_grads": True}}))
    cfg.deepspeed.config = str(user)
    with pytest.raises(UserError, match=r"bf16.bf16_master_weights_and_grads = True contradicts .*master_weights"):
        build(cfg, Batch(4, 1, 1), "bf16", "cuda")
    cfg.deepspeed.master_weights = "bf16"
    user.write_text(json.dumps({"bf16": {"enabled": True, "bf16_master_weights_and_grads": True}}))
    assert build(cfg, Batch(4, 1, 1), "bf16", "cuda")["bf16"]["bf16_optimizer_states"] is True


def test_fp32_gradient_sums_only_where_training_is_bf16():
    cfg = RunConfig()
    cfg.deepspeed.grad_accum_dtype = "fp32"
    assert build(cfg, Batch(4, 8, 2), "bf16", "cuda")["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in build(cfg, Batch(4, 8, 2), "fp32", "cpu")  # fp32 training sums in fp32 already
    cfg.deepspeed.grad_accum_dtype = "auto"
    assert "data_types" not in build(cfg, Batch(4, 8, 2), "bf16", "cuda")  # DeepSpeed's default: the training dtype


def test_user_ds_config_is_merged_but_cannot_contradict(tmp_path):
    cfg = RunConfig()
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000}, "train_batch_size": 16}))
    cfg.deepspeed.config = str(user)
    ds = build(cfg, Batch(4, 2, 2), "fp32", "cpu")
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000 and ds["zero_optimization"]["stage"] == 2
    user.write_text(
        json.dumps({"train_batch_size": 32, "scheduler": {"type": "WarmupLR"}, "gradient_clipping": "auto"})
    )
    with pytest.raises(UserError) as e:
        build(cfg, Batch(4, 2, 2), "fp32", "cpu")
    for part in ("train_batch_size = 32 contradicts the run's 16", "'scheduler' is set", 'gradient_clipping = "auto"'):
        assert part in str(e.value)
    user.write_text('{\n  // comment\n  "a": 1\n}')
    with pytest.raises(UserError, match=r"ds.json:2:3: not valid JSON.*remove the // lines"):
        build(cfg, Batch(4, 2, 2), "fp32", "cpu")


def test_zenflow_is_merged_only_with_its_update_interval_equal_to_the_runs_accumulation(tmp_path):
    """ZenFlow makes its update_interval DeepSpeed's gradient accumulation; its own "auto" values are DeepSpeed's,
    not the Hugging Face integration's placeholders."""
    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload_optimizer = 2, "cpu"
    user = tmp_path / "ds.json"
    cfg.deepspeed.config = str(user)
    zenflow = {"topk_ratio": 0.1, "select_strategy": "auto", "select_interval": "auto", "update_interval": 2}
    user.write_text(json.dumps({"zero_optimization": {"zenflow": zenflow}}))
    ds = build(cfg, Batch(4, 2, 1), "fp32", "cpu")
    assert ds["zero_optimization"]["zenflow"] == zenflow and ds["gradient_accumulation_steps"] == 2
    for update in (4, "auto"):
        user.write_text(json.dumps({"zero_optimization": {"zenflow": {**zenflow, "update_interval": update}}}))
        with pytest.raises(UserError, match=f"update_interval = {update!r} would be.*grad_accum = 2; set update_"):
            build(cfg, Batch(4, 2, 1), "fp32", "cpu")


def test_zenflow_at_zero3_is_refused_before_anything_loads(tmp_path):
    """DeepSpeed 0.19.8's ZeRO-3 ZenFlow crashed a 3B run on its first step (one H100): refused, naming the stages
    and the offload that work instead."""
    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload_optimizer = 3, "cpu"
    user = tmp_path / "ds.json"
    cfg.deepspeed.config = str(user)
    user.write_text(json.dumps({"zero_optimization": {"zenflow": {"topk_ratio": 0.1, "update_interval": 2}}}))
    with pytest.raises(UserError, match=r"zenflow at ZeRO-3 crashed.*zero_stage = 1 or 2.*offload_optimizer_ratio"):
        build(cfg, Batch(4, 2, 1), "fp32", "cpu")


def test_dtype_resolution():
    assert resolve_dtype("auto", "cuda", True) == "bf16"
    assert resolve_dtype("auto", "cpu", True) == "fp32"
    with pytest.raises(UserError, match="fp16.*needs a GPU"):
        resolve_dtype("fp16", "cpu", True)


def test_user_ds_config_may_repeat_but_not_contradict_run_keys(tmp_path):
    cfg = RunConfig()
    user = tmp_path / "ds.json"
    cfg.deepspeed.config = str(user)
    user.write_text(
        json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0, "bf16": {"enabled": False}})
    )
    build(cfg, Batch(4, 1, 1), "fp32", "cpu")  # repeats the run's values: fine
    user.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
                "bf16": {"enabled": True},
                "gradient_clipping": 0.5,
                "checkpoint": {"use_node_local_storage": True},
            }
        )
    )
    with pytest.raises(UserError) as e:
        build(cfg, Batch(4, 1, 1), "fp32", "cpu")
    for part in (
        "zero_optimization.stage = 3 contradicts the run's 2 (set [deepspeed] zero_stage",
        "zero_optimization.offload_optimizer.device = 'cpu'",
        "bf16.enabled = True",
        "gradient_clipping = 0.5",
        "'checkpoint' is set",
    ):
        assert part in str(e.value), part


def test_parameter_offload_alone_keeps_torch_adamw():
    cfg = RunConfig()
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload_params = 3, "cpu"
    assert "optimizer" not in build(cfg, Batch(4, 1, 1), "bf16", "cuda")  # no CPUAdam build needed


def test_presets_shipped_in_configs_pass_check():
    from zerotrain.runconfig import load_run_config

    for path in sorted((REPO / "configs").glob("*.toml")):
        cfg = load_run_config(path)
        for world, device, dtype in ((1, "cpu", "fp32"), (2, "cuda", "bf16")):
            ds = build(cfg, derive_batch(cfg.train, world), dtype, device)
            assert not errors(check(ds, world_size=world)), path.name
