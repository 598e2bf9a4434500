"""Every preset in configs/ loads, derives a batch, and yields a ds_config DeepSpeed's own config object accepts."""

from pathlib import Path

import pytest

from zerotrain.dsconfig.from_run import build, derive_batch
from zerotrain.runconfig import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_are_presets():
    assert {p.name for p in CONFIGS} >= {"shakespeare-char.toml", "gpt2-124m.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_preset_loads_and_deepspeed_accepts_its_config(path):
    from deepspeed.runtime.config import DeepSpeedConfig

    first_lines = path.read_text().splitlines()[:3]
    assert any("zerotrain train" in line for line in first_lines), "a preset starts with the command that runs it"
    cfg = load_run_config(path)
    for world in (1, 2, 4):
        assert derive_batch(cfg.train, world).global_size == cfg.train.micro_batch_size * cfg.train.grad_accum * world
    # DeepSpeedConfig takes the world size from an initialised process group (1 without one)
    batch = derive_batch(cfg.train, 1)
    for device, dtype in (("cuda", "bf16"), ("cpu", "fp32")):
        parsed = DeepSpeedConfig(build(cfg, batch, dtype, device))
        assert parsed.train_batch_size == batch.global_size
        assert parsed.zero_optimization_stage == cfg.deepspeed.zero_stage
