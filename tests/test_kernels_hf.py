"""The fast path for Hugging Face models (zerotrain/kernels/hf.py), on the CPU in fp32 against transformers' own
modules: the fused loss gives transformers' loss and gradients, the model stays a transformers model, compiled
decoder layers compute what the eager ones do, and the switches do what they say."""

import copy
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import run_ok, train_losses
from tests.test_hf import hf_config, hf_models  # noqa: F401 (hf_models: the fixture)
from zerotrain import UserError
from zerotrain.hf import CausalLM, decoder_layer_classes
from zerotrain.kernels import hf as fast_path
from zerotrain.model import IGNORE_INDEX, LMHead

VOCAB = 97


def tiny(kind: str):
    import transformers

    torch.manual_seed(0)
    llama_like = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
    )
    if kind == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_like))
    if kind == "llama-tied":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama_like, tie_word_embeddings=True))
    if kind == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**llama_like))
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**llama_like, tie_word_embeddings=True))
    if kind == "gpt2":  # dropout off: the two paths must see the same masks
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                n_layer=2,
                n_head=2,
                n_embd=32,
                vocab_size=VOCAB,
                n_positions=64,
                resid_pdrop=0,
                embd_pdrop=0,
                attn_pdrop=0,
            )
        )
    raise ValueError(kind)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (3, 24), generator=g)
    return idx


def fast(inner) -> CausalLM:
    model = CausalLM(inner)
    fast_path.fuse_loss(inner)
    model.fused_loss = True
    return model


@pytest.mark.parametrize("kind", ["llama", "llama-tied", "mistral", "qwen2", "gpt2"])
def test_fused_loss_gives_transformers_loss_and_gradients(kind):
    reference = tiny(kind)
    model = fast(copy.deepcopy(reference))
    assert fast_path.can_fuse_loss(reference)
    idx = batch()
    # transformers shifts the labels itself; zerotrain's targets are the next tokens already (the last has none)
    labels = idx.clone()
    labels[0, :7] = IGNORE_INDEX  # a prompt whose tokens carry no loss, as instruction data has
    targets = torch.cat([labels[:, 1:], torch.full((3, 1), IGNORE_INDEX)], dim=1)

    ref_loss = reference(input_ids=idx, labels=labels, use_cache=False).loss
    loss = model(idx, targets)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6, abs=1e-7)
    ref_loss.backward()
    loss.backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in model.inner.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("kind", ["llama-tied", "gpt2"])
def test_the_fast_model_stays_a_transformers_model(kind, tmp_path):
    import transformers

    reference = tiny(kind).eval()
    model = fast(copy.deepcopy(reference)).eval()
    assert isinstance(model.inner.lm_head, LMHead) and isinstance(model.inner.lm_head, torch.nn.Linear)
    assert list(model.inner.state_dict()) == list(reference.state_dict())
    idx = batch()[:1, :5]
    torch.testing.assert_close(model(idx), reference(input_ids=idx).logits)  # no targets: the plain logits
    want = reference.generate(idx, max_new_tokens=6, do_sample=False)
    assert torch.equal(model.inner.generate(idx, max_new_tokens=6, do_sample=False), want)
    model.inner.save_pretrained(str(tmp_path / "saved"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"), local_files_only=True)
    assert type(loaded.lm_head) is torch.nn.Linear  # the swap is not saved: a plain transformers model comes back
    torch.testing.assert_close(loaded(input_ids=idx).logits, reference(input_ids=idx).logits)


def test_models_with_a_scaled_head_keep_transformers_loss():
    import transformers

    cfg = transformers.GemmaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
        pad_token_id=None,
        bos_token_id=0,
        eos_token_id=1,
    )
    assert not fast_path.can_fuse_loss(transformers.GemmaForCausalLM(cfg))


def switches(**values):
    return SimpleNamespace(**({"hf_fast_path": True, "fused_loss": True, "compile": "auto", "liger": "auto"} | values))


def test_the_switches():
    cpu = torch.device("cpu")
    model = CausalLM(tiny("llama"))
    layers = set(decoder_layer_classes(model))
    assert fast_path.apply(model, switches(hf_fast_path=False), cpu, "bf16", False, layers) == []
    assert not model.fused_loss and type(model.inner.lm_head) is torch.nn.Linear
    assert fast_path.apply(model, switches(fused_loss=False), cpu, "bf16", False, layers) == []
    # on the CPU "auto" compiles nothing and leaves Liger Kernel (Triton, GPUs only) off
    assert fast_path.apply(model, switches(), cpu, "bf16", False, layers) == ["fused loss"]
    assert model.fused_loss and isinstance(model.inner.lm_head, LMHead)
    with pytest.raises(UserError, match="needs a GPU"):
        fast_path.apply(CausalLM(tiny("llama")), switches(liger="on"), cpu, "bf16", False, layers)
    with pytest.raises(UserError, match="covers llama, mistral, qwen2, qwen3 models, not gpt2"):
        fast_path.apply_liger(tiny("gpt2"))


def test_the_planner_knows_which_models_get_liger_kernel():
    from zerotrain import memory

    assert set(memory.LIGER_MODEL_TYPES) == set(fast_path.LIGER_PATCHES)


@pytest.mark.slow
def test_compiled_decoder_layers_compute_what_eager_layers_do():
    reference = fast(tiny("llama"))
    model = copy.deepcopy(reference)
    fast_path.compile_layers(model.inner, set(decoder_layer_classes(model)))
    idx = batch()
    targets = torch.roll(idx, -1, dims=1)
    want, got = reference(idx, targets), model(idx, targets)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    want.backward()
    got.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_fine_tune_on_the_fast_path_trains_as_the_plain_path(tmp_path, hf_models):  # noqa: F811
    common = {"data_dir": hf_models["data"], "model_dir": hf_models["llama"], "zero_stage": 2}
    out = run_ok("train", hf_config(tmp_path / "f.toml", out_dir=tmp_path / "f", **common)).stdout
    assert "fused loss" in out
    out = run_ok(
        "train", hf_config(tmp_path / "p.toml", out_dir=tmp_path / "p", **common), "--train.hf_fast_path=false"
    ).stdout
    assert "fused loss" not in out
    fused, plain = train_losses(tmp_path / "f"), train_losses(tmp_path / "p")
    assert sorted(fused) == sorted(plain) == list(range(1, 7))
    assert all(fused[s] == pytest.approx(plain[s], rel=1e-5) for s in plain), (fused, plain)
