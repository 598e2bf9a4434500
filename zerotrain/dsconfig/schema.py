"""DeepSpeed's ds_config schema: every key DeepSpeed 0.19.8 reads with the JSON type it expects, aliases,
removed and deprecated keys, the optimizers and schedulers it builds, its defaults and what each key does; and
the helpers that read a value out of a config as DeepSpeed reads it.

The tables were taken from DeepSpeed 0.19.8 (its pydantic config models and runtime/constants.py);
tests/test_dsconfig_schema.py compares them with the installed DeepSpeed so they cannot drift silently.
"""

import math
from typing import TypeGuard

from zerotrain.dsconfig.from_run import get_dotted

DEEPSPEED_VERSION = "0.19.8"  # the version the tables below were taken from


# ------------------------------------------------------------------------------------------------ schema
# Every key DeepSpeed 0.19.8 reads, with the JSON type it expects. A nested dict is a section whose keys
# are checked too; "dict" is a section DeepSpeed passes on whole (its keys are not checked here); "any"
# accepts anything. Sources: DeepSpeedConfig._initialize_params (runtime/config.py) for the top level,
# the pydantic models for zero_optimization (runtime/zero/config.py, offload_config.py), fp16/bf16
# (runtime/precision_config.py), monitors (monitor/config.py), comms_logger (comm/config.py), compile
# (compile/config.py), hybrid_engine (runtime/config.py); activation_checkpointing, flops_profiler, aio,
# data_types, torch_autocast and checkpoint are read key by key through get_scalar_param.
# Pydantic aliases are listed under both names: DeepSpeed sets populate_by_name, so
# "stage3_prefetch_bucket_size" and "prefetch_bucket_size" are the same field.

