"""The memory planner: per-GPU bytes of a ZeRO training run (or of inference), term by term. Pure arithmetic.

No torch or deepspeed import: `zerotrain plan` answers in milliseconds on a laptop. Every term is derived
from what PyTorch and DeepSpeed 0.19 allocate — which tensors autograd saves for backward, what each ZeRO
optimizer keeps resident (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py, fp16/unfused_optimizer.py) —
and was checked against CUDA allocator traces of real runs (benchmarks/memory_probe.py --snapshot).
docs/memory.md gives each formula with its source and the measured-vs-predicted table.

Notation: N parameters, W data-parallel ranks, b bytes per element of the compute dtype (2 for bf16/fp16,
4 for fp32), s = micro_batch × seq_len tokens per micro-batch, h hidden size, L layers, V vocabulary.

  shapes.py      what is planned: ModelShape (presets, config.json, dims:, resolve_model) and RunShape with its checks
  activations.py what autograd keeps per token for each block, the output layer and the loss
  training.py    the training plan (plan), the configurations compared (variants), the fastest that fits (recommend)
  inference.py   the inference plan: weights, KV cache, prefill activations (plan_inference)
  inputs.py      a GPU by name or amount (gpu_memory_from_name), a ds_config read into a RunShape
"""

from zerotrain.memory.activations import FUSED_LOSS_CHUNK_TOKENS, saved_bytes_per_token_per_layer
from zerotrain.memory.inference import InferencePlan, plan_inference
from zerotrain.memory.inputs import GPUS, gpu_memory_from_name, parse_size, run_from_ds_config
from zerotrain.memory.shapes import (
    ALL_PERSISTENT,
    CUBLAS_WORKSPACE,
    CUDA_CONTEXT,
    DTYPE_BYTES,
    GPT2_PRESETS,
    GPT2_VOCAB,
    LIGER_MODEL_TYPES,
    LLAMA_PRESETS,
    LLAMA_STYLE,
    NCCL_BUFFERS,
    OPTIMIZER_STATE_BYTES,
    PROCESS_HOST_RAM,
    VOCAB_MULTIPLE,
    GiB,
    MiB,
    ModelShape,
    RunShape,
    bf16_master,
    check_run,
    fp32_grad_accum,
    gpt2_shape,
    resolve_model,
    shape_from_hf_config,
    to_jsonable,
    zero_optimizer_on_device,
)
from zerotrain.memory.training import (
    OFFLOAD_RATIOS,
    PARTIAL_OFFLOAD_SUB_GROUP,
    STAGES_FASTEST_FIRST,
    MemoryPlan,
    changes_cheapest_first,
    cheapest_change_that_fits,
    describe_offload,
    offload_ladder,
    optimizer_step_seconds,
    partial,
    persisting,
    plan,
    recommend,
    smallest_offload,
    variants,
)

__all__ = [
    "ALL_PERSISTENT",
    "CUBLAS_WORKSPACE",
    "CUDA_CONTEXT",
    "DTYPE_BYTES",
    "FUSED_LOSS_CHUNK_TOKENS",
    "GPT2_PRESETS",
    "GPT2_VOCAB",
    "GPUS",
    "LIGER_MODEL_TYPES",
    "LLAMA_PRESETS",
    "LLAMA_STYLE",
    "NCCL_BUFFERS",
    "OFFLOAD_RATIOS",
    "PARTIAL_OFFLOAD_SUB_GROUP",
    "OPTIMIZER_STATE_BYTES",
    "PROCESS_HOST_RAM",
    "STAGES_FASTEST_FIRST",
    "VOCAB_MULTIPLE",
    "GiB",
    "InferencePlan",
    "MemoryPlan",
    "MiB",
    "ModelShape",
    "RunShape",
    "changes_cheapest_first",
    "check_run",
    "cheapest_change_that_fits",
    "describe_offload",
    "bf16_master",
    "fp32_grad_accum",
    "zero_optimizer_on_device",
    "gpt2_shape",
    "gpu_memory_from_name",
    "offload_ladder",
    "optimizer_step_seconds",
    "partial",
    "persisting",
    "parse_size",
    "plan",
    "plan_inference",
    "recommend",
    "resolve_model",
    "run_from_ds_config",
    "saved_bytes_per_token_per_layer",
    "shape_from_hf_config",
    "smallest_offload",
    "to_jsonable",
    "variants",
]
