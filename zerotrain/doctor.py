"""`zerotrain doctor`: the environment report, the communication preflight, and the post-mortem of a failed run.

Three parts, read top to bottom:

- `environment_report()`: versions (Python, torch, CUDA, cuDNN, NCCL, DeepSpeed), which DeepSpeed ops can be
  built here (each op builder's `is_compatible()`, as `ds_report` asks it; nothing is compiled), GPUs,
  `nvidia-smi topo -m`, /dev/shm, host RAM, NCCL_*/CUDA_* variables, and findings with their fixes.
- `comm_rank()`: runs as one rank of any launcher. All-reduce, all-gather and reduce-scatter over message sizes
  (bus bandwidth as nccl-tests defines it), a ring of point-to-point transfers (one per link), and a matmul per
  device; outliers are flagged. A watchdog thread bounds every step: a collective that does not finish in
  `timeout` seconds ends the run with the rank(s) that never reached it, read from a TCPStore that stays
  reachable while the collective hangs.
- `explain()`: reads a failed run's logs, metrics and configs; recognises CUDA OOM, host OOM, NCCL watchdog
  timeouts, fp16 loss-scale collapse, op build failures and rank crashes; for a CUDA OOM the memory planner
  names the largest term and the cheapest change that fits, with its predicted memory.
"""

