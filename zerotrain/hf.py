"""Local Hugging Face causal LMs in zerotrain: checking a model directory, loading it (partitioned under
ZeRO-3, so no rank ever holds the whole model), and GPT-2 weights for zerotrain's own model.

Everything is offline: a model is a directory holding config.json, its weights (safetensors or a PyTorch
bin) and, for fine-tuning, the tokenizer the data was prepared with.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from zerotrain import UserError
from zerotrain.model import masked_mean_cross_entropy

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class HFModelInfo:
    """What the trainer needs to know before loading: shape for the FLOPs count and the data checks."""

    path: Path
    model_type: str
    n_layer: int
    n_head: int
    hidden: int
    block_size: int  # positions the model was trained for
    vocab_size: int  # rows of its input embedding
    config: dict

    def describe(self) -> str:
        return (
            f"{self.path} ({self.model_type}: {self.n_layer} layers, {self.n_head} heads, hidden {self.hidden}, "
            f"vocab {self.vocab_size}, context {self.block_size})"
        )


def inspect(path: str | Path) -> HFModelInfo:
    """Read and check a model directory without loading its weights."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"model.hf {path} is not a directory; give a local Hugging Face model directory (config.json + weights)"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(
            f"{path} has no config.json; point model.hf at a directory saved with save_pretrained "
            "(or convert one: zerotrain data fetch-model smollm2-135m --out DIR)"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(
            f"{path} has config.json but no weights ({', '.join(WEIGHT_FILES)}); save the model with save_pretrained"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_file} is not valid JSON ({e}); re-save the model") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = str(cfg.get("model_type", ""))
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"{path}: model_type {model_type!r} is not a causal language model transformers can train "
            f"(AutoModelForCausalLM); use a GPT-2, Llama, Mistral, Qwen2 or similar model"
        )

    def first(*keys, default=None):
        for k in keys:
            if cfg.get(k) is not None:
                return int(cfg[k])
        if default is None:
            raise UserError(f"{cfg_file} has none of {', '.join(keys)}; is it a complete transformers config?")
        return default

    return HFModelInfo(
        path=path,
        model_type=model_type,
        n_layer=first("num_hidden_layers", "n_layer"),
        n_head=first("num_attention_heads", "n_head"),
        hidden=first("hidden_size", "n_embd"),
        block_size=first("max_position_embeddings", "n_positions", default=2048),
        vocab_size=first("vocab_size"),
        config=cfg,
    )


def check_tokenizer(info: HFModelInfo, data_dir: Path) -> None:
    """The data must have been tokenized with the model's own tokenizer: same vocabulary, ids that fit the
    embedding."""
    from transformers import AutoTokenizer

    if not any(
        (info.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        raise UserError(
            f"{info.path} has no tokenizer files; save the tokenizer next to the model (tokenizer.save_pretrained)"
        )
    kind = json.loads((data_dir / "meta.json").read_text()).get("tokenizer", {}).get("kind")
    if kind != "hf":
        raise UserError(
            f"{data_dir} was tokenized with a different tokenizer ({kind}) than {info.path}'s; "
            f"prepare it with `zerotrain data prepare --tokenizer {info.path} ...`"
        )
    try:
        model_vocab = AutoTokenizer.from_pretrained(str(info.path), local_files_only=True).get_vocab()
        data_vocab = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"), local_files_only=True).get_vocab()
    except (OSError, ValueError, TypeError) as e:
        raise UserError(
            f"cannot compare the tokenizers of {info.path} and {data_dir} ({str(e).splitlines()[0]}); "
            f"prepare the data with `zerotrain data prepare --tokenizer {info.path} ...`"
        ) from None
    if model_vocab != data_vocab:
        raise UserError(
            f"{data_dir} was tokenized with a different tokenizer than {info.path}'s "
            f"({len(data_vocab)} vs {len(model_vocab)} entries); prepare it with `zerotrain data prepare --tokenizer {info.path} ...`"
        )
    if len(model_vocab) > info.vocab_size:
        raise UserError(
            f"{info.path}'s tokenizer has {len(model_vocab)} entries but its embedding only {info.vocab_size} rows; "
            "the tokenizer does not belong to this model"
        )


class CausalLM(torch.nn.Module):
    """A transformers causal LM behind zerotrain's model interface: forward(idx, targets) -> mean loss over
    targets != IGNORE_INDEX (targets are already the next tokens, so nothing is shifted here), or the logits
    without targets. The plain path takes the cross-entropy in fp32 like transformers' own loss
    (model.masked_mean_cross_entropy); on the fast path (kernels/hf.py) the head is model.LMHead and the loss is
    zerotrain's fused, chunked one, with no fp32 logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.fused_loss = False  # kernels.hf.fuse_loss turns it on

    def forward(self, idx, targets=None):
        if targets is None or not self.fused_loss:
            logits = self.inner(input_ids=idx, use_cache=False).logits  # (B, T, V)
            return logits if targets is None else masked_mean_cross_entropy(logits, targets)
        hidden = self.inner.base_model(input_ids=idx, use_cache=False).last_hidden_state  # (B, T, h)
        return self.inner.lm_head(hidden, targets)


def load(info: HFModelInfo, dtype: str, ds_config: dict, zero_stage: int, gradient_checkpointing: bool):
    """The model, wrapped for the trainer. Under ZeRO-3 transformers builds it inside deepspeed.zero.Init
    (HfDeepSpeedConfig), so each rank only ever holds its partition."""
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    keep_alive = None
    if zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep_alive = HfDeepSpeedConfig(
            ds_config
        )  # must exist while from_pretrained runs; weak-referenced by transformers
    try:
        inner = AutoModelForCausalLM.from_pretrained(
            str(info.path), dtype=torch_dtype, attn_implementation="sdpa", local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load {info.path} ({str(e).splitlines()[0]}); check the weights are complete") from None
    del keep_alive
    if gradient_checkpointing:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    inner.config.use_cache = False
    return CausalLM(inner)


def decoder_layer_classes(model) -> list[type]:
    """The classes of the model's transformer layers: those transformers names in _no_split_modules (the units it
    never splits across devices, e.g. LlamaDecoderLayer, GPT2Block) that occur in the model."""
    names = set(getattr(model.inner, "_no_split_modules", None) or ())
    return sorted({type(m) for m in model.modules() if type(m).__name__ in names}, key=lambda c: c.__name__)


def gpt2_weights(path: str | Path):
    """(GPTConfig, state dict in zerotrain's names) from a local Hugging Face GPT-2 directory, for
    model.init_from_hf. Names map one to one; HF's Conv1D weights are transposed (model.from_hf_state_dict)."""
    from zerotrain.model import GPTConfig, from_hf_state_dict

    info = inspect(path)
    if info.model_type != "gpt2":
        raise UserError(
            f"model.init_from_hf {path} is a {info.model_type} model; it must be GPT-2 (use model.hf to fine-tune other models)"
        )
    cfg = GPTConfig(
        n_layer=info.n_layer,
        n_head=info.n_head,
        n_embd=info.hidden,
        block_size=info.block_size,
        vocab_size=info.vocab_size,
        dropout=0.0,
    )
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(info.path), dtype=torch.float32, local_files_only=True)
    state = {k: v for k, v in hf.state_dict().items()}
    if not any(k.startswith("transformer.") for k in state):
        state = {f"transformer.{k}": v for k, v in state.items()}
    return cfg, from_hf_state_dict(state, cfg)
