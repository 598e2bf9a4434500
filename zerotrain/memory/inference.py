"""The inference memory plan: one GPU serving a batch of sequences (weights, KV cache, prefill activations)."""

from dataclasses import dataclass

from zerotrain import UserError
from zerotrain.memory.shapes import CUBLAS_WORKSPACE, CUDA_CONTEXT, DTYPE_BYTES, ModelShape


@dataclass
class InferencePlan:
    model: ModelShape
    batch: int
    context: int
    dtype: str
    weights: int
    kv_cache: int
    activations: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    def to_json(self, gpu_memory: int | None = None) -> dict:
        return {
            "batch": self.batch,
            "context": self.context,
            "dtype": self.dtype,
            "weights": self.weights,
            "kv_cache": self.kv_cache,
            "activations": self.activations,
            "overhead": self.overhead,
            "total": self.total,
            "fits": None if gpu_memory is None else self.total <= gpu_memory,
        }


def plan_inference(model: ModelShape, batch: int, context: int, dtype: str = "bf16") -> InferencePlan:
    """One GPU serving `batch` sequences of up to `context` tokens: weights, the KV cache (k and v per layer,
    kv heads only: grouped-query attention shrinks it), and the prefill's largest transient tensors."""
    if batch < 1 or context < 1:
        raise UserError("--batch and --context must be ≥ 1")
    if dtype not in DTYPE_BYTES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    weights = b * model.n_params
    kv = 2 * model.n_layer * model.kv_dim * context * batch * b
    tokens = batch * context
    # prefill of one layer: its input, q/k/v, attention out and the MLP intermediates live together;
    # generate() computes logits (fp32) for the last position only.
    layer = tokens * b * (3 * model.hidden + 2 * model.kv_dim + 3 * model.ffn)
    logits = batch * model.vocab * (b + 4)
    return InferencePlan(
        model, batch, context, dtype, int(weights), int(kv), int(layer + logits + CUBLAS_WORKSPACE), CUDA_CONTEXT
    )
