"""`zerotrain export`: a checkpoint of any ZeRO stage -> a verified Hugging Face GPT2 folder.

The fp32 weights are consolidated from the checkpoint (DeepSpeed's zero_to_fp32 for ZeRO shards), mapped
to Hugging Face names, saved with `save_pretrained` (model.safetensors + config.json, the tied embedding
stored once) next to the tokenizer files, then reloaded from disk with `AutoModelForCausalLM` and
checked logit-for-logit against zerotrain's own model before the folder is put in place.

With `config` (a Hugging Face model directory) the checkpoint may be one another tool wrote with DeepSpeed's
`engine.save_checkpoint` — the HF Trainer's `checkpoint-N/` (`global_stepN/`, `latest`, `zero_to_fp32.py`) or a raw
engine's save directory: its weights go into that architecture and are checked the same way.
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
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        architectures=["GPT2LMHeadModel"],
    )


def verification_batch(cfg: GPTConfig, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (2, min(cfg.block_size, 64)), generator=g)


def export(
    path: str | Path, out: str | Path, dtype: str = "fp32", overwrite: bool = False, config: str | Path | None = None
) -> dict:
    """Write the export to `out`; returns a report with the logits difference. Nothing is written to
    `out` unless the check passes, and a failed export leaves no temporary folder behind. `config`: the Hugging Face
    model directory of a checkpoint written by another tool (see the module docstring)."""
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    try:
        return _export(path, out, dtype, overwrite, config)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, UserError) or not write_failed(e):
            raise
        raise UserError(
            f"writing the export to {out} failed: {_first_line(e)}; free space there or choose another --out"
        ) from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def write_failed(e: BaseException) -> bool:
    """A failed write: an OSError, or safetensors' and torch's own errors for one (a full disk, mostly)."""
    text = str(e)
    return isinstance(e, OSError) or any(
        s in text for s in ("No space left", "StorageFull", "iostream error", "file write failed", "IoError")
    )


def _export(path, out, dtype: str, overwrite: bool, config) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a new or empty directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose a new --out directory or pass --overwrite")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if config is not None:
        return _export_deepspeed(Path(path), Path(config), out, dtype, torch_dtype)
    ckpt_dir, tag = checkpoint.resolve(path)
    manifest = checkpoint.read_manifest(ckpt_dir, tag)
    tokenizer_dir = ckpt_dir.parent / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise UserError(f"no tokenizer/ beside {ckpt_dir}; export from a checkpoint inside its run directory")
    if manifest.get("hf"):
        return _export_hf(manifest, ckpt_dir, tag, tokenizer_dir, out, dtype, torch_dtype)
    cfg = GPTConfig(**manifest["model"])

    state = checkpoint.load_fp32_state_dict(ckpt_dir, tag)
    checkpoint.check_finite(state, ckpt_dir / tag)
    state = {k: v.to(torch_dtype).float() for k, v in state.items()}  # the reference sees the saved precision
    reference = GPT(cfg)
    try:
        reference.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(
            f"checkpoint {ckpt_dir / tag} does not hold complete weights for its model ({str(e).splitlines()[0]}); "
            f"export another checkpoint"
        ) from None
    reference.eval()

    hf = GPT2LMHeadModel(hf_config(cfg, manifest["tokenizer"].get("eos_id")))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(state, cfg.vocab_size), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(
            f"weight mapping to GPT2LMHeadModel is incomplete: missing {missing}, unexpected {unexpected}"
        )
    hf.tie_weights()

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.to(torch_dtype).save_pretrained(str(tmp))
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, tmp / f.name)

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
    idx = verification_batch(cfg)
    with torch.no_grad():
        want = reference(idx)[..., : cfg.vocab_size]
        got = reloaded(idx).logits[..., : cfg.vocab_size].float()
    max_diff = (want - got).abs().max().item()
    tied = reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    if max_diff > TOLERANCE or not tied:
        shutil.rmtree(tmp)
        raise RuntimeError(
            f"export check failed: max |logit diff| {max_diff:.2e} (tolerance {TOLERANCE:g}), tied embeddings {tied}"
        )

    report = {
        "checkpoint": str(ckpt_dir / tag),
        "step": manifest["step"],
        "val_loss": manifest.get("val_loss"),
        "dtype": dtype,
        "max_abs_logit_diff": max_diff,
        "tied_embeddings": tied,
        "zero_stage": manifest["zero_stage"],
    }
    (tmp / "zerotrain_export.json").write_text(json.dumps(report, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


def _export_hf(
    manifest: dict, ckpt_dir: Path, tag: str, tokenizer_dir: Path, out: Path, dtype: str, torch_dtype
) -> dict:
    """A fine-tuned Hugging Face model (model.hf): the consolidated weights go back into the same architecture,
    built from the config recorded in the checkpoint (the base directory is not needed), saved with
    save_pretrained, reloaded from disk and compared logit for logit with the in-memory model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_cfg = dict(manifest["hf_config"])
    config = AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
    state = checkpoint.load_fp32_state_dict(ckpt_dir, tag)
    checkpoint.check_finite(state, ckpt_dir / tag)
    state = {
        k.removeprefix("inner."): v.to(torch_dtype).float() for k, v in state.items()
    }  # the reference sees the saved precision
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    missing, unexpected = reference.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(
            f"checkpoint {ckpt_dir / tag} does not hold complete weights for {manifest['hf']} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); export another checkpoint"
        )
    report = {
        "checkpoint": str(ckpt_dir / tag),
        "step": manifest["step"],
        "val_loss": manifest.get("val_loss"),
        "dtype": dtype,
        "tied_embeddings": tied,
        "zero_stage": manifest["zero_stage"],
        "base_model": manifest["hf"],
    }
    return _save_verified(reference, manifest["model"]["block_size"], out, torch_dtype, report, tokenizer_dir)