import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from zerotrain import UserError

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

    r = {"hostname": socket.gethostname(), "python": platform.python_version(), "platform": platform.platform(),
         "cpus": os.cpu_count(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
         "cuda_available": torch.cuda.is_available(), "cudnn": None, "nccl": None, "driver": None, "gpus": []}
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
            r["gpus"].append({"index": i, "name": p.name, "memory_bytes": p.total_memory, "compute_capability": f"{p.major}.{p.minor}",
                              "bf16": p.major >= 8, "multiprocessors": p.multi_processor_count})
    # FlashAttention-3 (zerotrain/kernels/flash3.py, train.flash_attention_3) is for Hopper GPUs: "ok", or why it cannot run
    hopper = [g for g in r["gpus"] if g["compute_capability"].startswith("9.")]
    r["flash_attention_3"] = None
    if hopper:
        from zerotrain.kernels import flash3

        r["flash_attention_3"] = flash3.flash3_unavailable(torch.device("cuda", hopper[0]["index"]), torch.bfloat16, 64) or "ok"
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
        out.append(finding("error", "torch", f"nvidia-smi sees a driver ({r['driver']}) but torch {r['torch']} cannot use CUDA",
                           "install the torch build for this driver's CUDA (pip install torch --index-url https://download.pytorch.org/whl/cuXXX)"))
    if len({g["name"] for g in gpus}) > 1:
        out.append(finding("warning", "gpus", "mixed GPU models: every ZeRO step waits for the slowest",
                           "set CUDA_VISIBLE_DEVICES to GPUs of one model"))
    for g in gpus:
        if not g["bf16"]:
            out.append(finding("info", f"gpu{g['index']}", f"{g['name']} (sm {g['compute_capability']}) has no bf16",
                               "train with deepspeed.dtype = \"fp16\" (dynamic loss scaling) or fp32"))
    if r.get("flash_attention_3") not in (None, "ok"):
        out.append(finding("info", "FlashAttention-3", f"GPT's attention runs PyTorch's (cuDNN's) kernels: {r['flash_attention_3']}; "
                           "FlashAttention-3 runs GPT-2 XL's attention in 18% less time on H200 (docs/benchmarks.md)",
                           "pip install --no-deps xformers==0.0.34 (with a CUDA 13 torch also nvidia-cuda-runtime-cu12)"))
    if not r["ninja"]:
        out.append(finding("warning", "ninja", "ninja is not installed: DeepSpeed cannot JIT-build ops (FusedAdam, CPUAdam for offload)",
                           "pip install ninja"))
    if not r["cxx"]:
        out.append(finding("warning", "c++", "no C++ compiler: DeepSpeed ops (CPUAdam for offload) cannot be built",
                           "install g++ (apt-get install build-essential)"))
    if gpus and not r["cuda_home"]:
        out.append(finding("warning", "CUDA_HOME", "no CUDA toolkit found: DeepSpeed's CUDA ops cannot be JIT-built",
                           f"install the CUDA {r['cuda_build']} toolkit or set CUDA_HOME to it"))
    if r["nvcc"] and r["cuda_build"] and r["nvcc"].split(".")[0] != r["cuda_build"].split(".")[0]:
        out.append(finding("warning", "nvcc", f"nvcc {r['nvcc']} and torch's CUDA {r['cuda_build']} differ in major version: "
                           "DeepSpeed refuses to build its CUDA ops", f"point CUDA_HOME at a CUDA {r['cuda_build']} toolkit"))
    broken = [name for name, ok in r["ops"].items() if not ok]
    if r["deepspeed"] is None:
        out.append(finding("error", "deepspeed", "deepspeed is not importable", "pip install --no-build-isolation deepspeed"))
    elif broken:
        out.append(finding("info", "ops", f"ops that cannot be built here: {', '.join(broken)}",
                           "only matters if the run uses them (e.g. async_io for NVMe offload needs libaio-dev)"))
    if r["shm"] and r["shm"]["total_bytes"] < 1 * GiB:
        out.append(finding("warning", "/dev/shm", f"/dev/shm is {r['shm']['total_bytes'] / GiB:.2f} GiB: NCCL's shared-memory transport "
                           "and DataLoader workers fail or fall back", "in Docker, run with --shm-size=16g or --ipc=host"))
    env = r["env"]
    for var in ("NCCL_P2P_DISABLE", "NCCL_IB_DISABLE", "NCCL_SHM_DISABLE"):
        if env.get(var) == "1":
            out.append(finding("warning", var, f"{var}=1 forces NCCL onto a slower path",
                               f"unset {var} unless it works around a known fault; `zerotrain doctor comm` measures both"))
    if env.get("CUDA_LAUNCH_BLOCKING") == "1":
        out.append(finding("warning", "CUDA_LAUNCH_BLOCKING", "CUDA_LAUNCH_BLOCKING=1 serialises every kernel (debugging only)",
                           "unset CUDA_LAUNCH_BLOCKING"))
    return out


def format_report(r: dict) -> str:
    gib = lambda x: f"{x / GiB:.1f} GiB"
    lines = [f"host          {r['hostname']} ({r['cpus']} CPUs, {r['platform']})",
             f"python        {r['python']}",
             f"torch         {r['torch']} (CUDA build {r['cuda_build'] or 'none'}, CUDA available: {'yes' if r['cuda_available'] else 'no'})",
             f"cuDNN         {r['cudnn'] or '-'}",
             f"NCCL          {r['nccl'] or '-'}",
             f"driver        {r['driver'] or '- (no nvidia-smi)'}",
             f"CUDA toolkit  {r['cuda_home'] or '-'}" + (f" (nvcc {r['nvcc']})" if r["nvcc"] else ""),
             f"FlashAttn-3   {r.get('flash_attention_3') or '- (no Hopper GPU)'}",
             (f"deepspeed     {r['deepspeed'] or 'not installed'} (accelerator {r['accelerator'] or '-'}; "
              f"ninja {'yes' if r['ninja'] else 'no'}, C++ compiler {'yes' if r['cxx'] else 'no'})")]
    if r["ops"]:
        lines.append("ops           " + ", ".join(f"{name} {'ok' if ok else 'NO'}" for name, ok in r["ops"].items()))
    if r["gpus"]:
        for g in r["gpus"]:
            lines.append(f"gpu {g['index']:<9} {g['name']}, {gib(g['memory_bytes'])}, sm {g['compute_capability']}, "
                         f"bf16 {'yes' if g['bf16'] else 'no'}, {g['multiprocessors']} SMs")
    else:
        lines.append("gpus          none (CPU ranks over gloo)")
    shm = r["shm"]
    lines.append(f"/dev/shm      {gib(shm['total_bytes'])} ({gib(shm['free_bytes'])} free)" if shm else "/dev/shm      not mounted")
    lines.append(f"host RAM      {gib(r['ram']['total_bytes'])} ({gib(r['ram']['available_bytes'])} available)")
    lines.append("environment   " + (" ".join(f"{k}={v}" for k, v in r["env"].items()) or "no NCCL_*/CUDA_*/GLOO_*/ZEROTRAIN_* variables set"))
    if r["topology"]:
        lines += ["topology (nvidia-smi topo -m):", *("  " + line for line in r["topology"].splitlines())]
    for f in r["findings"]:
        lines.append(f"{f['level']:<7}  {f['key']}  {f['message']}" + (f"  → {f['fix']}" if f["fix"] else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ comm

SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30}
CPU_SIZES = [4 * 2**10, 256 * 2**10, 4 * 2**20, 32 * 2**20]
GPU_SIZES = [4 * 2**10, 1 * 2**20, 32 * 2**20, 256 * 2**20, 1 * 2**30]
# nccl-tests (doc/PERFORMANCE.md): bus bandwidth = algorithm bandwidth × the fraction of data each rank must
# move over its slowest link, so one number compares to the hardware's link speed whatever the rank count.
BUS_FACTOR = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n, "reduce_scatter": lambda n: (n - 1) / n}
OUTLIER_FRACTION = 0.7  # a rank or link below 70% of the median is flagged


def parse_sizes(text: str) -> list[int]:
    """`4K,1M,256MiB` -> bytes (K/M/G are binary, KB/MB/GB decimal)."""
    sizes = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", item)
        if not m or m.group(2).lower() not in SIZE_UNITS:
            raise UserError(f"--sizes {text!r}: write sizes like 4K,1M,256M,1G (bytes; K/M/G are powers of 2)")
        sizes.append(int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()]))
    if any(s < 4 for s in sizes):
        raise UserError("--sizes: each message must be at least 4 bytes (one float32)")
    return sizes


class CommTimeout(Exception):
    pass


class _Watchdog:
    """A thread that ends the process when a step outlives the timeout, first reporting which ranks never
    reached it. Collectives hold the GIL released, so this thread runs while the main one waits in one."""

    def __init__(self, store, rank: int, world: int, timeout: float, hosts: dict):
        self.store, self.rank, self.world, self.timeout, self.hosts = store, rank, world, timeout, hosts
        self.tag, self.started = None, 0.0
        threading.Thread(target=self._watch, daemon=True).start()

    def enter(self, tag: str) -> None:
        self.store.set(f"last/{self.rank}", tag)
        self.store.set(f"arrive/{tag}/{self.rank}", "1")
        self.tag, self.started = tag, time.monotonic()

    def leave(self) -> None:
        self.tag = None

    def _watch(self) -> None:
        while True:
            time.sleep(0.05)
            tag = self.tag
            if tag is not None and time.monotonic() - self.started > self.timeout:
                self.report(tag)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)  # the main thread is inside the collective and cannot be unwound

    def missing(self, tag: str) -> list[int]:
        return [r for r in range(self.world) if not self.store.check([f"arrive/{tag}/{r}"])]

    def report(self, tag: str) -> None:
        missing = self.missing(tag)
        arrived = [r for r in range(self.world) if r not in missing]
        if arrived and self.rank != min(arrived):
            return  # the lowest rank that arrived speaks for all
        if missing:
            who = "; ".join(f"rank {r} ({self.hosts.get(r, '?')}) last reached: "
                            f"{self.store.get(f'last/{r}').decode() if self.store.check([f'last/{r}']) else 'nothing'}"
                            for r in missing)
            print(f"doctor comm: TIMEOUT after {self.timeout:g} s in {tag}: rank(s) {', '.join(map(str, missing))} did not answer ({who}). "
                  f"Look at those ranks first: a hung process, a dead GPU, or a host the others cannot reach.", file=sys.stderr)
        else:
            print(f"doctor comm: TIMEOUT after {self.timeout:g} s in {tag}: every rank entered it but it did not finish: a network path "
                  f"between ranks is broken or far too slow; check NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME and firewalls", file=sys.stderr)


