"""GPT matmuls through cuBLASLt, each timed against PyTorch's kernel on first use.

1. The GPT MLP, c_proj(gelu(c_fc(x))), with the GELU done inside cuBLASLt's matmul epilogues, as llm.c runs it
   (`gelu_mlp`, train.fused_gelu). Forward: one cuBLASLt matmul with the GELU_AUX_BIAS epilogue writes
   h = gelu(x @ W_fc^T + b_fc) and, beside it, the pre-activation the backward needs. Backward: the projection's
   input-gradient matmul runs with the DGELU epilogue, which multiplies by gelu'(pre) as it writes grad_pre
   (DGELU_BGRAD would also sum the c_fc bias gradient, but its reduction makes the matmul three times slower on an
   H200). Done as separate kernels, the GELU reads and writes the (tokens, 4·n_embd) activations once more each way.
   cuBLASLt's GELU is the tanh approximation GPT-2 uses. It was measured faster inside compiled blocks and slower
   eager (docs/benchmarks.md), so train.fused_gelu = "auto" uses it with compiled blocks only.
2. Linear layers whose three matmuls (output, input gradient, weight gradient) each run the faster of PyTorch's
   kernel and the best of the algorithms cuBLASLt's heuristic offers for the shape (`tuned_linear`, `linear_out`,
   `matmul_nn`, `matmul_tn`; train.tuned_matmuls). PyTorch asks for one algorithm; at GPT-2 XL's shapes on an H200 a
   later candidate is faster for the forward matmuls (benchmarks/matmul_algos.py, docs/benchmarks.md), while
   PyTorch's gradient matmuls are as fast as any.

Each op times its ways (epilogues, cuBLASLt's candidates, PyTorch's kernels) on its first call for a shape and keeps
the fastest, so a GPU where cuBLASLt is slow keeps PyTorch's kernels. cuBLASLt is called through ctypes from the
libcublasLt that PyTorch itself loads, so nothing is compiled. Where it cannot run (CPU, fp32, a shape it has no
algorithm for) the ops run PyTorch's kernels, so every op computes the same function everywhere;
`cublaslt_unavailable()` says why cuBLASLt is not used.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

# cuBLASLt ABI constants (cublasLt.h, cublas_api.h, library_types.h of CUDA 12 and 13; they are part of the ABI).
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD, _DESC_BIAS_DATA_TYPE = 11, 12, 26
_PREF_MAX_WORKSPACE_BYTES = 1
_PREF_MIN_ALIGNMENT_A, _PREF_MIN_ALIGNMENT_B, _PREF_MIN_ALIGNMENT_C, _PREF_MIN_ALIGNMENT_D = 5, 6, 7, 8
_EPILOGUE_DEFAULT, _EPILOGUE_BIAS = 1, 4
_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4
_EPILOGUE_DGELU = 64 | 128
_EPILOGUE_DGELU_BGRAD = _EPILOGUE_DGELU | 16
_CANDIDATES = 8  # algorithms asked of cuBLASLt's heuristic per shape; the fastest on the first call is kept
_WORKSPACE_BYTES = 32 << 20  # what cuBLAS itself reserves per handle on Hopper
_DTYPES = {torch.bfloat16: _CUDA_R_16BF, torch.float16: _CUDA_R_16F}


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Heuristic(ctypes.Structure):
    _fields_ = [("algo", _Algo), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def _alignment(t: Tensor) -> int:
    """The largest power of two up to 256 dividing the tensor's address: cuBLASLt picks kernels for an alignment."""
    ptr = t.data_ptr()
    return min(256, ptr & -ptr) if ptr else 256


