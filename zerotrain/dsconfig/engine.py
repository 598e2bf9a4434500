"""DeepSpeed's own config parser (DeepSpeedConfig) as the last word on a ds_config: the one module of
zerotrain.dsconfig that imports DeepSpeed and torch, inside engine_findings."""

import copy

from zerotrain.dsconfig.findings import Finding
from zerotrain.dsconfig.schema import _as_int, _without_auto
from zerotrain.dsconfig.training_rules import BATCH_KEYS


def engine_findings(config: dict, world_size: int | None = None, hf_integration: bool = False) -> list[Finding]:
    """Run DeepSpeed's own config parser (DeepSpeedConfig) and report what it rejects, at `world_size`.

    Imports DeepSpeed (and torch): a second or so."""
    import logging
    import os

    if "DS_ACCELERATOR" not in os.environ:
        import torch

        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"  # spares DeepSpeed's accelerator-detection warning
    from deepspeed.runtime.config import DeepSpeedConfig

    class ConfigAtWorldSize(DeepSpeedConfig):
        # Without a process group DeepSpeedConfig takes world size 1 (its __init__ catches the failing
        # dist.get_rank()). Setting it just before the batch arithmetic checks the triple at the user's size.
        def _configure_train_batch_size(self):
            self.world_size = world_size or 1
            super()._configure_train_batch_size()

    cfg = copy.deepcopy(config)
    if hf_integration:
        # The HF integration replaces "auto" before DeepSpeed sees the config; leave those keys out and stand in
        # for a batch size the Trainer would supply.
        cfg = _without_auto(cfg)
        if not any(k in cfg for k in BATCH_KEYS[:2]):
            cfg["train_micro_batch_size_per_gpu"] = 1
    ds_logger = logging.getLogger("DeepSpeed")
    level = ds_logger.level
    ds_logger.setLevel(logging.ERROR)  # its deprecation warnings are findings already
    try:
        ConfigAtWorldSize(cfg)
    except Exception as e:  # noqa: BLE001 - whatever DeepSpeed raises is the finding
        lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = (
            lines[0] if len(lines) == 1 or "validation error" not in lines[0] else f"{lines[0]}: {' '.join(lines[1:3])}"
        )
        return [
            Finding(
                "error",
                "deepspeed",
                f"DeepSpeed {_deepspeed_version()} rejects the config: {detail.strip()}",
                "fix the key it names",
            )
        ]
    finally:
        ds_logger.setLevel(level)
    return []


def implied_world_size(config: dict) -> int | None:
    """The world size a config with all three batch keys was written for, when they divide evenly."""
    tb, mb, ga = (_as_int(config.get(k)) for k in BATCH_KEYS)
    if tb and mb and ga and tb > 0 and mb > 0 and ga > 0 and tb % (mb * ga) == 0:
        return tb // (mb * ga)
    return None


def _deepspeed_version() -> str:
    import deepspeed

    return deepspeed.__version__
