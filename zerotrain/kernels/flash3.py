"""GPT's causal attention through FlashAttention-3's Hopper kernels (train.flash_attention_3).

On H100/H200, PyTorch 2.11's fastest attention backend at GPT-2's head size of 64 is cuDNN's; FlashAttention-3 runs the
forward and backward of GPT-2 XL's attention faster than cuDNN (its forward is slower, its backward faster;
benchmarks/attention_speed.py, with the figures in docs/benchmarks.md). FlashAttention-3 is not part of PyTorch:
it is the `flash_attn_3` package built from flash-attention's hopper/ directory, and xformers 0.0.34 ships a build of
it (xformers/flash_attn_3/_C.so, made for PyTorch's stable ABI, so it loads into later PyTorch versions too; it links
CUDA 12's runtime, which a CUDA 13 PyTorch finds in the nvidia-cuda-runtime-cu12 wheel). Whichever is installed
registers the operators torch.ops.flash_attn_3.fwd and .bwd; ZEROTRAIN_FLASH3_LIBRARY may name the _C.so to load.

The attention takes the (B, T, 3C) output of the qkv projection as it is: q, k and v are strided (B, T, H, D) views of
it, FlashAttention's own layout, so nothing is transposed or copied; its output is already (B, T, C) for c_proj, and
the backward writes the q, k and v gradients straight into one (B, T, 3C) tensor. Wrapped as custom operators with
autograd, so compiled blocks keep it as one opaque call.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import importlib.util
import os
import re

import torch
from torch import Tensor

LIBRARY_ENV = "ZEROTRAIN_FLASH3_LIBRARY"
_load_error: str | None = None
_loaded = False


def _registered() -> bool:
    return hasattr(torch.ops.flash_attn_3, "fwd") and hasattr(torch.ops.flash_attn_3, "bwd")


# xformers ships FlashAttention-3 inside its private layout (xformers/flash_attn_3/_C.so), which is no API: it is used
# only from the releases whose build was checked (operators, arguments, results); another release is passed over.
XFORMERS_WITH_KNOWN_FLASH3 = ("0.0.34",)


def _xformers_version() -> str | None:
    try:
        return importlib.metadata.version("xformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _candidate_libraries() -> list[str]:
    """The flash_attn_3 package's own library first (its public home), then xformers' copy in a checked release."""
    if os.environ.get(LIBRARY_ENV):
        return [os.environ[LIBRARY_ENV]]
    found = []
    for package in ("flash_attn_3", "xformers"):
        if package == "xformers" and _xformers_version() not in XFORMERS_WITH_KNOWN_FLASH3:
            continue
        spec = importlib.util.find_spec(package)
        for where in (spec.submodule_search_locations or []) if spec else []:
            inner = where if package == "flash_attn_3" else os.path.join(where, "flash_attn_3")
            found += sorted(glob.glob(os.path.join(inner, "_C*.so")))
    return found


def _preload_cuda_runtime(library: str, error: OSError) -> bool:
    """A FlashAttention-3 built against another CUDA major than PyTorch's needs that runtime, libcudart.so.N: look for it
    beside the library and in the nvidia-cuda-runtime wheels, and load it globally. Returns whether one was loaded."""
    wanted = re.search(r"(libcudart\.so\.\d+)", str(error))
    if not wanted:
        return False
    places = [os.path.dirname(library)]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        places += glob.glob(os.path.join(root, "*", "lib"))
    for place in places:
        path = os.path.join(place, wanted.group(1))
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return True
    return False


def _load() -> str | None:
    """Register torch.ops.flash_attn_3 once; returns why it cannot be, or None."""
    global _loaded, _load_error
    if _loaded:
        return _load_error
    _loaded = True
    libraries = [] if _registered() else _candidate_libraries()
    for library in libraries:
        try:
            try:
                ctypes.CDLL(library)  # the loader's own message, where torch.ops.load_library says only that it failed
            except OSError as e:
                if not _preload_cuda_runtime(library, e):
                    raise
            torch.ops.load_library(library)
        except OSError as e:
            _load_error = f"{library} does not load ({str(e).splitlines()[0]})"
            return _load_error
        if _registered():
            break
    if not _registered():
        other = _xformers_version()
        other = (
            f"; xformers {other} is installed, whose build zerotrain has not checked"
            if other and other not in XFORMERS_WITH_KNOWN_FLASH3
            else ""
        )
        _load_error = (
            "FlashAttention-3 is not installed (the flash_attn_3 package built from flash-attention's hopper/, "
            f"or xformers {' or '.join(XFORMERS_WITH_KNOWN_FLASH3)}, which ships a build; or set {LIBRARY_ENV} to its _C.so{other})"
        )
    else:
        for op, args in (
            (torch.ops.flash_attn_3.fwd, ("softmax_scale", "is_causal", "num_splits")),
            (torch.ops.flash_attn_3.bwd, ("dq", "dk", "dv", "softmax_scale", "is_causal")),
        ):
            names = {a.name for a in op.default._schema.arguments}
            if not names.issuperset(args):
                _load_error = f"this FlashAttention-3's {op.default._schema.name} takes other arguments than zerotrain calls it with"
    return _load_error


def flash3_unavailable(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why GPT's attention cannot run FlashAttention-3 on this device, dtype and head size; None when it can."""
    if device.type != "cuda":
        return f"{device.type} tensors (FlashAttention-3 is for Hopper GPUs)"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"a GPU of compute capability {major}.{minor} (FlashAttention-3 is for Hopper, 9.0)"
    if dtype not in (torch.bfloat16, torch.float16):
        return f"{dtype} tensors (FlashAttention-3 runs bf16 and fp16)"
    if head_dim % 8 or head_dim > 256:
        return f"heads of {head_dim} (FlashAttention-3 takes multiples of 8 up to 256)"
    return _load() or _runs(device, dtype, head_dim)


