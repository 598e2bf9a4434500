"""`zerotrain doctor comm`: the communication preflight.

`comm_rank()` runs as one rank of any launcher. All-reduce, all-gather and reduce-scatter over message sizes
(bus bandwidth as nccl-tests defines it), a ring of point-to-point transfers (one per link), and a matmul per
device; outliers are flagged. A watchdog thread bounds every step: a collective that does not finish in
`timeout` seconds ends the run with the rank(s) that never reached it, read from a TCPStore that stays
reachable while the collective hangs.
"""

import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

from zerotrain import UserError

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