OFFLOAD_PARAM_SCHEMA = {
    "device": "str",
    "nvme_path": "str",
    "buffer_count": "int",
    "buffer_size": "int",
    "max_in_cpu": "int",
    "pin_memory": "bool",
}
OFFLOAD_OPTIMIZER_SCHEMA = {
    "device": "str",
    "nvme_path": "str",
    "buffer_count": "int",
    "pin_memory": "bool",
    "pipeline_read": "bool",
    "pipeline_write": "bool",
    "fast_init": "bool",
    "ratio": "float",
    "super_offload": "bool",
    "cpuadam_cores_perc": "float",
}
ZERO_SCHEMA = {
    "stage": "int",
    "contiguous_gradients": "bool",
    "reduce_scatter": "bool",
    "reduce_bucket_size": "int",
    "use_multi_rank_bucket_allreduce": "bool",
    "allgather_partitions": "bool",
    "allgather_bucket_size": "int",
    "overlap_comm": "bool",
    "compute_grad_norm": "bool",
    "load_from_fp32_weights": "bool",
    "elastic_checkpoint": "bool",
    "offload_param": OFFLOAD_PARAM_SCHEMA,
    "offload_optimizer": OFFLOAD_OPTIMIZER_SCHEMA,
    "zenflow": "dict",
    "sub_group_size": "int",
    "cpu_offload_param": "bool",
    "cpu_offload_use_pin_memory": "bool",
    "cpu_offload": "bool",
    "prefetch_bucket_size": "int",
    "stage3_prefetch_bucket_size": "int",
    "param_persistence_threshold": "int",
    "stage3_param_persistence_threshold": "int",
    "model_persistence_threshold": "int",
    "stage3_model_persistence_threshold": "int",
    "max_live_parameters": "int",
    "stage3_max_live_parameters": "int",
    "max_reuse_distance": "int",
    "stage3_max_reuse_distance": "int",
    "gather_16bit_weights_on_model_save": "bool",
    "stage3_gather_16bit_weights_on_model_save": "bool",
    "module_granularity_threshold": "int",
    "stage3_module_granularity_threshold": "int",
    "use_all_reduce_for_fetch_params": "bool",
    "stage3_use_all_reduce_for_fetch_params": "bool",
    "allgather_sequential": "bool",
    "stage3_allgather_sequential": "bool",
    "stage3_gather_fp16_weights_on_model_save": "bool",
    "ignore_unused_parameters": "bool",
    "legacy_stage1": "bool",
    "round_robin_gradients": "bool",
    "parameter_alignment": "bool",
    "zero_hpz_partition_size": "int",
    "zero_quantized_weights": "bool",
    "zero_quantized_nontrainable_weights": "bool",
    "zero_quantized_gradients": "bool",
    "memory_efficient_linear": "bool",
    "pipeline_loading_checkpoint": "bool",
    "override_module_apply": "bool",
    "log_trace_cache_warnings": "bool",
    "enable_sanity_checks": "bool",
    "save_muon_momentum_buffer_in_memory": "bool",
    "leaf_module": "dict",
}
# pydantic alias -> field name (runtime/zero/config.py, Field(..., alias="stage3_..."))
ZERO_ALIASES = {
    "stage3_prefetch_bucket_size": "prefetch_bucket_size",
    "stage3_param_persistence_threshold": "param_persistence_threshold",
    "stage3_model_persistence_threshold": "model_persistence_threshold",
    "stage3_max_live_parameters": "max_live_parameters",
    "stage3_max_reuse_distance": "max_reuse_distance",
    "stage3_gather_16bit_weights_on_model_save": "gather_16bit_weights_on_model_save",
    "stage3_module_granularity_threshold": "module_granularity_threshold",
    "stage3_use_all_reduce_for_fetch_params": "use_all_reduce_for_fetch_params",
    "stage3_allgather_sequential": "allgather_sequential",
}
FP16_SCHEMA = {
    "enabled": "bool",
    "auto_cast": "bool",
    "loss_scale": "float",
    "initial_scale_power": "int",
    "loss_scale_window": "int",
    "hysteresis": "int",
    "consecutive_hysteresis": "bool",
    "min_loss_scale": "int",
    "fp16_master_weights_and_grads": "bool",
}
BF16_SCHEMA = {
    "enabled": "bool",
    "immediate_grad_update": "bool",
    "check_grad_overflow": "bool",
    "bf16_master_weights_and_grads": "bool",
    "bf16_optimizer_states": "bool",
}
SCHEMA = {
    "train_batch_size": "int",
    "train_micro_batch_size_per_gpu": "int",
    "gradient_accumulation_steps": "int",
    "managed_gradient_accumulation": "bool",
    "steps_per_print": "int",
    "dump_state": "bool",
    "disable_python_gc": "bool",
    "disable_allgather": "bool",
    "communication_data_type": "str",
    "seq_parallel_communication_data_type": "str",
    "prescale_gradients": "bool",
    "gradient_predivide_factor": "float",
    "gradient_allreduce_op": "str",
    "gradient_clipping": "float",
    "zero_optimization": ZERO_SCHEMA,
    "zero_allow_untested_optimizer": "bool",
    "zero_force_ds_cpu_optimizer": "bool",
    "fp16": FP16_SCHEMA,
    "bf16": BF16_SCHEMA,
    "bfloat16": BF16_SCHEMA,
    "torch_autocast": {"enabled": "bool", "dtype": "str", "lower_precision_safe_modules": "list"},
    "optimizer": {"type": "str", "params": "dict", "legacy_fusion": "bool"},
    "scheduler": {"type": "str", "params": "dict"},
    "activation_checkpointing": {
        "partition_activations": "bool",
        "contiguous_memory_optimization": "bool",
        "cpu_checkpointing": "bool",
        "number_checkpoints": "int",
        "synchronize_checkpoint_boundary": "bool",
        "profile": "bool",
    },
    "flops_profiler": {
        "enabled": "bool",
        "recompute_fwd_factor": "float",
        "profile_step": "int",
        "module_depth": "int",
        "top_modules": "int",
        "detailed": "bool",
        "output_file": "str",
    },
    "wall_clock_breakdown": "bool",
    "memory_breakdown": "bool",
    "tensorboard": {"enabled": "bool", "output_path": "str", "job_name": "str"},
    "wandb": {"enabled": "bool", "group": "str", "team": "str", "project": "str"},
    "csv_monitor": {"enabled": "bool", "output_path": "str", "job_name": "str"},
    "comet": {
        "enabled": "bool",
        "samples_log_interval": "int",
        "project": "str",
        "workspace": "str",
        "api_key": "str",
        "experiment_name": "str",
        "experiment_key": "str",
        "online": "bool",
        "mode": "str",
    },
    "comms_logger": {"enabled": "bool", "prof_all": "bool", "prof_ops": "list", "verbose": "bool", "debug": "bool"},
    "aio": {
        "block_size": "int",
        "queue_depth": "int",
        "intra_op_parallelism": "int",
        "single_submit": "bool",
        "overlap_events": "bool",
        "use_gds": "bool",
    },
    "data_types": {
        "grad_accum_dtype": "str",
        "param_dtype": "str",
        "buffer_dtype": "str",
        "keep_in_fp32_modules": "any",
    },
    "checkpoint": {
        "tag_validation": "str",
        "load_universal": "bool",
        "use_node_local_storage": "bool",
        "parallel_write": "dict",
        "writer": "dict",
        "checkpoint_serialization": "bool",
    },
    "compile": {
        "deepcompile": "bool",
        "autoep_non_moe": "bool",
        "free_activation": "bool",
        "free_activation_threshold": "int",
        "offload_activation": "bool",
        "offload_activation_pin_memory": "bool",
        "offload_opt_states": "bool",
        "double_buffer": "bool",
        "symmetric_memory": "bool",
        "debug_log": "bool",
        "offload_parameters": "bool",
        "sync_before_reduce": "bool",
        "sync_after_reduce": "bool",
        "sync_before_allgather": "bool",
        "sync_after_allgather": "bool",
        "keep_int_input_tensors": "bool",
        "keep_all_input_tensors": "bool",
        "passes": "list",
    },
    "hybrid_engine": {
        "enabled": "bool",
        "max_out_tokens": "int",
        "inference_tp_size": "int",
        "release_inference_cache": "bool",
        "pin_parameters": "bool",
        "tp_gather_partition_size": "int",
        "enable_cuda_graph": "bool",
    },
    "dataloader_drop_last": "bool",
    "vocabulary_size": "int",
    "log_level": "str",
    "use_data_before_expert_parallelism": "bool",
    "autotuning": "dict",
    "timers": "dict",
    "pipeline": "dict",
    "data_efficiency": "dict",
    "datastates_ckpt": "dict",
    "tensor_parallel": "dict",
    "expert_parallel": "dict",
    "weight_quantization": "dict",
}

