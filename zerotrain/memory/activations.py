"""Activation memory: the bytes autograd keeps per token for each block until its backward runs, the output
layer and loss around them (plain and zerotrain's fused loss), and the transient of a block's backward."""

from zerotrain.memory.shapes import ModelShape


def saved_bytes_per_token_per_layer(
    model: ModelShape, b: int, attention: str, seq_len: int, fused_layers: bool = False
) -> float:
    """Bytes autograd keeps per token per transformer block until its backward runs (read off CUDA allocator
    traces of each implementation; cf. Korthikanti et al. 2022, "Reducing activation recomputation", §4).
    fused_layers: an hf-llama model's decoder layers on the fast path (compiled, or Liger Kernel's modules)."""
    h, a = model.hidden, model.n_head
    lse = 4 * a  # SDPA (flash / memory-efficient) keeps its fp32 log-sum-exp, one per head per token
    scores = 0 if attention == "sdpa" else (b + 1) * a * seq_len  # eager: softmax output + dropout mask, a×T per token
    if model.impl == "zerotrain":
        # ln_1 out, ln_2 out (b·h each); qkv (3b·h); attention out (b·h); c_fc out and gelu out (4b·h each);
        # residual stream after attention and after the MLP (b·h each) = 16·b·h; mean and rstd of two LayerNorms (fp32).
        masks = 2 * h if model.dropout > 0 else 0  # resid dropout after attention and after the MLP, 1 byte per element
        # torch.compile'd blocks (train.compile) keep as much: the partitioner recomputes a LayerNorm output but
        # keeps a contiguous copy of the attention output (allocator traces)
        return 16 * b * h + 2 * 8 + lse + masks + scores
    if model.impl == "hf-gpt2":
        # As zerotrain's GPT-2, plus: NewGELUActivation is written in Python and keeps four 4h tensors (tanh out,
        # 0.5x, 1+tanh, product) instead of one; the DynamicCache keeps copies of k and v (2·b·h) even in training.
        masks = 2 * h if model.dropout > 0 else 0
        return (16 + 12 + 2) * b * h + 2 * 8 + lse + masks + scores
    # hf-llama. Each LlamaRMSNorm keeps its fp32 input (4h), rsqrt (4), normalised bf16 (b·h) and the weighted
    # output (b·h); q after RoPE (b·h); k and v as cached (b·kv each); attention out (b·h); the SwiGLU MLP keeps
    # gate out, up out, silu out and their product (b·ffn each).
    ffn, kv = model.ffn, model.kv_dim
    if fused_layers:
        # Compiled layers and Liger Kernel keep the same (peaks on one H100, TinyLlama shape, 2026-12-07): each
        # RMSNorm its bf16 input and fp32 rstd, not an fp32 copy; SwiGLU gate and up outputs and their product,
        # silu recomputed in backward
        return 2 * (4 + 2 * b * h) + 2 * b * h + 2 * b * kv + 3 * b * ffn + lse + scores
    return 2 * (4 * h + 4 + 2 * b * h) + 2 * b * h + 2 * b * kv + 4 * b * ffn + lse + scores


def _checkpointed_block_input(model: ModelShape, b: int) -> int:
    """With activation checkpointing a block keeps only its input (the residual stream, b·h per token)."""
    return b * model.hidden


FUSED_LOSS_CHUNK_TOKENS = 4096  # zerotrain.model.LOSS_CHUNK_TOKENS (tests/test_memory.py checks they agree)
FUSED_LOSS_CHUNK_ELEMENTS = 4096 * 50304  # zerotrain.model.LOSS_CHUNK_ELEMENTS


def fused_loss_chunk_tokens(vocab: int) -> int:
    """zerotrain.model.loss_chunk_tokens: rows of logits per chunk, fewer for larger vocabularies."""
    return min(FUSED_LOSS_CHUNK_TOKENS, max(64, FUSED_LOSS_CHUNK_ELEMENTS // vocab // 64 * 64))


def _loss_terms(model: ModelShape, b: int, s: int, fused: bool, compiled: bool) -> tuple[int, int, int]:
    """(kept, extra at the end of the forward, extra at the start of backward), bytes, around the output
    layer and the loss, for s tokens.

    Plain path (transformers, and zerotrain with train.fused_loss = false): cross-entropy in fp32; log_softmax
    keeps its fp32 output (4V per token), the bf16 logits and their fp32 copy are freed after the forward, and
    backward holds the fp32 gradient from nll_loss and the fp32 gradient of log_softmax at once (2 × 4V).
    The final norm's output and the embedding sum are kept (b·h each).

    zerotrain's fused loss (model._FusedLinearCrossEntropy): the forward walks chunks of c tokens (fewer rows for
    larger vocabularies, fused_loss_chunk_tokens), holding one chunk's logits and their gradient (2·b·c·V compiled;
    eager: the logits, one fp32 buffer the gradient is built in, and log-sum-exp's fp32 temporary, (b + 8)·c·V)
    and, over several chunks, the weight gradient summed in fp32 (4·V·h) beside one chunk's product and its fp32 copy
    ((b + 4)·V·h), while
    the final norm's output is alive; it keeps the hidden-state gradient (b·h per token) and the b·V·h weight
    gradient (one chunk: that chunk's product), which backward scales into new tensors."""
    V, h = model.vocab, model.hidden
    if not fused:
        if model.impl == "hf-llama":
            kept = s * (4 * V + 4 * h + 4 + 2 * b * h)  # final RMSNorm as in the blocks
        else:
            kept = s * (
                4 * V + 2 * b * h + 8 + (h if model.dropout > 0 else 0)
            )  # ln_f out + stats, embedding sum (+ mask)
        return kept, 0, s * 8 * V
    c = min(fused_loss_chunk_tokens(V), s)
    kept = (
        s * (2 * b * h + 8 + (h if model.dropout > 0 else 0)) + b * V * h
    )  # embedding sum, grad of hidden, ln_f stats
    # ln_f output + one chunk + fp32 accumulator + one chunk's product (b) and its fp32 copy (4); the b·V·h
    # gradient counted in `kept` is only made after the loop
    # one chunk: the weight gradient is that chunk's product, made in place of the fp32 sum
    accumulate = 0 if s <= c else 4 * V * h + (b + 4) * V * h - b * V * h  # the fp32 sum, a product and its fp32 copy
    forward = s * b * h + c * V * (2 * b if compiled else b + 8) + accumulate
    backward = s * b * h + b * V * h  # the scaled gradients backward returns
    return kept, forward, backward


def _block_backward_transient(model: ModelShape, b: int) -> int:
    """Extra bytes per token while the first block runs backward: its gradients are allocated as its saved
    activations are freed, so the net is about one MLP-intermediate gradient (b·I)."""
    return b * model.ffn
