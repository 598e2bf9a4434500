"""DeepSpeed's own config parser: it judges at the given world size, and whatever it rejects becomes one finding."""

import copy
import random

from zerotrain.dsconfig.engine import engine_findings

from conftest import GUIDE_ZERO2_OFFLOAD, with_


def test_fuzzed_configs_through_deepspeeds_parser_become_findings():
    rng = random.Random(7)
    for _ in range(60):
        cfg = copy.deepcopy(GUIDE_ZERO2_OFFLOAD)
        cfg[rng.choice(list(cfg))] = rng.choice([None, "x", -3, [], {"stage": "x"}])
        for f in engine_findings(cfg, rng.choice([None, 2])):
            assert f.key == "deepspeed" and f.level == "error"


def test_engine_respects_world_size():
    cfg = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4}
    assert not engine_findings(cfg, 2)
    (finding,) = engine_findings(cfg, 4)
    assert "32 != 4 * 4 * 4" in finding.message


def test_engine_reports_what_deepspeed_rejects():
    (finding,) = engine_findings(with_(zero_optimization__overlap_com=True), 2)
    assert finding.key == "deepspeed" and "overlap_com" in finding.message