def _save_verified(reference, block_size: int, out: Path, torch_dtype, report: dict, tokenizer_dir: Path | None):
    """save_pretrained a Hugging Face model (tied where its config says so) with its tokenizer files, reload the
    folder from disk and compare logits with `reference`; the folder is put in place only when they agree."""
    import torch
    from transformers import AutoModelForCausalLM

    reference.tie_weights()
    reference.eval()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # save a converted copy: converting the reference itself would also round its non-persistent buffers (RoPE's
    # inv_freq), which the reloaded model recomputes in fp32 from the config
    saved = copy.deepcopy(reference).to(torch_dtype)
    saved.save_pretrained(str(tmp))
    del saved
    for f in tokenizer_dir.iterdir() if tokenizer_dir else ():
        if f.is_file():
            shutil.copy2(f, tmp / f.name)
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, reference.config.vocab_size, (2, min(64, block_size)), generator=g)
    with torch.no_grad():
        want = reference(input_ids=idx).logits
        got = reloaded(input_ids=idx).logits
    max_diff = (want - got).abs().max().item()
    if max_diff > TOLERANCE:
        shutil.rmtree(tmp)
        raise RuntimeError(f"export check failed: max |logit diff| {max_diff:.2e} (tolerance {TOLERANCE:g})")
    report = report | {"max_abs_logit_diff": max_diff}
    (tmp / "zerotrain_export.json").write_text(json.dumps(report, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def deepspeed_checkpoint(path: Path) -> tuple[Path, str]:
    """A DeepSpeed save directory (with `latest`, as the HF Trainer's checkpoint-N/ and engine.save_checkpoint
    leave it) or one of its tag folders (global_stepN/) -> (save directory, tag)."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; pass a DeepSpeed checkpoint such as out/checkpoint-500")
    if (path / "latest").is_file():
        tag = (path / "latest").read_text().strip()
        if (path / tag).is_dir():
            return path, tag
    if any(path.glob("*model_states.pt")):
        return path.parent, path.name
    raise UserError(
        f"{path} holds no DeepSpeed checkpoint (no `latest` naming a tag folder, no *model_states.pt); pass the "
        f"folder engine.save_checkpoint or the HF Trainer wrote (checkpoint-N/) or its global_stepN/"
    )


def _export_deepspeed(path: Path, model_dir: Path, out: Path, dtype: str, torch_dtype) -> dict:
    """A checkpoint written by DeepSpeed for another tool (the HF Trainer, a raw engine): the fp32 weights
    consolidated by DeepSpeed's zero_to_fp32 (ZeRO 1-3) or read from the model states (ZeRO-0), loaded into the
    architecture of `model_dir`'s config.json, saved and checked like any export."""
    import contextlib
    import io

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (model_dir / "config.json").is_file():
        raise UserError(f"--config {model_dir} has no config.json; pass the Hugging Face model directory it trained")
    save_dir, tag = deepspeed_checkpoint(path)
    folder = save_dir / tag
    if any(folder.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                state = get_fp32_state_dict_from_zero_checkpoint(str(save_dir), tag=tag)
            except (FileNotFoundError, ValueError) as e:
                raise UserError(f"DeepSpeed cannot consolidate {folder} ({e}); pass a complete checkpoint") from None
    else:
        states = sorted(folder.glob("mp_rank_*_model_states.pt"))
        if not states:
            raise UserError(f"{folder} has no model states file; pass a complete DeepSpeed checkpoint")
        state = torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    state = {k.removeprefix("module."): v.to(torch_dtype).float() for k, v in state.items()}
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    reference = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    missing, unexpected = reference.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in missing if not (tied and k == "lm_head.weight") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise UserError(
            f"{folder} does not hold the weights of {model_dir}'s {config.model_type} model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); pass the model directory it trained with --config"
        )
    tokenizer_dir = None
    for candidate in (path, save_dir, model_dir):  # the Trainer saves the tokenizer into checkpoint-N/ when it has one
        if (candidate / "tokenizer_config.json").is_file():
            tokenizer_dir = out.with_name(f".{out.name}.tokenizer")
            shutil.rmtree(tokenizer_dir, ignore_errors=True)
            tokenizer_dir.mkdir(parents=True)
            for name in TOKENIZER_FILES:
                if (candidate / name).is_file():
                    shutil.copy2(candidate / name, tokenizer_dir / name)
            break
    report = {
        "checkpoint": str(folder),
        "step": _step_of(save_dir, tag),
        "dtype": dtype,
        "tied_embeddings": tied,
        "base_model": str(model_dir),
        "written_by": "DeepSpeed engine.save_checkpoint",
    }
    try:
        block = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 64)
        return _save_verified(reference, block, out, torch_dtype, report, tokenizer_dir)
    finally:
        if tokenizer_dir:
            shutil.rmtree(tokenizer_dir, ignore_errors=True)


def _step_of(save_dir: Path, tag: str) -> int | None:
    """The step of a DeepSpeed checkpoint: the HF Trainer's trainer_state.json, else the digits of global_stepN."""
    state = save_dir / "trainer_state.json"
    if state.is_file():
        return json.loads(state.read_text()).get("global_step")
    digits = "".join(c for c in tag if c.isdigit())
    return int(digits) if digits else None