class _CublasLt:
    """One libcublasLt handle and workspace per device, and one prepared matmul (descriptors and the algorithm its
    heuristic picks) per shape, epilogue and operand alignment; a call then only sets the data pointers and launches
    on the current stream."""

    def __init__(self, lib: ctypes.CDLL):
        p, i32, u64, i64, size = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
        signatures = {
            "cublasLtCreate": [p],
            "cublasLtMatmulDescCreate": [p, i32, i32],
            "cublasLtMatmulDescSetAttribute": [p, i32, p, size],
            "cublasLtMatmulDescDestroy": [p],
            "cublasLtMatrixLayoutCreate": [p, i32, u64, u64, i64],
            "cublasLtMatrixLayoutDestroy": [p],
            "cublasLtMatmulPreferenceCreate": [p],
            "cublasLtMatmulPreferenceSetAttribute": [p, i32, p, size],
            "cublasLtMatmulPreferenceDestroy": [p],
            "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, ctypes.c_int, ctypes.POINTER(_Heuristic), ctypes.POINTER(ctypes.c_int)],
            "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, ctypes.POINTER(_Algo), p, size, p],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        self.lib = lib
        self.handles: dict[int, ctypes.c_void_p] = {}
        self.workspaces: dict[int, Tensor] = {}
        self.plans: dict[tuple, tuple | None] = {}
        self.timings: dict[tuple, list[float]] = {}  # ms per call of each candidate algorithm, for benchmarks/gelu_mlp_speed.py
        self.lock = threading.Lock()  # forward runs on the main thread, backward on autograd's

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"cuBLASLt {what} failed with status {status}")

    def _set(self, desc, attr: int, value) -> None:
        self._check(self.lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value), ctypes.sizeof(value)),
                    f"matmul attribute {attr}")

    def _device(self, device: torch.device) -> tuple[ctypes.c_void_p, Tensor]:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self.handles:
            handle = ctypes.c_void_p()
            with torch.cuda.device(index):
                self._check(self.lib.cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
            self.handles[index] = handle
            self.workspaces[index] = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", index))
        return self.handles[index], self.workspaces[index]

    def _plan(self, handle, m: int, n: int, k: int, transpose_a: bool, epilogue: int, dtype: int, bias: Tensor | None,
              aux: Tensor, alignments: tuple[int, int, int], transpose_b: bool = False, candidates: int = _CANDIDATES):
        """Descriptors for column-major D (m, n) = op(A) (m, k) @ op(B) (k, n) with one epilogue, and the algorithms
        cuBLASLt's heuristic offers for them, best first (at most `candidates`); None where it has none."""
        lib = self.lib
        desc = ctypes.c_void_p()
        self._check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _CUBLAS_COMPUTE_32F, _CUDA_R_32F), "matmul descriptor")
        self._set(desc, _DESC_TRANSA, ctypes.c_int32(_CUBLAS_OP_T if transpose_a else _CUBLAS_OP_N))
        self._set(desc, _DESC_TRANSB, ctypes.c_int32(_CUBLAS_OP_T if transpose_b else _CUBLAS_OP_N))
        self._set(desc, _DESC_EPILOGUE, ctypes.c_uint32(epilogue))
        self._set(desc, _DESC_AUX_LD, ctypes.c_int64(m))
        # The heuristic reads the aux and bias addresses for their alignment, so the first call's are set here.
        self._set(desc, _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        if bias is not None:
            self._set(desc, _DESC_BIAS_DATA_TYPE, ctypes.c_int32(dtype))
            self._set(desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
        layouts = []
        for rows, cols in ((k, m) if transpose_a else (m, k), (n, k) if transpose_b else (k, n), (m, n)):
            layout = ctypes.c_void_p()
            self._check(lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), dtype, rows, cols, rows), "matrix layout")
            layouts.append(layout)
        pref = ctypes.c_void_p()
        self._check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "matmul preference")
        prefs = [(_PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(_WORKSPACE_BYTES))]
        align_a, align_b, align_d = alignments
        prefs += [(_PREF_MIN_ALIGNMENT_A, ctypes.c_uint32(align_a)), (_PREF_MIN_ALIGNMENT_B, ctypes.c_uint32(align_b)),
                  (_PREF_MIN_ALIGNMENT_C, ctypes.c_uint32(align_d)), (_PREF_MIN_ALIGNMENT_D, ctypes.c_uint32(align_d))]
        for attr, value in prefs:
            self._check(lib.cublasLtMatmulPreferenceSetAttribute(pref, attr, ctypes.byref(value), ctypes.sizeof(value)),
                        f"matmul preference {attr}")
        results, found = (_Heuristic * candidates)(), ctypes.c_int(0)
        status = lib.cublasLtMatmulAlgoGetHeuristic(handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref,
                                                    candidates, results, ctypes.byref(found))
        lib.cublasLtMatmulPreferenceDestroy(pref)
        algos = [results[i].algo for i in range(found.value) if results[i].state == 0] if status == 0 else []
        if not algos:
            for layout in layouts:
                lib.cublasLtMatrixLayoutDestroy(layout)
            lib.cublasLtMatmulDescDestroy(desc)
            return None
        return desc, layouts, algos

    def _launch(self, algo, handle, desc, layouts, a, b, d, workspace, stream) -> None:
        one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
        self._check(self.lib.cublasLtMatmul(handle, desc, ctypes.byref(one), a.data_ptr(), layouts[0], b.data_ptr(), layouts[1],
                                            ctypes.byref(zero), d.data_ptr(), layouts[2], d.data_ptr(), layouts[2],
                                            ctypes.byref(algo), workspace.data_ptr(), _WORKSPACE_BYTES, stream), "cublasLtMatmul")

    def _time(self, algo, args, stream, repeats: int = 5) -> float:
        """Milliseconds per call of one candidate algorithm, on the call's own tensors (outputs are rewritten after)."""
        try:
            self._launch(algo, *args)
        except RuntimeError:
            return float("inf")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(repeats):
            self._launch(algo, *args)
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end) / repeats

    def matmul(self, m: int, n: int, k: int, transpose_a: bool, a: Tensor, b: Tensor, d: Tensor, epilogue: int,
               bias: Tensor | None, aux: Tensor, transpose_b: bool = False) -> bool:
        """Column-major d (m, n) = op(a) (m, k) @ op(b) (k, n) with the epilogue, on the current stream; False (and
        nothing written) where cuBLASLt has no algorithm for it."""
        dtype = _DTYPES[d.dtype]
        alignments = (_alignment(a), _alignment(b), _alignment(d))
        key = (d.device, m, n, k, transpose_a, transpose_b, epilogue, dtype, alignments, _alignment(aux),
               None if bias is None else _alignment(bias))
        with self.lock:
            handle, workspace = self._device(d.device)
            if key not in self.plans:
                self.plans[key] = self._plan(handle, m, n, k, transpose_a, epilogue, dtype, bias, aux, alignments, transpose_b)
            plan = self.plans[key]
            if plan is None:
                return False
            desc, layouts, algos = plan
            self._set(desc, _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
            if bias is not None:
                self._set(desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
            stream = torch.cuda.current_stream(d.device)
            args = (handle, desc, layouts, a, b, d, workspace, stream.cuda_stream)
            if len(algos) > 1:  # first call of this shape: time the heuristic's candidates and keep the fastest
                self.timings[key] = [self._time(algo, args, stream) for algo in algos]
                algos = [algos[min(range(len(algos)), key=self.timings[key].__getitem__)]]
                self.plans[key] = (desc, layouts, algos)
            self._launch(algos[0], *args)
        return True


_lib: _CublasLt | None = None
_lib_error: str | None = None


def _libcublaslt_path() -> str | None:
    """The libcublasLt PyTorch loaded (its CUDA build links it), else the CUDA wheels' or the system's."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcublasLt.so" in os.path.basename(path):
                    return path
    except OSError:
        pass
    for root in torch.__path__:
        found = sorted(glob.glob(os.path.join(os.path.dirname(root), "nvidia", "*", "lib", "libcublasLt.so*")))
        if found:
            return found[-1]
    return ctypes.util.find_library("cublasLt")


def _cublaslt() -> _CublasLt | None:
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        if not torch.cuda.is_available():
            _lib_error = "no CUDA device"
        elif (path := _libcublaslt_path()) is None:
            _lib_error = "libcublasLt not found"
        else:
            try:
                _lib = _CublasLt(ctypes.CDLL(path))
            except OSError as e:
                _lib_error = f"cannot load {path}: {e}"
    return _lib


def cublaslt_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the GELU cannot go into cuBLASLt epilogues for tensors of this device and dtype; None when it can."""
    if device.type != "cuda":
        return f"{device.type} tensors (cuBLASLt is CUDA's)"
    if dtype not in _DTYPES:
        return f"{dtype} tensors (the fused epilogues are used in bf16 and fp16)"
    return _lib_error if _cublaslt() is None else None


def _fusable(*tensors: Tensor) -> bool:
    # cuBLASLt wants 16-byte-aligned operands and leading dimensions in multiples of 8 (the aux matrix's must be).
    t0 = tensors[0]
    return (t0.is_cuda and t0.dtype in _DTYPES and _cublaslt() is not None
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 and t.dtype == t0.dtype and t.shape[-1] % 8 == 0 for t in tensors))


# The way each op runs for a (device, shape, dtype), picked by timing on its first call: on an H200 with cuBLAS 13
# GELU_AUX_BIAS beats a matmul and a separate GELU kernel, while DGELU_BGRAD's bias-gradient reduction makes it three
# times slower than a plain matmul (benchmarks/gelu_mlp_speed.py; docs/performance.md). Tests may preset it.
chosen: dict[tuple, str] = {}
timings: dict[tuple, dict[str, float]] = {}  # ms per call of each way, for benchmarks/gelu_mlp_speed.py


def _time_ms(way, repeats: int = 3) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        way()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def _fastest(key: tuple, ways: dict, reference: str = "separate kernels"):
    """Run the way chosen for key; on key's first call, time every way that can run (a way returns None where
    cuBLASLt has no algorithm) and choose the fastest."""
    if key not in chosen:
        times = {name: _time_ms(way) for name, way in ways.items() if way() is not None}
        # another way must beat the reference by 2%, so near-ties keep PyTorch's kernels rather than flip from run to run
        timings[key], chosen[key] = times, min(times, key=lambda name: times[name] * (0.98 if name == reference else 1))
    out = ways[chosen[key]]()
    # the choice is per shape, cuBLASLt's plans per shape and operand alignment: where a later call's alignment has no
    # algorithm, the reference kernels run
    return out if out is not None else ways[reference]()


@torch.library.custom_op("zerotrain::linear_gelu", mutates_args=())
def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """x (M, K), weight (N, K), bias (N) -> (gelu_tanh(pre), pre) with pre = x @ weight^T + bias, both (M, N)."""
    (M, K), N = x.shape, weight.shape[0]

    def separate_kernels():
        pre = torch.addmm(bias, x, weight.t())
        return F.gelu(pre, approximate="tanh"), pre

    def gelu_aux_bias():
        h, pre = x.new_empty(M, N), x.new_empty(M, N)
        # Column-major h^T (N, M) = weight (stored K x N column-major)^T @ x^T (K, M).
        return (h, pre) if _lib.matmul(N, M, K, True, weight, x, h, _EPILOGUE_GELU_AUX_BIAS, bias, pre) else None

    if _fusable(x, weight, bias) and N % 8 == 0:
        return _fastest(("linear_gelu", x.device, M, N, K, x.dtype),
                        {"GELU_AUX_BIAS": gelu_aux_bias, "separate kernels": separate_kernels})
    return separate_kernels()


@linear_gelu.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("zerotrain::gelu_input_grad", mutates_args=())
def gelu_input_grad(grad_out: Tensor, weight: Tensor, pre: Tensor) -> tuple[Tensor, Tensor]:
    """The backward of out = gelu_tanh(pre) @ weight^T into pre: grad_out (M, K), weight (K, N), pre (M, N) ->
    (grad_pre = (grad_out @ weight) * gelu_tanh'(pre), grad_pre summed over rows: the bias gradient of the layer
    that produced pre)."""
    (M, K), N = grad_out.shape, weight.shape[1]

    def separate_kernels():
        grad_pre = torch.ops.aten.gelu_backward(grad_out @ weight, pre, approximate="tanh")
        return grad_pre, grad_pre.sum(0)

    # Column-major grad_pre^T (N, M) = weight (stored N x K column-major) @ grad_out^T (K, M).
    def dgelu_bgrad():
        grad_pre, grad_bias = pre.new_empty(M, N), pre.new_empty(N)
        return (grad_pre, grad_bias) if _lib.matmul(N, M, K, False, weight, grad_out, grad_pre, _EPILOGUE_DGELU_BGRAD, grad_bias, pre) else None

    def dgelu():
        grad_pre = pre.new_empty(M, N)
        return (grad_pre, grad_pre.sum(0)) if _lib.matmul(N, M, K, False, weight, grad_out, grad_pre, _EPILOGUE_DGELU, None, pre) else None

    if _fusable(grad_out, weight, pre):
        return _fastest(("gelu_input_grad", pre.device, M, N, K, pre.dtype),
                        {"DGELU_BGRAD": dgelu_bgrad, "DGELU": dgelu, "separate kernels": separate_kernels})
    return separate_kernels()


@gelu_input_grad.register_fake
def _(grad_out, weight, pre):
    return pre.new_empty(pre.shape), pre.new_empty(pre.shape[1])


@torch.library.custom_op("zerotrain::linear_out", mutates_args=())
def linear_out(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (M, K), weight (N, K), bias (N) or None -> x @ weight^T + bias (M, N), by the faster of PyTorch's kernel and
    the best of cuBLASLt's candidates for this shape (timed on its first call)."""
    (M, K), N = x.shape, weight.shape[0]

    def pytorch():
        return F.linear(x, weight, bias)

    def cublaslt():
        y = x.new_empty(M, N)
        epilogue = _EPILOGUE_DEFAULT if bias is None else _EPILOGUE_BIAS
        return y if _lib.matmul(N, M, K, True, weight, x, y, epilogue, bias, y) else None

    if _fusable(x, weight, *(() if bias is None else (bias,))):
        return _fastest(("linear_out", x.device, M, N, K, x.dtype, bias is not None), {"PyTorch": pytorch, "cuBLASLt": cublaslt},
                        reference="PyTorch")
    return pytorch()


@linear_out.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("zerotrain::matmul_nn", mutates_args=())
def matmul_nn(a: Tensor, b: Tensor) -> Tensor:
    """a (M, N) @ b (N, K) -> (M, K), as a linear layer's input gradient (grad_out @ weight), by the faster of PyTorch's
    kernel and cuBLASLt's best candidate."""
    (M, N), K = a.shape, b.shape[1]

    def pytorch():
        return a @ b

    def cublaslt():
        out = a.new_empty(M, K)
        return out if _lib.matmul(K, M, N, False, b, a, out, _EPILOGUE_DEFAULT, None, out) else None

    if _fusable(a, b):
        return _fastest(("matmul_nn", a.device, M, N, K, a.dtype), {"PyTorch": pytorch, "cuBLASLt": cublaslt}, reference="PyTorch")
    return pytorch()


@matmul_nn.register_fake
def _(a, b):
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.custom_op("zerotrain::matmul_tn", mutates_args=())
def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """a^T (N, M) @ b (M, K) -> (N, K), as a linear layer's weight gradient (grad_out^T @ input), by the faster of
    PyTorch's kernel and cuBLASLt's best candidate."""
    (M, N), K = a.shape, b.shape[1]

    def pytorch():
        return a.t() @ b

    def cublaslt():
        out = a.new_empty(N, K)
        # column-major out^T (K, N) = b^T (K, M) @ a (M, N): b read as stored, a transposed
        return out if _lib.matmul(K, N, M, False, b, a, out, _EPILOGUE_DEFAULT, None, out, transpose_b=True) else None

    if _fusable(a, b):
        return _fastest(("matmul_tn", a.device, M, N, K, a.dtype), {"PyTorch": pytorch, "cuBLASLt": cublaslt}, reference="PyTorch")
    return pytorch()


@matmul_tn.register_fake
def _(a, b):
    return a.new_empty(a.shape[1], b.shape[1])


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return linear_out(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()
        need = ctx.needs_input_grad
        return (matmul_nn(g, weight).view(ctx.x_shape) if need[0] else None, matmul_tn(g, x2) if need[1] else None,
                g.sum(0) if ctx.has_bias and need[2] else None)


def tuned_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear whose three matmuls (output, input gradient, weight gradient) each run the fastest kernel timed for
    their shape: PyTorch's, or the best algorithm cuBLASLt's heuristic offers."""
    return _Linear.apply(x, weight, bias)


class _GeluMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fc_weight, fc_bias, proj_weight, proj_bias, tuned):
        x2 = x.reshape(-1, x.shape[-1])  # (B·T, C)
        h, pre = linear_gelu(x2, fc_weight, fc_bias)  # (B·T, 4C) each
        ctx.save_for_backward(x2, fc_weight, proj_weight, h, pre)
        ctx.x_shape, ctx.tuned = x.shape, tuned
        out = linear_out(h, proj_weight, proj_bias) if tuned else torch.addmm(proj_bias, h, proj_weight.t())
        return out.view(*x.shape[:-1], proj_weight.shape[0])  # (B, T, C)

    @staticmethod
    def backward(ctx, grad_y):
        x2, fc_weight, proj_weight, h, pre = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()  # (B·T, C)
        grad_pre, grad_fc_bias = gelu_input_grad(g, proj_weight, pre)  # (B·T, 4C), (4C)
        need = ctx.needs_input_grad
        mm_nn, mm_tn = (matmul_nn, matmul_tn) if ctx.tuned else (torch.matmul, lambda a, b: a.t() @ b)
        grad_x = mm_nn(grad_pre, fc_weight).view(ctx.x_shape) if need[0] else None
        return (grad_x, mm_tn(grad_pre, x2) if need[1] else None, grad_fc_bias if need[2] else None,
                mm_tn(g, h) if need[3] else None, g.sum(0) if need[4] else None, None)


def gelu_mlp(x: Tensor, fc_weight: Tensor, fc_bias: Tensor, proj_weight: Tensor, proj_bias: Tensor,
             tuned: bool = False) -> Tensor:
    """c_proj(gelu_tanh(c_fc(x))) for x (..., C), with the GELU in cuBLASLt's epilogues where it can run there; tuned:
    the other matmuls as in tuned_linear."""
    return _GeluMLP.apply(x, fc_weight, fc_bias, proj_weight, proj_bias, tuned)
