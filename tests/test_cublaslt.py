"""cuBLASLt matmuls (zerotrain/kernels/cublaslt.py). The MLP with its GELU in cuBLASLt epilogues: the same function and
gradients as the plain MLP on CPU (where it runs as separate kernels), in the GPT, compiled, and recomputed; on a GPU
(marked gpu) the cuBLASLt epilogues against an fp32 reference. tuned_linear: F.linear's function and gradients, in
the GPT too, and on a GPU each way against a float64 reference."""

import pytest
import torch
import torch.nn.functional as F

from zerotrain import kernels
from zerotrain.kernels import cublaslt
from zerotrain.model import GPT, GPTConfig


def plain_mlp(x, fc_w, fc_b, proj_w, proj_b):
    return F.linear(F.gelu(F.linear(x, fc_w, fc_b), approximate="tanh"), proj_w, proj_b)


def mlp_inputs(dtype=torch.float64, device="cpu", tokens=(2, 5), width=8, scale=1.0):
    torch.manual_seed(0)
    shapes = [(*tokens, width), (4 * width, width), (4 * width,), (width, 4 * width), (width,)]
    return [(scale * torch.randn(s, dtype=torch.float32, device=device)).to(dtype).requires_grad_() for s in shapes]


def grads_of(fn, inputs, grad_out):
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad.clone() for t in inputs]


def test_gradients_are_those_of_the_plain_mlp():
    inputs = mlp_inputs()
    assert torch.autograd.gradcheck(cublaslt.gelu_mlp, inputs)
    g = torch.randn(2, 5, 8, dtype=torch.float64)
    out, grads = grads_of(cublaslt.gelu_mlp, inputs, g)
    ref_out, ref_grads = grads_of(plain_mlp, inputs, g)
    assert torch.allclose(out, ref_out, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-12)


def test_compiled_it_gives_the_same_gradients():
    inputs = mlp_inputs(torch.float32)
    g = torch.randn(2, 5, 8)
    compiled = torch.compile(cublaslt.gelu_mlp, dynamic=False)
    out, grads = grads_of(compiled, inputs, g)
    ref_out, ref_grads = grads_of(plain_mlp, inputs, g)
    assert torch.allclose(out, ref_out, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_frozen_weight_gets_no_gradient():
    x, fc_w, fc_b, proj_w, proj_b = mlp_inputs()
    fc_w.requires_grad_(False)
    cublaslt.gelu_mlp(x, fc_w, fc_b, proj_w, proj_b).sum().backward()
    assert fc_w.grad is None and fc_b.grad is not None and x.grad is not None


def test_the_gpt_trains_the_same_with_it_and_with_recomputation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=70))
    idx = torch.randint(0, 70, (2, 16))
    plain_loss = model(idx, idx)
    plain_loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    kernels.fuse_gelu(model)
    assert all(b.mlp.fused_gelu for b in model.transformer.h)
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        loss = model(idx, idx)
        loss.backward()
        assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
        for a, b in zip(plain, (p.grad for p in model.parameters())):
            assert torch.allclose(a, b, atol=1e-6)


def test_off_the_gpu_it_says_why_cublaslt_is_not_used():
    assert "cpu" in cublaslt.cublaslt_unavailable(torch.device("cpu"), torch.bfloat16)


def preset_ways(monkeypatch, tokens, width, forward, backward):
    """Make the ops run the named ways for this shape instead of timing them."""
    M, device = tokens[0] * tokens[1], torch.device("cuda", torch.cuda.current_device())
    if forward:
        monkeypatch.setitem(cublaslt.chosen, ("linear_gelu", device, M, 4 * width, width, torch.bfloat16), forward)
    if backward:
        monkeypatch.setitem(cublaslt.chosen, ("gelu_input_grad", device, M, 4 * width, width, torch.bfloat16), backward)


@pytest.mark.gpu
@pytest.mark.cuda_in_process
@pytest.mark.parametrize(
    "forward,backward",
    [
        ("GELU_AUX_BIAS", "DGELU_BGRAD"),
        ("GELU_AUX_BIAS", "DGELU"),
        ("separate kernels", "separate kernels"),
        (None, None),
    ],
)
@pytest.mark.parametrize("tokens,width", [((4, 1024), 1600), ((3, 100), 64), ((2, 7), 36)])
def test_each_way_matches_a_float64_reference(monkeypatch, tokens, width, forward, backward):
    """GPT-2 XL's MLP width, a small one, and one that always runs separate kernels (a width of 36 is not a multiple
    of 8); each way of each op (None: the one timed fastest) within bf16 rounding of float64, and no worse than the
    plain bf16 MLP."""
    assert cublaslt.cublaslt_unavailable(torch.device("cuda"), torch.bfloat16) is None
    preset_ways(monkeypatch, tokens, width, forward, backward)
    inputs = mlp_inputs(torch.bfloat16, "cuda", tokens, width, scale=0.5)
    g = 0.1 * torch.randn(*tokens, width, device="cuda", dtype=torch.bfloat16)
    out, grads = grads_of(cublaslt.gelu_mlp, inputs, g)
    unfused_out, unfused_grads = grads_of(plain_mlp, inputs, g)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_out, ref_grads = grads_of(plain_mlp, ref_inputs, g.double())

    def error(a, ref):
        return ((a.double() - ref).norm() / ref.norm()).item()

    assert error(out, ref_out) < 1e-2
    assert error(out, ref_out) <= 1.5 * error(unfused_out, ref_out) + 1e-3
    for a, u, r in zip(grads, unfused_grads, ref_grads):
        assert error(a, r) < 2e-2
        assert error(a, r) <= 1.5 * error(u, r) + 1e-3


