"""The fast path for Hugging Face decoder models (Llama, Mistral, Qwen2/3, GPT-2): the same speed-ups zerotrain's
own GPT has, applied to a transformers model without changing what it is.

- Fused loss: the output projection and the cross-entropy in zerotrain's chunked, fused function
  (model.LMHead), so the (tokens, vocabulary) fp32 logits never exist. transformers' forward upcasts the logits
  and keeps an fp32 log-softmax: at a 49k-152k vocabulary that is the largest activation of a fine-tune.
- Compiled decoder layers: torch.compile per decoder layer fuses RMSNorm, SwiGLU, RoPE and the residual adds
  around the matmuls (GPUs, ZeRO stages 0-2, as train.compile does for zerotrain's GPT).
- Liger Kernel (train.liger): Triton kernels for RMSNorm, SwiGLU and RoPE from the liger-kernel package, eager
  modules that also run under ZeRO-3, where compiled layers cannot.

The model stays a transformers model: modules are swapped for subclasses or patched in place, parameters and
their names do not change, so export, save_pretrained and generate work as before. Which is faster where:
docs/benchmarks.md.
"""

import torch

from zerotrain import UserError
from zerotrain.model import LMHead, _chunk_loss_and_grad_fusable
from zerotrain.runconfig import uses_liger

# Model types whose causal-LM forward is exactly logits = lm_head(base_model(...).last_hidden_state): no logit
# scaling or soft-capping after the head (Gemma, Cohere and Granite have one), so the fused loss computes their loss.
FUSED_LOSS_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})

# Liger Kernel's patch function for each model type it covers (liger_kernel.transformers).
LIGER_PATCHES = {
    "llama": "apply_liger_kernel_to_llama",
    "mistral": "apply_liger_kernel_to_mistral",
    "qwen2": "apply_liger_kernel_to_qwen2",
    "qwen3": "apply_liger_kernel_to_qwen3",
}


def can_fuse_loss(inner) -> bool:
    head = getattr(inner, "lm_head", None)
    return (
        inner.config.model_type in FUSED_LOSS_MODEL_TYPES
        and isinstance(head, torch.nn.Linear)
        and head.bias is None
        and hasattr(inner, "base_model")
    )


def fuse_loss(inner) -> None:
    """Swap the model's lm_head for model.LMHead (a torch.nn.Linear subclass: same weight, same name; called
    without targets it is the plain projection, so generate() is unchanged)."""
    if not isinstance(inner.lm_head, LMHead):
        inner.lm_head.__class__ = LMHead


def compile_layers(inner, layer_classes) -> None:
    """torch.compile each decoder layer and the fused loss's per-chunk math (one compiled graph serves every
    layer; the embedding, DeepSpeed's hooks on the model and the head stay outside the graphs)."""
    for module in inner.modules():
        if type(module) in layer_classes:
            module.compile()
    if isinstance(inner.lm_head, LMHead):
        inner.lm_head.chunk_fn = torch.compile(_chunk_loss_and_grad_fusable, dynamic=False)


def liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def apply_liger(inner) -> None:
    """Liger Kernel's RMSNorm, SwiGLU MLP and RoPE in the model's existing modules (its own cross-entropy stays
    off: the fused loss above covers it)."""
    name = LIGER_PATCHES.get(inner.config.model_type)
    if name is None:
        raise UserError(
            f'train.liger = "on" covers {", ".join(sorted(LIGER_PATCHES))} models, not {inner.config.model_type}; '
            'set train.liger = "auto" or "off"'
        )
    import liger_kernel.transformers

    getattr(liger_kernel.transformers, name)(
        model=inner, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


def apply(model, t, device, dtype: str, compiled: bool, layer_classes) -> list[str]:
    """Put a zerotrain hf.CausalLM on the fast path the run's switches allow (compiled: train.compile resolved for
    this device and stage, as for zerotrain's GPT); returns what was applied, for the startup line.
    train.hf_fast_path = false leaves transformers' code as it is."""
    inner = model.inner
    if not t.hf_fast_path:
        return []
    applied = []
    on_gpu = device.type == "cuda"
    if t.fused_loss and can_fuse_loss(inner):
        fuse_loss(inner)
        model.fused_loss = True
        applied.append("fused loss")
    liger = uses_liger(t, on_gpu, compiled, dtype, inner.config.model_type in LIGER_PATCHES, liger_available)
    if liger:
        if not on_gpu:
            raise UserError(
                'train.liger = "on" needs a GPU (Liger Kernel is written in Triton); set train.liger = "off"'
            )
        if not liger_available():
            raise UserError('train.liger = "on" needs the liger-kernel package: pip install liger-kernel')
        apply_liger(inner)
        applied.append("Liger Kernel RMSNorm/SwiGLU/RoPE")
    if compiled:
        compile_layers(inner, layer_classes)
        applied.append("compiled decoder layers")
    return applied