def _step(watchdog: _Watchdog, tag: str, fn):
    watchdog.enter(tag)
    try:
        return fn()
    finally:
        watchdog.leave()


def _time_op(fn, iters: int, warmup: int, sync) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def _matmul_tflops(device, dtype, n: int, iters: int, sync) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _time_op(lambda: torch.mm(a, b), iters, 1, sync)
    return 2 * n**3 / seconds / 1e12


def comm_rank(sizes: list[int] | None, timeout: float, iters: int | None) -> int:
    """Run the preflight as this rank of a launched job (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set);
    rank 0 prints the report. Returns the exit code (1 when a rank or link is flagged)."""
    import warnings
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore", message=r".*(reduce_scatter_tensor|all_gather_into_tensor).* is deprecated")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))))
    # Our own store (a prefix of torchrun's, whose agent already serves MASTER_PORT): it answers while a
    # collective hangs, which is how the watchdog learns who never arrived.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=rank == 0 and not agent_store,
                         timeout=timedelta(seconds=timeout), wait_for_workers=False)
    store = dist.PrefixStore(f"zerotrain-doctor/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)
    where = f"{socket.gethostname()} {device}"
    store.set(f"host/{rank}", where)
    hosts = _wait_hosts(store, world, timeout)
    dist.init_process_group("nccl" if on_gpu else "gloo", store=dist.PrefixStore("pg", store), rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout + 60))  # our watchdog fires first, with names
    watchdog = _Watchdog(store, rank, world, timeout, hosts)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    sizes = sizes or (GPU_SIZES if on_gpu else CPU_SIZES)
    iters = iters or (20 if on_gpu else 5)

    if os.environ.get("ZEROTRAIN_DOCTOR_STALL_RANK") == str(rank):  # test hook: a rank that hangs before the first collective
        store.set(f"last/{rank}", "stalled on purpose (ZEROTRAIN_DOCTOR_STALL_RANK)")
        time.sleep(10**6)

    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    result = {"rank": rank, "where": where,
              "matmul_tflops": _step(watchdog, "matmul", lambda: _matmul_tflops(device, dtype, 8192 if on_gpu else 512, iters, sync)),
              "matmul_dtype": str(dtype).removeprefix("torch."), "collectives": {}, "link_GBps": None}
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        for size in sizes:
            n = max(world, size // 4 // world * world)  # float32 elements, divisible by the world size
            fn = _collective(op, torch.ones(n, device=device), torch.ones(n // world, device=device))
            seconds = _step(watchdog, f"{op} of {_size(4 * n)}", lambda fn=fn: _time_op(fn, iters, 1, sync))
            result["collectives"].setdefault(op, []).append({"bytes": 4 * n, "seconds": seconds})
    if world > 1:  # every rank sends to the next and receives from the previous: each link of the ring at once
        n = max(sizes) // 4
        out, inbox = torch.ones(n, device=device), torch.empty(n, device=device)

        def ring():
            reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, out, (rank + 1) % world),
                                           dist.P2POp(dist.irecv, inbox, (rank - 1) % world)])
            for req in reqs:
                req.wait()
        seconds = _step(watchdog, f"ring send/recv of {_size(4 * n)}", lambda: _time_op(ring, iters, 1, sync))
        result["link_GBps"] = 4 * n / seconds / 1e9  # into this rank from rank-1
    store.set(f"result/{rank}", json.dumps(result))
    code = 0
    if rank == 0:
        results = [json.loads(_step(watchdog, "collecting results", lambda r=r: store.get(f"result/{r}")).decode()) for r in range(world)]
        summary = summarize(results, world, "nccl" if on_gpu else "gloo")
        print(format_comm(summary), flush=True)
        if os.environ.get("ZEROTRAIN_DOCTOR_JSON"):
            Path(os.environ["ZEROTRAIN_DOCTOR_JSON"]).write_text(json.dumps(summary, indent=2) + "\n")
        code = 1 if summary["flags"] else 0
        store.set("done", str(code))
    else:
        code = int(_step(watchdog, "waiting for rank 0's report", lambda: store.get("done")).decode())
    dist.destroy_process_group()
    return code


