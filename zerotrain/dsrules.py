"""ds_config rules: check, fix, explain and generate DeepSpeed configs without importing torch.

`check` collects every finding `(level, key, message, fix)` and never stops at the first. The schema and
defaults below were taken from DeepSpeed 0.19.8 (its pydantic config models and runtime/constants.py);
tests/test_dsrules.py compares them with the installed DeepSpeed so they cannot drift silently.
Only `engine_findings` imports DeepSpeed, to run its own config parser as the last word.

Levels: "error" means DeepSpeed rejects the config or silently does something else than it says;
"warning" means it runs but slower or riskier than it needs to; "info" explains what was derived.
"""

import copy
import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from zerotrain import UserError, memory
from zerotrain.dsconfig import get_dotted

DEEPSPEED_VERSION = "0.19.8"  # the version the tables below were taken from


@dataclass(frozen=True)
class Finding:
    level: str
    """error | warning | info"""
    key: str
    """dotted path of the offending key, e.g. zero_optimization.stage"""
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


LEVELS = ("error", "warning", "info")

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
    "device": "str", "nvme_path": "str", "buffer_count": "int", "buffer_size": "int", "max_in_cpu": "int",
    "pin_memory": "bool",
}
OFFLOAD_OPTIMIZER_SCHEMA = {
    "device": "str", "nvme_path": "str", "buffer_count": "int", "pin_memory": "bool", "pipeline_read": "bool",
    "pipeline_write": "bool", "fast_init": "bool", "ratio": "float", "super_offload": "bool",
    "cpuadam_cores_perc": "float",
}
ZERO_SCHEMA = {
    "stage": "int", "contiguous_gradients": "bool", "reduce_scatter": "bool", "reduce_bucket_size": "int",
    "use_multi_rank_bucket_allreduce": "bool", "allgather_partitions": "bool", "allgather_bucket_size": "int",
    "overlap_comm": "bool", "compute_grad_norm": "bool", "load_from_fp32_weights": "bool",
    "elastic_checkpoint": "bool", "offload_param": OFFLOAD_PARAM_SCHEMA, "offload_optimizer": OFFLOAD_OPTIMIZER_SCHEMA,
    "zenflow": "dict", "sub_group_size": "int",
    "cpu_offload_param": "bool", "cpu_offload_use_pin_memory": "bool", "cpu_offload": "bool",
    "prefetch_bucket_size": "int", "stage3_prefetch_bucket_size": "int",
    "param_persistence_threshold": "int", "stage3_param_persistence_threshold": "int",
    "model_persistence_threshold": "int", "stage3_model_persistence_threshold": "int",
    "max_live_parameters": "int", "stage3_max_live_parameters": "int",
    "max_reuse_distance": "int", "stage3_max_reuse_distance": "int",
    "gather_16bit_weights_on_model_save": "bool", "stage3_gather_16bit_weights_on_model_save": "bool",
    "module_granularity_threshold": "int", "stage3_module_granularity_threshold": "int",
    "use_all_reduce_for_fetch_params": "bool", "stage3_use_all_reduce_for_fetch_params": "bool",
    "allgather_sequential": "bool", "stage3_allgather_sequential": "bool",
    "stage3_gather_fp16_weights_on_model_save": "bool",
    "ignore_unused_parameters": "bool", "legacy_stage1": "bool", "round_robin_gradients": "bool",
    "parameter_alignment": "bool", "zero_hpz_partition_size": "int", "zero_quantized_weights": "bool",
    "zero_quantized_nontrainable_weights": "bool", "zero_quantized_gradients": "bool",
    "memory_efficient_linear": "bool", "pipeline_loading_checkpoint": "bool", "override_module_apply": "bool",
    "log_trace_cache_warnings": "bool", "enable_sanity_checks": "bool",
    "save_muon_momentum_buffer_in_memory": "bool", "leaf_module": "dict",
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
    "enabled": "bool", "auto_cast": "bool", "loss_scale": "float", "initial_scale_power": "int",
    "loss_scale_window": "int", "hysteresis": "int", "consecutive_hysteresis": "bool", "min_loss_scale": "int",
    "fp16_master_weights_and_grads": "bool",
}
BF16_SCHEMA = {
    "enabled": "bool", "immediate_grad_update": "bool", "check_grad_overflow": "bool",
    "bf16_master_weights_and_grads": "bool", "bf16_optimizer_states": "bool",
}
SCHEMA = {
    "train_batch_size": "int", "train_micro_batch_size_per_gpu": "int", "gradient_accumulation_steps": "int",
    "managed_gradient_accumulation": "bool", "steps_per_print": "int", "dump_state": "bool",
    "disable_python_gc": "bool", "disable_allgather": "bool", "communication_data_type": "str",
    "seq_parallel_communication_data_type": "str", "prescale_gradients": "bool",
    "gradient_predivide_factor": "float", "gradient_allreduce_op": "str", "gradient_clipping": "float",
    "zero_optimization": ZERO_SCHEMA, "zero_allow_untested_optimizer": "bool",
    "zero_force_ds_cpu_optimizer": "bool",
    "fp16": FP16_SCHEMA, "bf16": BF16_SCHEMA, "bfloat16": BF16_SCHEMA,
    "torch_autocast": {"enabled": "bool", "dtype": "str", "lower_precision_safe_modules": "list"},
    "optimizer": {"type": "str", "params": "dict", "legacy_fusion": "bool"},
    "scheduler": {"type": "str", "params": "dict"},
    "activation_checkpointing": {
        "partition_activations": "bool", "contiguous_memory_optimization": "bool", "cpu_checkpointing": "bool",
        "number_checkpoints": "int", "synchronize_checkpoint_boundary": "bool", "profile": "bool",
    },
    "flops_profiler": {
        "enabled": "bool", "recompute_fwd_factor": "float", "profile_step": "int", "module_depth": "int",
        "top_modules": "int", "detailed": "bool", "output_file": "str",
    },
    "wall_clock_breakdown": "bool", "memory_breakdown": "bool",
    "tensorboard": {"enabled": "bool", "output_path": "str", "job_name": "str"},
    "wandb": {"enabled": "bool", "group": "str", "team": "str", "project": "str"},
    "csv_monitor": {"enabled": "bool", "output_path": "str", "job_name": "str"},
    "comet": {
        "enabled": "bool", "samples_log_interval": "int", "project": "str", "workspace": "str", "api_key": "str",
        "experiment_name": "str", "experiment_key": "str", "online": "bool", "mode": "str",
    },
    "comms_logger": {"enabled": "bool", "prof_all": "bool", "prof_ops": "list", "verbose": "bool", "debug": "bool"},
    "aio": {
        "block_size": "int", "queue_depth": "int", "intra_op_parallelism": "int", "single_submit": "bool",
        "overlap_events": "bool", "use_gds": "bool",
    },
    "data_types": {"grad_accum_dtype": "str", "param_dtype": "str", "buffer_dtype": "str", "keep_in_fp32_modules": "any"},
    "checkpoint": {
        "tag_validation": "str", "load_universal": "bool", "use_node_local_storage": "bool", "parallel_write": "dict",
        "writer": "dict", "checkpoint_serialization": "bool",
    },
    "compile": {
        "deepcompile": "bool", "autoep_non_moe": "bool", "free_activation": "bool", "free_activation_threshold": "int",
        "offload_activation": "bool", "offload_activation_pin_memory": "bool", "offload_opt_states": "bool",
        "double_buffer": "bool", "symmetric_memory": "bool", "debug_log": "bool", "offload_parameters": "bool",
        "sync_before_reduce": "bool", "sync_after_reduce": "bool", "sync_before_allgather": "bool",
        "sync_after_allgather": "bool", "keep_int_input_tensors": "bool", "keep_all_input_tensors": "bool",
        "passes": "list",
    },
    "hybrid_engine": {
        "enabled": "bool", "max_out_tokens": "int", "inference_tp_size": "int", "release_inference_cache": "bool",
        "pin_parameters": "bool", "tp_gather_partition_size": "int", "enable_cuda_graph": "bool",
    },
    "dataloader_drop_last": "bool", "vocabulary_size": "int", "log_level": "str",
    "use_data_before_expert_parallelism": "bool",
    "autotuning": "dict", "timers": "dict", "pipeline": "dict", "data_efficiency": "dict", "datastates_ckpt": "dict",
    "tensor_parallel": "dict", "expert_parallel": "dict", "weight_quantization": "dict",
}

# Removed features DeepSpeed 0.19.8 rejects outright (runtime/config.py _REMOVED_TOP_LEVEL_CONFIG_KEYS and
# _REMOVED_ZERO_CONFIG_KEYS); DeepSpeed's own message says what to use instead.
REMOVED_TOP_LEVEL_KEYS = {
    "nebula": "Nebula checkpointing was removed; delete the block (checkpoints use torch.save)",
    "compression_training": "the compression library was removed; delete the block",
    "amp": "Apex AMP was removed; use \"bf16\" or \"fp16\" instead",
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
    "cpu_offload_params": "removed; use \"offload_param\": {\"device\": \"cpu\"} (stage 3)",
}
# Fields marked deprecated=True in DeepSpeedZeroConfig: still accepted, converted with a warning.
DEPRECATED_ZERO_KEYS = {
    "cpu_offload": "\"offload_optimizer\": {\"device\": \"cpu\"}",
    "cpu_offload_param": "\"offload_param\": {\"device\": \"cpu\"}",
    "cpu_offload_use_pin_memory": "\"pin_memory\" inside offload_optimizer / offload_param",
    "stage3_gather_fp16_weights_on_model_save": "\"stage3_gather_16bit_weights_on_model_save\"",
}

