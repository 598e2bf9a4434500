"""FlashAttention-3 for GPT's attention (zerotrain/kernels/flash3.py, train.flash_attention_3). Everywhere: why it cannot run,
and a library that does not load said so. On a Hopper GPU with FlashAttention-3 installed (marked gpu): the attention,
its gradients and a GPT's loss and gradients against PyTorch's, eager and compiled."""

import pytest
import torch
import torch.nn.functional as F

from zerotrain import kernels
from zerotrain.kernels import flash3
from zerotrain.model import GPT, GPTConfig


def test_reasons_it_cannot_run():
    assert "cpu tensors" in flash3.flash3_unavailable(torch.device("cpu"), torch.bfloat16, 64)


def test_a_library_that_does_not_load_is_named(monkeypatch, tmp_path):
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setenv(flash3.LIBRARY_ENV, str(broken))
    monkeypatch.setattr(flash3, "_loaded", False)
    monkeypatch.setattr(flash3, "_load_error", None)
    monkeypatch.setattr(flash3, "_registered", lambda: False)
    assert flash3._load().startswith(f"{broken} does not load (")


def test_xformers_copy_is_found_and_the_environment_variable_wins(monkeypatch, tmp_path):
    """pip install --no-deps xformers==0.0.34 puts the build at xformers/flash_attn_3/_C.so; ZEROTRAIN_FLASH3_LIBRARY
    names another one instead."""
    library = tmp_path / "xformers" / "flash_attn_3" / "_C.so"
    library.parent.mkdir(parents=True)
    library.write_bytes(b"")
    (tmp_path / "xformers" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(flash3.LIBRARY_ENV, raising=False)
    monkeypatch.setattr(flash3, "_xformers_version", lambda: "0.0.34")
    assert str(library) in flash3._candidate_libraries()
    # another release's private layout is not trusted: its _C.so is passed over, and the message says why
    monkeypatch.setattr(flash3, "_xformers_version", lambda: "0.0.40")
    assert str(library) not in flash3._candidate_libraries()
    monkeypatch.setenv(flash3.LIBRARY_ENV, "/elsewhere/_C.so")
    assert flash3._candidate_libraries() == ["/elsewhere/_C.so"]


def test_the_cuda_runtime_a_build_links_is_loaded_from_beside_it(monkeypatch, tmp_path):
    """A CUDA 12 build under a CUDA 13 PyTorch: the loader's message names libcudart.so.12, found beside the library
    (or in the nvidia-cuda-runtime-cu12 wheel) and loaded globally before the library."""
    (tmp_path / "libcudart.so.12").write_bytes(b"")
    loaded = []
    monkeypatch.setattr(flash3.ctypes, "CDLL", lambda path, mode=0: loaded.append((path, mode)))
    error = OSError("libcudart.so.12: cannot open shared object file: No such file or directory")
    assert flash3._preload_cuda_runtime(str(tmp_path / "_C.so"), error)
    assert loaded == [(str(tmp_path / "libcudart.so.12"), flash3.ctypes.RTLD_GLOBAL)]
    assert not flash3._preload_cuda_runtime(
        str(tmp_path / "_C.so"), OSError("libfoo.so: cannot open shared object file")
    )


def test_a_build_without_kernels_for_the_head_size_is_caught_at_startup(monkeypatch):
    def missing_kernels(qkv, n_head):
        raise RuntimeError("This flash attention build does not support headdim 40.\nmore")

    monkeypatch.setattr(flash3, "causal_attention", missing_kernels)
    monkeypatch.setattr(flash3, "_trials", {})
    assert flash3._runs(torch.device("cpu"), torch.bfloat16, 40) == (
        "this FlashAttention-3 fails on heads of 40 (This flash attention build does not support headdim 40.)"
    )


def test_dropout_is_refused():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=40, dropout=0.1))
    with pytest.raises(ValueError, match="without dropout"):
        kernels.use_flash_attention_3(model)


def available() -> str | None:
    if not torch.cuda.is_available():
        return "no GPU"
    return flash3.flash3_unavailable(torch.device("cuda"), torch.bfloat16, 64)


def error(a, ref):
    return ((a.double() - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
@pytest.mark.cuda_in_process
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("batch,seq,heads", [(4, 1024, 25), (2, 100, 3)])
def test_attention_matches_a_float64_reference(batch, seq, heads, compiled):
    """GPT-2 XL's heads and a small odd shape: output and qkv gradient within bf16 rounding of float64 and no worse
    than PyTorch's SDPA in bf16; compiled, the same numbers as eager."""
    if reason := available():
        pytest.skip(reason)
    torch.manual_seed(0)
    C = heads * 64
    qkv = torch.randn(batch, seq, 3 * C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(batch, seq, C, device="cuda", dtype=torch.bfloat16)

    def sdpa(t):
        q, k, v = (x.view(batch, seq, heads, 64).transpose(1, 2) for x in t.split(C, dim=2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, C)

    def run(fn, t):
        t.grad = None
        out = fn(t)
        out.backward(g.to(t.dtype))
        return out.detach(), t.grad.clone()

    attend = lambda t: flash3.causal_attention(t, heads)
    out, grad = run(torch.compile(attend) if compiled else attend, qkv)
    plain_out, plain_grad = run(sdpa, qkv)
    ref_out, ref_grad = run(sdpa, qkv.detach().double().requires_grad_())
    assert error(out, ref_out) < 1e-2 and error(out, ref_out) <= 1.5 * error(plain_out, ref_out) + 1e-3
    assert error(grad, ref_grad) < 2e-2 and error(grad, ref_grad) <= 1.5 * error(plain_grad, ref_grad) + 1e-3
    if compiled:
        eager_out, _ = run(attend, qkv)
        assert torch.equal(out, eager_out)


@pytest.mark.gpu
@pytest.mark.cuda_in_process
def test_gpt_with_flash_attention_3_gives_the_sdpa_loss_and_gradients():
    if reason := available():
        pytest.skip(reason)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=256, block_size=128, vocab_size=500)
    torch.manual_seed(0)
    plain = GPT(cfg).cuda().bfloat16()
    fast = GPT(cfg).cuda().bfloat16()
    fast.load_state_dict(plain.state_dict())
    kernels.use_flash_attention_3(fast)
    idx = torch.randint(0, 500, (4, 128), device="cuda")
    losses, grads = [], []
    for model in (plain, fast):
        loss = model(idx, targets=idx)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.float() for p in model.parameters()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    for a, b in zip(*grads):
        assert error(b, a) < 3e-2