# Removed features DeepSpeed 0.19.8 rejects outright (runtime/config.py _REMOVED_TOP_LEVEL_CONFIG_KEYS and
# _REMOVED_ZERO_CONFIG_KEYS); DeepSpeed's own message says what to use instead.
REMOVED_TOP_LEVEL_KEYS = {
    "nebula": "Nebula checkpointing was removed; delete the block (checkpoints use torch.save)",
    "compression_training": "the compression library was removed; delete the block",
    "amp": 'Apex AMP was removed; use "bf16" or "fp16" instead',
    "quantize_training": "MoQ quantize_training was removed; delete the block",
    "sparse_gradients": "sparse_gradients was removed; delete it (sparse=True embeddings still reduce sparsely)",
    "eigenvalue": "eigenvalue MoQ was removed; delete the block",
    "sparse_attention": "Sparse Attention was removed; delete the block",
    "elasticity": "elastic training was removed; set the batch triple directly",
    "graph_harvesting": "graph_harvesting was removed; delete it",
    "curriculum_learning": "top-level curriculum_learning was removed; use data_efficiency.data_sampling.curriculum_learning",
    "progressive_layer_drop": "Progressive Layer Dropping was removed; delete the block",
}
REMOVED_ZERO_KEYS = {
    "mics_shard_size": "MiCS sharding was removed; delete it",
    "mics_hierarchical_params_gather": "MiCS sharding was removed; delete it",
    "zeropp_loco_param": "LoCo-ZeRO++ was removed; delete it (quantized gradients still work without it)",
    # accepted by DeepSpeed before 0.3.16 (runtime/zero/constants.py then); pydantic now rejects it
    "cpu_offload_params": 'removed; use "offload_param": {"device": "cpu"} (stage 3)',
}
# Fields marked deprecated=True in DeepSpeedZeroConfig: still accepted, converted with a warning.
DEPRECATED_ZERO_KEYS = {
    "cpu_offload": '"offload_optimizer": {"device": "cpu"}',
    "cpu_offload_param": '"offload_param": {"device": "cpu"}',
    "cpu_offload_use_pin_memory": '"pin_memory" inside offload_optimizer / offload_param',
    "stage3_gather_fp16_weights_on_model_save": '"stage3_gather_16bit_weights_on_model_save"',
}