# Optimizers DeepSpeed builds from "optimizer.type" (runtime/config.py DEEPSPEED_OPTIMIZERS, matched
# case-insensitively) and, failing that, any torch.optim class by its exact name
# (engine._configure_basic_optimizer).
DEEPSPEED_OPTIMIZERS = ("adagrad", "adam", "adamw", "lamb", "muadam", "muadamw", "musgd", "lion", "muon")
TORCH_OPTIMIZERS = ("ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon", "NAdam",
                    "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam")
# What ZeRO runs without zero_allow_untested_optimizer (runtime/zero/utils.py ZERO_SUPPORTED_OPTIMIZERS:
# FusedAdam/torch Adam(W), Adagrad, Lion, Muon) and what has a CPU implementation for offload
# (engine._configure_basic_optimizer: DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion).
ZERO_TESTED_OPTIMIZERS = ("adam", "adamw", "adagrad", "lion", "muon")
OFFLOADABLE_OPTIMIZERS = ("adam", "adamw", "adagrad", "lion")
# Names people copy from kernels and other frameworks, with the "type" that builds the same thing.
OPTIMIZER_REPLACEMENTS = {"fusedadam": "AdamW", "deepspeedcpuadam": "AdamW", "cpuadam": "AdamW",
                          "fusedlamb": "Lamb", "fusedlion": "Lion", "deepspeedcpuadagrad": "Adagrad"}
# runtime/lr_schedules.py VALID_LR_SCHEDULES, then torch.optim.lr_scheduler by name (engine._scheduler_from_config)
DEEPSPEED_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")
TORCH_SCHEDULERS = ("ChainedScheduler", "ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
                    "ExponentialLR", "LambdaLR", "LinearLR", "MultiStepLR", "MultiplicativeLR", "OneCycleLR",
                    "PolynomialLR", "ReduceLROnPlateau", "SequentialLR", "StepLR")
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
FP16_LOSS_SCALING_KEYS = ("loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                          "consecutive_hysteresis", "min_loss_scale")

# ------------------------------------------------------------------------------------------------ defaults
# DeepSpeed 0.19.8 defaults (pydantic Field defaults and runtime/constants.py *_DEFAULT), for `explain`.
TOP_LEVEL_DEFAULTS = {
    "train_batch_size": None, "train_micro_batch_size_per_gpu": None, "gradient_accumulation_steps": None,
    "steps_per_print": None, "gradient_clipping": 1.0, "communication_data_type": None,
    "prescale_gradients": False, "gradient_predivide_factor": 1.0, "gradient_allreduce_op": "mean",
    "wall_clock_breakdown": False, "memory_breakdown": False, "zero_allow_untested_optimizer": False,
    "zero_force_ds_cpu_optimizer": True,
}
ZERO_DEFAULTS = {  # by the spelling DeepSpeed's docs use (stage3_* aliases for the stage-3 fields)
    "stage": 0, "contiguous_gradients": True, "reduce_scatter": True, "reduce_bucket_size": 500_000_000,
    "use_multi_rank_bucket_allreduce": True, "allgather_partitions": True, "allgather_bucket_size": 500_000_000,
    "overlap_comm": None, "load_from_fp32_weights": True, "round_robin_gradients": False,
    "sub_group_size": 1_000_000_000, "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000, "stage3_model_persistence_threshold": 2**63 - 1,
    "stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
    "stage3_gather_16bit_weights_on_model_save": False,
}
OFFLOAD_PARAM_DEFAULTS = {"device": "none", "nvme_path": None, "buffer_count": 5, "buffer_size": 100_000_000,
                          "max_in_cpu": 1_000_000_000, "pin_memory": True}
OFFLOAD_OPTIMIZER_DEFAULTS = {"device": "none", "nvme_path": None, "buffer_count": 4, "pin_memory": True,
                              "pipeline_read": False, "pipeline_write": False, "fast_init": False, "ratio": 1.0}
FP16_DEFAULTS = {"enabled": False, "auto_cast": False, "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "consecutive_hysteresis": False, "min_loss_scale": 1}
BF16_DEFAULTS = {"enabled": False, "immediate_grad_update": False, "check_grad_overflow": True}

# ZeRO keys that only do something at a given stage (DeepSpeed docs, config-json "ZeRO optimizations").
ZERO_KEYS_BY_STAGE = {
    0: (),
    1: ("stage", "reduce_bucket_size", "allgather_partitions", "allgather_bucket_size", "overlap_comm",
        "load_from_fp32_weights", "round_robin_gradients"),
    2: ("stage", "contiguous_gradients", "reduce_scatter", "reduce_bucket_size", "allgather_partitions",
        "allgather_bucket_size", "overlap_comm", "load_from_fp32_weights", "round_robin_gradients"),
    3: ("stage", "contiguous_gradients", "reduce_bucket_size", "overlap_comm", "sub_group_size",
        "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_model_persistence_threshold",
        "stage3_max_live_parameters", "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save"),
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

# GPUs `--gpu` may name: memory in GiB and whether the tensor cores do bf16 (Ampere and later).
# NVIDIA datasheets. The memory planner has its own view of a GPU; the two should be unified.
def gpu_spec(name: str) -> tuple[int, bool]:
    """(memory in bytes, bf16 support) of a GPU named like `h100`, `A100-40GB`, `RTX 4090` (the planner's table)."""
    return memory.gpu_memory_from_name(name)


# ------------------------------------------------------------------------------------------------ parsing

def parse_config_text(text: str, path: str = "ds_config") -> dict:
    """The ds_config JSON object in `text`; a UserError with line:column otherwise."""
    def reject_constant(name):
        raise ValueError(f"{name} is not JSON; write a number")

    try:
        doc = json.loads(text, parse_constant=reject_constant)
    except json.JSONDecodeError as e:
        comment = re.search(r"^[ \t]*(//|/\*)|[,{\[\"\w][ \t]*(//|/\*)", text, re.MULTILINE)
        if comment:
            line = text.count("\n", 0, comment.start()) + 1
            col = comment.start(comment.lastindex) - (text.rfind("\n", 0, comment.start(comment.lastindex)) + 1) + 1
            raise UserError(f"{path}:{line}:{col}: JSON has no comments; remove the // lines "
                            f"(and /* */ blocks), then check again") from None
        if text.startswith("\ufeff"):
            raise UserError(f"{path}:1:1: the file starts with a byte-order mark (BOM); json.load (the HF Trainer, most "
                            "tools) rejects it: save the file as UTF-8 without BOM") from None
        if not text.strip():
            raise UserError(f"{path}: the file is empty; a ds_config is a JSON object such as "
                            "{\"train_micro_batch_size_per_gpu\": 1}") from None
        comma = _trailing_comma(text, e.pos)
        if comma is not None:
            line = text.count("\n", 0, comma) + 1
            col = comma - (text.rfind("\n", 0, comma) + 1) + 1
            raise UserError(f"{path}:{line}:{col}: trailing comma before {text[e.pos]!r}; JSON allows none: remove it") from None
        raise UserError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}; fix it there") from None
    except ValueError as e:  # NaN / Infinity, or an integer longer than Python's int_max_str_digits
        detail = "a number has thousands of digits; give a realistic value" if "digits" in str(e) else str(e)
        raise UserError(f"{path}: not valid JSON: {detail}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply for a ds_config (more than {MAX_DEPTH} levels): check the brackets") from None
    if not isinstance(doc, dict):
        kind = {type(None): "null", list: "list", str: "string", bool: "boolean"}.get(type(doc), "number")
        raise UserError(f"{path}: a ds_config is a JSON object ({{...}}), not a {kind}; wrap the settings in braces")
    depth = _depth(doc)
    if depth > MAX_DEPTH:  # the rules walk the config recursively; no DeepSpeed section nests past ~6 levels
        raise UserError(f"{path}: nested {depth} levels deep; a ds_config nests at most a few levels "
                        f"(zero_optimization.offload_optimizer.device): check the brackets")
    return doc


MAX_DEPTH = 32


def _depth(doc) -> int:
    """Nesting depth of dicts and lists, without recursion (the input may be arbitrarily deep)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _trailing_comma(text: str, pos: int) -> int | None:
    """Offset of the comma when the parse error at `pos` is a trailing comma before } or ]."""
    if pos >= len(text) or text[pos] not in "}]":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def load_config_file(path: str | Path) -> tuple[dict, str]:
    """(config, text) of a ds_config file; UserError when it cannot be read or parsed."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory; give the path of a ds_config JSON file")
    if not p.is_file():
        raise UserError(f"{p} not found; give the path of a ds_config JSON file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read it ({e.strerror or e})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{p}: the file is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); a ds_config is "
                        "a JSON text file: save it as UTF-8") from None
    return parse_config_text(text, str(p)), text


