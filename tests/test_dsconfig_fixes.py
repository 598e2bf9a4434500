"""`zerotrain config check --fix`: what it repairs, that the result checks clean, and that it never overwrites."""

import json

from zerotrain.dsconfig.engine import engine_findings
from zerotrain.dsconfig.fixes import fix
from zerotrain.dsconfig.lint import check

from conftest import assert_clean_failure, errors, with_, write_ds_config, zerotrain


def test_fix_unquotes_numbers_and_nests_dotted_keys():
    config = {
        "train_batch_size": "16",
        "train_micro_batch_size_per_gpu": " 4 ",
        "gradient_accumulation_steps": "nan",
        "zero_optimization": {"stage": "2", "reduce_bucket_size": "5e8"},
        "zero_optimization.overlap_comm": True,
        "fp16.enabled": False,
        "gradient_clipping.max": 1.0,
    }
    by_key = {f.key: f for f in check(config)}
    assert by_key["zero_optimization.stage"].fix == "write it without quotes: 2"
    assert by_key["gradient_accumulation_steps"].fix == "give an integer"  # "nan" is not a JSON number
    assert by_key["zero_optimization.overlap_comm"].fix == 'nest it: "zero_optimization": {"overlap_comm": ...}'
    fixed, changes = fix(config, world_size=2)
    assert fixed["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 500_000_000, "overlap_comm": True}
    assert fixed["train_batch_size"] == 16 and fixed["train_micro_batch_size_per_gpu"] == 4
    assert (
        fixed["fp16"] == {"enabled": False} and "gradient_clipping.max" in fixed
    )  # no section to nest into: left alone
    assert "nested zero_optimization.overlap_comm as zero_optimization -> overlap_comm" in changes


def test_fix_repairs_what_it_can_and_the_result_checks_clean():
    broken = {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipp1ng": 1.0,
        "fp16": {"enabled": True},
        "bf16": {"enabled": True, "loss_scale": 0},
        "optimizer": {"type": "FusedAdam", "params": {"lr": 1e-4, "max_grad_norm": 0.5}},
        "zero_optimization": {
            "stage": 2,
            "cpu_offload": True,
            "overlap_comm": False,
            "stage3_max_live_parameters": 1e9,
        },
        "steps_per_print": 1,
    }
    fixed, changes = fix(broken, world_size=2)
    assert not errors(check(fixed, world_size=2)) and not engine_findings(fixed, 2)
    assert fixed["gradient_accumulation_steps"] == 4 and fixed["gradient_clipping"] == 0.5
    assert fixed["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert fixed["optimizer"]["type"] == "AdamW" and "fp16" not in fixed
    assert len(changes) >= 8
    zero3, _ = fix({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    inconsistent, _ = fix(
        {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 2
    )
    assert inconsistent["gradient_accumulation_steps"] == 4  # keeps the global batch
    assert broken["gradient_clipp1ng"] == 1.0  # the input is not modified


def test_cli_fix_writes_a_new_file_and_never_overwrites(tmp_path):
    bad = write_ds_config(tmp_path, with_(gradient_clipp1ng=1.0, zero_optimization__overlap_comm=False), "bad.json")
    before = bad.read_text()
    r = zerotrain("config", "check", bad, "--world-size", 2, "--fix", "--no-engine")
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "bad.fixed.json"
    assert json.loads(out.read_text())["gradient_clipping"] == 1.0 and bad.read_text() == before
    assert "renamed gradient_clipp1ng -> gradient_clipping" in r.stdout and "re-check" in r.stdout
    assert_clean_failure(zerotrain("config", "check", bad, "--fix", "--no-engine"), "exists", "--overwrite")
    r = zerotrain("config", "check", bad, "--world-size", 2, "--fix", "--in-place", "--json", "--no-engine")
    assert r.returncode == 0 and "gradient_clipping" in json.loads(bad.read_text())
    assert json.loads(r.stdout)["fixed"]["path"] == str(bad)