# Optimizers DeepSpeed builds from "optimizer.type" (runtime/config.py DEEPSPEED_OPTIMIZERS, matched
# case-insensitively) and, failing that, any torch.optim class by its exact name
# (engine._configure_basic_optimizer).
DEEPSPEED_OPTIMIZERS = ("adagrad", "adam", "adamw", "lamb", "muadam", "muadamw", "musgd", "lion", "muon")
TORCH_OPTIMIZERS = (
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "LBFGS",
    "Muon",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
)
# What ZeRO runs without zero_allow_untested_optimizer (runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS:
# FusedAdam/torch Adam(W), Adagrad, Lion, Muon) and what has a CPU implementation for offload
# (engine._configure_basic_optimizer: DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion).
ZERO_TESTED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lion", "muon")
OFFLOADABLE_OPTIMIZERS = ("adam", "adamw", "adagrad", "lion")
# Names people copy from kernels and other frameworks, with the "type" that builds the same thing.
OPTIMIZER_REPLACEMENTS = {
    "fusedadam": "AdamW",
    "deepspeedcpuadam": "AdamW",
    "cpuadam": "AdamW",
    "fusedlamb": "Lamb",
    "fusedlion": "Lion",
    "deepspeedcpuadagrad": "Adagrad",
}
# runtime/lr_schedules.py VALID_LR_SCHEDULES, then torch.optim.lr_scheduler by name (engine._scheduler_from_config)
DEEPSPEED_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
TORCH_SCHEDULERS = (
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
)
SCHEDULER_REQUIRED_PARAMS = {  # positional arguments without defaults in runtime/lr_schedules.py
    "WarmupDecayLR": ("total_num_steps",),
    "WarmupCosineLR": ("total_num_steps",),
    "OneCycle": ("cycle_min_lr", "cycle_max_lr"),
}
# warmup_max_lr when the params leave it out (WarmupLR.__init__: None = the optimizer's lr;
# WarmupDecayLR.__init__: 0.001)
WARMUP_MAX_LR_DEFAULT = {"WarmupLR": None, "WarmupDecayLR": 0.001}

OFFLOAD_DEVICES = ("none", "cpu", "nvme")
COMMUNICATION_DTYPES = ("fp16", "bf16", "fp32")  # runtime/config.py get_communication_data_type
FP16_LOSS_SCALING_KEYS = (
    "loss_scale",
    "initial_scale_power",
    "loss_scale_window",
    "hysteresis",
    "consecutive_hysteresis",
    "min_loss_scale",
)