@pytest.mark.gpu
@pytest.mark.cuda_in_process
def test_every_way_is_timed_at_gpt2_xl_shapes():
    inputs = mlp_inputs(torch.bfloat16, "cuda", (8, 1024), 1600, scale=0.5)
    cublaslt.gelu_mlp(*inputs).sum().backward()
    device = torch.device("cuda", torch.cuda.current_device())
    forward = cublaslt.timings[("linear_gelu", device, 8192, 6400, 1600, torch.bfloat16)]
    backward = cublaslt.timings[("gelu_input_grad", device, 8192, 6400, 1600, torch.bfloat16)]
    assert set(forward) == {"GELU_AUX_BIAS", "separate kernels"}
    assert set(backward) == {"DGELU_BGRAD", "DGELU", "separate kernels"}
    assert all(0 < ms < 100 for ms in [*forward.values(), *backward.values()])


@pytest.mark.parametrize("bias", [True, False])
def test_tuned_linear_is_a_linear_layer(bias):
    """tuned_linear's forward and its two gradient matmuls (PyTorch's kernels off the GPU) are F.linear's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    assert torch.autograd.gradcheck(cublaslt.tuned_linear, (x, w, b))
    inputs = [t for t in (x, w, b) if t is not None]
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    out, grads = grads_of(lambda *t: cublaslt.tuned_linear(*t), inputs, g)
    ref_out, ref_grads = grads_of(lambda *t: F.linear(*t), inputs, g)
    assert torch.allclose(out, ref_out, atol=1e-12)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-12)


def test_gpt_with_tuned_matmuls_gives_the_plain_loss_and_gradients():
    """kernels.tune_matmuls() reroutes the attention, MLP and fused-loss matmuls; the loss and every gradient stay put."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=40)
    torch.manual_seed(0)
    plain = GPT(cfg).double()
    tuned = GPT(cfg).double()
    tuned.load_state_dict(plain.state_dict())
    kernels.tune_matmuls(tuned)
    idx = torch.randint(0, 40, (2, 8))
    losses, grads = [], []
    for model in (plain, tuned):
        loss = model(idx, targets=idx)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad for p in model.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.cuda_in_process
@pytest.mark.parametrize("way", ["PyTorch", "cuBLASLt", None])
@pytest.mark.parametrize(
    "tokens,width,out,bias", [(4096, 1600, 4800, True), (4096, 1600, 1600, False), (100, 64, 56, True)]
)
def test_tuned_linear_matches_a_float64_reference(monkeypatch, way, tokens, width, out, bias):
    """Each way of tuned_linear's three matmuls (None: the one timed fastest) within bf16 rounding of float64, and
    no worse than F.linear in bf16."""
    device = torch.device("cuda", torch.cuda.current_device())
    if way is not None:
        for key in (
            ("linear_out", device, tokens, out, width, torch.bfloat16, bias),
            ("matmul_nn", device, tokens, out, width, torch.bfloat16),
            ("matmul_tn", device, tokens, out, width, torch.bfloat16),
        ):
            monkeypatch.setitem(cublaslt.chosen, key, way)
    torch.manual_seed(0)
    shapes = [(tokens, width), (out, width)] + ([(out,)] if bias else [])
    inputs = [(0.5 * torch.randn(s, device="cuda")).to(torch.bfloat16).requires_grad_() for s in shapes]
    g = 0.1 * torch.randn(tokens, out, device="cuda", dtype=torch.bfloat16)
    got, got_grads = grads_of(lambda *t: cublaslt.tuned_linear(*t), inputs, g)
    plain, plain_grads = grads_of(lambda *t: F.linear(*t), inputs, g)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref, ref_grads = grads_of(lambda *t: F.linear(*t), ref_inputs, g.double())

    def error(a, r):
        return ((a.double() - r).norm() / r.norm()).item()

    assert error(got, ref) < 1e-2 and error(got, ref) <= 1.5 * error(plain, ref) + 1e-3
    for a, p, r in zip(got_grads, plain_grads, ref_grads):
        assert error(a, r) < 2e-2 and error(a, r) <= 1.5 * error(p, r) + 1e-3
    if way is None and width == 1600:
        timed = cublaslt.timings[("linear_out", device, tokens, out, width, torch.bfloat16, bias)]
        assert set(timed) == {"PyTorch", "cuBLASLt"} and all(0 < ms < 100 for ms in timed.values())


def test_a_chosen_way_without_an_algorithm_falls_back_to_the_reference(monkeypatch):
    """The choice is made per shape, cuBLASLt's plans per shape and alignment: where the chosen way finds no algorithm
    for a later call (it returns None), the reference way's result comes back instead of None."""
    monkeypatch.setitem(cublaslt.chosen, ("test", 1), "cuBLASLt")
    assert (
        cublaslt._fastest(("test", 1), {"PyTorch": lambda: "reference", "cuBLASLt": lambda: None}, reference="PyTorch")
        == "reference"
    )
    assert (
        cublaslt._fastest(
            ("test", 1), {"PyTorch": lambda: "reference", "cuBLASLt": lambda: "fused"}, reference="PyTorch"
        )
        == "fused"
    )
