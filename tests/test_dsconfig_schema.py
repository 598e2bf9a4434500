"""The schema and defaults against the installed DeepSpeed (and torch), so the tables cannot drift silently."""

from zerotrain.dsconfig.schema import (
    BF16_DEFAULTS,
    DEEPSPEED_OPTIMIZERS,
    DEEPSPEED_SCHEDULERS,
    DEPRECATED_ZERO_KEYS,
    FP16_DEFAULTS,
    OFFLOAD_OPTIMIZER_DEFAULTS,
    OFFLOAD_OPTIMIZER_SCHEMA,
    OFFLOAD_PARAM_DEFAULTS,
    OFFLOAD_PARAM_SCHEMA,
    REMOVED_TOP_LEVEL_KEYS,
    REMOVED_ZERO_KEYS,
    SCHEMA,
    TOP_LEVEL_DEFAULTS,
    TORCH_OPTIMIZERS,
    TORCH_SCHEDULERS,
    ZERO_ALIASES,
    ZERO_DEFAULTS,
)


def test_schema_matches_deepspeeds_pydantic_models():
    from deepspeed.comm.config import CommsLoggerConfig
    from deepspeed.compile.config import CompileConfig
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from deepspeed.runtime.config import HybridEngineConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import (
        DeepSpeedZeroOffloadOptimizerConfig,
        DeepSpeedZeroOffloadParamConfig,
    )

    def names(model):
        out = set(model.model_fields)
        return out | {f.alias for f in model.model_fields.values() if f.alias}

    s = SCHEMA
    pairs = [
        (s["zero_optimization"], DeepSpeedZeroConfig),
        (OFFLOAD_PARAM_SCHEMA, DeepSpeedZeroOffloadParamConfig),
        (OFFLOAD_OPTIMIZER_SCHEMA, DeepSpeedZeroOffloadOptimizerConfig),
        (s["fp16"], DeepSpeedFP16Config),
        (s["bf16"], DeepSpeedBF16Config),
        (s["tensorboard"], TensorBoardConfig),
        (s["wandb"], WandbConfig),
        (s["csv_monitor"], CSVConfig),
        (s["comet"], CometConfig),
        (s["comms_logger"], CommsLoggerConfig),
        (s["compile"], CompileConfig),
        (s["hybrid_engine"], HybridEngineConfig),
    ]
    for schema, model in pairs:
        assert set(schema) == names(model), model.__name__
    assert ZERO_ALIASES == {f.alias: n for n, f in DeepSpeedZeroConfig.model_fields.items() if f.alias}
    deprecated = {
        n for n, f in DeepSpeedZeroConfig.model_fields.items() if (f.json_schema_extra or {}).get("deprecated")
    }
    assert set(DEPRECATED_ZERO_KEYS) == deprecated


def test_schema_covers_every_key_deepspeed_reads():
    """Record the keys DeepSpeedConfig looks up (top level and the sections read key by key)."""
    from deepspeed.runtime import config as ds_config

    class Recording(dict):
        def __init__(self, *a):
            super().__init__(*a)
            self.seen = set()

        def get(self, k, *a):
            self.seen.add(k)
            return dict.get(self, k, *a)

        def __contains__(self, k):
            self.seen.add(k)
            return dict.__contains__(self, k)

        def __getitem__(self, k):
            self.seen.add(k)
            return dict.__getitem__(self, k)

        def keys(self):
            outer = self

            class Keys:
                def __contains__(self, k):
                    return k in outer

                def __iter__(self):
                    return iter(dict.keys(outer))

            return Keys()

        def __copy__(self):
            return self

    traced = ("activation_checkpointing", "flops_profiler", "aio", "data_types", "torch_autocast", "checkpoint")
    top = Recording({"train_batch_size": 8, **{k: Recording() for k in traced}})
    ds_config.DeepSpeedConfig(top)
    removed = set(ds_config._REMOVED_TOP_LEVEL_CONFIG_KEYS)
    assert top.seen - removed - {"bfloat16"} <= set(SCHEMA) - {"bfloat16"}
    assert set(SCHEMA) - {"bfloat16"} <= top.seen | {"timers"}  # timers is read by get_timers_config's caller
    for section in traced:
        assert top[section].seen == set(SCHEMA[section]), section
    assert set(REMOVED_TOP_LEVEL_KEYS) == removed
    assert set(ds_config._REMOVED_ZERO_CONFIG_KEYS) <= set(REMOVED_ZERO_KEYS)
    assert set(DEEPSPEED_OPTIMIZERS) == set(ds_config.DEEPSPEED_OPTIMIZERS)


def test_optimizer_and_scheduler_names_match_torch_and_deepspeed():
    import torch
    from deepspeed.runtime import lr_schedules

    torch_optims = {
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    assert set(TORCH_OPTIMIZERS) == torch_optims
    assert set(DEEPSPEED_SCHEDULERS) == set(lr_schedules.VALID_LR_SCHEDULES)
    for name in TORCH_SCHEDULERS:
        assert hasattr(torch.optim.lr_scheduler, name)


def test_defaults_match_deepspeed():
    from deepspeed.runtime import constants
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from deepspeed.runtime.zero.offload_config import (
        DeepSpeedZeroOffloadOptimizerConfig,
        DeepSpeedZeroOffloadParamConfig,
    )

    zero = DeepSpeedZeroConfig.model_fields
    for key, value in ZERO_DEFAULTS.items():
        field = zero[ZERO_ALIASES.get(key, key)]
        assert field.get_default() == value, key
    for table, model in (
        (OFFLOAD_PARAM_DEFAULTS, DeepSpeedZeroOffloadParamConfig),
        (OFFLOAD_OPTIMIZER_DEFAULTS, DeepSpeedZeroOffloadOptimizerConfig),
        (FP16_DEFAULTS, DeepSpeedFP16Config),
        (BF16_DEFAULTS, DeepSpeedBF16Config),
    ):
        for key, value in table.items():
            assert model.model_fields[key].get_default() == value, (model.__name__, key)
    for key, value in TOP_LEVEL_DEFAULTS.items():
        assert getattr(constants, f"{key.upper()}_DEFAULT") == value, key