def _collective(op: str, full, part):
    """The call for one collective: `full` is the whole message (all-reduce, all-gather out, reduce-scatter in),
    `part` one rank's share."""
    import torch.distributed as dist

    return {"all_reduce": lambda: dist.all_reduce(full),
            "all_gather": lambda: dist.all_gather_into_tensor(full, part),
            "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, full)}[op]


def _wait_hosts(store, world: int, timeout: float) -> dict[int, str]:
    """Every rank's host and device; ranks that never start are named after `timeout`."""
    deadline = time.monotonic() + timeout
    keys = [f"host/{r}" for r in range(world)]
    while not store.check(keys):
        if time.monotonic() > deadline:
            missing = [r for r in range(world) if not store.check([f"host/{r}"])]
            raise UserError(f"rank(s) {', '.join(map(str, missing))} never joined within {timeout:g} s; check that they started "
                            f"and can reach MASTER_ADDR {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
        time.sleep(0.05)
    return {r: store.get(f"host/{r}").decode() for r in range(world)}


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} B"


def _median(values: list[float]) -> float:
    s = sorted(values)
    return (s[len(s) // 2] + s[(len(s) - 1) // 2]) / 2


def summarize(results: list[dict], world: int, backend: str) -> dict:
    """Per size: the slowest rank's time (the collective is as slow as its last rank) and the bus bandwidth;
    flags for ranks whose matmul, and links whose transfer rate, fall below OUTLIER_FRACTION of the median."""
    rows = []
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        for i, entry in enumerate(results[0]["collectives"][op]):
            per_rank = [r["collectives"][op][i]["seconds"] for r in results]
            t = max(per_rank)
            algbw = entry["bytes"] / t / 1e9
            rows.append({"op": op, "bytes": entry["bytes"], "time_us": t * 1e6, "algbw_GBps": algbw,
                         "busbw_GBps": algbw * BUS_FACTOR[op](world), "slowest_rank": per_rank.index(t)})
    flags = []
    tflops = [r["matmul_tflops"] for r in results]
    med = _median(tflops)
    for r in results:
        if r["matmul_tflops"] < OUTLIER_FRACTION * med:
            flags.append(f"rank {r['rank']} ({r['where']}): matmul {r['matmul_tflops']:.2f} TFLOP/s vs median {med:.2f}: a slow, "
                         f"throttled or shared device (check clocks and temperature with nvidia-smi -q -d PERFORMANCE, and other processes)")
    links = [r["link_GBps"] for r in results if r["link_GBps"] is not None]
    if links:
        med_link = _median(links)
        for r in results:
            if r["link_GBps"] is not None and r["link_GBps"] < OUTLIER_FRACTION * med_link:
                src = (r["rank"] - 1) % world
                flags.append(f"link rank {src} ({results[src]['where']}) → rank {r['rank']} ({r['where']}): {r['link_GBps']:.2f} GB/s "
                             f"vs median {med_link:.2f}: a slow path (check NCCL_SOCKET_IFNAME / NCCL_IB_HCA and that NCCL uses "
                             f"InfiniBand or NVLink: NCCL_DEBUG=INFO)")
    return {"backend": backend, "world": world, "ranks": results, "collectives": rows, "flags": flags}


def format_comm(s: dict) -> str:
    lines = [(f"doctor comm: {s['world']} ranks over {s['backend']}; bus bandwidth as nccl-tests defines it "
              "(all_reduce 2(n-1)/n, all_gather and reduce_scatter (n-1)/n × size / time)"),
             f"{'op':<15} {'size':>10} {'time':>12} {'algbw':>12} {'busbw':>12}  slowest rank"]
    for row in s["collectives"]:
        lines.append(f"{row['op']:<15} {_size(row['bytes']):>10} {row['time_us']:>9.1f} us {row['algbw_GBps']:>7.2f} GB/s "
                     f"{row['busbw_GBps']:>7.2f} GB/s  {row['slowest_rank']}")
    lines.append("per rank:")
    for r in s["ranks"]:
        link = f", link in {r['link_GBps']:.2f} GB/s" if r["link_GBps"] is not None else ""
        lines.append(f"  rank {r['rank']:<3} {r['where']}: matmul {r['matmul_tflops']:.2f} TFLOP/s ({r['matmul_dtype']}){link}")
    lines += [f"FLAG  {f}" for f in s["flags"]] or ["no outlier ranks or links"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ explain

@dataclass
class Diagnosis:
    kind: str  # cuda_oom, host_oom, nccl_timeout, loss_scale, op_build, rank_crash, unknown
    summary: str
    evidence: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "summary": self.summary, "evidence": self.evidence, "fix": self.fix, "data": self.data}


@dataclass
class RunEvidence:
    logs: dict[str, str]  # path -> text
    config: object = None  # runconfig.RunConfig from config.toml
    ds_config: dict | None = None
    metrics: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.logs.values())


LOG_PATTERNS = ("*.log", "*.out", "*.err", "*.txt", "logs/*")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"{path} not found; pass the log file of the failed run or its run directory") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; pass the log file or the run directory itself") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions, or copy the log somewhere readable") from None