def duplicate_key_findings(text: str) -> list[Finding]:
    """Keys given twice in one object: JSON keeps the last silently, DeepSpeed's hjson loader refuses."""
    found = []

    def hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                found.append(key)
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(text, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return []
    return [Finding("warning", key, f"{key!r} appears twice in one object; the last value wins and DeepSpeed's "
                    "file loader (dict_raise_error_on_duplicate_keys) rejects the file", "keep one of them")
            for key in dict.fromkeys(found)]


# ------------------------------------------------------------------------------------------------ helpers

_MISSING = object()


def _get(d, dotted: str, default=_MISSING):
    return get_dotted(d, dotted, default)


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


MAX_INT = 2**63 - 1  # DeepSpeed's integer settings end up in C int64 (pydantic ints, torch sizes)


def _is_number(v) -> bool:
    """A finite JSON number that fits DeepSpeed's 64-bit settings (JSON integers are unbounded, 1e400 is inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (
        abs(v) <= MAX_INT if isinstance(v, int) else math.isfinite(v))


def _out_of_range(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)) \
        and abs(v) > MAX_INT


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


def _fmt(n) -> str:
    if isinstance(n, int) and not isinstance(n, bool):
        return f"{n:,}" if abs(n) < 10**15 else f"{n:.3e}"
    return f"{n:g}" if isinstance(n, float) else repr(n)


def _without_auto(value):
    """The config with every "auto" value left out, as DeepSpeedConfigModel does for HF (config_utils.py)."""
    if isinstance(value, dict):
        return {k: _without_auto(v) for k, v in value.items() if v != "auto"}
    return value


def _auto_keys(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _auto_keys(v, f"{prefix}{k}.")
    elif value == "auto":
        yield prefix[:-1]


# ------------------------------------------------------------------------------------------------ rules

@dataclass
class _Context:
    config: dict          # as written, "auto" values included
    view: dict            # "auto" values left out: what the other rules reason about
    world: int | None
    bf16_gpu: bool | None
    gpu_memory: int | None
    hf: bool
    model_params: int | None
    fits_without_offload: Callable | None


def _rule_auto(ctx: _Context):
    if ctx.hf:
        return
    for key in _auto_keys(ctx.config):
        yield Finding("error", key, "\"auto\" is filled in only by the Hugging Face Trainer/Accelerate integration; "
                      "plain DeepSpeed reads it as a string", "give a value (or pass --hf if this config is for the HF Trainer)")


def _close(key: str, valid) -> list[str]:
    return difflib.get_close_matches(key, list(valid), n=2, cutoff=0.75)


def _rule_keys(ctx: _Context):
    """Unknown keys at every level (did you mean), removed and deprecated keys."""
    config = ctx.config
    for key in config:
        if key in REMOVED_TOP_LEVEL_KEYS:
            yield Finding("error", key, f"DeepSpeed {DEEPSPEED_VERSION} rejects {key!r}: {REMOVED_TOP_LEVEL_KEYS[key]}",
                          f"remove {key!r}")
        elif key == "allgather_size" and isinstance(config.get("zero_optimization"), bool):
            yield Finding("warning", key, "allgather_size belongs to the deprecated \"zero_optimization\": true form",
                          "use \"zero_optimization\": {\"stage\": 1, \"allgather_bucket_size\": N}")
        elif key == "bfloat16":
            yield Finding("warning", key, "\"bfloat16\" is the old name of \"bf16\" (precision_config.py keeps it for "
                          "backwards compatibility)", "rename it to \"bf16\"")
        elif key not in SCHEMA and _dotted_section(key):
            nested = "..."
            for part in reversed(key.split(".")):
                nested = f"{{{json.dumps(part)}: {nested}}}"
            yield Finding("error", key, f"{key!r} is a dotted path, but DeepSpeed reads nested objects, not dotted keys: "
                          "this setting has no effect", f"nest it: {nested[1:-1]}")
        elif key not in SCHEMA:
            close = _close(key, SCHEMA)
            if close:  # a near-miss of a real key: DeepSpeed ignores unknown top-level keys, so the setting is lost
                yield Finding("error", key, f"unknown key {key!r}: DeepSpeed ignores unknown top-level keys, so this "
                              f"setting has no effect (did you mean {close[0]!r}?)", f"rename it to {close[0]!r}")
            else:
                yield Finding("warning", key, f"unknown key {key!r}; DeepSpeed ignores it", "remove it or check the spelling")
    if isinstance(config.get("zero_optimization"), bool):
        yield Finding("warning", "zero_optimization", "\"zero_optimization\": true/false is the deprecated form",
                      f"use \"zero_optimization\": {{\"stage\": {int(config['zero_optimization'])}}}")
    yield from _unknown_in_sections(config, SCHEMA, "")


def _dotted_section(key: str) -> bool:
    """A top-level key such as "zero_optimization.stage" that names a key of a section."""
    head, _, rest = key.partition(".")
    return bool(rest) and (isinstance(SCHEMA.get(head), dict) or SCHEMA.get(head) == "dict")


def _unknown_in_sections(config: dict, schema: dict, prefix: str):
    for key, sub_schema in schema.items():
        section = config.get(key)
        if not isinstance(sub_schema, dict) or not isinstance(section, dict):
            continue
        where = f"{prefix}{key}"
        for sub in section:
            path = f"{where}.{sub}"
            if where == "zero_optimization" and sub in REMOVED_ZERO_KEYS:
                yield Finding("error", path, f"DeepSpeed {DEEPSPEED_VERSION} rejects {sub!r}: {REMOVED_ZERO_KEYS[sub]}",
                              f"remove {sub!r}")
            elif where == "zero_optimization" and sub in DEPRECATED_ZERO_KEYS:
                yield Finding("warning", path, f"{sub!r} is deprecated (DeepSpeed converts it with a warning)",
                              f"use {DEPRECATED_ZERO_KEYS[sub]} instead")
            elif where in ("bf16", "bfloat16") and sub in FP16_LOSS_SCALING_KEYS:
                yield Finding("error", path, f"bf16 has no loss scaling: {sub!r} is an fp16 setting and DeepSpeed "
                              "rejects unknown keys in the bf16 section", f"remove {sub!r}")
            elif sub not in sub_schema:
                close = _close(sub, sub_schema)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                fix = f"rename it to {close[0]!r}" if close else f"remove it; valid keys: {', '.join(sorted(sub_schema))}"
                yield Finding("error", path, f"unknown key {sub!r} in {where}{hint}; DeepSpeed rejects the config", fix)
        if where == "zero_optimization":
            for alias, name in ZERO_ALIASES.items():
                if alias in section and name in section:
                    yield Finding("warning", f"{where}.{alias}", f"{alias!r} and {name!r} are the same field, given twice",
                                  f"keep only {alias!r}")
        yield from _unknown_in_sections(section, sub_schema, f"{where}.")


# Ranges beyond the JSON type. Aliased zero keys are listed by both spellings through _range_key.
POSITIVE = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "steps_per_print",
            "gradient_predivide_factor", "zero_optimization.reduce_bucket_size", "fp16.loss_scale_window",
            "fp16.min_loss_scale", "fp16.hysteresis", "hybrid_engine.max_out_tokens",
            "optimizer.params.lr", "optimizer.params.eps",
            "scheduler.params.warmup_num_steps", "scheduler.params.total_num_steps")
NON_NEGATIVE = ("gradient_clipping", "zero_optimization.allgather_bucket_size", "zero_optimization.sub_group_size",
                "zero_optimization.prefetch_bucket_size", "zero_optimization.param_persistence_threshold",
                "zero_optimization.model_persistence_threshold", "zero_optimization.max_live_parameters",
                "zero_optimization.max_reuse_distance", "zero_optimization.zero_hpz_partition_size",
                "zero_optimization.offload_param.buffer_count", "zero_optimization.offload_param.buffer_size",
                "zero_optimization.offload_param.max_in_cpu", "zero_optimization.offload_optimizer.buffer_count",
                "fp16.loss_scale", "fp16.initial_scale_power", "optimizer.params.weight_decay",
                "scheduler.params.warmup_min_lr", "scheduler.params.warmup_max_lr")
UNIT_INTERVAL = ("zero_optimization.offload_optimizer.ratio", "zero_optimization.offload_optimizer.cpuadam_cores_perc")
NUMERIC_PARAMS = {"optimizer.params.lr": "float", "optimizer.params.eps": "float", "optimizer.params.weight_decay": "float",
                  "scheduler.params.warmup_num_steps": "int", "scheduler.params.total_num_steps": "int",
                  "scheduler.params.warmup_min_lr": "float", "scheduler.params.warmup_max_lr": "float"}


# Keys whose DeepSpeed default is None, so an explicit null means "not set" (TOP_LEVEL_DEFAULTS, the pydantic
# Optional fields); a null anywhere else is rejected by DeepSpeed or breaks the engine later.
NULL_MEANS_DEFAULT = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                      "steps_per_print", "communication_data_type", "seq_parallel_communication_data_type",
                      "zero_optimization.overlap_comm", "zero_optimization.offload_optimizer",
                      "zero_optimization.offload_param", "zero_optimization.offload_optimizer.nvme_path",
                      "zero_optimization.offload_param.nvme_path")


def _range_key(path: str) -> str:
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "zero_optimization":
        parts[1] = ZERO_ALIASES.get(parts[1], parts[1])
    return ".".join(parts)


def _type_problem(expected: str, value) -> str | None:
    if expected == "int":
        if _as_int(value) is None:
            return "an integer"
    elif expected == "float":
        if not _is_number(value):
            return "a number"
    elif expected == "bool":
        if not isinstance(value, bool):
            return "true or false"
    elif expected == "str":
        if not isinstance(value, str):
            return "a string"
    elif expected == "list":
        if not isinstance(value, list):
            return "a list"
    elif (expected == "dict" or isinstance(expected, dict)) and not isinstance(value, dict):
        return "an object ({...})"
    return None


def _typed_leaves(config: dict, schema: dict, prefix: str = ""):
    for key, value in config.items():
        if key not in schema:
            continue
        expected = schema[key]
        if key == "zero_optimization" and isinstance(value, bool):
            continue  # the deprecated boolean form, reported by _rule_keys
        yield f"{prefix}{key}", expected, value
        if isinstance(expected, dict) and isinstance(value, dict):
            yield from _typed_leaves(value, expected, f"{prefix}{key}.")


def _rule_types_and_ranges(ctx: _Context):
    leaves = list(_typed_leaves(ctx.view, SCHEMA))
    for path, key_type in NUMERIC_PARAMS.items():
        value = _get(ctx.view, path)
        if value is not _MISSING:
            leaves.append((path, key_type, value))
    for path, expected, value in leaves:
        if value is None and _range_key(path) in NULL_MEANS_DEFAULT:
            continue  # DeepSpeed reads null as "not set" here
        if _out_of_range(value):
            yield Finding("error", path, f"{json.dumps(value)[:24]} is beyond the 64-bit range DeepSpeed stores "
                          "settings in (JSON's 1e400 reads as infinity)", "give a realistic value")
            continue
        wanted = _type_problem(expected, value)
        if wanted:
            got = {str: "a string ", list: "a list ", dict: "an object "}.get(type(value), "")
            if expected == "int" and _is_number(value):
                fix = f"use a whole number such as {int(value)}"
            elif isinstance(value, str) and expected in ("int", "float") and _parses_as_number(value):
                fix = f"write it without quotes: {value.strip()}"
            else:
                fix = f"give {wanted}"
            yield Finding("error", path, f"must be {wanted}, got {got}{json.dumps(value)[:40]}", fix)
            continue
        rkey = _range_key(path)
        if rkey in POSITIVE and _is_number(value) and value <= 0:
            yield Finding("error", path, f"must be > 0, got {_fmt(value)}", "give a positive value")
        elif rkey in NON_NEGATIVE and _is_number(value) and value < 0:
            yield Finding("error", path, f"must be >= 0, got {_fmt(value)}", "give a value of 0 or more")
        elif rkey in UNIT_INTERVAL and _is_number(value) and not 0 <= value <= 1:
            yield Finding("error", path, f"must be between 0 and 1, got {_fmt(value)}", "give a fraction in [0, 1]")
    stage = _get(ctx.view, "zero_optimization.stage")
    if _as_int(stage) is not None and stage not in (0, 1, 2, 3):
        yield Finding("error", "zero_optimization.stage", f"ZeRO stage must be 0, 1, 2 or 3, got {_fmt(stage)}",
                      "use 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)")
    betas = _get(ctx.view, "optimizer.params.betas")
    if betas is not _MISSING and not (isinstance(betas, list) and len(betas) == 2
                                      and all(_is_number(b) and 0 <= b < 1 for b in betas)):
        yield Finding("error", "optimizer.params.betas", f"must be two numbers in [0, 1), got {json.dumps(betas)[:40]}",
                      "e.g. [0.9, 0.95]")


def _parses_as_number(text: str) -> bool:
    """A JSON number in quotes ("2", "5e8"); not "nan", "inf" or "1_000", which float() would also take."""
    return re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?", text.strip()) is not None and math.isfinite(float(text))


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def _divisors(n: int, limit: int = 8, largest: int = 65_536) -> list[int]:
    """The first `limit` divisors of n, among world sizes up to `largest` (bounded: n may be huge)."""
    return [d for d in range(1, min(n, largest) + 1) if n % d == 0][:limit]


def _rule_batch(ctx: _Context):
    """train_batch_size = micro × accumulation × world (runtime/config.py _batch_assertion)."""
    if ctx.hf and any(ctx.config.get(k) == "auto" for k in BATCH_KEYS):
        return  # the Trainer fills these from its own arguments
    values = [ctx.view.get(k) for k in BATCH_KEYS]
    if any(v is not None and (_as_int(v) is None or v <= 0) for v in values):
        return  # reported by the type/range rule
    tb, mb, ga = (_as_int(v) for v in values)
    w = ctx.world
    ws = f" × world {w}" if w else ""
    if tb is None and mb is None:
        yield Finding("error", "train_batch_size", "neither train_batch_size nor train_micro_batch_size_per_gpu is set; "
                      "DeepSpeed needs at least one", "set train_micro_batch_size_per_gpu (and gradient_accumulation_steps)")
        return
    if w is None:
        yield from _batch_without_world(tb, mb, ga)
        return
    if tb is not None and mb is not None and ga is not None:
        if tb != mb * ga * w:
            better = f"gradient_accumulation_steps {tb // (mb * w)}" if tb % (mb * w) == 0 else f"train_batch_size {mb * ga * w}"
            yield Finding("error", "train_batch_size", f"train_batch_size {tb} ≠ micro {mb} × accumulation {ga}{ws} = "
                          f"{mb * ga * w}; DeepSpeed asserts they are equal", f"set {better}")
        else:
            yield Finding("info", "train_batch_size", f"train_batch_size {tb} = micro {mb} × accumulation {ga}{ws}")
        return
    solved = _solve_batch(tb, mb, ga, w)
    if isinstance(solved, str):
        yield Finding("error", "train_batch_size", solved, "make train_batch_size a multiple of the product of the others")
        return
    tb2, mb2, ga2 = solved
    missing = ", ".join(k for k, v in zip(BATCH_KEYS, (tb, mb, ga)) if v is None)
    yield Finding("info", "train_batch_size", f"derived {missing}: train_batch_size {tb2} = micro {mb2} × accumulation {ga2}{ws}",
                  f"write the derived value{'s' if ',' in missing else ''} into the config to make it explicit")


def _solve_batch(tb, mb, ga, w):
    """The full triple DeepSpeed would derive (runtime/config.py _set_batch_related_parameters), or a message
    when its integer division would not add up."""
    if tb is not None and mb is not None:
        if tb % (mb * w):
            return (f"train_batch_size {tb} is not divisible by micro {mb} × world {w} = {mb * w}; accumulation would be "
                    f"{tb / (mb * w):.3g}, not a whole number")
        return tb, mb, tb // (mb * w)
    if tb is not None:
        ga = ga or 1
        if tb % (ga * w):
            return (f"train_batch_size {tb} is not divisible by accumulation {ga} × world {w} = {ga * w}; the micro-batch "
                    f"would be {tb / (ga * w):.3g}, not a whole number")
        return tb, tb // (ga * w), ga
    ga = ga or 1
    return mb * ga * w, mb, ga


def _batch_without_world(tb, mb, ga):
    key = "train_batch_size"
    if tb is not None and mb is not None and ga is not None:
        if tb % (mb * ga):
            yield Finding("error", key, f"train_batch_size {tb} is not a multiple of micro {mb} × accumulation {ga} = {mb * ga}; "
                          "no world size makes it consistent", f"set train_batch_size to a multiple of {mb * ga}")
        else:
            yield Finding("info", key, f"consistent only with world size {tb // (mb * ga)}: train_batch_size {tb} = "
                          f"micro {mb} × accumulation {ga} × world {tb // (mb * ga)}", "pass --world-size to check against yours")
        return
    if tb is not None:
        per_rank = mb or ga or 1
        if tb % per_rank:
            yield Finding("error", key, f"train_batch_size {tb} is not a multiple of {per_rank}; no world size divides it evenly",
                          f"set train_batch_size to a multiple of {per_rank}")
            return
        worlds = _divisors(tb // per_rank)
        if mb is not None:
            detail = ", ".join(f"{w} (accumulation {tb // (mb * w)})" for w in worlds)
        else:
            detail = ", ".join(f"{w} (micro {tb // ((ga or 1) * w)})" for w in worlds)
        yield Finding("info", key, f"consistent with world sizes {detail}", "pass --world-size to solve for yours")
        return
    yield Finding("info", key, f"train_batch_size = micro {mb} × accumulation {ga or 1} × world: {mb * (ga or 1)} per GPU",
                  "pass --world-size to see the global batch")


def _rule_precision(ctx: _Context):
    cfg = ctx.view
    if _enabled(cfg, "fp16") and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        yield Finding("error", "fp16.enabled", "fp16 and bf16 are both enabled; DeepSpeed asserts only one is",
                      "keep bf16 on GPUs that support it (Ampere and later), else fp16")
    fp16 = _section(cfg, "fp16")
    if not _enabled(cfg, "fp16") and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        scaling = [k for k in FP16_LOSS_SCALING_KEYS if k in fp16]
        if scaling:
            yield Finding("warning", f"fp16.{scaling[0]}", f"loss-scaling keys ({', '.join(scaling)}) under bf16 do "
                          "nothing: bf16 has fp32's exponent range and needs no loss scaling", "remove the fp16 section")
    scale = fp16.get("loss_scale", 0)
    dynamic_keys = [k for k in FP16_LOSS_SCALING_KEYS if k != "loss_scale" and k in fp16]
    if _enabled(cfg, "fp16") and _is_number(scale) and scale != 0 and dynamic_keys:
        # precision_config.py: dynamic scaling only when loss_scale == 0; the other keys are its parameters
        yield Finding("warning", "fp16.loss_scale", f"loss_scale {_fmt(scale)} is a static scale, so {', '.join(dynamic_keys)} "
                      "(dynamic-scaling settings) do nothing, and a static scale cannot back off when gradients overflow",
                      f"set loss_scale to 0 for dynamic scaling from 2^initial_scale_power, or remove {', '.join(dynamic_keys)}")
    if ctx.bf16_gpu and _enabled(cfg, "fp16"):
        yield Finding("warning", "fp16.enabled", "fp16 on a GPU with bf16: fp16 needs loss scaling and skips steps on "
                      "overflow, bf16 trains at the same speed without either", "use \"bf16\": {\"enabled\": true} instead")
    if ctx.bf16_gpu is False and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        yield Finding("error", "bf16.enabled", "this GPU has no bf16 tensor cores; DeepSpeed raises \"Type bf16 is not "
                      "supported on your device\"", "use \"fp16\": {\"enabled\": true} (dynamic loss scaling)")
    accum = _section(cfg, "data_types").get("grad_accum_dtype")
    half = "bf16" if _enabled(cfg, "bf16") or _enabled(cfg, "bfloat16") else "fp16" if _enabled(cfg, "fp16") else None
    if isinstance(accum, str) and accum.lower() in ("fp32", "float32", "float") and half and _stage(cfg) == 0:
        # engine._do_optimizer_sanity_check: without ZeRO the model and accumulation dtypes must match
        yield Finding("error", "data_types.grad_accum_dtype", f"fp32 gradient accumulation with {half} and no ZeRO: DeepSpeed "
                      "raises NotImplementedError (unsupported mix of model_dtype and grad_accum_dtype) at initialize",
                      "use ZeRO stage 1, 2 or 3, or remove data_types.grad_accum_dtype")
    comm = cfg.get("communication_data_type")
    if isinstance(comm, str) and comm.lower() not in COMMUNICATION_DTYPES:
        yield Finding("error", "communication_data_type", f"{comm!r} is not one of {', '.join(COMMUNICATION_DTYPES)}",
                      "use \"bf16\", \"fp16\" or \"fp32\"")


def _rule_offload(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    zero = _section(cfg, "zero_optimization")
    for which in ("offload_optimizer", "offload_param"):
        section = zero.get(which)
        if not isinstance(section, dict):
            continue
        device = section.get("device", "none")
        if isinstance(device, str) and device not in OFFLOAD_DEVICES:
            close = difflib.get_close_matches(device.lower(), OFFLOAD_DEVICES, n=1)
            fix = f"use {close[0]!r}" if close else "use \"cpu\", \"nvme\" or \"none\""
            yield Finding("error", f"zero_optimization.{which}.device", f"offload device {device!r} is not one of "
                          f"{', '.join(OFFLOAD_DEVICES)} (offloading to another GPU is not a thing)", fix)
        if device == "nvme" and not section.get("nvme_path"):
            yield Finding("error", f"zero_optimization.{which}.nvme_path", "nvme offload without nvme_path",
                          "set nvme_path to a directory on a fast local NVMe disk")
    if _offload_device(cfg, "offload_param") in ("cpu", "nvme") and stage != 3:
        yield Finding("error", "zero_optimization.offload_param", f"offload_param works only at stage 3; at stage {stage} "
                      "DeepSpeed ignores it and the parameters stay on the GPU", "set stage 3 or remove offload_param")
    if _offload_device(cfg, "offload_optimizer") in ("cpu", "nvme") and stage == 0:
        yield Finding("error", "zero_optimization.offload_optimizer", "offload_optimizer needs ZeRO stage 1, 2 or 3; "
                      "at stage 0 it is ignored", "set stage 2 (ZeRO-Offload) or remove offload_optimizer")
    ratio = _get(cfg, "zero_optimization.offload_optimizer.ratio")
    if _is_number(ratio) and ratio < 1 and stage != 3:
        yield Finding("error", "zero_optimization.offload_optimizer.ratio", "partial offload (ratio < 1) is supported "
                      "only at ZeRO stage 3 (zero/config.py offload_ratio_check)", "set stage 3 or ratio 1.0")


def _rule_stage3_keys(ctx: _Context):
    stage = _stage(ctx.view)
    zero = _section(ctx.view, "zero_optimization")
    if stage == 3:
        return
    for key in zero:
        if key.startswith("stage3_") or key in ZERO_ALIASES.values():
            yield Finding("warning", f"zero_optimization.{key}", f"{key} only affects ZeRO stage 3; at stage {stage} it is ignored",
                          "remove it, or set stage 3 if you meant to partition parameters")


def _optimizer_kind(name: str) -> str | None:
    """The name DeepSpeed resolves an optimizer "type" to, or None when it cannot build it."""
    if name.lower() in DEEPSPEED_OPTIMIZERS:
        return name.lower()
    if name in TORCH_OPTIMIZERS:
        return name.lower() if name.lower() in ("adam", "adamw", "adagrad") else name
    return None


def _rule_optimizer(ctx: _Context):
    cfg = ctx.view
    opt = _section(cfg, "optimizer")
    name = opt.get("type")
    offload = _offload_device(cfg, "offload_optimizer") in ("cpu", "nvme") and _stage(cfg) >= 1
    if not isinstance(name, str):
        if offload and "optimizer" not in ctx.config and not ctx.hf:
            yield Finding("warning", "zero_optimization.offload_optimizer", "offload with no \"optimizer\" section: "
                          "DeepSpeed then requires the optimizer your code passes to be its CPU optimizer "
                          "(zero_force_ds_cpu_optimizer is true by default)", "add \"optimizer\": {\"type\": \"AdamW\", ...}")
        return
    kind = _optimizer_kind(name)
    if kind is None:
        replacement = OPTIMIZER_REPLACEMENTS.get(name.lower())
        if replacement is None:
            close = _close(name.lower(), DEEPSPEED_OPTIMIZERS) or _close(name, TORCH_OPTIMIZERS)
            replacement = close[0] if close else None
        fix = f"use \"{replacement}\"" if replacement else "use Adam, AdamW, Lamb, Lion, Adagrad, or a torch.optim class name"
        yield Finding("error", "optimizer.type", f"DeepSpeed cannot build optimizer {name!r}: it accepts "
                      f"{', '.join(DEEPSPEED_OPTIMIZERS)} (any case) or a torch.optim class name", fix)
        return
    allow_untested = cfg.get("zero_allow_untested_optimizer") is True
    if _stage(cfg) >= 1 and kind not in ZERO_TESTED_OPTIMIZERS and not allow_untested:
        yield Finding("error", "optimizer.type", f"ZeRO refuses {name!r} unless \"zero_allow_untested_optimizer\": true "
                      "(runtime/zero/utils.py tests Adam/AdamW, Adagrad, Lion, Muon)",
                      "use AdamW, or set zero_allow_untested_optimizer to true")
    if offload and kind not in OFFLOADABLE_OPTIMIZERS:
        yield Finding("error", "optimizer.type", f"{name!r} has no CPU implementation for offload_optimizer; DeepSpeed "
                      "has CPU Adam/AdamW, Adagrad and Lion", "use AdamW (DeepSpeedCPUAdam) or turn offload off")
    if kind == "lamb":
        scale = _get(cfg, "fp16.loss_scale", 0)
        if _enabled(cfg, "fp16") and _is_number(scale) and scale != 0:
            yield Finding("error", "fp16.loss_scale", "Lamb requires dynamic loss scaling (engine._do_sanity_check)",
                          "set fp16.loss_scale to 0")
    params = opt.get("params")
    if isinstance(params, dict) and "max_grad_norm" in params:
        yield Finding("error", "optimizer.params.max_grad_norm", "DeepSpeed raises on max_grad_norm as an optimizer "
                      "parameter", f"remove it and set \"gradient_clipping\": {_fmt(params['max_grad_norm'])}")


def _rule_scheduler(ctx: _Context):
    cfg = ctx.view
    sched = _section(cfg, "scheduler")
    name = sched.get("type")
    if not isinstance(name, str):
        return
    if name not in DEEPSPEED_SCHEDULERS and name not in TORCH_SCHEDULERS:
        close = _close(name, DEEPSPEED_SCHEDULERS + TORCH_SCHEDULERS)
        yield Finding("error", "scheduler.type", f"unknown scheduler {name!r}: DeepSpeed has {', '.join(DEEPSPEED_SCHEDULERS)} "
                      "or takes a torch.optim.lr_scheduler class name",
                      f"use {close[0]!r}" if close else "use WarmupDecayLR or WarmupCosineLR")
        return
    params = sched.get("params") if isinstance(sched.get("params"), dict) else {}
    raw_params = _get(ctx.config, "scheduler.params", {})
    for required in SCHEDULER_REQUIRED_PARAMS.get(name, ()):
        if required not in params and not (ctx.hf and isinstance(raw_params, dict) and raw_params.get(required) == "auto"):
            yield Finding("error", f"scheduler.params.{required}", f"{name} needs {required}; building it fails without",
                          f"set scheduler.params.{required}" + (" (the run's total optimizer steps)" if "steps" in required else ""))
    total, warmup = params.get("total_num_steps"), params.get("warmup_num_steps", 1000)
    if name == "WarmupDecayLR" and _is_number(total) and _is_number(warmup) and total < warmup:
        yield Finding("warning", "scheduler.params.total_num_steps", f"total_num_steps {_fmt(total)} < warmup_num_steps "
                      f"{_fmt(warmup)}: the learning rate never finishes warming up", "raise total_num_steps or lower warmup_num_steps")
    if name in WARMUP_MAX_LR_DEFAULT:
        lr = _get(cfg, "optimizer.params.lr")
        peak = params.get("warmup_max_lr", WARMUP_MAX_LR_DEFAULT[name])
        if _is_number(lr) and _is_number(peak) and not math.isclose(lr, peak, rel_tol=1e-9):
            said = "" if "warmup_max_lr" in params else f" (its default for {name})"
            yield Finding("warning", "scheduler.params.warmup_max_lr", f"warmup_max_lr {_fmt(peak)}{said} differs from the "
                          f"optimizer lr {_fmt(lr)}: the schedule overwrites the lr, so training peaks at {_fmt(peak)}",
                          f"set warmup_max_lr to {_fmt(lr)} (or the lr you meant)")


def _rule_model_features(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    if _get(cfg, "activation_checkpointing.partition_activations") is True:
        yield Finding("warning", "activation_checkpointing.partition_activations", "acts only when the model checkpoints "
                      "through deepspeed.checkpointing.checkpoint; zerotrain's GPT (and Hugging Face models) use "
                      "torch.utils.checkpoint, where it does nothing", "remove it unless your model calls deepspeed.checkpointing")
    zero = _section(cfg, "zero_optimization")
    gather = zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("gather_16bit_weights_on_model_save",
                      zero.get("stage3_gather_fp16_weights_on_model_save")))
    raw_gather = _get(ctx.config, "zero_optimization.stage3_gather_16bit_weights_on_model_save")
    if stage == 3 and gather is not True and not (ctx.hf and raw_gather == "auto"):
        yield Finding("warning", "zero_optimization.stage3_gather_16bit_weights_on_model_save", "ZeRO-3 without "
                      "stage3_gather_16bit_weights_on_model_save: save_16bit_model() (and the HF Trainer's final save) writes "
                      "empty [0]-shaped tensors instead of the weights", "set it to true")
    if cfg.get("gradient_allreduce_op") == "sum" and stage == 3:
        yield Finding("error", "gradient_allreduce_op", "'sum' is not supported with ZeRO stage 3 (runtime/config.py)",
                      "use \"mean\"")
    if zero.get("compute_grad_norm") is False and stage not in (1, 2):
        yield Finding("error", "zero_optimization.compute_grad_norm", "compute_grad_norm=false is supported only at "
                      "stages 1 and 2", "remove it")


TINY_BUCKET = 10_000          # elements: 20 KB messages in bf16, latency-bound on any interconnect
HUGE_BUCKET = 2_000_000_000   # elements: a 4-8 GB temporary buffer per bucket
ZERO2_LARGE_ACCUMULATION = 8


def _rule_performance(ctx: _Context):
    cfg, stage = ctx.view, _stage(ctx.view)
    zero = _section(cfg, "zero_optimization")
    overlap = zero.get("overlap_comm", stage == 3)  # dynamic default: true only at stage 3 (zero/config.py)
    if ctx.world and ctx.world > 1 and stage >= 1 and overlap is False:
        yield Finding("warning", "zero_optimization.overlap_comm", f"overlap_comm is off with {ctx.world} GPUs: each "
                      "gradient reduction waits for the backward pass to finish instead of running beside it, adding its "
                      "full time to every step", "set overlap_comm to true (costs about 4.5× reduce_bucket_size of buffers)")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size", "prefetch_bucket_size"):
        size = _as_int(zero.get(key))
        if size is None or (key.endswith("prefetch_bucket_size") and stage != 3):
            continue
        if key == "allgather_bucket_size" and stage == 3:
            continue
        where = f"zero_optimization.{key}"
        if 0 < size < TINY_BUCKET:
            yield Finding("warning", where, f"{key} {size:,} elements is tiny: thousands of small collectives per step, "
                          "each paying full latency", "use about hidden² elements (e.g. 5e7; DeepSpeed's default is 5e8)")
        elif size > HUGE_BUCKET:
            yield Finding("warning", where, f"{key} {size:,} elements needs a buffer of {size * 4 / 2**30:.1f} GiB in "
                          "fp32", "use 5e8 (DeepSpeed's default) or less")
        elif ctx.model_params and size > ctx.model_params and not key.endswith("prefetch_bucket_size"):
            yield Finding("info", where, f"{key} {size:,} is larger than the model ({ctx.model_params:,} parameters): "
                          "the reduction becomes one collective at the end of backward, with no overlap",
                          f"use about {max(ctx.model_params // 8, TINY_BUCKET):,} for a few buckets per step")
        elif ctx.model_params and size < min(1_000_000, ctx.model_params // 1000):
            yield Finding("warning", where, f"{key} {size:,} means over 1,000 collectives per step for "
                          f"{ctx.model_params:,} parameters; latency dominates", "use about hidden² elements")
    if stage == 2:
        _, _, ga = _solved_triple(cfg, ctx.world)
        if ga and ga >= ZERO2_LARGE_ACCUMULATION:
            yield Finding("info", "zero_optimization.stage", f"ZeRO-2 with accumulation {ga}: gradients are reduce-"
                          f"scattered after every micro-batch ({ga} times per step); ZeRO-1 reduces once per step at the "
                          "cost of a full 16-bit gradient buffer (2 bytes/param)", "use stage 1 if 2 bytes/param fit")
    offloads = any(_offload_device(cfg, w) in ("cpu", "nvme") for w in ("offload_optimizer", "offload_param"))
    if ctx.fits_without_offload is not None and ctx.model_params and ctx.gpu_memory and offloads:
        plain = copy.deepcopy(cfg)
        for which in ("offload_optimizer", "offload_param"):
            _section(plain, "zero_optimization").pop(which, None)
        if ctx.fits_without_offload(plain, ctx.model_params, ctx.world or 1, ctx.gpu_memory):
            yield Finding("warning", "zero_optimization.offload_optimizer", "the memory plan fits without offload: "
                          "offloading moves the optimizer step to the CPU and adds PCIe transfers, typically making "
                          "steps several times slower", "remove offload_optimizer / offload_param")
    spp = _as_int(cfg.get("steps_per_print"))
    if spp is not None and 0 < spp < 10:
        yield Finding("warning", "steps_per_print", f"steps_per_print {spp}: DeepSpeed logs every {spp} step(s), flooding "
                      "the log (and the terminal I/O slows short steps)", "use 100 or more")
    if cfg.get("wall_clock_breakdown") is True:
        yield Finding("info", "wall_clock_breakdown", "wall_clock_breakdown synchronizes the device at every timer, "
                      "slowing each step", "turn it off outside profiling")


def _solved_triple(cfg: dict, world: int | None):
    tb, mb, ga = (_as_int(cfg.get(k)) for k in BATCH_KEYS)
    if ga is None and world and (tb or mb):
        solved = _solve_batch(tb, mb, ga, world)
        if not isinstance(solved, str):
            return solved
    return tb, mb, ga


RULES = (_rule_auto, _rule_keys, _rule_types_and_ranges, _rule_batch, _rule_precision, _rule_offload,
         _rule_stage3_keys, _rule_optimizer, _rule_scheduler, _rule_model_features, _rule_performance)


def check(config: dict, world_size: int | None = None, gpu: str | None = None, hf_integration: bool = False,
          model_params: int | None = None, fits_without_offload: Callable | None = None) -> list[Finding]:
    """Every finding for a ds_config, errors first. `fits_without_offload(config, model_params, world_size,
    gpu_memory_bytes) -> bool` is the memory planner's verdict, used to flag offload that is not needed."""
    if world_size is not None and world_size < 1:
        raise UserError(f"--world-size must be >= 1, got {world_size}")
    gpu_memory, bf16_gpu = gpu_spec(gpu) if gpu else (None, None)
    ctx = _Context(config, _without_auto(config), world_size, bf16_gpu, gpu_memory, hf_integration, model_params,
                   fits_without_offload)
    findings = [f for rule in RULES for f in rule(ctx)]
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def check_text(text: str, path: str = "ds_config", **kwargs) -> list[Finding]:
    """check() on the text of a file, with duplicate keys reported too; a UserError when it is not JSON."""
    config = parse_config_text(text, path)
    findings = duplicate_key_findings(text) + check(config, **kwargs)
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


# ------------------------------------------------------------------------------------------------ DeepSpeed's own parser

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
        detail = lines[0] if len(lines) == 1 or "validation error" not in lines[0] else f"{lines[0]}: {' '.join(lines[1:3])}"
        return [Finding("error", "deepspeed", f"DeepSpeed {_deepspeed_version()} rejects the config: {detail.strip()}",
                        "fix the key it names")]
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


# ------------------------------------------------------------------------------------------------ explain

def explain(config: dict) -> list[tuple[str, object, bool, str]]:
    """Rows (key, effective value, is DeepSpeed's default, what it does) for every key relevant to the config:
    the batch triple, precision, clipping, the ZeRO keys of its stage, offload sections, and any other key set."""
    cfg = config
    stage = _stage(cfg)
    rows: list[tuple[str, object, bool, str]] = []
    shown = set()

    def add(key, default):
        value = _get(cfg, key, _MISSING)
        is_default = value is _MISSING
        rows.append((key, default if is_default else value, is_default, DESCRIPTIONS.get(key, "")))
        shown.add(key)

    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "steps_per_print", "communication_data_type", "wall_clock_breakdown"):
        add(key, TOP_LEVEL_DEFAULTS[key])
    if _enabled(cfg, "fp16"):
        for key, default in FP16_DEFAULTS.items():
            add(f"fp16.{key}", default)
    else:
        add("bf16.enabled", False)
        if _enabled(cfg, "bf16"):
            for key, default in BF16_DEFAULTS.items():
                if key != "enabled":
                    add(f"bf16.{key}", default)
    zero_defaults = dict(ZERO_DEFAULTS, overlap_comm=stage == 3)  # overlap_comm's default depends on the stage
    for key in ZERO_KEYS_BY_STAGE[stage] or ("stage",):
        add(f"zero_optimization.{key}", zero_defaults[key])
    for which, defaults in (("offload_optimizer", OFFLOAD_OPTIMIZER_DEFAULTS), ("offload_param", OFFLOAD_PARAM_DEFAULTS)):
        if isinstance(_get(cfg, f"zero_optimization.{which}"), dict):
            for key, default in defaults.items():
                add(f"zero_optimization.{which}.{key}", default)
    for key, value in _leaves(cfg):
        if key not in shown and not any(key.startswith(s + ".") for s in shown):
            rkey = key
            if key.startswith("zero_optimization."):  # describe aliases under the documented spelling
                sub = key.split(".", 1)[1]
                alias = {v: k for k, v in ZERO_ALIASES.items()}.get(sub)
                rkey = f"zero_optimization.{alias}" if alias else key
            rows.append((key, value, False, DESCRIPTIONS.get(rkey, "(set in the file)")))
    return rows


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v and k not in ("params",):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# ------------------------------------------------------------------------------------------------ fix

