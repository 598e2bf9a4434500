"""The memory planner: per-GPU bytes of a ZeRO training run (or of inference), term by term. Pure arithmetic.

No torch or deepspeed import: `zerotrain plan` answers in milliseconds on a laptop. Every term is derived
from what PyTorch and DeepSpeed 0.19 allocate — which tensors autograd saves for backward, what each ZeRO
optimizer keeps resident (deepspeed/runtime/zero/stage_1_and_2.py, stage3.py, fp16/unfused_optimizer.py) —
and was checked against CUDA allocator traces of real runs (benchmarks/memory_probe.py --snapshot).
docs/memory.md gives each formula with its source and the measured-vs-predicted table.

Notation: N parameters, W data-parallel ranks, b bytes per element of the compute dtype (2 for bf16/fp16,
4 for fp32), s = micro_batch × seq_len tokens per micro-batch, h hidden size, L layers, V vocabulary.
"""

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from zerotrain import UserError

GiB = 2**30
MiB = 2**20

# ------------------------------------------------------------------------------------------------ models

# GPT-2 family (Radford et al. 2019, table 2) and a small CPU demo model, as zerotrain's own model builds them.
GPT2_PRESETS = {
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280, "block_size": 1024},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024},
}
GPT2_VOCAB = 50257
VOCAB_MULTIPLE = 64  # zerotrain pads its embedding to a multiple of 64 (model.py)

