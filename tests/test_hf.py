"""Fine-tuning local Hugging Face causal LMs (model.hf) and starting zerotrain's GPT-2 from one (model.init_from_hf):
tiny random Llama and GPT-2 models built here, trained in 2 CPU processes under ZeRO-2 and ZeRO-3, resumed,
exported and reloaded."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_clean_failure, metrics, run_ok, train_losses, zerotrain

HF_RUN = """
[run]
out_dir = "{out_dir}"
seed = 3
tensorboard = false
resume = "{resume}"

[data]
dir = "{data_dir}"

[model]
hf = "{model_dir}"

[train]
max_steps = {max_steps}
micro_batch_size = 4
seq_len = 32
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
eval_interval = 3
eval_iters = 2
log_interval = 1
save_interval = 3
keep_last = 5

[deepspeed]
zero_stage = {zero_stage}
dtype = "fp32"
"""


def build_tokenizer(text: str, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>")
    fast.save_pretrained(str(out))
    return fast


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, corpus_file):
    """{"llama": dir, "gpt2": dir, "data": prepared data dir}: both models share one tokenizer."""
    import transformers

    from zerotrain.data import prepare

    root = tmp_path_factory.mktemp("hf")
    tok = build_tokenizer(corpus_file.read_text(), root / "tok")
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(tok),
            max_position_embeddings=64,
            tie_word_embeddings=True,
            eos_token_id=tok.eos_token_id,
        )
    )
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=32,
            vocab_size=len(tok),
            n_positions=64,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
    )
    dirs = {}
    for name, model in (("llama", llama), ("gpt2", gpt2)):
        dirs[name] = root / name
        model.save_pretrained(str(dirs[name]))
        tok.save_pretrained(str(dirs[name]))
    dirs["data"] = root / "data"
    prepare(str(corpus_file), str(dirs["llama"]), dirs["data"])
    return dirs


def hf_config(path: Path, **values) -> Path:
    defaults = {"resume": "", "max_steps": 6, "zero_stage": 2}
    path.write_text(HF_RUN.format(**(defaults | values)))
    return path


@pytest.mark.slow
# each family at one stage (their other stage's fine-tune, resume and export take 40-60 s each and add little:
# the ZeRO-2/3 paths are the same code for both, and test_kernels_hf.py trains Llama at ZeRO-2 as well)
@pytest.mark.parametrize("kind,stage", [("llama", 3), ("gpt2", 2)])
def test_finetune_resume_and_export(tmp_path, hf_models, kind, stage):
    common = {"data_dir": hf_models["data"], "model_dir": hf_models[kind], "zero_stage": stage}
    straight = hf_config(tmp_path / "a.toml", out_dir=tmp_path / "a", **common)
    # at ZeRO-3 also sample at each evaluation: every forward gathers parameters collectively, so a rank that
    # stopped early would hang the others
    sampling = ["--train.sample_prompt=The king", "--train.sample_tokens=8"] if stage == 3 else []
    out = run_ok("train", straight, "--nproc", 2, *sampling).stdout
    assert "fine-tuning" in out and kind in out
    if sampling:
        samples = {r["step"]: r["sample"] for r in metrics(tmp_path / "a") if "sample" in r}
        assert sorted(samples) == [3, 6] and all(text.startswith("The king") for text in samples.values())
    losses = train_losses(tmp_path / "a")
    assert losses[6] < losses[1]
    if stage == 3:  # decoder layers gathered whole (the default) or layer by layer: the same losses
        assert "parameters gathered per block" in out
        layers = hf_config(tmp_path / "l.toml", out_dir=tmp_path / "l", **common)
        out = run_ok("train", layers, "--nproc", 2, "--deepspeed.zero3_gather_per_block=false").stdout
        assert "parameters gathered per block" not in out
        by_layer = train_losses(tmp_path / "l")
        assert all(by_layer[s] == pytest.approx(losses[s], rel=1e-4) for s in losses), (by_layer, losses)
    val = {r["step"]: r["val_loss"] for r in metrics(tmp_path / "a") if "val_loss" in r}
    assert val[6] < val[3]

    # resume the straight run's step-3 checkpoint to 6 in a new run (no sampling): the same losses, bit for bit
    # (GPT-2 has dropout 0.1 on). One launch where stopping at 3 and resuming took two: the resume path is the same.
    resumed = hf_config(
        tmp_path / "b.toml", out_dir=tmp_path / "b", resume=tmp_path / "a" / "checkpoints" / "step_3", **common
    )
    run_ok("train", resumed, "--nproc", 2)
    assert train_losses(tmp_path / "b") == {s: loss for s, loss in losses.items() if s > 3}

    # export: a directory transformers loads, whose logits match the checkpoint's weights
    dtype = "bf16" if stage == 2 else "fp32"  # bf16: the reference must not round RoPE's buffers along with the weights
    r = run_ok("export", tmp_path / "a", "--out", tmp_path / "hf", "--dtype", dtype)
    assert "verified" in r.stdout
    report = json.loads((tmp_path / "hf" / "zerotrain_export.json").read_text())
    assert report["max_abs_logit_diff"] < 1e-4 and report["zero_stage"] == stage
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert model.config.model_type == kind
    assert (
        AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True).get_vocab()
        == AutoTokenizer.from_pretrained(str(hf_models[kind]), local_files_only=True).get_vocab()
    )
    base = AutoModelForCausalLM.from_pretrained(str(hf_models[kind]), local_files_only=True)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p.float(), base.state_dict()[n].float())]
    assert changed, "fine-tuning changed no weight"
    if kind == "llama":  # tied embeddings stay tied; generate reads the export
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        text = run_ok("generate", tmp_path / "hf", "--prompt", "The king", "--max-new-tokens", 8).stdout
        assert text.startswith("The king")


def test_init_from_hf_gpt2_reproduces_its_logits(hf_models):
    from transformers import GPT2LMHeadModel

    from zerotrain.hf import gpt2_weights
    from zerotrain.model import GPT

    cfg, state = gpt2_weights(hf_models["gpt2"])
    ours = GPT(cfg)
    ours.load_state_dict(state)
    theirs = GPT2LMHeadModel.from_pretrained(str(hf_models["gpt2"]), local_files_only=True)
    idx = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(idx)[..., : cfg.vocab_size], theirs.eval()(idx).logits, atol=1e-4)


@pytest.mark.slow
def test_init_from_hf_trains_zerotrains_model(tmp_path, hf_models):
    cfg = tmp_path / "c.toml"
    text = HF_RUN.format(
        out_dir=tmp_path / "run", resume="", data_dir=hf_models["data"], model_dir="", max_steps=2, zero_stage=2
    )
    cfg.write_text(text.replace('hf = ""', f'init_from_hf = "{hf_models["gpt2"]}"'))
    out = run_ok("train", cfg).stdout
    assert "weights from the Hugging Face GPT-2" in out and "2 layers, 2 heads, 32 wide" in out


@pytest.mark.slow  # 18-27 s: in --full (CI), out of the quick tier
def test_bad_model_directories(tmp_path, hf_models, char_data):
    def attempt(model_dir, data_dir=None):
        return zerotrain(
            "train",
            hf_config(
                tmp_path / "x.toml", out_dir=tmp_path / "x", data_dir=data_dir or hf_models["data"], model_dir=model_dir
            ),
        )

    assert_clean_failure(attempt(tmp_path / "missing"), "not a directory")
    (tmp_path / "empty").mkdir()
    assert_clean_failure(attempt(tmp_path / "empty"), "no config.json")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((hf_models["llama"] / "config.json").read_text())
    assert_clean_failure(attempt(tmp_path / "noweights"), "no weights")
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    (tmp_path / "t5" / "model.safetensors").write_bytes(b"")
    assert_clean_failure(attempt(tmp_path / "t5"), "not a causal language model")
    assert_clean_failure(attempt(hf_models["llama"], data_dir=char_data), "different tokenizer")
    assert not (tmp_path / "x").exists()  # nothing was created


def test_hf_excludes_shape_keys(tmp_path, hf_models):
    cfg = hf_config(
        tmp_path / "y.toml", out_dir=tmp_path / "y", data_dir=hf_models["data"], model_dir=hf_models["llama"]
    )
    cfg.write_text(cfg.read_text().replace("[model]\n", "[model]\nn_layer = 4\n"))
    assert_clean_failure(zerotrain("train", cfg), "model.n_layer")
