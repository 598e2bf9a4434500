"""`zerotrain generate`: sample text from a run, a checkpoint or an exported Hugging Face folder.

All three load into zerotrain's GPT with the same fp32 weights, so a run directory and its export give
the same text for the same seed.
"""

import json
import math
from pathlib import Path

from zerotrain import UserError, checkpoint
from zerotrain.model import GPT, GPTConfig, from_hf_state_dict
from zerotrain.tokenizers import load_tokenizer


def _hf_model(path: str | Path):
    """A Hugging Face causal LM other than GPT-2 (an export of a model.hf run), behind GPT.generate's interface."""
    import torch
    from transformers import AutoModelForCausalLM

    from zerotrain.hf import CausalLM
    from zerotrain.model import sample

    inner = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    model = CausalLM(inner)
    context = getattr(inner.config, "max_position_embeddings", None) or 2048
    model.generate = lambda idx, max_new_tokens, temperature=1.0, top_k=None, generator=None: sample(
        model, idx, context, inner.config.vocab_size, max_new_tokens, temperature, top_k, generator
    )
    return model


def load_model(path: str | Path):
    """(model on CPU in fp32, tokenizer, description) from an export folder or any checkpoint path."""
    path = Path(path)
    if (path / "config.json").is_file() and any(path.glob("model*.safetensors")):
        from safetensors.torch import load_file

        try:
            hf = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path / 'config.json'} cannot be read ({e}); export the checkpoint again") from None
        if hf.get("model_type") != "gpt2":
            return _hf_model(path), load_tokenizer(path), f"export {path}"
        cfg = GPTConfig(
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            block_size=hf["n_positions"],
            vocab_size=hf["vocab_size"],
        )
        state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
        if not any(k.startswith("transformer.") for k in state):  # older transformers saved without the prefix
            state = {f"transformer.{k}": v for k, v in state.items()}
        checkpoint.check_finite(state, path)
        state = from_hf_state_dict(state, cfg)
        tokenizer, what = load_tokenizer(path), f"export {path}"
    else:
        ckpt_dir, tag = checkpoint.resolve(path)
        if checkpoint.read_manifest(ckpt_dir, tag).get("hf"):
            raise UserError(
                f"{ckpt_dir / tag} is a fine-tuned Hugging Face model; export it first "
                f"(zerotrain export {path} --out DIR) and generate from DIR"
            )
        cfg = GPTConfig(**checkpoint.read_manifest(ckpt_dir, tag)["model"])
        state = checkpoint.load_fp32_state_dict(ckpt_dir, tag)
        checkpoint.check_finite(state, ckpt_dir / tag)
        tokenizer_dir = ckpt_dir.parent / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise UserError(
                f"no tokenizer/ beside {ckpt_dir}; generate from a checkpoint inside its run directory or from an export"
            )
        tokenizer, what = load_tokenizer(tokenizer_dir), f"checkpoint {ckpt_dir / tag}"
    model = GPT(cfg)
    model.load_state_dict(state)
    return model.eval(), tokenizer, what


def generate(
    path: str | Path,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 1337,
    device: str = "cpu",
) -> str:
    import torch

    if not temperature >= 0 or math.isinf(temperature):  # NaN compares false
        raise UserError(f"--temperature {temperature} must be a number >= 0 (0 means greedy)")
    if max_new_tokens < 1:
        raise UserError("--max-new-tokens must be >= 1")
    if top_k is not None and top_k < 0:
        raise UserError(f"--top-k {top_k} must be >= 1, or 0 to sample among all tokens")
    model, tokenizer, _ = load_model(path)
    vocab = getattr(getattr(getattr(model, "inner", model), "config", None), "vocab_size", None)
    if top_k and vocab and top_k >= vocab:
        top_k = None  # the k most likely of a vocabulary of at most k tokens: all of them (the default 200 on chars)
    model.to(device)
    ids = list(tokenizer.encode(prompt)) if prompt else []
    if not ids:
        ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else list(tokenizer.encode("\n"))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return tokenizer.decode(out[0].tolist())