def fix(config: dict, world_size: int | None = None, gpu: str | None = None,
        hf_integration: bool = False) -> tuple[dict, list[str]]:
    """A corrected copy of the config and one line per change. Only unambiguous fixes are applied; what needs
    a decision (a missing total_num_steps, an nvme path) is left for the re-check to report."""
    cfg = copy.deepcopy(config)
    changes: list[str] = []
    _, bf16_gpu = gpu_spec(gpu) if gpu else (None, None)

    # dotted top-level keys ("zero_optimization.stage": 2) nested where they belong
    for key in [k for k in cfg if k not in SCHEMA and _dotted_section(k)]:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and last not in node:
            node[last] = cfg.pop(key)
            changes.append(f"nested {key} as {' -> '.join(key.split('.'))}")

    # numbers written as strings ("stage": "2"), where DeepSpeed expects a number
    changes += _fix_quoted_numbers(cfg, SCHEMA, "")

    # typos with one clear candidate
    for key in list(cfg):
        if key not in SCHEMA and key not in REMOVED_TOP_LEVEL_KEYS and key != "allgather_size" and "." not in key:
            close = _close(key, SCHEMA)
            if len(close) == 1 and close[0] not in cfg:
                cfg[close[0]] = cfg.pop(key)
                changes.append(f"renamed {key} -> {close[0]}")
    if "bfloat16" in cfg and "bf16" not in cfg:
        cfg["bf16"] = cfg.pop("bfloat16")
        changes.append("renamed bfloat16 -> bf16")
    if isinstance(cfg.get("zero_optimization"), bool):
        new = {"stage": int(cfg["zero_optimization"])}
        if "allgather_size" in cfg:
            new["allgather_bucket_size"] = cfg.pop("allgather_size")
        cfg["zero_optimization"] = new
        changes.append(f"replaced the boolean zero_optimization with {json.dumps(new)}")
    zero = cfg.get("zero_optimization")
    if isinstance(zero, dict):
        changes += _fix_zero(zero)
    for section, schema in SCHEMA.items():
        if isinstance(schema, dict) and isinstance(cfg.get(section), dict) and section != "zero_optimization":
            changes += _fix_typos_in(cfg[section], schema, section)

    # precision
    if _enabled(cfg, "fp16") and _enabled(cfg, "bf16"):
        if bf16_gpu is False:
            cfg["bf16"]["enabled"] = False
            changes.append("turned bf16 off (this GPU has no bf16), keeping fp16")
        else:
            cfg["fp16"]["enabled"] = False
            changes.append("turned fp16 off, keeping bf16 (fp16 and bf16 cannot both be on)")
    elif bf16_gpu and _enabled(cfg, "fp16"):
        cfg.pop("fp16")
        cfg["bf16"] = {**(cfg.get("bf16") if isinstance(cfg.get("bf16"), dict) else {}), "enabled": True}
        changes.append("switched fp16 -> bf16 (this GPU has bf16: no loss scaling needed)")
    if isinstance(cfg.get("bf16"), dict):
        for key in FP16_LOSS_SCALING_KEYS:
            if key in cfg["bf16"]:
                del cfg["bf16"][key]
                changes.append(f"removed bf16.{key} (bf16 has no loss scaling)")
    if _enabled(cfg, "bf16") and isinstance(cfg.get("fp16"), dict) and not _enabled(cfg, "fp16"):
        cfg.pop("fp16")
        changes.append("removed the disabled fp16 section (its loss-scaling keys do nothing under bf16)")

    # optimizer
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("type"), str) and _optimizer_kind(opt["type"]) is None:
        replacement = OPTIMIZER_REPLACEMENTS.get(opt["type"].lower())
        if replacement:
            changes.append(f"optimizer.type {opt['type']} -> {replacement} (DeepSpeed builds the same kernel from it)")
            opt["type"] = replacement
    params = _get(cfg, "optimizer.params")
    if isinstance(params, dict) and "max_grad_norm" in params:
        cfg["gradient_clipping"] = params.pop("max_grad_norm")
        changes.append(f"moved optimizer.params.max_grad_norm to gradient_clipping = {_fmt(cfg['gradient_clipping'])}")

    # batch triple
    if world_size and not (hf_integration and any(cfg.get(k) == "auto" for k in BATCH_KEYS)):
        changes += _fix_batch(cfg, world_size)

    # performance
    if isinstance(cfg.get("zero_optimization"), dict):
        zero, stage = cfg["zero_optimization"], _stage(cfg)
        if world_size and world_size > 1 and stage >= 1 and zero.get("overlap_comm", stage == 3) is False:
            zero["overlap_comm"] = True
            changes.append("set zero_optimization.overlap_comm = true (hide gradient reduction behind backward)")
    spp = _as_int(cfg.get("steps_per_print"))
    if spp is not None and 0 < spp < 10:
        cfg["steps_per_print"] = 100
        changes.append(f"steps_per_print {spp} -> 100")
    return cfg, changes


