"""Export to Hugging Face and generation, from checkpoints written by the real engine (tests/test_train.py's
session runs under ZeRO 0-3)."""

import json

import pytest
import torch

from conftest import zerotrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(stage_runs, tmp_path_factory):
    """export(stage) -> (folder, result): `zerotrain export` of stage_runs[stage], made once and shared by the tests
    of this module (each export starts a process that loads torch and transformers)."""
    made = {}

    def export(stage: int):
        if stage not in made:
            out = tmp_path_factory.mktemp(f"export-s{stage}") / "hf"
            made[stage] = out, zerotrain("export", stage_runs[stage], "--out", out)
        return made[stage]

    return export


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_export_reloads_in_transformers_with_the_same_logits(stage_runs, exported, stage):
    from transformers import AutoModelForCausalLM

    from zerotrain import checkpoint
    from zerotrain.model import GPT, GPTConfig

    out, r = exported(stage)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max |logit diff|" in r.stdout
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert (out / "zerotrain_tokenizer.json").is_file()  # the char vocabulary travels with the model

    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # tied
    ckpt_dir, tag = checkpoint.resolve(stage_runs[stage])
    manifest = checkpoint.read_manifest(ckpt_dir, tag)
    ours = GPT(GPTConfig(**manifest["model"]))
    ours.load_state_dict(checkpoint.load_fp32_state_dict(ckpt_dir, tag))
    ours.eval()
    vocab = manifest["model"]["vocab_size"]
    assert hf.config.vocab_size == vocab
    for name, p in hf.named_parameters():
        assert p.numel() > 0 and p.abs().sum() > 0, name  # never the empty [0]-shaped ZeRO-3 partitions
    idx = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        diff = (hf(idx).logits - ours(idx)[..., :vocab]).abs().max().item()
    assert diff < 1e-4
    report = json.loads((out / "zerotrain_export.json").read_text())
    assert report["step"] == 12 and report["zero_stage"] == stage


def test_stages_export_the_same_weights(stage_runs):
    from zerotrain import checkpoint

    states = [checkpoint.load_fp32_state_dict(*checkpoint.resolve(stage_runs[s])) for s in (0, 3)]
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-4), k


def test_bf16_export(stage_runs, tmp_path):
    r = zerotrain("export", stage_runs[2], "--out", tmp_path / "hf", "--dtype", "bf16")
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_generate_gives_the_same_text_from_run_and_export(stage_runs, exported):
    out, r = exported(3)
    assert r.returncode == 0, r.stderr[-3000:]
    for flags in (["--temperature", "0"], ["--temperature", "0.9", "--top-k", "5", "--seed", "3"]):
        a = zerotrain("generate", stage_runs[3], "--prompt", "The king", "--max-new-tokens", 40, *flags)
        b = zerotrain("generate", out, "--prompt", "The king", "--max-new-tokens", 40, *flags)
        assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
        assert (
            a.stdout == b.stdout and a.stdout.startswith("The king") and len(a.stdout) == len("The king") + 40 + 1
        )  # + print's newline
    seeded = [zerotrain("generate", out, "--prompt", "The", "--seed", s, "--max-new-tokens", 30).stdout for s in (1, 2)]
    assert seeded[0] != seeded[1]