# ------------------------------------------------------------------------------------------------ defaults
# DeepSpeed 0.19.8 defaults (pydantic Field defaults and runtime/constants.py *_DEFAULT), for `explain`.
TOP_LEVEL_DEFAULTS: dict[str, object] = {
    "train_batch_size": None,
    "train_micro_batch_size_per_gpu": None,
    "gradient_accumulation_steps": None,
    "steps_per_print": None,
    "gradient_clipping": 1.0,
    "communication_data_type": None,
    "prescale_gradients": False,
    "gradient_predivide_factor": 1.0,
    "gradient_allreduce_op": "mean",
    "wall_clock_breakdown": False,
    "memory_breakdown": False,
    "zero_allow_untested_optimizer": False,
    "zero_force_ds_cpu_optimizer": True,
}
ZERO_DEFAULTS: dict[str, object] = {  # by the spelling DeepSpeed's docs use (stage3_* aliases for the stage-3 fields)
    "stage": 0,
    "contiguous_gradients": True,
    "reduce_scatter": True,
    "reduce_bucket_size": 500_000_000,
    "use_multi_rank_bucket_allreduce": True,
    "allgather_partitions": True,
    "allgather_bucket_size": 500_000_000,
    "overlap_comm": None,
    "load_from_fp32_weights": True,
    "round_robin_gradients": False,
    "sub_group_size": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
    "stage3_model_persistence_threshold": 2**63 - 1,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_max_reuse_distance": 1_000_000_000,
    "stage3_gather_16bit_weights_on_model_save": False,
}
OFFLOAD_PARAM_DEFAULTS: dict[str, object] = {
    "device": "none",
    "nvme_path": None,
    "buffer_count": 5,
    "buffer_size": 100_000_000,
    "max_in_cpu": 1_000_000_000,
    "pin_memory": True,
}
OFFLOAD_OPTIMIZER_DEFAULTS: dict[str, object] = {
    "device": "none",
    "nvme_path": None,
    "buffer_count": 4,
    "pin_memory": True,
    "pipeline_read": False,
    "pipeline_write": False,
    "fast_init": False,
    "ratio": 1.0,
}
FP16_DEFAULTS: dict[str, object] = {
    "enabled": False,
    "auto_cast": False,
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1,
}
BF16_DEFAULTS: dict[str, object] = {"enabled": False, "immediate_grad_update": False, "check_grad_overflow": True}

# ZeRO keys that only do something at a given stage (DeepSpeed docs, config-json "ZeRO optimizations").
ZERO_KEYS_BY_STAGE = {
    0: (),
    1: (
        "stage",
        "reduce_bucket_size",
        "allgather_partitions",
        "allgather_bucket_size",
        "overlap_comm",
        "load_from_fp32_weights",
        "round_robin_gradients",
    ),
    2: (
        "stage",
        "contiguous_gradients",
        "reduce_scatter",
        "reduce_bucket_size",
        "allgather_partitions",
        "allgather_bucket_size",
        "overlap_comm",
        "load_from_fp32_weights",
        "round_robin_gradients",
    ),
    3: (
        "stage",
        "contiguous_gradients",
        "reduce_bucket_size",
        "overlap_comm",
        "sub_group_size",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_model_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
        "stage3_gather_16bit_weights_on_model_save",
    ),
}