def _fix_quoted_numbers(section: dict, schema: dict, where: str) -> list[str]:
    changes = []
    for key, value in section.items():
        expected = schema.get(key)
        if isinstance(expected, dict) and isinstance(value, dict):
            changes += _fix_quoted_numbers(value, expected, f"{where}{key}.")
        elif expected in ("int", "float") and isinstance(value, str) and value != "auto" and _parses_as_number(value):
            number = float(value)
            if abs(number) <= MAX_INT:
                section[key] = int(number) if expected == "int" and number.is_integer() else number
                changes.append(f"{where}{key} {value!r} -> {_fmt(section[key])} (a number, not a string)")
    return changes


def _fix_typos_in(section: dict, schema: dict, where: str) -> list[str]:
    changes = []
    for key in list(section):
        if key not in schema:
            close = _close(key, schema)
            if len(close) == 1 and close[0] not in section:
                section[close[0]] = section.pop(key)
                changes.append(f"renamed {where}.{key} -> {where}.{close[0]}")
    return changes


def _fix_zero(zero: dict) -> list[str]:
    changes = []
    if zero.get("cpu_offload") is not None:
        on = zero.pop("cpu_offload")
        if on and "offload_optimizer" not in zero:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        changes.append("replaced cpu_offload with offload_optimizer" if on else "removed cpu_offload: false")
    for old in ("cpu_offload_param", "cpu_offload_params"):
        if zero.get(old) is not None:
            on = zero.pop(old)
            if on and "offload_param" not in zero:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
            changes.append(f"replaced {old} with offload_param" if on else f"removed {old}: false")
    if "cpu_offload_use_pin_memory" in zero:
        pin = zero.pop("cpu_offload_use_pin_memory")
        for which in ("offload_optimizer", "offload_param"):
            if isinstance(zero.get(which), dict) and isinstance(pin, bool):
                zero[which]["pin_memory"] = pin
        changes.append("moved cpu_offload_use_pin_memory into the offload sections' pin_memory")
    if "stage3_gather_fp16_weights_on_model_save" in zero:
        value = zero.pop("stage3_gather_fp16_weights_on_model_save")
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", value)
        changes.append("renamed stage3_gather_fp16_weights_on_model_save -> stage3_gather_16bit_weights_on_model_save")
    changes += _fix_typos_in(zero, ZERO_SCHEMA, "zero_optimization")
    for which, schema in (("offload_optimizer", OFFLOAD_OPTIMIZER_SCHEMA), ("offload_param", OFFLOAD_PARAM_SCHEMA)):
        if isinstance(zero.get(which), dict):
            changes += _fix_typos_in(zero[which], schema, f"zero_optimization.{which}")
            device = zero[which].get("device")
            if isinstance(device, str) and device.lower() in OFFLOAD_DEVICES and device != device.lower():
                zero[which]["device"] = device.lower()
                changes.append(f"zero_optimization.{which}.device {device!r} -> {device.lower()!r}")
    stage = _as_int(zero.get("stage", 0))
    if stage in (0, 1, 2):
        for key in list(zero):
            if key.startswith("stage3_") or key in ZERO_ALIASES.values():
                del zero[key]
                changes.append(f"removed zero_optimization.{key} (stage 3 only; this config is stage {stage})")
        if isinstance(zero.get("offload_param"), dict):
            del zero["offload_param"]
            changes.append("removed offload_param (ignored below stage 3; set stage 3 if you need parameter offload)")
    if stage == 3 and zero.get("stage3_gather_16bit_weights_on_model_save", zero.get("gather_16bit_weights_on_model_save")) is not True:
        zero.pop("gather_16bit_weights_on_model_save", None)
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        changes.append("set stage3_gather_16bit_weights_on_model_save = true (else save_16bit_model writes empty weights)")
    return changes


