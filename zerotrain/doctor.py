"""`zerotrain doctor`: the environment report.

`environment_report()`: versions (Python, torch, CUDA, cuDNN, NCCL, DeepSpeed), which DeepSpeed ops can be
built here (each op builder's `is_compatible()`, as `ds_report` asks it; nothing is compiled), GPUs,
`nvidia-smi topo -m`, /dev/shm, host RAM, NCCL_*/CUDA_* variables, and findings with their fixes.

The communication preflight (`doctor comm`) is comm.py; the post-mortem of a failed run (`doctor explain`) is
postmortem.py.
"""

import os
import re
import socket
from pathlib import Path

GiB = 2**30
ENV_PREFIXES = ("NCCL_", "CUDA_", "TORCH_NCCL_", "GLOO_", "PYTORCH_CUDA_ALLOC_CONF", "MASTER_", "DS_", "ZEROTRAIN_")


def finding(level: str, key: str, message: str, fix: str = "") -> dict:
    return {"level": level, "key": key, "message": message, "fix": fix}


# ------------------------------------------------------------------------------------------------ environment


def _run(cmd: list[str], timeout: float = 10) -> str | None:
    import shutil
    import subprocess

    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _deepspeed_ops() -> tuple[str | None, str | None, dict[str, bool]]:
    """(DeepSpeed version, accelerator, {op: can be JIT-built here}). is_compatible() checks the compiler,
    CUDA toolkit and headers an op needs without compiling it; a probe that raises counts as not compatible."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # some probes print their reasons; the report says it once
            import deepspeed
            from deepspeed.accelerator import get_accelerator
            from deepspeed.ops.op_builder.all_ops import ALL_OPS

            ops = {}
            for name, builder in ALL_OPS.items():
                try:
                    ops[name] = bool(builder.is_compatible(False))
                except Exception:  # noqa: BLE001 - a failing probe means "cannot build here", as in ds_report
                    ops[name] = False
            return deepspeed.__version__, get_accelerator()._name, ops
    except ImportError:
        return None, None, {}


def environment_report() -> dict:
    import platform
    import shutil

    import psutil

    if "DS_ACCELERATOR" not in os.environ and not Path("/dev/nvidiactl").exists():
        os.environ["DS_ACCELERATOR"] = "cpu"  # spares DeepSpeed's accelerator-detection warning on CPU machines
    import torch

    r = {
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": None,
        "nccl": None,
        "driver": None,
        "gpus": [],
    }
    if torch.backends.cudnn.is_available():
        r["cudnn"] = torch.backends.cudnn.version()
    if torch.cuda.is_available():
        try:
            v = torch.cuda.nccl.version()
            r["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except (AttributeError, RuntimeError):
            pass
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            r["gpus"].append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_bytes": p.total_memory,
                    "compute_capability": f"{p.major}.{p.minor}",
                    "bf16": p.major >= 8,
                    "multiprocessors": p.multi_processor_count,
                }
            )
    # FlashAttention-3 (zerotrain/kernels/flash3.py, train.flash_attention_3) is for Hopper GPUs: "ok", or why it cannot run
    hopper = [g for g in r["gpus"] if g["compute_capability"].startswith("9.")]
    r["flash_attention_3"] = None
    if hopper:
        from zerotrain.kernels import flash3

        r["flash_attention_3"] = (
            flash3.flash3_unavailable(torch.device("cuda", hopper[0]["index"]), torch.bfloat16, 64) or "ok"
        )
    smi = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    r["driver"] = smi.splitlines()[0] if smi else None
    r["topology"] = _run(["nvidia-smi", "topo", "-m"])
    r["deepspeed"], r["accelerator"], r["ops"] = _deepspeed_ops()
    from torch.utils.cpp_extension import CUDA_HOME

    r["ninja"] = shutil.which("ninja") is not None
    r["cxx"] = shutil.which("c++") or shutil.which("g++")
    r["cuda_home"] = CUDA_HOME
    nvcc = _run([str(Path(CUDA_HOME) / "bin" / "nvcc"), "--version"]) if CUDA_HOME else None
    m = re.search(r"release (\d+\.\d+)", nvcc or "")
    r["nvcc"] = m.group(1) if m else None
    try:
        shm = shutil.disk_usage("/dev/shm")
        r["shm"] = {"total_bytes": shm.total, "free_bytes": shm.free}
    except OSError:
        r["shm"] = None
    vm = psutil.virtual_memory()
    r["ram"] = {"total_bytes": vm.total, "available_bytes": vm.available}
    r["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    r["findings"] = environment_findings(r)
    return r


def environment_findings(r: dict) -> list[dict]:
    """What in the report will hurt a ZeRO run, each with its fix."""
    out = []
    gpus = r["gpus"]
    if r.get("driver") and not r["cuda_available"]:
        out.append(
            finding(
                "error",
                "torch",
                f"nvidia-smi sees a driver ({r['driver']}) but torch {r['torch']} cannot use CUDA",
                "install the torch build for this driver's CUDA (pip install torch --index-url https://download.pytorch.org/whl/cuXXX)",
            )
        )
    if len({g["name"] for g in gpus}) > 1:
        out.append(
            finding(
                "warning",
                "gpus",
                "mixed GPU models: every ZeRO step waits for the slowest",
                "set CUDA_VISIBLE_DEVICES to GPUs of one model",
            )
        )
    for g in gpus:
        if not g["bf16"]:
            out.append(
                finding(
                    "info",
                    f"gpu{g['index']}",
                    f"{g['name']} (sm {g['compute_capability']}) has no bf16",
                    'train with deepspeed.dtype = "fp16" (dynamic loss scaling) or fp32',
                )
            )
    if r.get("flash_attention_3") not in (None, "ok"):
        out.append(
            finding(
                "info",
                "FlashAttention-3",
                f"GPT's attention runs PyTorch's (cuDNN's) kernels: {r['flash_attention_3']}; "
                "FlashAttention-3 runs GPT-2 XL's attention in 18% less time on H200 (docs/benchmarks.md)",
                "pip install --no-deps xformers==0.0.34 (with a CUDA 13 torch also nvidia-cuda-runtime-cu12)",
            )
        )
    if not r["ninja"]:
        out.append(
            finding(
                "warning",
                "ninja",
                "ninja is not installed: DeepSpeed cannot JIT-build ops (FusedAdam, CPUAdam for offload)",
                "pip install ninja",
            )
        )
    if not r["cxx"]:
        out.append(
            finding(
                "warning",
                "c++",
                "no C++ compiler: DeepSpeed ops (CPUAdam for offload) cannot be built",
                "install g++ (apt-get install build-essential)",
            )
        )
    if gpus and not r["cuda_home"]:
        out.append(
            finding(
                "warning",
                "CUDA_HOME",
                "no CUDA toolkit found: DeepSpeed's CUDA ops cannot be JIT-built",
                f"install the CUDA {r['cuda_build']} toolkit or set CUDA_HOME to it",
            )
        )
    if r["nvcc"] and r["cuda_build"] and r["nvcc"].split(".")[0] != r["cuda_build"].split(".")[0]:
        out.append(
            finding(
                "warning",
                "nvcc",
                f"nvcc {r['nvcc']} and torch's CUDA {r['cuda_build']} differ in major version: "
                "DeepSpeed refuses to build its CUDA ops",
                f"point CUDA_HOME at a CUDA {r['cuda_build']} toolkit",
            )
        )
    if r["ops"].get("async_io") is False:
        out.append(
            finding(
                "warning",
                "async_io",
                "DeepSpeed's async_io op cannot be built here (libaio's headers and library are missing): NVMe offload "
                '(deepspeed.offload_optimizer or offload_params = "nvme") will fail; CPU offload is unaffected',
                "apt-get install libaio-dev (Debian/Ubuntu; dnf install libaio-devel on RHEL), or point CFLAGS and "
                "LDFLAGS at a libaio built elsewhere",
            )
        )
    broken = [name for name, ok in r["ops"].items() if not ok and name != "async_io"]
    if r["deepspeed"] is None:
        out.append(
            finding("error", "deepspeed", "deepspeed is not importable", "pip install --no-build-isolation deepspeed")
        )
    elif broken:
        out.append(
            finding(
                "info",
                "ops",
                f"ops that cannot be built here: {', '.join(broken)}",
                "only matters if the run uses them (e.g. async_io for NVMe offload needs libaio-dev)",
            )
        )
    if r["shm"] and r["shm"]["total_bytes"] < 1 * GiB:
        out.append(
            finding(
                "warning",
                "/dev/shm",
                f"/dev/shm is {r['shm']['total_bytes'] / GiB:.2f} GiB: NCCL's shared-memory transport "
                "and DataLoader workers fail or fall back",
                "in Docker, run with --shm-size=16g or --ipc=host",
            )
        )
    env = r["env"]
    for var in ("NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "NCCL_SHM_DISABLE"):
        if env.get(var) == "1":
            out.append(
                finding(
                    "warning",
                    var,
                    f"{var}=1 forces NCCL onto a slower path",
                    f"unset {var} unless it works around a known fault; `zerotrain doctor comm` measures both",
                )
            )
    if env.get("CUDA_LAUNCH_BLOCKING") == "1":
        out.append(
            finding(
                "warning",
                "CUDA_LAUNCH_BLOCKING",
                "CUDA_LAUNCH_BLOCKING=1 serialises every kernel (debugging only)",
                "unset CUDA_LAUNCH_BLOCKING",
            )
        )
    return out


def format_report(r: dict) -> str:
    gib = lambda x: f"{x / GiB:.1f} GiB"
    lines = [
        f"host          {r['hostname']} ({r['cpus']} CPUs, {r['platform']})",
        f"python        {r['python']}",
        f"torch         {r['torch']} (CUDA build {r['cuda_build'] or 'none'}, CUDA available: {'yes' if r['cuda_available'] else 'no'})",
        f"cuDNN         {r['cudnn'] or '-'}",
        f"NCCL          {r['nccl'] or '-'}",
        f"driver        {r['driver'] or '- (no nvidia-smi)'}",
        f"CUDA toolkit  {r['cuda_home'] or '-'}" + (f" (nvcc {r['nvcc']})" if r["nvcc"] else ""),
        f"FlashAttn-3   {r.get('flash_attention_3') or '- (no Hopper GPU)'}",
        (
            f"deepspeed     {r['deepspeed'] or 'not installed'} (accelerator {r['accelerator'] or '-'}; "
            f"ninja {'yes' if r['ninja'] else 'no'}, C++ compiler {'yes' if r['cxx'] else 'no'})"
        ),
    ]
    if r["ops"]:
        lines.append("ops           " + ", ".join(f"{name} {'ok' if ok else 'NO'}" for name, ok in r["ops"].items()))
    if "async_io" in r["ops"]:
        nvme = "yes" if r["ops"]["async_io"] else "no: async_io cannot be built (apt-get install libaio-dev)"
        lines.append(f"NVMe offload  {nvme}")
    if r["gpus"]:
        for g in r["gpus"]:
            lines.append(
                f"gpu {g['index']:<9} {g['name']}, {gib(g['memory_bytes'])}, sm {g['compute_capability']}, "
                f"bf16 {'yes' if g['bf16'] else 'no'}, {g['multiprocessors']} SMs"
            )
    else:
        lines.append("gpus          none (CPU ranks over gloo)")
    shm = r["shm"]
    lines.append(
        f"/dev/shm      {gib(shm['total_bytes'])} ({gib(shm['free_bytes'])} free)"
        if shm
        else "/dev/shm      not mounted"
    )
    lines.append(f"host RAM      {gib(r['ram']['total_bytes'])} ({gib(r['ram']['available_bytes'])} available)")
    lines.append(
        "environment   "
        + (" ".join(f"{k}={v}" for k, v in r["env"].items()) or "no NCCL_*/CUDA_*/GLOO_*/ZEROTRAIN_* variables set")
    )
    if r["topology"]:
        lines += ["topology (nvidia-smi topo -m):", *("  " + line for line in r["topology"].splitlines())]
    for f in r["findings"]:
        lines.append(f"{f['level']:<7}  {f['key']}  {f['message']}" + (f"  → {f['fix']}" if f["fix"] else ""))
    return "\n".join(lines)
