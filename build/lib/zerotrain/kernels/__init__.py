"""Optional fast kernels for zerotrain's GPT, in one place.

model.py has one plain forward. `apply` decides, from the run's auto/on/off switches, which fast paths this
machine can run, swaps the model's modules for the subclasses below (same parameters, same names, same state
dict) and returns what it applied for the startup line:

- train.fused_gelu: the MLP's GELU inside cuBLASLt's matmul epilogues (cublaslt.gelu_mlp);
- train.tuned_matmuls: every attention, MLP and loss matmul by the faster of PyTorch's kernel and cuBLASLt's best
  candidate for its shape (cublaslt.tuned_linear and friends);
- train.flash_attention_3: the attention through FlashAttention-3's Hopper kernels (flash3.causal_attention).

Where a fast path cannot run (CPU, fp32, no library), the swapped modules compute the same function with PyTorch's
kernels, or the module is left as it is; an impossible "on" raises one UserError naming the reason and the fix.
What each gains, measured: docs/benchmarks.md and docs/performance.md.
"""

import torch
import torch.nn.functional as F

from zerotrain import UserError
from zerotrain.kernels import cublaslt, flash3
from zerotrain.kernels.cublaslt import gelu_mlp, linear_out, matmul_nn, matmul_tn, tuned_linear
from zerotrain.model import GPT, MLP, CausalSelfAttention


class FastAttention(CausalSelfAttention):
    """CausalSelfAttention with tuned matmuls and/or FlashAttention-3. The linears call their weights directly,
    so under ZeRO-3 each block's parameters must be gathered whole."""

    tuned_matmuls = False
    flash_attention_3 = False

    def forward(self, x):
        qkv = self.linear(self.c_attn, x)  # (B, T, 3C)
        if self.flash_attention_3:
            y = flash3.causal_attention(qkv, self.n_head)  # (B, T, C): FA3 takes the projection's layout as it is
        else:
            y = self.attend(qkv)
        return self.resid_dropout(self.linear(self.c_proj, y))

    def linear(self, layer: torch.nn.Linear, x):
        return tuned_linear(x, layer.weight, layer.bias) if self.tuned_matmuls else layer(x)


class FastMLP(MLP):
    """MLP with its GELU in cuBLASLt epilogues and/or tuned matmuls; computes the plain MLP's function."""

    fused_gelu = False
    tuned_matmuls = False

    def forward(self, x):
        if self.fused_gelu:
            return self.dropout(gelu_mlp(x, self.c_fc.weight, self.c_fc.bias, self.c_proj.weight, self.c_proj.bias,
                                         tuned=self.tuned_matmuls))
        if self.tuned_matmuls:
            h = F.gelu(tuned_linear(x, self.c_fc.weight, self.c_fc.bias), approximate="tanh")
            return self.dropout(tuned_linear(h, self.c_proj.weight, self.c_proj.bias))
        return super().forward(x)


TUNED_LOSS_MATMULS = ((lambda h, w: linear_out(h, w, None)), matmul_nn, matmul_tn)  # model.TORCH_MATMULS's three


def _swap(module: torch.nn.Module, cls: type) -> None:
    """Give a module the fast subclass of its class in place: parameters, hooks and names stay as they are."""
    if not isinstance(module, cls):
        module.__class__ = cls


def fuse_gelu(model: GPT) -> None:
    """Each MLP's GELU inside its matmuls' cuBLASLt epilogues (elsewhere the same function in separate kernels)."""
    for block in model.transformer.h:
        _swap(block.mlp, FastMLP)
        block.mlp.fused_gelu = True


def tune_matmuls(model: GPT) -> None:
    """Every matmul of the attention and MLP layers and of the fused loss by the faster of PyTorch's kernel and
    cuBLASLt's best candidate, timed per shape on first use (off the GPU, and in fp32, PyTorch's kernels run)."""
    for block in model.transformer.h:
        _swap(block.attn, FastAttention)
        _swap(block.mlp, FastMLP)
        block.attn.tuned_matmuls = block.mlp.tuned_matmuls = True
    model.lm_head.matmuls = TUNED_LOSS_MATMULS


def use_flash_attention_3(model: GPT) -> None:
    """Each block's attention through FlashAttention-3 (which has no dropout; flash3.flash3_unavailable() says where
    it cannot run)."""
    if model.config.dropout:
        raise ValueError(f"FlashAttention-3 runs without dropout and this model has dropout {model.config.dropout}")
    for block in model.transformer.h:
        _swap(block.attn, FastAttention)
        block.attn.flash_attention_3 = True


def apply(model: GPT, train_cfg, device: torch.device, dtype: str, *, compiled: bool, zero_stage: int,
          whole_blocks: bool) -> list[str]:
    """Swap in the fast paths the run's switches ask for and this machine can run; returns what was applied.

    "auto" applies the cuBLASLt paths with compiled blocks (where they were measured to help) and FlashAttention-3
    wherever it runs; "on" applies them regardless; "off" never. The cuBLASLt paths read their layers' weights
    themselves, so at ZeRO-3 they need each block gathered whole (`whole_blocks`)."""
    def wanted(switch: str) -> bool:
        return (switch == "on" or (switch == "auto" and compiled)) and (zero_stage < 3 or whole_blocks)

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    why_not = cublaslt.cublaslt_unavailable(device, torch_dtype)
    applied = []
    if wanted(train_cfg.fused_gelu):
        fuse_gelu(model)  # off the GPU, and in fp32, the same function runs as separate kernels
        applied.append("GELU in cuBLASLt epilogues" if why_not is None else f"fused MLP with the GELU in separate kernels ({why_not})")
    if wanted(train_cfg.tuned_matmuls):
        tune_matmuls(model)  # off the GPU, and in fp32, PyTorch's kernels run
        applied += ["matmul kernels timed per shape"] if why_not is None else []
    if train_cfg.flash_attention_3 != "off" and not model.config.dropout:
        why_not_flash3 = flash3.flash3_unavailable(device, torch_dtype, model.config.n_embd // model.config.n_head)
        if why_not_flash3 is None:
            use_flash_attention_3(model)
            applied.append("FlashAttention-3")
        elif train_cfg.flash_attention_3 == "on":
            raise UserError(f'train.flash_attention_3 = "on" but FlashAttention-3 cannot run here: {why_not_flash3}; '
                            'install it, or set train.flash_attention_3 = "auto" to train with PyTorch\'s attention')
    return applied