def _fix_batch(cfg: dict, world: int) -> list[str]:
    values = [cfg.get(k) for k in BATCH_KEYS]
    if any(v is not None and (_as_int(v) is None or v <= 0) for v in values):
        return []
    tb, mb, ga = (_as_int(v) for v in values)
    if mb is None and tb is None:
        return []
    if tb is not None and mb is not None and ga is not None:
        if tb == mb * ga * world:
            return []
        if tb % (mb * world) == 0:  # keep the global batch (it sets the optimisation), change accumulation
            cfg["gradient_accumulation_steps"] = tb // (mb * world)
            return [(f"gradient_accumulation_steps {ga} -> {tb // (mb * world)}: train_batch_size {tb} = micro {mb} × "
                     f"accumulation {tb // (mb * world)} × world {world}")]
        cfg["train_batch_size"] = mb * ga * world
        return [f"train_batch_size {tb} -> {mb * ga * world} = micro {mb} × accumulation {ga} × world {world}"]
    solved = _solve_batch(tb, mb, ga, world)
    if isinstance(solved, str):
        return []
    for key, value in zip(BATCH_KEYS, solved):
        cfg[key] = value
    return [f"wrote the batch triple: train_batch_size {solved[0]} = micro {solved[1]} × accumulation {solved[2]} × world {world}"]