DESCRIPTIONS = {
    "train_batch_size": "sequences per optimizer step over all GPUs (= micro × accumulation × world)",
    "train_micro_batch_size_per_gpu": "sequences per GPU per forward/backward; activation memory grows linearly with it",
    "gradient_accumulation_steps": "micro-batches per optimizer step; raises the global batch without activation memory",
    "steps_per_print": "DeepSpeed's own progress log interval (None: never)",
    "gradient_clipping": "clip the global gradient norm to this (0 disables); costs one norm reduction per step",
    "communication_data_type": "dtype of gradient reductions (None: the training dtype); fp32 doubles bf16 traffic",
    "prescale_gradients": "divide gradients by world size before the all-reduce instead of after",
    "gradient_predivide_factor": "divide gradients by this before the reduction, the rest after (fp16 overflow guard)",
    "gradient_allreduce_op": "mean or sum of gradients across ranks",
    "wall_clock_breakdown": "time forward/backward/step separately; synchronizes the device at every timer (slower)",
    "memory_breakdown": "log memory after each phase; slow, for debugging",
    "zero_allow_untested_optimizer": "let ZeRO wrap an optimizer outside its tested list",
    "zero_force_ds_cpu_optimizer": "with offload, require DeepSpeed's CPU optimizer (torch's would be far slower)",
    "fp16.enabled": "fp16 mixed precision: 2-byte weights/activations, fp32 master copy, loss scaling",
    "fp16.auto_cast": "cast inputs to fp16 automatically",
    "fp16.loss_scale": "static loss scale; 0 = dynamic scaling (recommended)",
    "fp16.initial_scale_power": "dynamic scaling starts at 2^this",
    "fp16.loss_scale_window": "steps without overflow before the scale doubles",
    "fp16.hysteresis": "overflows tolerated before the scale halves",
    "fp16.consecutive_hysteresis": "refill hysteresis after a step without overflow",
    "fp16.min_loss_scale": "the scale never drops below this",
    "bf16.enabled": "bf16 mixed precision: 2-byte weights/activations, fp32 master copy, no loss scaling",
    "bf16.immediate_grad_update": "apply gradient updates immediately rather than at the step",
    "bf16.check_grad_overflow": "skip steps whose gradients hold inf/nan (one extra reduction per step)",
    "zero_optimization.stage": "0: data parallel; 1: partition optimizer states; 2: + gradients; 3: + parameters",
    "zero_optimization.contiguous_gradients": "copy gradients into one buffer as produced; less fragmentation, one copy",
    "zero_optimization.reduce_scatter": "reduce-scatter gradients instead of all-reduce (half the traffic at stage 2)",
    "zero_optimization.reduce_bucket_size": "elements reduced per collective; bigger = fewer, larger messages but more memory",
    "zero_optimization.use_multi_rank_bucket_allreduce": "merge the ranks' reduce buckets into one all-reduce",
    "zero_optimization.allgather_partitions": "all-gather updated parameters (vs a series of broadcasts) after the step",
    "zero_optimization.allgather_bucket_size": "elements all-gathered per collective after the step; memory vs message count",
    "zero_optimization.overlap_comm": "overlap gradient reduction with backward; faster on >1 GPU, costs extra buffers",
    "zero_optimization.load_from_fp32_weights": "restore master weights from the fp32 copy in checkpoints (exact)",
    "zero_optimization.round_robin_gradients": "spread gradient copies to CPU over ranks (offload, stages 1-2)",
    "data_types.grad_accum_dtype": "dtype micro-batch gradients are summed in (default: the model's, bf16 under bf16); "
    "fp32 costs 2 bytes/param/rank at ZeRO-2/3, 4 bytes/param at ZeRO-1 (BF16_Optimizer)",
    "zero_optimization.sub_group_size": "parameters per optimizer-step tile; bounds the step's temporary memory",
    "zero_optimization.stage3_prefetch_bucket_size": "parameters fetched ahead of use; more hides all-gather latency, costs memory",
    "zero_optimization.stage3_param_persistence_threshold": "parameters smaller than this stay unpartitioned (fewer tiny all-gathers)",
    "zero_optimization.stage3_model_persistence_threshold": "cap on all unpartitioned (persistent) parameters",
    "zero_optimization.stage3_max_live_parameters": "parameters kept gathered at once; lower saves memory, costs re-gathers",
    "zero_optimization.stage3_max_reuse_distance": "keep a gathered parameter if reused within this many; memory vs traffic",
    "zero_optimization.stage3_gather_16bit_weights_on_model_save": "gather full weights for save_16bit_model (else it writes empty tensors)",
    "zero_optimization.offload_optimizer.device": "optimizer states and step on cpu/nvme: saves 12 bytes/param of GPU memory, step runs on the CPU",
    "zero_optimization.offload_optimizer.nvme_path": "directory on a fast local disk for nvme offload",
    "zero_optimization.offload_optimizer.buffer_count": "nvme swap buffers (at least the optimizer's states per parameter)",
    "zero_optimization.offload_optimizer.pin_memory": "page-locked CPU memory: full-bandwidth async copies, cannot be swapped out",
    "zero_optimization.offload_optimizer.pipeline_read": "overlap the next tile's nvme read with the step",
    "zero_optimization.offload_optimizer.pipeline_write": "overlap the previous tile's nvme write with the step",
    "zero_optimization.offload_optimizer.fast_init": "faster optimizer initialisation with nvme",
    "zero_optimization.offload_optimizer.ratio": "fraction of optimizer states offloaded (stage 3 only)",
    "zero_optimization.offload_param.device": "parameters live on cpu/nvme between uses (stage 3): saves 2 bytes/param, adds transfers",
    "zero_optimization.offload_param.nvme_path": "directory on a fast local disk for nvme offload",
    "zero_optimization.offload_param.buffer_count": "nvme parameter buffers",
    "zero_optimization.offload_param.buffer_size": "elements per nvme parameter buffer (must hold the largest parameter)",
    "zero_optimization.offload_param.max_in_cpu": "parameter elements kept in CPU memory with nvme offload",
    "zero_optimization.offload_param.pin_memory": "page-locked CPU memory: full-bandwidth async copies, cannot be swapped out",
    "optimizer.type": "optimizer DeepSpeed builds (needed for offload: DeepSpeedCPUAdam)",
    "optimizer.params": "keyword arguments of the optimizer",
    "scheduler.type": "learning-rate schedule DeepSpeed steps with the optimizer",
    "scheduler.params": "keyword arguments of the schedule",
    "activation_checkpointing.partition_activations": "split checkpointed activations across model-parallel ranks (deepspeed.checkpointing only)",
    "activation_checkpointing.cpu_checkpointing": "keep checkpointed activations on the CPU (deepspeed.checkpointing only)",
    "activation_checkpointing.contiguous_memory_optimization": "copy checkpoints into one buffer (deepspeed.checkpointing only)",
    "activation_checkpointing.number_checkpoints": "checkpoints per forward for the contiguous buffer",
    "activation_checkpointing.synchronize_checkpoint_boundary": "synchronize at each checkpoint (debugging; slower)",
    "activation_checkpointing.profile": "time each checkpointed forward (slower)",
}


