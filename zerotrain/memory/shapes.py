"""What the planner plans: the model (ModelShape: presets, a transformers config.json, dims:) and the run
(RunShape: GPUs, batch, dtype, ZeRO stage, offload, DeepSpeed's buffer sizes) with its checks, and the byte sizes
every plan adds up (dtypes, optimizer states, CUDA context, NCCL buffers)."""

import json
import math
from dataclasses import asdict, dataclass
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
    "llama3.2-3b": {
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
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
# The model types Liger Kernel's modules are put into on the fast path (kernels/hf.py LIGER_PATCHES; a test checks)
LIGER_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


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
        stage3_param_persistence_threshold (1e5 by default) — biases and norm weights; every parameter above the
        largest (deepspeed.zero3_persistent_params)."""
        if threshold > self.largest_param:
            return self.n_params
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


# A stage3_param_persistence_threshold above any parameter's size: every parameter persists (deepspeed.zero3_persistent_params)
ALL_PERSISTENT = 2**40


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
    master_weights: str = "fp32"  # fp32 | bf16 (bf16.bf16_master_weights_and_grads + bf16_optimizer_states)
    optimizer: str = "adamw"
    zero_stage: int = 2
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_params: str = "none"  # none | cpu | nvme (stage 3 only)
    # ZeRO-Offload++'s partial offload (offload_optimizer.ratio, stage 3 with the optimizer on the CPU): the fraction
    # of the fp32 master weights, optimizer states and fp32 gradients that live on the host and step in CPU Adam;
    # the rest stays on the GPU and steps in torch's AdamW there (stage3.py _create_fp32_partitions)
    offload_ratio: float = 1.0
    activation_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa (flash/memory-efficient kernels: no T×T scores kept) | eager (scores kept)
    compile: str = "auto"  # train.compile (auto, blocks: compiled blocks or decoder layers on GPUs below stage 3)
    fused_loss: bool = True  # train.fused_loss (model.hf models: with train.hf_fast_path, Llama/Mistral/Qwen/GPT-2)
    liger: bool = False  # Liger Kernel's RMSNorm/SwiGLU/RoPE in a Llama-style model.hf's layers (train.liger resolved)
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
        ratio = f" (ratio {self.offload_ratio:g})" if self.offload_ratio < 1 else ""
        off = "".join(
            [
                f", offload optimizer {self.offload_optimizer}{ratio}" if self.offload_optimizer != "none" else "",
                f", offload params {self.offload_params}" if self.offload_params != "none" else "",
            ]
        )
        return (
            f"ZeRO-{self.zero_stage}{off}, {self.world} GPU{'s' if self.world > 1 else ''}, micro-batch {self.micro_batch} × "
            f"{self.seq_len} tokens, accumulation {self.grad_accum}{' in fp32' if fp32_grad_accum(self) else ''}, {self.dtype}"
            f"{', bf16 master weights' if bf16_master(self) else ''}"
            f"{', activation checkpointing' if self.activation_checkpointing else ''}"
            f"{', parameters kept gathered' if self.zero_stage == 3 and self.param_persistence_threshold >= ALL_PERSISTENT else ''}"
        )


def zero_optimizer_on_device(zero_stage: int, offload_optimizer: str) -> bool:
    """ZeRO 1-3 with the optimizer on the device: where DeepSpeed sums bf16 gradients in fp32 on request
    (grad_accum_dtype) and keeps bf16 master weights on request (master_weights)."""
    return zero_stage >= 1 and offload_optimizer == "none"


def fp32_grad_accum(run: RunShape) -> bool:
    """Whether DeepSpeed sums this run's gradients in fp32 apart from its compute dtype: asked for, and where zerotrain
    trains with it (bf16 at ZeRO 1-3 without an offloaded optimizer; elsewhere the planner plans DeepSpeed's default)."""
    return (
        run.grad_accum_dtype == "fp32"
        and run.dtype == "bf16"
        and zero_optimizer_on_device(run.zero_stage, run.offload_optimizer)
    )


def bf16_master(run: RunShape) -> bool:
    """Whether DeepSpeed keeps this run's master weights, gradient partitions and optimizer states in bf16: asked for,
    and where it can (bf16 at ZeRO 1-3 with the optimizer on the GPU; runconfig.validate refuses the rest)."""
    return (
        run.master_weights == "bf16"
        and run.dtype == "bf16"
        and zero_optimizer_on_device(run.zero_stage, run.offload_optimizer)
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
    if run.master_weights not in ("fp32", "bf16"):
        problems.append(f"master weights {run.master_weights!r} must be fp32 or bf16")
    for name in ("offload_optimizer", "offload_params"):
        if getattr(run, name) not in ("none", "cpu", "nvme"):
            problems.append(f"{name.replace('_', '-')} {getattr(run, name)!r} must be none, cpu or nvme")
    if run.offload_params != "none" and run.zero_stage != 3:
        problems.append("offloading parameters needs ZeRO stage 3; use --zero 3 or drop --offload-params")
    if run.offload_optimizer != "none" and run.zero_stage == 0:
        problems.append("offloading the optimizer needs ZeRO stage 1, 2 or 3; raise --zero or drop --offload-optimizer")
    if not (isinstance(run.offload_ratio, (int, float)) and 0 < run.offload_ratio <= 1):
        problems.append(
            f"offload ratio {run.offload_ratio!r} must be in (0, 1]: the fraction of the optimizer on the CPU"
        )
    elif run.offload_ratio < 1 and (run.zero_stage != 3 or run.offload_optimizer != "cpu"):
        problems.append(
            "an offload ratio below 1 (partial optimizer offload) needs ZeRO stage 3 with the optimizer offloaded to cpu"
        )
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


def to_jsonable(obj) -> dict:
    return asdict(obj)