# ------------------------------------------------------------------------------------------------ new

@dataclass(frozen=True)
class Layout:
    stage: int
    offload_optimizer: str   # none | cpu
    offload_param: str       # none | cpu
    micro_batch: int
    accumulation: int
    world: int
    reason: str


def choose_layout(model: memory.ModelShape, gpus: int, nodes: int, gpu_memory_bytes: int, micro_batch: int | None,
                  global_batch: int | None, seq_len: int, dtype: str = "bf16") -> Layout:
    """Stage, offload, micro-batch and accumulation from the memory planner: its recommendation (the fastest
    configuration that fits with 10% headroom) among micro-batches up to 32 — or the given one — that divide
    the per-GPU share of the global batch."""
    world = gpus * nodes
    if global_batch is not None and global_batch % world:
        raise UserError(f"--global-batch {global_batch} is not divisible by {world} GPUs; use a multiple of {world}")
    per_gpu = global_batch // world if global_batch else None
    if micro_batch is not None:
        if per_gpu is not None and per_gpu % micro_batch:
            raise UserError(f"--global-batch {global_batch} is not divisible by --micro-batch {micro_batch} × "
                            f"{world} GPUs = {micro_batch * world}; use a multiple of {micro_batch * world}")
        candidates = [micro_batch]
    else:
        candidates = [m for m in (1, 2, 4, 8, 16, 32) if per_gpu is None or per_gpu % m == 0]
    run = memory.RunShape(gpus_per_node=gpus, nodes=nodes, micro_batch=candidates[0], seq_len=seq_len, dtype=dtype)
    best = memory.recommend(model, run, gpu_memory_bytes, candidates)
    if best is None:
        raise UserError(f"{model.name} ({model.n_params / 1e6:,.0f}M parameters) with micro-batch {candidates[0]} × {seq_len} tokens "
                        f"does not fit on {world} GPU(s) of {gpu_memory_bytes / 2**30:.0f} GiB even with stage 3 and CPU "
                        "offload; use more GPUs, a shorter --seq-len or a GPU with more memory")
    r = best.run
    accumulation = per_gpu // r.micro_batch if per_gpu else 1
    where = {("none", "none"): "", ("cpu", "none"): ", optimizer offloaded to CPU",
             ("cpu", "cpu"): ", optimizer and parameters offloaded to CPU"}[(r.offload_optimizer, r.offload_params)]
    if r.activation_checkpointing:
        where += (", with activation checkpointing in the model (model.gradient_checkpointing_enable(), or "
                  "deepspeed.activation_checkpointing = true in a zerotrain run)")
    reason = (f"stage {r.zero_stage}{where}, micro-batch {r.micro_batch}: the plan needs {best.gpu_bytes_needed / 2**30:.1f} GiB "
              f"per GPU of {gpu_memory_bytes / 2**30:.0f} GiB (peak allocated {best.per_gpu['peak_allocated'] / 2**30:.1f} GiB; "
              f"zerotrain plan --model {model.name} --gpus {gpus} shows every option)")
    return Layout(r.zero_stage, r.offload_optimizer, r.offload_params, r.micro_batch, accumulation, world, reason)