# Llama-style shapes, planned as transformers' LlamaForCausalLM / MistralForCausalLM run them (their config.json values).
LLAMA_PRESETS = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
    "tinyllama-1.1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 2048,
    },
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
    "mistral-7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
    },
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
    },
}
LLAMA_STYLE = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "smollm",
    "olmo",
)  # config.json model_type prefixes planned as Llama


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a causal LM. `impl` says whose code runs it, because that decides
    which tensors autograd keeps: "zerotrain" (zerotrain's GPT-2), "hf-gpt2" (transformers GPT2LMHeadModel)
    or "hf-llama" (transformers LlamaForCausalLM and its Mistral/Qwen2 relatives), all with SDPA attention."""

    name: str
    impl: str
    n_layer: int
    n_head: int
    hidden: int
    vocab: int  # rows of the embedding (zerotrain: padded to a multiple of 64)
    n_kv_head: int = 0  # 0: same as n_head
    intermediate: int = 0  # 0: 4 × hidden (GPT-2)
    max_positions: int = 1024
    tied_embeddings: bool = True
    dropout: float = 0.0  # GPT-2 family: residual/embedding dropout probability (stores a 1-byte mask per element)
    qkv_bias: bool = False  # Llama family: Qwen2 has biases on q/k/v

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head

    @property
    def ffn(self) -> int:
        return self.intermediate or 4 * self.hidden

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def n_params(self) -> int:
        """Unique parameters (a tied embedding counted once)."""
        h, L, V = self.hidden, self.n_layer, self.vocab
        if self.impl in ("zerotrain", "hf-gpt2"):
            # per block: c_attn 3h²+3h, c_proj h²+h, c_fc 4h²+4h, mlp c_proj 4h²+h, two LayerNorms 4h
            block = 12 * h * h + 13 * h
            return V * h + self.max_positions * h + L * block + 2 * h + (0 if self.tied_embeddings else V * h)
        attn = h * h + 2 * h * self.kv_dim + h * h + ((h + 2 * self.kv_dim) if self.qkv_bias else 0)
        block = attn + 3 * h * self.ffn + 2 * h  # q,k,v,o; gate, up, down; two RMSNorms
        return V * h + L * block + h + (0 if self.tied_embeddings else V * h)

    @property
    def largest_param(self) -> int:
        """Elements of the largest single parameter tensor (the embedding, or an MLP matrix)."""
        return max(self.vocab * self.hidden, self.hidden * self.ffn)

    def small_params(self, threshold: int = 100_000) -> int:
        """Elements in the tensors ZeRO-3 keeps whole on every rank: those with fewer elements than
        stage3_param_persistence_threshold (1e5 by default) — biases and norm weights."""
        h = self.hidden
        per_layer: tuple[int, ...]
        final: tuple[int, ...]
        if self.impl in ("zerotrain", "hf-gpt2"):
            per_layer, final = (
                (h, h, 3 * h, h, h, h, 4 * h, h),
                (h, h),
            )  # ln_1 w+b, c_attn b, c_proj b, ln_2 w+b, c_fc b, c_proj b
        else:
            per_layer = (h, h) + ((h, self.kv_dim, self.kv_dim) if self.qkv_bias else ())
            final = (h,)
        return self.n_layer * sum(n for n in per_layer if n < threshold) + sum(n for n in final if n < threshold)

    def describe(self) -> str:
        kv = f", {self.kv_heads} kv heads" if self.kv_heads != self.n_head else ""
        return (
            f"{self.name}: {self.n_params / 1e6:,.1f}M parameters, {self.n_layer} layers, {self.n_head} heads{kv}, "
            f"hidden {self.hidden}, vocab {self.vocab} ({self.impl})"
        )


def gpt2_shape(preset: str, **overrides) -> ModelShape:
    if preset not in GPT2_PRESETS:
        raise UserError(
            f"unknown model {preset!r}; choose a preset ({', '.join([*GPT2_PRESETS, *LLAMA_PRESETS])}), "
            "hf:DIR, a config.json, or dims:LAYERS,HEADS,HIDDEN[,VOCAB]"
        )
    p = {**GPT2_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    vocab = overrides.get("vocab_size") or GPT2_VOCAB
    return ModelShape(
        name=preset,
        impl="zerotrain",
        n_layer=p["n_layer"],
        n_head=p["n_head"],
        hidden=p["n_embd"],
        vocab=math.ceil(vocab / VOCAB_MULTIPLE) * VOCAB_MULTIPLE,
        max_positions=p["block_size"],
        dropout=overrides.get("dropout") or 0.0,
    )


def shape_from_hf_config(cfg: dict, name: str) -> ModelShape:
    """A transformers config.json (GPT-2 or Llama-style) -> ModelShape."""
    model_type = str(cfg.get("model_type", "")).lower()
    try:
        if model_type == "gpt2":
            return ModelShape(
                name=name,
                impl="hf-gpt2",
                n_layer=int(cfg["n_layer"]),
                n_head=int(cfg["n_head"]),
                hidden=int(cfg["n_embd"]),
                vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("n_positions", 1024)),
                tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                dropout=float(cfg.get("resid_pdrop", 0.1)),
            )
        if model_type.startswith(LLAMA_STYLE):
            return ModelShape(
                name=name,
                impl="hf-llama",
                n_layer=int(cfg["num_hidden_layers"]),
                n_head=int(cfg["num_attention_heads"]),
                n_kv_head=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
                hidden=int(cfg["hidden_size"]),
                intermediate=int(cfg["intermediate_size"]),
                vocab=int(cfg["vocab_size"]),
                max_positions=int(cfg.get("max_position_embeddings", 2048)),
                tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=bool(cfg.get("attention_bias", model_type.startswith("qwen2"))),
            )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{name}: config.json lacks a usable {e} for a {model_type} model; check the file is a transformers config"
        ) from None
    raise UserError(
        f"{name}: model_type {cfg.get('model_type')!r} is not supported; the planner knows gpt2 and "
        f"Llama-style models ({', '.join(LLAMA_STYLE)})"
    )


def resolve_model(spec: str) -> ModelShape:
    """`gpt2-xl`, `llama3-8b`, `hf:DIR`, `DIR` or `path/config.json` (transformers), or `dims:L,HEADS,HIDDEN[,VOCAB]`."""
    if not spec.strip():
        raise UserError(
            "the model name is empty; give a preset such as gpt2-xl or llama3-8b, hf:DIR, or dims:L,HEADS,HIDDEN"
        )
    if spec in GPT2_PRESETS:
        return gpt2_shape(spec)
    if spec in LLAMA_PRESETS:
        return shape_from_hf_config({"model_type": "llama", **LLAMA_PRESETS[spec]}, spec)
    if spec.startswith("dims:"):
        try:
            nums = [int(x) for x in spec[5:].split(",")]
            layers, heads, hidden = nums[:3]
            vocab = nums[3] if len(nums) > 3 else GPT2_VOCAB
        except ValueError:
            raise UserError(
                f"--model {spec}: write dims:LAYERS,HEADS,HIDDEN[,VOCAB] with integers, e.g. dims:24,16,2048"
            ) from None
        if min(layers, heads, hidden, vocab) <= 0 or hidden % heads:
            raise UserError(
                f"--model {spec}: layers, heads, hidden and vocab must be positive, and hidden divisible by heads"
            )
        return ModelShape(
            name=spec,
            impl="zerotrain",
            n_layer=layers,
            n_head=heads,
            hidden=hidden,
            vocab=math.ceil(vocab / VOCAB_MULTIPLE) * VOCAB_MULTIPLE,
        )
    path = Path(spec.removeprefix("hf:"))
    if spec.startswith("hf:") or path.exists() or spec.endswith(".json"):
        cfg_path = path / "config.json" if path.is_dir() else path
        if not cfg_path.is_file():
            raise UserError(
                f"{cfg_path} not found; point --model at a Hugging Face model directory holding config.json, or at the file"
            )
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{cfg_path} is not valid JSON ({e}); re-download or re-save the model's config.json"
            ) from None
        if not isinstance(cfg, dict):
            raise UserError(f"{cfg_path} must hold a JSON object (a transformers config)")
        return shape_from_hf_config(cfg, str(path))
    return gpt2_shape(spec)  # raises with the list of presets


# ------------------------------------------------------------------------------------------------ run

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd": 4, "sgd-nomomentum": 0}  # fp32 states per parameter
CUBLAS_WORKSPACE = (
    32 * MiB
)  # per thread that runs matmuls on Hopper (forward thread + autograd thread); CUDA_BLAS workspace
CUDA_CONTEXT = (
    600 * MiB
)  # CUDA context + cuBLAS/cuDNN kernels outside the caching allocator (nvidia-smi minus reserved)
NCCL_BUFFERS = 400 * MiB  # NCCL communicator buffers for the data-parallel group (only with more than one GPU)
PROCESS_HOST_RAM = 3 * GiB  # a rank's Python + torch + CUDA libraries in host memory


@dataclass(frozen=True)
class RunShape:
    """A training run as the planner sees it. DeepSpeed's buffer settings carry DeepSpeed 0.19's defaults."""

    gpus_per_node: int = 1
    nodes: int = 1
    micro_batch: int = 1
    seq_len: int = 1024
    grad_accum: int = 1
    dtype: str = "bf16"
    grad_accum_dtype: str = "auto"  # auto: DeepSpeed's default, the compute dtype; fp32: data_types.grad_accum_dtype
    optimizer: str = "adamw"
    zero_stage: int = 2
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_params: str = "none"  # none | cpu | nvme (stage 3 only)
    activation_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa (flash/memory-efficient kernels: no T×T scores kept) | eager (scores kept)
    compile: str = "auto"  # zerotrain models: train.compile (auto, blocks: compiled blocks on GPUs below stage 3)
    fused_loss: bool = True  # zerotrain models: train.fused_loss
    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    overlap_comm: bool | None = None  # None: DeepSpeed's default (on at stage 3)
    contiguous_gradients: bool = True
    prefetch_bucket_size: int = 50_000_000
    max_live_parameters: int = 1_000_000_000
    param_persistence_threshold: int = 100_000
    sub_group_size: int = 1_000_000_000

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    def describe(self) -> str:
        off = "".join(
            [
                f", offload optimizer {self.offload_optimizer}" if self.offload_optimizer != "none" else "",
                f", offload params {self.offload_params}" if self.offload_params != "none" else "",
            ]
        )
        return (
            f"ZeRO-{self.zero_stage}{off}, {self.world} GPU{'s' if self.world > 1 else ''}, micro-batch {self.micro_batch} × "
            f"{self.seq_len} tokens, accumulation {self.grad_accum}{' in fp32' if fp32_grad_accum(self) else ''}, {self.dtype}"
            f"{', activation checkpointing' if self.activation_checkpointing else ''}"
        )


def fp32_grad_accum(run: RunShape) -> bool:
    """Whether DeepSpeed sums this run's gradients in fp32 apart from its compute dtype: asked for, and where zerotrain
    trains with it (bf16 at ZeRO 1-3 without an offloaded optimizer; elsewhere the planner plans DeepSpeed's default)."""
    return (
        run.grad_accum_dtype == "fp32"
        and run.dtype == "bf16"
        and run.zero_stage >= 1
        and run.offload_optimizer == "none"
    )


def check_run(run: RunShape, model: ModelShape | None = None) -> None:
    """Every problem with a run, in one UserError."""
    problems = []
    for name in ("gpus_per_node", "nodes", "micro_batch", "seq_len", "grad_accum"):
        value = getattr(run, name)
        if not isinstance(value, int) or value < 1:
            problems.append(f"{name.replace('_', '-')} must be a whole number ≥ 1 (got {value!r})")
    if run.zero_stage not in (0, 1, 2, 3):
        problems.append(f"ZeRO stage {run.zero_stage!r} does not exist; use 0, 1, 2 or 3")
    if run.dtype not in DTYPE_BYTES:
        problems.append(f"dtype {run.dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    if run.optimizer not in OPTIMIZER_STATE_BYTES:
        problems.append(f"optimizer {run.optimizer!r} is not one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    if run.grad_accum_dtype not in ("auto", "fp32"):
        problems.append(f"gradient accumulation dtype {run.grad_accum_dtype!r} must be auto or fp32")
    for name in ("offload_optimizer", "offload_params"):
        if getattr(run, name) not in ("none", "cpu", "nvme"):
            problems.append(f"{name.replace('_', '-')} {getattr(run, name)!r} must be none, cpu or nvme")
    if run.offload_params != "none" and run.zero_stage != 3:
        problems.append("offloading parameters needs ZeRO stage 3; use --zero 3 or drop --offload-params")
    if run.offload_optimizer != "none" and run.zero_stage == 0:
        problems.append("offloading the optimizer needs ZeRO stage 1, 2 or 3; raise --zero or drop --offload-optimizer")
    if run.attention not in ("sdpa", "eager"):
        problems.append(f"attention {run.attention!r} must be sdpa or eager")
    for name in (
        "reduce_bucket_size",
        "allgather_bucket_size",
        "prefetch_bucket_size",
        "max_live_parameters",
        "sub_group_size",
    ):
        if not isinstance(getattr(run, name), int) or getattr(run, name) < 1:
            problems.append(f"{name} must be a positive number of elements")
    if (
        model is not None
        and isinstance(run.seq_len, int)
        and run.seq_len > model.max_positions
        and model.impl != "hf-llama"
    ):
        problems.append(
            f"seq-len {run.seq_len} exceeds {model.name}'s {model.max_positions} positions; use --seq-len ≤ {model.max_positions}"
        )
    if problems:
        raise UserError("; ".join(problems))


# ------------------------------------------------------------------------------------------------ activations


def saved_bytes_per_token_per_layer(model: ModelShape, b: int, attention: str, seq_len: int) -> float:
    """Bytes autograd keeps per token per transformer block until its backward runs (read off CUDA allocator
    traces of each implementation; cf. Korthikanti et al. 2022, "Reducing activation recomputation", §4)."""
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
    return 2 * (4 * h + 4 + 2 * b * h) + 2 * b * h + 2 * b * kv + 4 * b * ffn + lse + scores


def _checkpointed_block_input(model: ModelShape, b: int) -> int:
    """With activation checkpointing a block keeps only its input (the residual stream, b·h per token)."""
    return b * model.hidden


FUSED_LOSS_CHUNK_TOKENS = 4096  # zerotrain.model.LOSS_CHUNK_TOKENS (tests/test_memory.py checks they agree)


def _loss_terms(model: ModelShape, b: int, s: int, fused: bool, compiled: bool) -> tuple[int, int, int]:
    """(kept, extra at the end of the forward, extra at the start of backward), bytes, around the output
    layer and the loss, for s tokens.

    Plain path (transformers, and zerotrain with train.fused_loss = false): cross-entropy in fp32; log_softmax
    keeps its fp32 output (4V per token), the bf16 logits and their fp32 copy are freed after the forward, and
    backward holds the fp32 gradient from nll_loss and the fp32 gradient of log_softmax at once (2 × 4V).
    The final norm's output and the embedding sum are kept (b·h each).

    zerotrain's fused loss (model._FusedLinearCrossEntropy): the forward walks chunks of c tokens, holding one
    chunk's logits and their gradient (2·b·c·V compiled; eager: the logits, one fp32 buffer the gradient is built
    in, and log-sum-exp's fp32 temporary, (b + 8)·c·V), the weight
    gradient accumulating in fp32 (4·V·h) and one chunk's contribution to it ((b + 4)·V·h), while the final
    norm's output is alive; it keeps the hidden-state gradient (b·h per token) and the b·V·h weight gradient,
    which backward scales into new tensors."""
    V, h = model.vocab, model.hidden
    if not fused:
        if model.impl == "hf-llama":
            kept = s * (4 * V + 4 * h + 4 + 2 * b * h)  # final RMSNorm as in the blocks
        else:
            kept = s * (
                4 * V + 2 * b * h + 8 + (h if model.dropout > 0 else 0)
            )  # ln_f out + stats, embedding sum (+ mask)
        return kept, 0, s * 8 * V
    c = min(FUSED_LOSS_CHUNK_TOKENS, s)
    kept = (
        s * (2 * b * h + 8 + (h if model.dropout > 0 else 0)) + b * V * h
    )  # embedding sum, grad of hidden, ln_f stats
    # ln_f output + one chunk + fp32 accumulator + one chunk's product (b) and its fp32 copy (4); the b·V·h
    # gradient counted in `kept` is only made after the loop
    forward = s * b * h + c * V * (2 * b if compiled else b + 8) + 4 * V * h + (b + 4) * V * h - b * V * h
    backward = s * b * h + b * V * h  # the scaled gradients backward returns
    return kept, forward, backward


def _block_backward_transient(model: ModelShape, b: int) -> int:
    """Extra bytes per token while the first block runs backward: its gradients are allocated as its saved
    activations are freed, so the net is about one MLP-intermediate gradient (b·I)."""
    return b * model.ffn


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class MemoryPlan:
    model: ModelShape
    run: RunShape
    # per_gpu: the terms alive at the peak (params, grads, optimizer, activations, buffers; they add up to
    # peak_allocated), overhead outside the allocator, peak_allocated, peak_reserved (bytes)
    per_gpu: dict[str, int]
    peak_phase: str  # when the peak happens: "init", "backward", "optimizer step"
    host_ram_per_node: int
    nvme_bytes: int
    checkpoint_bytes: int
    # phases: phase -> its terms (bytes): what is alive at each moment
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_bytes_needed(self) -> int:
        """What the GPU must have free: the allocator's reserved peak plus the CUDA context and NCCL buffers."""
        return self.per_gpu["peak_reserved"] + self.per_gpu["overhead"]

    def fits(self, gpu_memory: int, headroom: float = 0.0) -> bool:
        return self.gpu_bytes_needed <= gpu_memory * (1 - headroom)

    def to_json(self, gpu_memory: int | None = None) -> dict:
        return {
            "zero_stage": self.run.zero_stage,
            "offload_optimizer": self.run.offload_optimizer,
            "offload_params": self.run.offload_params,
            "micro_batch": self.run.micro_batch,
            "grad_accum": self.run.grad_accum,
            "seq_len": self.run.seq_len,
            "dtype": self.run.dtype,
            "grad_accum_dtype": "fp32" if fp32_grad_accum(self.run) else self.run.dtype,
            "notes": list(self.notes),
            "activation_checkpointing": self.run.activation_checkpointing,
            "gpus": self.run.world,
            "per_gpu": {k: int(v) for k, v in self.per_gpu.items()},
            "peak_phase": self.peak_phase,
            "phases": {name: {k: int(v) for k, v in terms.items()} for name, terms in self.phases.items()},
            "host_ram_per_node": int(self.host_ram_per_node),
            "nvme_bytes": int(self.nvme_bytes),
            "checkpoint_bytes": int(self.checkpoint_bytes),
            "fits": None if gpu_memory is None else self.fits(gpu_memory),
        }


def plan(model: ModelShape, run: RunShape) -> MemoryPlan:
    """Per-GPU memory of one training configuration."""
    check_run(run, model)
    N, W, b, s = model.n_params, run.world, DTYPE_BYTES[run.dtype], run.tokens
    z, L = run.zero_stage, model.n_layer
    opt_bytes = OPTIMIZER_STATE_BYTES[run.optimizer]
    offload_opt = run.offload_optimizer != "none"
    offload_par = run.offload_params != "none"
    notes = []
    # gradients summed in fp32 (data_types.grad_accum_dtype): ZeRO-2/3 keep their gradient partition in fp32; ZeRO-1 runs
    # DeepSpeed's BF16_Optimizer, which keeps an fp32 gradient of every parameter beside the bf16 ones (bf16_optimizer.py)
    fp32_accum = fp32_grad_accum(run)
    bf16_optimizer = fp32_accum and z == 1
    g = 4 if fp32_accum else b  # bytes per element of the accumulated gradients
    if run.grad_accum_dtype == "fp32" and not fp32_accum and b < 4:
        notes.append(
            f"ZeRO-0 and offloaded-optimizer runs sum gradients in {run.dtype}: zerotrain sums them in fp32 at ZeRO 1-3 "
            "with the optimizer on the GPU, in bf16 training only"
        )

    # --- parameters: the compute-dtype weights each GPU holds
    if z < 3:
        params: float = b * N  # bytes; the per-rank shares below (N/W) are fractional
    else:
        # stage3.py: each rank keeps its 1/W partition (defragmented into one flat buffer) and small tensors whole;
        # forward/backward gather the rest, releasing what will not be reused within max_live_parameters.
        persistent = model.small_params(run.param_persistence_threshold)
        resident = 0 if offload_par else b * (N - persistent) / W
        gathered = b * min(N - persistent, run.max_live_parameters + run.prefetch_bucket_size + model.largest_param)
        if W == 1 and not offload_par:
            gathered = 0  # one rank: the partition is the whole tensor and "gathering" is a view (_no_gather_coalesced)
        params = resident + b * persistent + gathered

    # --- optimizer: fp32 master weights + states (stage 0 under bf16/fp16: DeepSpeed's FP16_UnfusedOptimizer keeps
    # a full fp32 copy; stages 1-3 keep a 1/W fp32 partition, even in fp32, see stage_1_and_2.py single_partition_of_fp32_groups)
    master = 0 if (z == 0 and b == 4) else 4
    shard = 1 if z == 0 else W
    optimizer = 0 if offload_opt else (master + opt_bytes) * N / shard

    # --- gradients: accumulated over micro-batches, reduce buffers during backward, and at the optimizer step
    if z == 3:
        # stage3.py preallocates the gradient partition (b·N/W) and the reduce bucket (reduce_bucket_size elements)
        grads_backward = g * N / W + b * run.reduce_bucket_size if not offload_opt else b * run.reduce_bucket_size
        reduce_buffers = 0
        grads_step = grads_backward
    elif bf16_optimizer:
        # bf16_optimizer.py: the fp32 gradients of all N parameters from the start, the bf16 ones from the first backward
        # on (zeroed between steps, not freed); no reduce buckets: the fp32 gradients are all-reduced once per step
        grads_backward = (4 + b) * N
        reduce_buffers = 0
        grads_step = grads_backward
    else:
        accumulated = {0: b * N, 1: b * N, 2: g * N / W}[z]  # gradients summed over micro-batches so far
        grads_backward = accumulated if run.grad_accum > 1 else 0
        # From the first gradient hook of a backward, stages 1-2 hold reduce buffers: with contiguous_gradients
        # reduce_bucket_size elements, two with overlap_comm (stage_1_and_2.py setup_buckets; DeepSpeed's
        # default is off below stage 3); without it, a flattened copy of up to a bucket of gradients.
        if z == 0:
            reduce_buffers = 0
        elif run.contiguous_gradients:
            reduce_buffers = b * run.reduce_bucket_size * (2 if run.overlap_comm else 1)
        else:
            reduce_buffers = b * min(run.reduce_bucket_size, N)
        # at the step, stages 1-2 hold the reduced gradient partition (param.grad freed after the copy)
        grads_step = (b * N if z == 0 else g * N / W) + (reduce_buffers if run.contiguous_gradients else 0)
    buffers = 0
    if offload_opt and z in (1, 2):
        buffers += b * model.largest_param  # stage_1_and_2.py temp_grad_buffer_for_gpu_offload
    buffers += 2 * CUBLAS_WORKSPACE

    # --- activations kept for backward, and what comes on top at three moments: the end of the forward (the
    # fused loss's chunk loop), the start of backward (the plain loss's fp32 gradients) and the first block's
    # backward (reduce buffers allocated, the loss's scaled gradients alive)
    compiled = (
        model.impl == "zerotrain" and run.compile in ("blocks", "auto") and z < 3
    )  # train refuses blocks at stage 3
    fused = model.impl == "zerotrain" and run.fused_loss
    kept_loss, loss_forward, loss_backward = _loss_terms(model, b, s, fused, compiled)
    per_layer = saved_bytes_per_token_per_layer(model, b, run.attention, run.seq_len)
    block_backward: float = s * _block_backward_transient(model, b)
    if run.activation_checkpointing:
        kept: float = s * L * _checkpointed_block_input(model, b) + kept_loss
        block_backward += s * per_layer  # the last block is recomputed before it runs backward
    else:
        kept = s * L * per_layer + kept_loss
    # By the first block's backward the plain path has freed its loss gradients and its fp32 log-softmax output;
    # the fused path has swapped its saved gradients for the scaled ones backward returned (same size).
    after_loss = (0 if fused else -s * 4 * model.vocab) + block_backward
    # --- phases: the terms alive at each moment; the peak is the largest sum, and its terms are reported
    # optimizer step: gradients complete; stage 0 bf16/fp16 makes fp32 copies of them (unfused_optimizer.py);
    # stages 1-2 flatten the partition (flatten_dense_tensors_aligned, b·N/W) and convert it (.to(fp32), 4·N/W)
    # with both alive (stage_1_and_2.py step); stage 3 builds fp32 gradients one sub-group at a time.
    if z == 0:
        step_extra: float = 4 * N if b < 4 else 0
    elif offload_opt:
        step_extra = 0
    elif bf16_optimizer:
        # engine.py allreduce_bucket: a parameter group's flat fp32 gradients (a bucket of one tensor: flattening is a
        # view) cast to bf16 for the all-reduce; the largest group holds every weight matrix but the embeddings
        largest_group = max(N - model.vocab * model.hidden - model.small_params(), model.vocab * model.hidden)
        step_extra = b * largest_group
    elif fp32_accum and z < 3:
        step_extra = 4 * N / W  # stage_1_and_2.py _build_compact_grad_partition_buffer: the partition, already in fp32
    else:
        step_extra = (4 + b) * N / W if z < 3 else 4 * min(N / W, run.sub_group_size)
    if model.impl == "zerotrain":
        # train.py builds the fp32 model on the GPU (whole on every rank, also at stage 3: no zero.Init yet),
        # then DeepSpeed casts it tensor by tensor
        init: float = 4 * N + b * model.largest_param
    else:
        # from_pretrained on the CPU, cast there, then moved (stage 3: partitioned by zero.Init as it loads)
        init = b * N if z < 3 else b * N / W + b * model.largest_param
    states: dict[str, float] = {"params": params, "optimizer": optimizer, "buffers": buffers}
    phases: dict[str, dict[str, float]] = {
        "forward end": {**states, "grads": grads_backward, "activations": kept + loss_forward},
        "loss backward": {**states, "grads": grads_backward, "activations": kept + loss_backward},
        "backward": {**states, "grads": grads_backward + reduce_buffers, "activations": kept + after_loss},
        "optimizer step": {**states, "grads": grads_step + step_extra, "activations": 0},
        "init": {"params": init, "optimizer": 0, "buffers": 0, "grads": 0, "activations": 0},
    }
    peak_phase = max(phases, key=lambda name: sum(phases[name].values()))
    terms = phases[peak_phase]
    peak_allocated = sum(terms.values())
    # The caching allocator keeps freed blocks for reuse; blocks freed between phases cannot always be merged
    # for a larger request. Measured reserved/allocated on H200 runs: docs/memory.md.
    peak_reserved = peak_allocated * 1.15 + 2 * GiB
    overhead = CUDA_CONTEXT + (NCCL_BUFFERS if W > 1 else 0)

    # --- host RAM per node: each rank's process, pinned offload buffers, and loading a checkpoint shard
    ranks = run.gpus_per_node
    host_per_rank: float = PROCESS_HOST_RAM
    if run.offload_optimizer == "cpu":
        host_per_rank += (4 + opt_bytes + 4) * N / W  # fp32 master, states and fp32 gradient partition (pinned)
    if run.offload_params == "cpu":
        host_per_rank += b * N / W + b * run.prefetch_bucket_size
    load_shard = (b * N if z < 3 else b * N / W) + (4 + opt_bytes) * N / shard  # torch.load of model + optimizer shard
    host_ram = ranks * (host_per_rank + load_shard)
    nvme = 0
    if run.offload_optimizer == "nvme":
        nvme += (4 + opt_bytes + 4) * N
    if run.offload_params == "nvme":
        nvme += b * N
    checkpoint = b * N + (4 + opt_bytes) * N  # weights in the compute dtype + fp32 master and optimizer states

    if run.attention == "eager":
        notes.append("eager attention keeps the T×T attention probabilities of every layer; SDPA does not")
    per_gpu = {**terms, "overhead": overhead, "peak_allocated": peak_allocated, "peak_reserved": peak_reserved}
    return MemoryPlan(
        model,
        run,
        {k: int(v) for k, v in per_gpu.items()},
        peak_phase,
        int(host_ram),
        int(nvme),
        int(checkpoint),
        {name: {k: int(v) for k, v in t.items()} for name, t in phases.items()},
        notes,
    )


def variants(run: RunShape, stages: list[int], offload: bool = True) -> list[RunShape]:
    """The configurations `zerotrain plan` compares: each stage, and the offload variants that apply."""
    out = []
    for z in stages:
        out.append(replace(run, zero_stage=z, offload_optimizer="none", offload_params="none"))
        if offload and z >= 1:
            out.append(replace(run, zero_stage=z, offload_optimizer="cpu", offload_params="none"))
        if offload and z == 3:
            out.append(replace(run, zero_stage=z, offload_optimizer="cpu", offload_params="cpu"))
    return out


# Stages from fastest to slowest under DeepSpeed 0.19 with bf16: ZeRO-1 and ZeRO-2 beat ZeRO-0, whose bf16 path
# runs DeepSpeed's per-tensor FP16_UnfusedOptimizer on the full model, and ZeRO-3 re-gathers parameters every
# micro-step. Measured in that order on 2×H200 with GPT-2 XL: under raw DeepSpeed in ../shared/reference, and
# zerotrain's own per stage in docs/benchmarks.md.
STAGES_FASTEST_FIRST = (1, 2, 0, 3)


def recommend(
    model: ModelShape, run: RunShape, gpu_memory: int, micro_batches: list[int] | None = None, headroom: float = 0.10
) -> MemoryPlan | None:
    """The fastest configuration that fits with `headroom` to spare: no offload before optimizer offload
    before parameter offload (each costs PCIe traffic and CPU Adam time); without activation checkpointing
    before with it (recomputing the forward costs about a third more compute, less than offload); then the
    faster ZeRO stage (STAGES_FASTEST_FIRST), then the largest micro-batch (better GPU utilisation).
    None when nothing fits."""
    candidates = micro_batches or [run.micro_batch]
    checkpointing = [True] if run.activation_checkpointing else [False, True]
    best = None
    for offload_rank, (oo, op) in enumerate([("none", "none"), ("cpu", "none"), ("cpu", "cpu")]):
        for ckpt in checkpointing:
            for speed_rank, z in enumerate(STAGES_FASTEST_FIRST):
                if (oo != "none" and z == 0) or (op != "none" and z != 3):
                    continue
                for mb in sorted(candidates, reverse=True):
                    p = plan(
                        model,
                        replace(
                            run,
                            zero_stage=z,
                            offload_optimizer=oo,
                            offload_params=op,
                            micro_batch=mb,
                            activation_checkpointing=ckpt,
                        ),
                    )
                    if p.fits(gpu_memory, headroom):
                        key = (offload_rank, ckpt, speed_rank, -mb)
                        if best is None or key < best[0]:
                            best = (key, p)
                        break
    return best[1] if best else None


# ------------------------------------------------------------------------------------------------ inference


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


# ------------------------------------------------------------------------------------------------ GPUs and inputs

# Usable memory as torch.cuda.get_device_properties().total_memory reports it (MiB), and bf16 support.
GPUS = {
    "h200": (143_158, True),
    "gh200": (97_871, True),
    "h100": (81_559, True),
    "h100-nvl": (95_830, True),
    "h800": (81_559, True),
    "a100-80gb": (81_251, True),
    "a100": (81_251, True),
    "a100-40gb": (40_537, True),
    "a800": (81_251, True),
    "l40s": (46_068, True),
    "l40": (46_068, True),
    "a6000": (48_677, True),
    "l4": (22_563, True),
    "a10": (22_731, True),
    "a10g": (22_731, True),
    "rtx4090": (24_217, True),
    "rtx3090": (24_268, True),
    "v100-32gb": (32_501, False),
    "v100": (16_151, False),
    "t4": (15_095, False),
    "p100": (16_280, False),
}


def gpu_memory_from_name(name: str) -> tuple[int, bool]:
    """(bytes, bf16 support) for `h100`, `A100-40GB`, `RTX 4090`, or an amount such as `80GiB` / `40GB`."""
    import difflib
    import re

    text = name.strip()
    amount = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GiB|GB|G|MiB|MB)?", text, flags=re.IGNORECASE)
    if amount:
        unit = (amount.group(2) or "GiB").lower()
        scale = {"gib": GiB, "g": GiB, "gb": 10**9, "mib": MiB, "mb": 10**6}[unit]
        return int(float(amount.group(1)) * scale), True
    key = re.sub(r"[\s_]", "", text.lower()).replace("geforce", "").replace("nvidia", "")
    if key not in GPUS:
        close = difflib.get_close_matches(key, GPUS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown GPU {name!r}{hint}; give a name ({', '.join(GPUS)}) or an amount such as 80GiB")
    mib, bf16 = GPUS[key]
    return mib * MiB, bf16


def run_from_ds_config(cfg: dict, base: RunShape) -> RunShape:
    """Fill a RunShape from a ds_config dict (the keys the planner cares about; everything else is ignored)."""

    def num(value, name):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f'ds_config {name} = {value!r}: the planner needs a number here ("auto" is only filled in by the HF Trainer)'
            )
        return int(value)

    zero = cfg.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise UserError("ds_config zero_optimization must be an object")
    changes = {}
    if "train_micro_batch_size_per_gpu" in cfg:
        changes["micro_batch"] = num(cfg["train_micro_batch_size_per_gpu"], "train_micro_batch_size_per_gpu")
    if "gradient_accumulation_steps" in cfg:
        changes["grad_accum"] = num(cfg["gradient_accumulation_steps"], "gradient_accumulation_steps")
    if (cfg.get("bf16") or {}).get("enabled") is True:
        changes["dtype"] = "bf16"
    elif (cfg.get("fp16") or {}).get("enabled") is True:
        changes["dtype"] = "fp16"
    elif "bf16" in cfg or "fp16" in cfg:
        changes["dtype"] = "fp32"
    data_types = cfg.get("data_types") or {}
    if isinstance(data_types, dict) and "grad_accum_dtype" in data_types:
        changes["grad_accum_dtype"] = (
            "fp32" if str(data_types["grad_accum_dtype"]).lower() in ("fp32", "float32", "float") else "auto"
        )
    if "stage" in zero:
        changes["zero_stage"] = num(zero["stage"], "zero_optimization.stage")
    for key, attr in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
        entry = zero.get(key)
        if isinstance(entry, dict) and entry.get("device"):
            changes[attr] = str(entry["device"])
    for key, attr in (
        ("reduce_bucket_size", "reduce_bucket_size"),
        ("allgather_bucket_size", "allgather_bucket_size"),
        ("stage3_prefetch_bucket_size", "prefetch_bucket_size"),
        ("prefetch_bucket_size", "prefetch_bucket_size"),
        ("stage3_max_live_parameters", "max_live_parameters"),
        ("max_live_parameters", "max_live_parameters"),
        ("stage3_param_persistence_threshold", "param_persistence_threshold"),
        ("param_persistence_threshold", "param_persistence_threshold"),
        ("sub_group_size", "sub_group_size"),
    ):
        if key in zero:
            changes[attr] = num(zero[key], f"zero_optimization.{key}")
    if "overlap_comm" in zero:
        changes["overlap_comm"] = bool(zero["overlap_comm"])
    if "contiguous_gradients" in zero:
        changes["contiguous_gradients"] = bool(zero["contiguous_gradients"])
    opt = cfg.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("type"), str):
        kind = opt["type"].lower()
        changes["optimizer"] = "sgd" if kind == "sgd" else "adamw"
    return replace(base, **changes)


def to_jsonable(obj) -> dict:
    return asdict(obj)
