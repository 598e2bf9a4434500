"""`zerotrain config explain`: DeepSpeed's defaults filled in for the keys that matter at the config's stage."""

from zerotrain.dsconfig.effective import explain
from zerotrain.dsconfig.engine import implied_world_size

from conftest import GUIDE_ZERO1_WARMUP_DECAY, GUIDE_ZERO3_OFFLOAD


def test_explain_fills_in_deepspeeds_defaults():
    rows = {
        key: (value, default)
        for key, value, default, _ in explain({"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 3}})
    }
    assert rows["zero_optimization.stage3_prefetch_bucket_size"] == (50_000_000, True)
    assert rows["zero_optimization.overlap_comm"] == (True, True)  # stage-3 dynamic default
    assert rows["train_micro_batch_size_per_gpu"] == (2, False)
    assert rows["gradient_clipping"] == (1.0, True)
    stage2 = {
        key: value
        for key, value, *_ in explain({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    }
    assert stage2["zero_optimization.overlap_comm"] is False
    assert stage2["zero_optimization.offload_optimizer.pin_memory"] is True
    assert "zero_optimization.stage3_prefetch_bucket_size" not in stage2
    assert all(text for *_, text in explain(GUIDE_ZERO3_OFFLOAD))
    assert implied_world_size(GUIDE_ZERO1_WARMUP_DECAY) == 2