def read_evidence(path: str | Path) -> RunEvidence:
    """A log file (and the run directory around it, when there is one), or a run directory: its logs,
    metrics.jsonl, config.toml and ds_config.json."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; pass the log file of the failed run or its run directory")
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        try:
            files = sorted({p for pattern in LOG_PATTERNS for p in path.glob(pattern) if p.is_file()})
        except OSError as e:
            raise UserError(f"cannot list {path} ({e.strerror or e}); check its permissions") from None
        logs = {str(p): _read_text(p) for p in files}
    else:
        logs = {str(path): _read_text(path)}
    ev = RunEvidence(logs)
    if (run_dir / "config.toml").is_file():
        from zerotrain.runconfig import load_run_config

        try:
            ev.config = load_run_config(run_dir / "config.toml")
        except UserError:
            ev.config = None  # a config from another zerotrain version: the logs still speak
    if (run_dir / "ds_config.json").is_file():
        try:
            ev.ds_config = json.loads(_read_text(run_dir / "ds_config.json"))
        except json.JSONDecodeError:
            ev.ds_config = None
    if (run_dir / "metrics.jsonl").is_file():
        for line in _read_text(run_dir / "metrics.jsonl").splitlines():
            try:
                ev.metrics.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
    if path.is_dir() and not logs and not ev.metrics:
        raise UserError(f"{path} holds no logs ({', '.join(LOG_PATTERNS)}) or metrics.jsonl; pass the log file itself "
                        f"(save one with `zerotrain train ... 2>&1 | tee {path}/train.log`)")
    return ev


_UNIT = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _bytes(value: str, unit: str) -> int:
    return int(float(value) * _UNIT[unit])


def _rank_of(line: str) -> int | None:
    m = re.search(r"\[(?:rank|Rank )(\d+)\]|\bRank (\d+)\]", line)
    return int(m.group(1) or m.group(2)) if m else None


def _last_exception(lines: list[str]) -> str | None:
    for line in lines:
        m = re.search(r"(?:\[rank\d+\]:\s*)?((?:[\w.]+)?(?:Error|Exception|Interrupt)\b:?.*)$", line)
        if m and not line.lstrip().startswith(("File ", "raise ")) and "Traceback" not in line:
            return m.group(1).strip()
    return None


def _phase_before(lines: list[str], index: int) -> str | None:
    """Which part of the step a traceback ending at `index` was in."""
    window = "\n".join(lines[max(0, index - 60):index])
    for needle, phase in (("initialize(", "init"), (".backward(", "backward"), ("in backward", "backward"),
                          (".step(", "optimizer step"), ("in step", "optimizer step"), ("forward", "forward")):
        if needle in window:
            return phase
    return None


def planner_inputs(ev: RunEvidence, model_spec: str | None = None):
    """(ModelShape, RunShape) of the run from its config.toml and ds_config.json (or --model), None when the
    model cannot be known."""
    import dataclasses

    from zerotrain import memory

    run = memory.RunShape(micro_batch=8)
    model = memory.resolve_model(model_spec) if model_spec else None
    cfg = ev.config
    if cfg is not None:
        m, t, ds = cfg.model, cfg.train, cfg.deepspeed
        vocab = m.vocab_size
        meta = Path(cfg.data.dir or (cfg.data.dirs or [""])[0]) / "meta.json"
        if vocab is None and meta.is_file():
            vocab = json.loads(meta.read_text()).get("vocab_size")
        if model is None:
            model = memory.gpt2_shape(m.preset, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                                      vocab_size=vocab, dropout=m.dropout)
        run = dataclasses.replace(run, micro_batch=t.micro_batch_size, grad_accum=t.grad_accum, zero_stage=ds.zero_stage,
                                  offload_optimizer=ds.offload_optimizer, offload_params=ds.offload_params,
                                  activation_checkpointing=ds.activation_checkpointing,
                                  dtype="bf16" if ds.dtype == "auto" else ds.dtype, seq_len=t.seq_len or model.max_positions)
    if ev.ds_config:
        try:
            run = memory.run_from_ds_config(ev.ds_config, run)
        except UserError:
            pass
        tb = ev.ds_config.get("train_batch_size")
        if isinstance(tb, int) and run.micro_batch * run.grad_accum and tb % (run.micro_batch * run.grad_accum) == 0:
            run = dataclasses.replace(run, gpus_per_node=max(1, tb // (run.micro_batch * run.grad_accum)))
        if ev.ds_config.get("activation_checkpointing"):
            run = dataclasses.replace(run, activation_checkpointing=True)
    if model is None:
        return None
    if cfg is None and not model_spec:
        return None
    return model, run


def oom_changes(run) -> list[tuple[str, object]]:
    """Single changes to a run, from the cheapest in speed to the dearest: a higher ZeRO stage below 3 (almost
    free), a smaller micro-batch with accumulation keeping the global batch, activation checkpointing (~1/3 more
    compute), ZeRO-3 (re-gathers parameters every micro-step), optimizer offload, then parameter offload."""
    from dataclasses import replace

    out = []
    if run.world > 1:
        for z in range(run.zero_stage + 1, 3):
            out.append((f"ZeRO-{z} (deepspeed.zero_stage = {z})", replace(run, zero_stage=z)))
    mb = run.micro_batch // 2
    while mb >= 1:
        accum = run.grad_accum * run.micro_batch // mb
        keeps = run.grad_accum * run.micro_batch % mb == 0
        label = (f"micro-batch {mb} with accumulation {accum}, the same global batch (train.micro_batch_size = {mb}, "
                 f"train.grad_accum = {accum})" if keeps else f"micro-batch {mb} (train.micro_batch_size = {mb})")
        out.append((label, replace(run, micro_batch=mb, grad_accum=accum if keeps else run.grad_accum)))
        mb //= 2
    if not run.activation_checkpointing:
        out.append(("activation checkpointing (deepspeed.activation_checkpointing = true)", replace(run, activation_checkpointing=True)))
    if run.world > 1 and run.zero_stage < 3:
        out.append(("ZeRO-3 (deepspeed.zero_stage = 3)", replace(run, zero_stage=3)))
    if run.offload_optimizer == "none":
        z = max(run.zero_stage, 1)
        out.append((f"optimizer offload to CPU at ZeRO-{z} (deepspeed.offload_optimizer = \"cpu\")",
                    replace(run, zero_stage=z, offload_optimizer="cpu")))
    if run.offload_params == "none":
        out.append(("ZeRO-3 with optimizer and parameter offload to CPU", replace(run, zero_stage=3, offload_optimizer="cpu", offload_params="cpu")))
    return out


def _oom_advice(diag: Diagnosis, ev: RunEvidence, total: int | None, model_spec: str | None) -> None:
    from zerotrain import memory

    inputs = planner_inputs(ev, model_spec)
    if inputs is None:
        diag.fix.append("lower the micro-batch (raise accumulation to keep the global batch), turn on activation checkpointing, "
                        "raise the ZeRO stage, or offload the optimizer; pass --model (e.g. gpt2-xl, hf:DIR) or explain the run "
                        "directory (with its config.toml) to have the planner rank these with predicted memory")
        return
    model, run = inputs
    base = memory.plan(model, run)
    terms = {k: base.per_gpu[k] for k in ("params", "grads", "optimizer", "activations", "buffers")}
    largest = max(terms, key=terms.get)
    gib = lambda x: f"{x / GiB:.1f} GiB"
    diag.data["plan"] = {"run": run.describe(), "peak_phase": base.peak_phase, "terms": terms, "largest": largest,
                         "needed_bytes": base.gpu_bytes_needed}
    diag.evidence.append(f"planner, {model.name} ({model.n_params / 1e6:,.0f}M params), {run.describe()}: peak in {base.peak_phase}, "
                         + ", ".join(f"{k} {gib(v)}" for k, v in terms.items()) + f"; needs {gib(base.gpu_bytes_needed)}")
    diag.evidence.append(f"largest term: {largest} ({gib(terms[largest])}, {terms[largest] / max(1, sum(terms.values())):.0%} of the peak)")
    if total is None:
        diag.fix.append("the log does not give the GPU's capacity; run `zerotrain plan --config RUN/config.toml --gpu-memory GPU` to compare")
        return
    if base.fits(total):
        diag.evidence.append(f"the planner predicts {gib(base.gpu_bytes_needed)} of {gib(total)}: this configuration should fit")
        diag.fix.append("something outside the plan took the memory: another process on the GPU, fragmentation "
                        "(set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), or a larger eval/sequence batch")
    for label, changed in oom_changes(run):
        p = memory.plan(model, changed)
        if p.fits(total, 0.10):
            diag.fix.append(f"cheapest change that fits: {label} → predicted {gib(p.gpu_bytes_needed)} of {gib(total)} "
                            f"(was {gib(base.gpu_bytes_needed)})")
            diag.data["cheapest"] = {"change": label, "needed_bytes": p.gpu_bytes_needed, "gpu_bytes": total}
            break
    else:
        diag.fix.append(f"no single change fits in {gib(total)} with 10% headroom")
    # The batch left as it is: the fastest stage and offload layout that fits (what `zerotrain plan` recommends).
    best = memory.recommend(model, run, total, [run.micro_batch])
    if best is not None:
        r = best.run
        diag.fix.append(f"keeping micro-batch {r.micro_batch}, the fastest layout that fits: ZeRO-{r.zero_stage}"
                        + (f", offload optimizer {r.offload_optimizer}" if r.offload_optimizer != "none" else "")
                        + (f", offload params {r.offload_params}" if r.offload_params != "none" else "")
                        + (", activation checkpointing" if r.activation_checkpointing and not run.activation_checkpointing else "")
                        + f" → {gib(best.gpu_bytes_needed)}")


def _explain_cuda_oom(ev: RunEvidence, lines: list[str], model_spec: str | None) -> Diagnosis | None:
    hits = [i for i, line in enumerate(lines) if "CUDA out of memory" in line]
    if not hits:
        return None
    line = lines[hits[0]]
    text = " ".join(lines[hits[0]:hits[0] + 3])
    tried = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB|B)", text)
    total = (re.search(r"total capacity of ([\d.]+) (GiB|MiB)", text) or re.search(r"([\d.]+) (GiB|MiB) total capacity", text))
    free = re.search(r"of which ([\d.]+) (GiB|MiB|KiB|B) is free", text) or re.search(r"([\d.]+) (GiB|MiB|KiB|B) free", text)
    by_torch = re.search(r"([\d.]+) (GiB|MiB) is allocated by PyTorch", text) or re.search(r"([\d.]+) (GiB|MiB) already allocated", text)
    unalloc = re.search(r"([\d.]+) (GiB|MiB|KiB|B) is reserved by PyTorch but unallocated", text)
    gpu = re.search(r"GPU (\d+)", text)
    ranks = sorted({r for i in hits if (r := _rank_of(lines[i])) is not None})
    total_bytes = _bytes(*total.groups()) if total else None
    phase = _phase_before(lines, hits[0])
    d = Diagnosis("cuda_oom", f"CUDA out of memory{f' on rank(s) {ranks}' if ranks else ''}"
                  + (f" in {phase}" if phase else "")
                  + (f": tried to allocate {tried.group(1)} {tried.group(2)}" if tried else "")
                  + (f" on GPU {gpu.group(1)} of {total.group(1)} {total.group(2)}" if gpu and total else ""))
    d.evidence.append(line.strip()[:400])
    d.data.update(tried_bytes=_bytes(*tried.groups()) if tried else None, gpu_bytes=total_bytes,
                  free_bytes=_bytes(*free.groups()) if free else None, ranks=ranks, phase=phase,
                  allocated_bytes=_bytes(*by_torch.groups()) if by_torch else None)
    if unalloc and total_bytes and _bytes(*unalloc.groups()) > 0.05 * total_bytes:
        d.fix.append(f"{unalloc.group(1)} {unalloc.group(2)} was reserved but unallocated (fragmentation): "
                     "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")
    _oom_advice(d, ev, total_bytes, model_spec)
    return d


def _explain_host_oom(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    patterns = (r"Out of memory: Killed process (\d+)", r"oom-kill", r"invoked oom-killer", r"exits with return code = -9",
                r"exitcode\s*:\s*-9", r"Signal 9 \(SIGKILL\)", r"^\s*Killed\s*$")
    hits = [line.strip() for line in lines if any(re.search(p, line) for p in patterns)]
    if not hits:
        return None
    d = Diagnosis("host_oom", "a process was killed with SIGKILL (-9): the Linux OOM killer ran out of host RAM", hits[:3])
    inputs = planner_inputs(ev)
    if inputs:
        from zerotrain import memory

        p = memory.plan(*inputs)
        d.evidence.append(f"planner: {p.host_ram_per_node / GiB:.1f} GiB host RAM per node for {p.run.describe()} "
                          f"(ranks, pinned offload buffers, loading a checkpoint shard)")
        d.data["host_ram_per_node"] = p.host_ram_per_node
    d.fix += [("check with `dmesg -T | grep -i oom` on the node; give the job more host RAM (SLURM --mem), run fewer ranks per node, "
               "or offload less (CPU offload keeps fp32 master weights and Adam states in pinned host memory)"),
              "if it died while loading a checkpoint: every rank holds its shard in host RAM at once; resume on more nodes or with more RAM"]
    return d


def _explain_nccl_timeout(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    pat = re.compile(r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(\d+), OpType=(\w+)"
                     r"(?:, NumelIn=(\d+), NumelOut=(\d+))?.*?Timeout\(ms\)=(\d+)\)")
    timed_out = {}
    for line in lines:
        m = pat.search(line)
        if m:
            timed_out.setdefault(_rank_of(line), (int(m.group(1)), m.group(2), int(m.group(5))))
    if not timed_out and not any("NCCL timeout" in line or "ProcessGroupNCCL's watchdog" in line for line in lines):
        return None
    ranks_seen = {r for line in lines if (r := _rank_of(line)) is not None}
    world = None
    if ev.ds_config and isinstance(ev.ds_config.get("train_batch_size"), int):
        per = (ev.ds_config.get("train_micro_batch_size_per_gpu") or 1) * (ev.ds_config.get("gradient_accumulation_steps") or 1)
        world = ev.ds_config["train_batch_size"] // per if isinstance(per, int) and per else None
    everyone = set(range(world)) if world else ranks_seen
    reported = {r for r in timed_out if r is not None}
    silent = sorted(everyone - reported)
    first = min(timed_out.values()) if timed_out else None
    d = Diagnosis("nccl_timeout", "NCCL collective timed out" + (
        f": {first[1]} #{first[0]} did not finish within {first[2] / 1000:g} s on rank(s) {sorted(reported) or '?'}" if first else ""))
    d.evidence += [f"rank {r}: {op} SeqNum {seq}, timeout {ms / 1000:g} s" for r, (seq, op, ms) in sorted(timed_out.items(), key=lambda x: (x[0] is None, x[0] or 0))]
    seqs = {seq for seq, _, _ in timed_out.values()}
    if silent and reported:
        d.evidence.append(f"rank(s) {', '.join(map(str, silent))} reported no timeout: they probably never reached that collective")
        d.fix.append(f"look at rank(s) {', '.join(map(str, silent))} first (their traceback or last log line): a crash, a hang in "
                     f"data loading or I/O, or a code path that skips a collective on some ranks")
    elif len(seqs) > 1:
        behind = sorted(r for r, (seq, _, _) in timed_out.items() if seq == min(seqs) and r is not None)
        d.fix.append(f"rank(s) {behind} were at an earlier collective (SeqNum {min(seqs)}) than the others: they fell behind; "
                     "look at what they do differently")
    d.fix.append("run `zerotrain doctor comm --timeout 60` (or under the same launcher) to test every rank and link; "
                 "rerun with NCCL_DEBUG=INFO TORCH_NCCL_TRACE_BUFFER_SIZE=2000 to see where each rank stopped")
    d.data.update(timed_out={str(k): v for k, v in timed_out.items()}, silent=silent)
    return d


def _explain_loss_scale(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    hits = [line.strip() for line in lines if "loss scale already at minimum" in line]
    if not hits:
        return None
    d = Diagnosis("loss_scale", "fp16 dynamic loss scaling hit its minimum: gradients overflowed step after step", hits[:1])
    scales = [(r["step"], r["loss_scale"]) for r in ev.metrics if r.get("loss_scale") is not None]
    if scales:
        d.evidence.append(f"loss scale {scales[0][1]:g} at step {scales[0][0]} → {scales[-1][1]:g} at step {scales[-1][0]}")
    skipped = [r["skipped_steps"] for r in ev.metrics if r.get("skipped_steps") is not None]
    if skipped:
        d.evidence.append(f"{skipped[-1]} optimizer steps skipped for overflow")
    losses = [(r["step"], r["loss"]) for r in ev.metrics if "loss" in r]
    if losses:
        d.evidence.append(f"last logged loss {losses[-1][1]} at step {losses[-1][0]}")
    d.fix += ["train in bf16 where the GPU has it (A100, H100, L40S, RTX 30xx/40xx): deepspeed.dtype = \"bf16\" needs no loss scaling",
              "in fp16: lower train.lr, raise train.warmup_steps, keep train.grad_clip = 1.0; continue from the last good checkpoint"]
    return d


def _explain_op_build(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    ext = next((m.group(1) for line in lines if (m := re.search(r"Error building extension '(\w+)'", line))), None)
    checks = [(r"Ninja is required to load C\+\+ extensions", "ninja is missing", "pip install ninja"),
              (r"nvcc fatal\s*:\s*(.*)", "nvcc failed", ("make CUDA_HOME point to a toolkit matching torch's CUDA version (one new "
                                                           "enough for this GPU), and set TORCH_CUDA_ARCH_LIST (e.g. 9.0 for H100/H200)")),
              (r"fatal error: ([\w/.]+): No such file or directory", "a header is missing",
               "install the package that provides it (Python.h: python3-dev; cuda_runtime.h: the CUDA toolkit; libaio.h: libaio-dev)"),
              (r"detected CUDA version \(([\d.]+)\) mismatches the version that was used to compile\s+PyTorch \(([\d.]+)\)",
               "the CUDA toolkit and torch's CUDA differ", "install the toolkit matching torch.version.cuda, or the torch build for your toolkit"),
              (r"(?:c\+\+|g\+\+|gcc): (?:error|fatal error)", "the C++ compiler failed", "check the compiler version DeepSpeed supports")]
    found = []
    for pattern, what, fix in checks:
        for line in lines:
            if re.search(pattern, line):
                found.append((line.strip(), what, fix))
                break
    if ext is None and not found and not any("ninja: build stopped" in line for line in lines):
        return None
    d = Diagnosis("op_build", f"DeepSpeed could not JIT-build {'the ' + ext + ' op' if ext else 'an op'}"
                  + (f": {found[0][1]}" if found else ""), [f[0][:300] for f in found])
    d.fix += [f[2] for f in found]
    d.fix.append(f"`zerotrain doctor` lists which ops can build here; or pre-build at install: "
                 f"DS_BUILD_{(ext or 'OPS').upper()}=1 pip install --no-build-isolation deepspeed")
    d.data["extension"] = ext
    return d


def _explain_rank_crash(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    codes = [(m.group(1), int(m.group(2))) for line in lines
             if (m := re.search(r"(.*?)exits with return code = (-?\d+)", line)) and int(m.group(2)) != 0]
    failures = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n?\s*exitcode\s*:\s*(-?\d+)",
                                                                       "\n".join(lines))]
    errors = [(i, line) for i, line in enumerate(lines) if re.match(r"\s*(?:\[rank\d+\]:\s*)?[\w.]*(?:Error|Exception)\b.*:", line)]
    if not codes and not failures:
        return None
    d = Diagnosis("rank_crash", "a rank exited with an error and the launcher stopped the others")
    if failures:
        rank, code = failures[0]
        d.summary = f"rank {rank} failed first with exit code {code}"
        d.data.update(rank=rank, exit_code=code)
    elif codes:
        d.data["exit_code"] = codes[0][1]
        d.summary += f" (exit code {codes[0][1]})"
    if errors:
        line = errors[0][1]
        rank = _rank_of(line)
        d.evidence.append(f"first error{f' (rank {rank})' if rank is not None else ''}: {line.strip()[:300]}")
        if rank is not None and "rank" not in d.data:
            d.data["rank"] = rank
            d.summary = f"rank {rank} crashed first; the launcher stopped the others"
    d.evidence += [f"{where.strip()} exits with return code = {code}" for where, code in codes[:2]]
    if d.data.get("exit_code") == -9:
        d.fix.append("exit code -9 is SIGKILL: usually the host's OOM killer (see host_oom)")
    d.fix.append("read the first traceback above (the first rank to fail); the other ranks' errors are consequences")
    return d


EXPLAINERS = (_explain_cuda_oom, _explain_op_build, _explain_loss_scale, _explain_nccl_timeout, _explain_host_oom, _explain_rank_crash)


def explain(path: str | Path, model_spec: str | None = None) -> dict:
    """Every failure the logs show, the most specific first; {"sources", "diagnoses"}."""
    ev = read_evidence(path)
    lines = ev.text.splitlines()
    diagnoses = []
    for fn in EXPLAINERS:
        d = fn(ev, lines, model_spec) if fn is _explain_cuda_oom else fn(ev, lines)
        if d:
            diagnoses.append(d)
    if len(diagnoses) > 1:  # the launcher's "exits with return code" follows from the cause already named
        diagnoses = [d for d in diagnoses if d.kind != "rank_crash"]
    if not diagnoses:
        last = _last_exception(reversed(lines))
        diagnoses.append(Diagnosis("unknown", "no known failure pattern (CUDA/host OOM, NCCL timeout, loss scale, op build, rank crash)",
                                   [f"last error line: {last}"] if last else [],
                                   ["pass the complete log of every rank (`2>&1 | tee train.log`)"]))
    sources = list(ev.logs) + [name for name, present in (("config.toml", ev.config is not None), ("ds_config.json", ev.ds_config is not None),
                                                          ("metrics.jsonl", bool(ev.metrics))) if present]
    return {"sources": sources, "diagnoses": [d.to_dict() for d in diagnoses]}


def format_explain(report: dict) -> str:
    lines = [f"read: {', '.join(report['sources'])}"]
    for d in report["diagnoses"]:
        lines.append(f"\n[{d['kind']}] {d['summary']}")
        lines += [f"  · {e}" for e in d["evidence"]]
        lines += [f"  → {f}" for f in d["fix"]]
    return "\n".join(lines)
