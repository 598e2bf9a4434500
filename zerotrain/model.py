"""The GPT-2 model, all of it.

Architecture as in OpenAI's GPT-2 (Radford et al. 2019) and Hugging Face `GPT2LMHeadModel`: learned
position embeddings, pre-LayerNorm blocks, tanh-approximated GELU ("gelu_new"), tied input/output
embeddings. Parameter names are Hugging Face's (`transformer.h.0.attn.c_attn.weight`, ...) so weights map
by name; HF stores its Conv1D weights transposed relative to our nn.Linear (see HF_TRANSPOSED).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zerotrain.gpt_config import GPTConfig

IGNORE_INDEX = -100  # targets equal to this are left out of the loss (same value as Hugging Face)

# Weights stored as Conv1D (in, out) by Hugging Face GPT2 and as nn.Linear (out, in) here.
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd {cfg.n_embd} is not divisible by n_head {cfg.n_head}; pick n_head dividing it")
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.resid_dropout(self.c_proj(self.attend(self.c_attn(x))))  # (B, T, C)

    def attend(self, qkv):
        """Causal attention of the (B, T, 3C) qkv projection; returns (B, T, C) for c_proj."""
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


def masked_mean_cross_entropy(logits, targets):
    """Mean fp32 cross-entropy over targets != IGNORE_INDEX; 0 (not NaN) when a micro-batch of instruction
    data has no target at all, as the fused loss gives."""
    total = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


LOSS_CHUNK_TOKENS = 4096  # at most this many rows of logits alive at once in the fused loss
LOSS_CHUNK_ELEMENTS = 4096 * 50304  # and at most this many logits: 0.8 GB in fp32 (GPT-2's vocabulary takes 4096 rows)


def loss_chunk_tokens(vocab: int) -> int:
    """Rows of logits per chunk of the fused loss: fewer for larger vocabularies (Llama 3's 128,256 takes 1,600),
    so that the chunk's fp32 temporaries stay under a GB whatever the model."""
    return min(LOSS_CHUNK_TOKENS, max(64, LOSS_CHUNK_ELEMENTS // vocab // 64 * 64))


def _chunk_loss_and_grad_fusable(logits, targets, scale):
    """What _chunk_loss_and_grad computes, written as pure expressions so torch.compile fuses it into two passes
    over the logits (log-sum-exp, then the gradient) with no fp32 (n, Vp) tensor in memory. In-place steps
    would make the compiled code materialise each of them; eager, this form holds three fp32 temporaries."""
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    logits_f = logits.float()
    lse = torch.logsumexp(logits_f, dim=-1)  # (n,)
    loss = torch.where(valid, lse - logits_f.gather(1, safe[:, None]).squeeze(1), 0.0).sum()
    one_hot = torch.arange(logits.size(1), device=logits.device)[None, :] == safe[:, None]  # (n, Vp)
    grad = (torch.exp(logits_f - lse[:, None]) - one_hot.float()) * torch.where(valid, scale, 0.0)[:, None]
    return loss, grad.to(logits.dtype)


def _chunk_loss_and_grad(logits, targets, scale):
    """Cross-entropy summed over one chunk, and d(loss · scale)/d(logits) in the logits' dtype, from one fp32
    softmax. logits (n, Vp), targets (n,), scale = 1 / (valid targets in the batch). Eager: the gradient is
    built in place in one fp32 buffer (the logits, that buffer and the rounded result are alive)."""
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    grad = logits.float()
    lse = torch.logsumexp(grad, dim=-1)  # (n,)
    loss = torch.where(valid, lse - grad.gather(1, safe[:, None]).squeeze(1), 0.0).sum()
    grad.sub_(lse[:, None]).exp_()  # softmax
    grad.scatter_add_(1, safe[:, None], torch.full((grad.size(0), 1), -1.0, device=grad.device))  # softmax - one_hot
    grad.mul_(torch.where(valid, scale, 0.0)[:, None])
    # rounded to the compute dtype, as autograd rounds d(logits) on the plain path
    return loss, grad.to(logits.dtype)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of (hidden @ weight.T) against targets without materialising the (tokens, Vp) logits:
    chunk by chunk, forward computes the loss and, when gradients are wanted, the gradients of hidden and
    weight too (the softmax is at hand then), which backward only scales. The plain path keeps the fp32
    log-softmax output and, in backward, two fp32 gradients of the logits' size (3 × 4·V bytes per token,
    docs/memory.md); this one keeps the hidden-state gradient (b·h per token) and the weight gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_fn, grad_enabled, matmuls):
        logits_of, input_grad, weight_grad = matmuls
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        scale = 1.0 / n_valid.float()
        want_grad = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        chunk = loss_chunk_tokens(weight.size(0))
        one_chunk = hidden.size(0) <= chunk  # then the weight gradient is one product: no fp32 sum (4·V·h bytes) needed
        grad_hidden = torch.empty_like(hidden) if want_grad else None
        grad_weight = None
        if want_grad and not one_chunk:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk):
            h = hidden[start : start + chunk]
            loss, grad = chunk_fn(logits_of(h, weight), targets[start : start + chunk], scale)
            total += loss
            if want_grad:
                grad_hidden[start : start + chunk] = input_grad(grad, weight)
                if one_chunk:
                    grad_weight = weight_grad(grad, h)
                else:
                    grad_weight += weight_grad(grad, h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if want_grad else None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


# The fused loss's three matmuls: logits = h @ W^T, d(hidden) = g @ W, d(W) = g^T @ h (zerotrain.kernels may swap them).
TORCH_MATMULS = ((lambda h, w: h @ w.t()), torch.matmul, (lambda g, h: g.t() @ h))


class LMHead(nn.Linear):
    """The output projection. With targets it returns the loss through the fused, chunked cross-entropy, so
    ZeRO-3 still gathers the weight through this module's hooks."""

    chunk_fn = staticmethod(_chunk_loss_and_grad)  # GPT.compile_blocks swaps in a compiled version
    fused_loss = True  # False: the textbook path (full fp32 logits, F.cross_entropy), kept for comparison
    matmuls = TORCH_MATMULS

    def forward(self, x, targets=None):
        if targets is None:
            return super().forward(x)
        if not self.fused_loss:
            logits = super().forward(x)
            return masked_mean_cross_entropy(logits, targets)
        # evaluation (no_grad) computes the loss only; Function.forward always runs with grad mode off, so ask here
        return _FusedLinearCrossEntropy.apply(
            x.reshape(-1, x.size(-1)),
            self.weight,
            targets.reshape(-1),
            self.chunk_fn,
            torch.is_grad_enabled(),
            self.matmuls,
        )


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.gradient_checkpointing = False  # recompute each block in backward instead of storing its activations
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd),
            )
        )
        self.lm_head = LMHead(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2 paper: residual projections scaled by 1/sqrt(N) with N the number of residual layers (2 per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def compile_blocks(self) -> None:
        """torch.compile each transformer block (fusing LayerNorm, GELU, residual adds and dropout around the
        matmuls) and the per-chunk loss math. Per block, not the whole model, so DeepSpeed's hooks on the
        model stay outside the compiled graphs and one compiled graph serves every layer. Not under ZeRO-3:
        there compiled blocks train on wrong gradients (docs/performance.md). Inductor's coordinate-descent tuning
        picks the fused kernels' block sizes by timing them, for a longer first step (what it gains:
        docs/performance.md)."""
        import torch._inductor.config

        torch._inductor.config.coordinate_descent_tuning = True
        for block in self.transformer.h:
            block.compile()
        self.lm_head.chunk_fn = torch.compile(_chunk_loss_and_grad_fusable, dynamic=False)

    def num_params(self) -> int:
        """Unique parameters (the tied embedding counted once), as in the MFU formula."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        """idx (B, T) token ids. With targets (B, T): the mean cross-entropy over targets != IGNORE_INDEX.
        Without: logits (B, T, padded_vocab_size)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x)  # (B, T, Vp)
        # The loss is taken in fp32 whatever the compute dtype (bf16 log-softmax over 50k classes loses digits),
        # a chunk of tokens at a time: the (B·T, Vp) fp32 logits never exist at once.
        return self.lm_head(x, targets)

    @torch.no_grad()
    def generate(
        self,
        idx,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ):
        """Append max_new_tokens sampled tokens to idx (B, T). temperature 0 means greedy.
        Padding entries of the vocabulary (>= vocab_size) are never produced."""
        return sample(
            self, idx, self.config.block_size, self.config.vocab_size, max_new_tokens, temperature, top_k, generator
        )


@torch.no_grad()
def sample(
    model,
    idx,
    context: int,
    vocab_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
):
    """Append max_new_tokens tokens to idx (B, T), each drawn from model(last `context` tokens)'s logits over the
    first vocab_size entries: greedy at temperature 0, else softmax(logits / temperature) over the top_k."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context:])[:, -1, :vocab_size].float()  # (B, V)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
        idx = torch.cat([idx, next_id], dim=1)
    return idx


def flops_per_token(cfg: GPTConfig, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward+backward plus 12·L·H·Q·T for attention
    (PaLM, Chowdhery et al. 2022, appendix B), N the unique parameter count."""
    head_dim = cfg.n_embd // cfg.n_head
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_head * head_dim * seq_len


def to_hf_state_dict(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face GPT2LMHeadModel names and layouts; the padded vocabulary rows are
    dropped so the export's vocabulary equals the tokenizer's."""
    out = {}
    for name, t in state.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        if name.endswith(HF_TRANSPOSED):
            t = t.t()
        if name == "transformer.wte.weight":
            t = t[:vocab_size]
        out[name] = t.contiguous()
    return out


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2 names and layouts -> ours, padding the vocabulary back to padded_vocab_size."""
    out = {}
    for name, t in hf_state.items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias") or name == "lm_head.weight":
            continue  # HF's causal-mask buffers, and the tied head
        if name.endswith(HF_TRANSPOSED):
            t = t.t()
        if name == "transformer.wte.weight" and t.shape[0] < cfg.padded_vocab_size:
            pad = torch.zeros(cfg.padded_vocab_size - t.shape[0], t.shape[1], dtype=t.dtype)
            t = torch.cat([t, pad])
        out[name] = t.contiguous()
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out