def planner_fits_without_offload(model: memory.ModelShape):
    """The `fits_without_offload` hook of check(), answered by the memory planner for `model`."""
    def fits(config: dict, _params: int, world: int, gpu_memory: int) -> bool:
        run = memory.run_from_ds_config(_without_auto(config), memory.RunShape(gpus_per_node=world))
        return memory.plan(model, run).fits(gpu_memory, 0.10)
    return fits


TARGETS = ("deepspeed", "hf-trainer", "accelerate")


def new_config(model: str, gpus: int, nodes: int = 1, gpu: str | None = None, micro_batch: int | None = None,
               global_batch: int | None = None, seq_len: int | None = None, target: str = "deepspeed") -> tuple[dict, list[str]]:
    """A ds_config for a zerotrain preset on `gpus` × `nodes` GPUs, and notes saying what was chosen and why."""
    from zerotrain.runconfig import (
        TrainSection,  # torch-free: the optimizer defaults zerotrain trains with
    )

    shape = memory.resolve_model(model)
    if target not in TARGETS:
        raise UserError(f"unknown --for {target!r}; choose one of {', '.join(TARGETS)}")
    for name, value in (("--gpus", gpus), ("--nodes", nodes), ("--micro-batch", micro_batch),
                        ("--global-batch", global_batch), ("--seq-len", seq_len)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    notes = []
    if gpu is None:
        gpu = "a100-80gb"
        notes.append("no --gpu given: assumed an 80 GiB A100 (bf16)")
    gpu_memory, bf16 = gpu_spec(gpu)
    seq = seq_len or min(shape.max_positions, 1024 if shape.impl != "hf-llama" else 2048)
    if seq > shape.max_positions:
        raise UserError(f"--seq-len {seq} exceeds {model}'s {shape.max_positions} positions")
    layout = choose_layout(shape, gpus, nodes, gpu_memory, micro_batch, global_batch, seq, "bf16" if bf16 else "fp16")
    notes.append(layout.reason)
    h = shape.hidden
    zero: dict = {"stage": layout.stage}
    if layout.stage >= 1:
        # Bucket sizes from the model width, the rule of thumb the Hugging Face DeepSpeed integration fills
        # "auto" with (transformers/integrations/deepspeed.py, HfTrainerDeepSpeedConfig.trainer_config_finalize).
        zero["overlap_comm"] = layout.world > 1
        zero["contiguous_gradients"] = layout.stage >= 2
        zero["reduce_bucket_size"] = h * h
        if layout.stage < 3:
            zero["allgather_bucket_size"] = h * h
    if layout.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": layout.offload_optimizer, "pin_memory": True}
    if layout.offload_param != "none":
        zero["offload_param"] = {"device": layout.offload_param, "pin_memory": True}
    if layout.stage == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * h * h)
        zero["stage3_param_persistence_threshold"] = 10 * h
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    t = TrainSection()
    config: dict = {
        "train_batch_size": layout.micro_batch * layout.accumulation * layout.world,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.accumulation,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "betas": [t.beta1, t.beta2], "eps": 1e-8,
                                                  "weight_decay": t.weight_decay}},
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }
    if bf16:
        config["bf16"] = {"enabled": True}
    else:
        config["fp16"] = dict(FP16_DEFAULTS, enabled=True)  # dynamic loss scaling from 2^16
        notes.append(f"{gpu} has no bf16: fp16 with dynamic loss scaling")
    notes.append(f"global batch {config['train_batch_size']} = micro {layout.micro_batch} × accumulation "
                 f"{layout.accumulation} × world {layout.world}")
    if target == "hf-trainer":
        config = _hf_variant(config)
        notes.append("\"auto\" fields are filled by the Hugging Face Trainer from its TrainingArguments")
    return config, notes


def _hf_variant(config: dict) -> dict:
    """The "auto" form the transformers DeepSpeed docs show: batch, clipping, precision, optimizer and scheduler
    values come from TrainingArguments, bucket sizes from the model's hidden size."""
    cfg = copy.deepcopy(config)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        cfg[key] = "auto"
    cfg["optimizer"] = {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}}
    cfg["scheduler"] = {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                            "warmup_num_steps": "auto", "total_num_steps": "auto"}}
    precision = "bf16" if "bf16" in cfg else "fp16"
    cfg[precision]["enabled"] = "auto"
    zero = cfg["zero_optimization"]
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if key in zero:
            zero[key] = "auto"
    return cfg


def accelerate_config(ds_config_path: str, gpus: int, nodes: int, stage: int) -> dict:
    """An Accelerate config that launches with the ds_config file. mixed_precision and the other keys Accelerate
    reads from the ds_config are left out: with deepspeed_config_file set, Accelerate refuses them
    (accelerate/utils/dataclasses.py DeepSpeedPlugin._deepspeed_config_checks)."""
    ds: dict = {"deepspeed_config_file": ds_config_path, "zero3_init_flag": stage == 3}
    if nodes > 1:
        ds["deepspeed_multinode_launcher"] = "standard"
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED",
        "deepspeed_config": ds,
        "machine_rank": 0,
        "main_training_function": "main",
        "num_machines": nodes,
        "num_processes": gpus * nodes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
