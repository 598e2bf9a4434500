"""`zerotrain export`: a checkpoint of any ZeRO stage -> a verified Hugging Face GPT2 folder.

The fp32 weights are consolidated from the checkpoint (DeepSpeed's zero_to_fp32 for ZeRO shards), mapped
to Hugging Face names, saved with `save_pretrained` (model.safetensors + config.json, the tied embedding
stored once) next to the tokenizer files, then reloaded from disk with `AutoModelForCausalLM` and
checked logit-for-logit against zerotrain's own model before the folder is put in place.
"""

import copy
import json
import shutil
from pathlib import Path

from zerotrain import UserError, checkpoint
from zerotrain.model import GPT, GPTConfig, to_hf_state_dict

DTYPES = ("fp32", "bf16", "fp16")
# Largest |logit difference| accepted between the export and the checkpoint's model. Both compute in
# fp32 on the CPU from the same weights; what remains is kernel order (SDPA vs HF's attention).
TOLERANCE = 1e-3


def hf_config(cfg: GPTConfig, eos_id: int | None):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout, tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
        architectures=["GPT2LMHeadModel"],
    )


def verification_batch(cfg: GPTConfig, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (2, min(cfg.block_size, 64)), generator=g)


def export(path: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False) -> dict:
    """Write the export to `out`; returns a report with the logits difference. Nothing is written to
    `out` unless the check passes."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new --out directory or pass --overwrite")
    ckpt_dir, tag = checkpoint.resolve(path)
    manifest = checkpoint.read_manifest(ckpt_dir, tag)
    tokenizer_dir = ckpt_dir.parent / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise UserError(f"no tokenizer/ beside {ckpt_dir}; export from a checkpoint inside its run directory")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if manifest.get("hf"):
        return _export_hf(manifest, ckpt_dir, tag, tokenizer_dir, out, dtype, torch_dtype)
    cfg = GPTConfig(**manifest["model"])

    state = checkpoint.load_fp32_state_dict(ckpt_dir, tag)
    state = {k: v.to(torch_dtype).float() for k, v in state.items()}  # the reference sees the saved precision
    reference = GPT(cfg)
    try:
        reference.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"checkpoint {ckpt_dir / tag} does not hold complete weights for its model ({str(e).splitlines()[0]}); "
                        f"export another checkpoint") from None
    reference.eval()

    hf = GPT2LMHeadModel(hf_config(cfg, manifest["tokenizer"].get("eos_id")))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(state, cfg.vocab_size), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping to GPT2LMHeadModel is incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.to(torch_dtype).save_pretrained(str(tmp))
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, tmp / f.name)

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
    idx = verification_batch(cfg)
    with torch.no_grad():
        want = reference(idx)[..., :cfg.vocab_size]
        got = reloaded(idx).logits[..., :cfg.vocab_size].float()
    max_diff = (want - got).abs().max().item()
    tied = reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    if max_diff > TOLERANCE or not tied:
        shutil.rmtree(tmp)
        raise RuntimeError(f"export check failed: max |logit diff| {max_diff:.2e} (tolerance {TOLERANCE:g}), tied embeddings {tied}")

    report = {"checkpoint": str(ckpt_dir / tag), "step": manifest["step"], "val_loss": manifest.get("val_loss"),
              "dtype": dtype, "max_abs_logit_diff": max_diff, "tied_embeddings": tied, "zero_stage": manifest["zero_stage"]}
    (tmp / "zerotrain_export.json").write_text(json.dumps(report, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


def _export_hf(manifest: dict, ckpt_dir: Path, tag: str, tokenizer_dir: Path, out: Path, dtype: str, torch_dtype) -> dict:
    """A fine-tuned Hugging Face model (model.hf): the consolidated weights go back into the same architecture,
    built from the config recorded in the checkpoint (the base directory is not needed), saved with
    save_pretrained, reloaded from disk and compared logit for logit with the in-memory model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = dict(manifest["hf_config"])
    config = AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
    state = checkpoint.load_fp32_state_dict(ckpt_dir, tag)
    state = {k.removeprefix("inner."): v.to(torch_dtype).float() for k, v in state.items()}  # the reference sees the saved precision
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    missing, unexpected = reference.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(f"checkpoint {ckpt_dir / tag} does not hold complete weights for {manifest['hf']} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}); export another checkpoint")
    reference.tie_weights()
    reference.eval()

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # save a converted copy: converting the reference itself would also round its non-persistent buffers (RoPE's
    # inv_freq), which the reloaded model recomputes in fp32 from the config
    saved = copy.deepcopy(reference).to(torch_dtype)
    saved.save_pretrained(str(tmp))
    del saved
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, tmp / f.name)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (2, min(64, manifest["model"]["block_size"])), generator=g)
    with torch.no_grad():
        want = reference(input_ids=idx).logits
        got = reloaded(input_ids=idx).logits
    max_diff = (want - got).abs().max().item()
    if max_diff > TOLERANCE:
        shutil.rmtree(tmp)
        raise RuntimeError(f"export check failed: max |logit diff| {max_diff:.2e} (tolerance {TOLERANCE:g})")
    report = {"checkpoint": str(ckpt_dir / tag), "step": manifest["step"], "val_loss": manifest.get("val_loss"), "dtype": dtype,
              "max_abs_logit_diff": max_diff, "tied_embeddings": tied, "zero_stage": manifest["zero_stage"], "base_model": manifest["hf"]}
    (tmp / "zerotrain_export.json").write_text(json.dumps(report, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report