_trials: dict[tuple, str | None] = {}


def _runs(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """One tiny forward and backward at this head size: a build may leave out kernels (FlashAttention-3 compiles each
    head size apart), and a run should learn that at startup, not in its first step. Returns why it failed, or None."""
    key = (device, dtype, head_dim)
    if key not in _trials:
        try:
            qkv = torch.randn(1, 16, 3 * head_dim, device=device, dtype=dtype, requires_grad=True)
            causal_attention(qkv, 1).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            _trials[key] = None
        except RuntimeError as e:
            _trials[key] = f"this FlashAttention-3 fails on heads of {head_dim} ({str(e).splitlines()[0][:200]})"
    return _trials[key]


def _heads(t: Tensor, n_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v as strided (B, T, H, D) views of a (B, T, 3C) tensor."""
    B, T, three_c = t.shape
    return t.view(B, T, 3, n_head, three_c // (3 * n_head)).unbind(2)


@torch.library.custom_op("zerotrain::flash3_causal_attention", mutates_args=())
def _attention(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    q, k, v = _heads(qkv.contiguous(), n_head)
    out, lse, *_ = torch.ops.flash_attn_3.fwd(q, k, v, softmax_scale=q.size(-1) ** -0.5, is_causal=True, num_splits=1)
    B, T, three_c = qkv.shape
    return out.view(B, T, three_c // 3), lse


@_attention.register_fake
def _(qkv, n_head):
    B, T, three_c = qkv.shape
    return qkv.new_empty(B, T, three_c // 3), qkv.new_empty(B, n_head, T, dtype=torch.float32)


@torch.library.custom_op("zerotrain::flash3_causal_attention_backward", mutates_args=())
def _attention_backward(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, n_head: int) -> Tensor:
    qkv = qkv.contiguous()
    grad_qkv = torch.empty_like(qkv)
    q, k, v = _heads(qkv, n_head)
    dq, dk, dv = _heads(grad_qkv, n_head)
    B, T, _ = out.shape
    torch.ops.flash_attn_3.bwd(
        grad_out.contiguous().view(B, T, n_head, -1),
        q,
        k,
        v,
        out.view(B, T, n_head, -1),
        lse,
        dq,
        dk,
        dv,
        softmax_scale=q.size(-1) ** -0.5,
        is_causal=True,
    )
    return grad_qkv


@_attention_backward.register_fake
def _(grad_out, qkv, out, lse, n_head):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)
    ctx.n_head = inputs[1]


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    return _attention_backward(grad_out, qkv, out, lse, ctx.n_head), None


_attention.register_autograd(_backward, setup_context=_save)


def causal_attention(qkv: Tensor, n_head: int) -> Tensor:
    """softmax(q k^T / sqrt(D), causal) v for the (B, T, 3C) qkv projection, as (B, T, C): what
    F.scaled_dot_product_attention(q, k, v, is_causal=True) gives, with heads concatenated."""
    return _attention(qkv, n_head)[0]
