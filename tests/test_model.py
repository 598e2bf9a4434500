import math

import pytest
import torch

from zerotrain.gpt_config import PRESETS, config_from_preset
from zerotrain.model import GPT, IGNORE_INDEX, GPTConfig, flops_per_token, from_hf_state_dict, to_hf_state_dict


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**({"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 70} | kw))


def test_shapes_and_padded_vocab():
    cfg = tiny()
    assert cfg.padded_vocab_size == 128
    model = GPT(cfg)
    idx = torch.randint(0, 70, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 128)
    loss = model(idx, idx)
    assert loss.ndim == 0 and math.isclose(loss.item(), math.log(128), rel_tol=0.1)  # ~uniform at init


def test_embeddings_are_tied_and_counted_once():
    model = GPT(tiny())
    assert model.lm_head.weight is model.transformer.wte.weight
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_params() == sum(unique.values())


def test_gpt2_preset_parameter_counts():
    # 124,475,904 is the count the reference probe (../shared/reference) reports for GPT-2 124M with a
    # 50304-entry vocabulary; GPT-2 XL with the same padding is 1,557,686,400.
    with torch.device("meta"):
        assert GPT(config_from_preset("gpt2", vocab_size=50257)).num_params() == 124_475_904
        assert GPT(config_from_preset("gpt2-xl", vocab_size=50257)).num_params() == 1_557_686_400
    assert set(PRESETS) == {"tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    cfg = config_from_preset("gpt2", n_layer=12, vocab_size=100, block_size=64)
    model = GPT(cfg)
    std_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert std_fc == pytest.approx(0.02, rel=0.02)
    assert std_proj == pytest.approx(0.02 / math.sqrt(2 * 12), rel=0.02)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 17, dtype=torch.long))


def test_names_and_logits_match_huggingface_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = tiny()
    ours = GPT(cfg).eval()
    hf = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=70,
            n_positions=16,
            n_embd=32,
            n_layer=2,
            n_head=2,
            activation_function="gelu_new",
            tie_word_embeddings=True,
        )
    ).eval()
    hf_state = to_hf_state_dict(ours.state_dict(), cfg.vocab_size)
    hf_keys = {k for k in hf.state_dict() if not k.endswith((".attn.bias", ".attn.masked_bias"))} - {"lm_head.weight"}
    assert set(hf_state) == hf_keys  # one-to-one by name
    hf.load_state_dict(hf_state, strict=False)
    hf.tie_weights()
    idx = torch.randint(0, 70, (2, 16))
    with torch.no_grad():
        diff = (ours(idx)[..., :70] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4
    # and back: HF names -> ours restores the same weights (vocab padding re-added as zeros)
    back = from_hf_state_dict(hf.state_dict(), cfg)
    for k, v in ours.state_dict().items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(back[k][:70], v[:70]) and back[k][70:].abs().sum() == 0
        else:
            assert torch.equal(back[k], v), k


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 70, (2, 16))
    model(idx, idx).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(idx, idx).backward()
    for a, b in zip(plain, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, atol=1e-7)


def test_generate_never_emits_padding_and_greedy_is_deterministic():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    out = model.generate(start, 40, temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(1))
    assert out.shape == (1, 41) and out.max().item() < 70
    assert torch.equal(model.generate(start, 20, temperature=0), model.generate(start, 20, temperature=0))


def test_flops_per_token_follows_the_palm_formula():
    cfg = config_from_preset("gpt2", vocab_size=50257)
    assert flops_per_token(cfg, 124_475_904, 1024) == 6 * 124_475_904 + 12 * 12 * 12 * 64 * 1024


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_fused_loss_matches_plain_cross_entropy(monkeypatch, dtype, tolerance):
    import zerotrain.model as model_module

    monkeypatch.setattr(model_module, "LOSS_CHUNK_TOKENS", 7)  # several chunks and a ragged last one
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=300)).to(dtype)
    idx, targets = torch.randint(0, 300, (3, 32)), torch.randint(0, 300, (3, 32))
    targets[0, :5] = IGNORE_INDEX
    grads = {}
    for fused in (True, False):
        model.zero_grad()
        model.lm_head.fused_loss = fused
        loss = model(idx, targets)
        loss.backward()
        grads[fused] = (loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()})
    assert grads[True][0] == pytest.approx(grads[False][0], rel=1e-6 if dtype == torch.float32 else 1e-3)
    for name, g in grads[False][1].items():
        assert (grads[True][1][name] - g).abs().max() <= tolerance * g.abs().max(), name
    with torch.no_grad():
        model.lm_head.fused_loss = True
        assert model(idx, targets).item() == pytest.approx(grads[True][0], rel=1e-6)


def test_the_two_forms_of_the_loss_chunk_agree():
    from zerotrain.model import _chunk_loss_and_grad, _chunk_loss_and_grad_fusable

    torch.manual_seed(0)
    logits, targets = torch.randn(16, 70, dtype=torch.bfloat16), torch.randint(0, 70, (16,))
    targets[:3] = IGNORE_INDEX
    scale = torch.tensor(1 / 13)
    (la, ga), (lb, gb) = (
        _chunk_loss_and_grad(logits.clone(), targets, scale),
        _chunk_loss_and_grad_fusable(logits, targets, scale),
    )
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    assert (ga.float() - gb.float()).abs().max() <= 1e-2 * gb.float().abs().max()
    assert ga[:3].abs().max() == 0  # ignored targets get no gradient


def test_a_micro_batch_without_targets_has_loss_zero_on_both_paths():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    idx = torch.randint(0, 50, (2, 16))
    targets = torch.full((2, 16), IGNORE_INDEX)
    for fused in (True, False):
        model.lm_head.fused_loss = fused
        assert model(idx, targets).item() == 0.0