# ------------------------------------------------------------------------------------------------ reading values

_MISSING = object()


def _get(d, dotted: str, default=_MISSING):
    return get_dotted(d, dotted, default)


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


MAX_INT = 2**63 - 1  # DeepSpeed's integer settings end up in C int64 (pydantic ints, torch sizes)


def _is_number(v) -> TypeGuard[int | float]:
    """A finite JSON number that fits DeepSpeed's 64-bit settings (JSON integers are unbounded, 1e400 is inf)."""
    return (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and (abs(v) <= MAX_INT if isinstance(v, int) else math.isfinite(v))
    )


def _out_of_range(v) -> bool:
    return (
        isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not (isinstance(v, float) and math.isnan(v))
        and abs(v) > MAX_INT
    )


def _as_int(v) -> int | None:
    """An integer value (1e9 in JSON is a float) within 64 bits, or None."""
    if _is_number(v) and float(v).is_integer() and abs(v) <= MAX_INT:
        return int(v)
    return None


def _enabled(config: dict, section: str) -> bool:
    return _get(config, f"{section}.enabled", False) is True


def _stage(config: dict) -> int:
    zero = config.get("zero_optimization")
    if isinstance(zero, bool):  # the pre-0.3 form: true meant stage 1 (zero/config.py read_zero_config_deprecated)
        return int(zero)
    stage = _as_int(_get(config, "zero_optimization.stage", 0))
    return stage if stage in (0, 1, 2, 3) else 0


def _offload_device(config: dict, which: str) -> str:
    device = _get(config, f"zero_optimization.{which}.device", "none")
    return device if isinstance(device, str) else "none"


def _without_auto(value):
    """The config with every "auto" value left out, as DeepSpeedConfigModel does for HF (config_utils.py)."""
    if isinstance(value, dict):
        return {k: _without_auto(v) for k, v in value.items() if v != "auto"}
    return value
