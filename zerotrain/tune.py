"""`zerotrain tune`: the fastest configuration that fits, found by planning first and measuring second.

1. enumerate   ZeRO stage (0-3) × offload (none, optimizer to CPU, optimizer and parameters to CPU) × activation
               checkpointing × micro-batch, each with the accumulation that keeps the global batch;
2. prune       with the memory planner: what needs more GPU memory or host RAM than there is, with headroom, is
               dropped with the reason; the rest is ordered by a predicted step time (`predict_terms`, below),
               calibrated on the measurements as they arrive (`Calibration`);
3. measure     the most promising with bench's machinery (a real `zerotrain train` run each, warm-up steps left out
               of the median), stopping a run once it is clearly slower than the best so far, and stopping the
               search once the budget is spent or the rest are predicted clearly slower than the best measured;
4. write       the winner as a run config (and with --for a ds_config, an HF Trainer "auto" config or an Accelerate
               config), tune.md and tune.json with every candidate, and tune.png.

docs/tune.md describes the step-time model and the GPU benchmark. No torch import here: the verb's bad input is
refused in well under a second, and the measuring happens in `zerotrain train` subprocesses.
"""

import json
import math
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from zerotrain import UserError, memory
from zerotrain.bench import BenchConfig, read_run, summarize, train_command

OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"))  # (optimizer, parameters)
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)
TERMS = ("compute", "communication", "offload", "overhead")


@dataclass(frozen=True)
class Hardware:
    """The constants of the step-time model; the calibration scales each term, so these only need the right order
    of magnitude and the right ratios between configurations."""

    peak_flops: float  # one device's dense peak in the compute dtype (metrics.PEAK_FLOPS on GPUs)
    efficiency: float  # the share of it matmul-heavy training reaches
    bus_bandwidth: (
        float  # bytes/s a rank's collectives move (nccl-tests' bus bandwidth: ring all-reduce moves 2(W-1)/W)
    )
    pcie_bandwidth: float  # bytes/s between a GPU and pinned host memory (0: no transfer, the CPU is the device)
    cpu_adam_params_per_s: float  # DeepSpeed's CPU-Adam over one node (ZeRO-Offload, Ren et al. 2021, section 5)
    memory_bandwidth: float  # bytes/s of device memory: the optimizer step on the device is bound by it
    micro_step_s: float  # fixed cost of one forward+backward (launches, Python, hooks)
    zero3_hook_s: float  # ZeRO-3's extra fixed cost per layer and micro-step (gather/release hooks)
    startup_s: float  # launching the ranks and building the engine, before the first step (measurement cost)


def default_hardware(on_gpu: bool, device_name: str | None = None) -> Hardware:
    if on_gpu:
        from zerotrain.metrics import peak_flops

        return Hardware(
            peak_flops=peak_flops(device_name) or 312e12,
            efficiency=0.45,
            bus_bandwidth=100e9,
            pcie_bandwidth=20e9,
            cpu_adam_params_per_s=1.5e9,
            memory_bandwidth=2e12,
            micro_step_s=0.004,
            zero3_hook_s=0.0003,
            startup_s=60.0,
        )
    return Hardware(
        peak_flops=100e9,
        efficiency=0.3,
        bus_bandwidth=1e9,  # gloo over shared memory
        pcie_bandwidth=0.0,
        cpu_adam_params_per_s=0.5e9,
        memory_bandwidth=20e9,
        micro_step_s=0.004,
        zero3_hook_s=0.0005,
        startup_s=20.0,
    )


@dataclass
class Candidate:
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    activation_checkpointing: bool
    micro_batch: int
    grad_accum: int
    plan: dict = field(default_factory=dict)  # gpu_needed, host_needed, peak_allocated (bytes)
    pruned: str = ""  # why the planner dropped it; empty when it fits
    terms: dict = field(default_factory=dict)  # the model's raw terms (seconds per step)
    predicted_s: float | None = None  # calibrated on every measurement
    predicted_before_s: float | None = None  # calibrated on the measurements made before this one ran
    status: str = (
        "not measured"  # pruned | not measured | ok | stopped early (slower) | stopped (budget) | oom | failed
    )
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_allocated: int | None = None  # measured: the GPU's peak allocated (on CPU: the rank's peak RSS)
    steps_timed: int = 0
    wall_s: float | None = None

    @property
    def name(self) -> str:
        off = {("none", "none"): "", ("cpu", "none"): "-oo", ("cpu", "cpu"): "-oo-op"}[
            (self.offload_optimizer, self.offload_params)
        ]
        ckpt = "-ckpt" if self.activation_checkpointing else ""
        return f"zero{self.zero_stage}{off}{ckpt}-mb{self.micro_batch}x{self.grad_accum}"

    @property
    def label(self) -> str:
        off = {("none", "none"): "", ("cpu", "none"): " + offload opt", ("cpu", "cpu"): " + offload opt, params"}[
            (self.offload_optimizer, self.offload_params)
        ]
        ckpt = ", ckpt" if self.activation_checkpointing else ""
        return f"ZeRO-{self.zero_stage}{off}{ckpt}, mb {self.micro_batch} × {self.grad_accum}"

    @property
    def measured(self) -> bool:
        return self.step_time_s is not None

    def run_shape(self, run: memory.RunShape) -> memory.RunShape:
        return replace(
            run,
            zero_stage=self.zero_stage,
            offload_optimizer=self.offload_optimizer,
            offload_params=self.offload_params,
            activation_checkpointing=self.activation_checkpointing,
            micro_batch=self.micro_batch,
            grad_accum=self.grad_accum,
            contiguous_gradients=self.zero_stage >= 2,  # as dsconfig.build sets it
            grad_accum_dtype=self.grad_accum_dtype(run.grad_accum_dtype),
        )

    def grad_accum_dtype(self, asked: str) -> str:
        """The run's choice where zerotrain sums in fp32 (ZeRO 1-3, optimizer on the device), DeepSpeed's elsewhere."""
        return asked if self.zero_stage >= 1 and self.offload_optimizer == "none" else "auto"

    def row(self) -> dict:
        return {
            "name": self.name,
            "zero_stage": self.zero_stage,
            "offload_optimizer": self.offload_optimizer,
            "offload_params": self.offload_params,
            "activation_checkpointing": self.activation_checkpointing,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "status": self.status,
            "pruned": self.pruned,
            "planned": self.plan,
            "terms_s": self.terms,
            "predicted_step_s": self.predicted_s,
            "predicted_before_measuring_s": self.predicted_before_s,
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "peak_allocated": self.peak_allocated,
            "steps_timed": self.steps_timed,
            "wall_s": self.wall_s,
        }


# ------------------------------------------------------------------------------------------------ enumerate


def split_batch(global_batch: int, world: int, micro_batches: list[int]) -> list[tuple[int, int]]:
    """(micro-batch, accumulation) pairs that keep `global_batch` on `world` ranks."""
    if global_batch < 1 or global_batch % world:
        return []
    per_rank = global_batch // world
    return [(m, per_rank // m) for m in micro_batches if per_rank % m == 0]


def enumerate_candidates(global_batch: int, world: int, micro_batches: list[int]) -> list[Candidate]:
    """Every stage × offload × checkpointing × (micro-batch, accumulation) that keeps the global batch. Offloading
    the optimizer needs ZeRO 1-3, the parameters ZeRO-3 (runconfig.validate refuses the others)."""
    splits = split_batch(global_batch, world, micro_batches)
    if not splits:
        per_rank = f"{global_batch / world:g}"
        raise UserError(
            f"global batch {global_batch} cannot be split over {world} rank(s) with a micro-batch among "
            f"{', '.join(map(str, micro_batches))} ({per_rank} sequences per rank); use a multiple of "
            f"{world * min(micro_batches)} (--global-batch) or other --micro-batch values"
        )
    out = []
    for z in (0, 1, 2, 3):
        for oo, op in OFFLOADS:
            if (oo != "none" and z == 0) or (op != "none" and z != 3):
                continue
            for ckpt in (False, True):
                for m, a in splits:
                    out.append(Candidate(z, oo, op, ckpt, m, a))
    return out


# ------------------------------------------------------------------------------------------------ prune


@dataclass
class Limits:
    """What a candidate must fit: one GPU's memory (None: not checked) and one node's host RAM (None: not
    checked), both with `headroom` to spare. On a CPU-only machine the ranks' model states and activations live
    in host RAM, as train's memory check counts them (preflight.MemoryCheck)."""

    gpu_bytes: int | None
    host_bytes: int | None
    headroom: float
    ranks_per_node: int
    on_gpu: bool
    loads_weights: bool = False


def host_needed(p: memory.MemoryPlan, limits: Limits) -> int:
    from zerotrain.preflight import MemoryCheck

    check = MemoryCheck(
        p.model, p.run, p, 1 if limits.on_gpu else None, None, "", limits.ranks_per_node, limits.loads_weights
    )
    return check.host_needed(p)


def prune(cands: list[Candidate], model: memory.ModelShape, run: memory.RunShape, limits: Limits) -> None:
    """Plan each candidate; mark those that do not fit with the reason."""
    for c in cands:
        p = memory.plan(model, c.run_shape(run))
        host = host_needed(p, limits)
        c.plan = {
            "gpu_needed": int(p.gpu_bytes_needed),
            "peak_allocated": int(p.per_gpu["peak_allocated"]),
            "host_needed": int(host),
        }
        why = []
        if limits.gpu_bytes is not None and p.gpu_bytes_needed > limits.gpu_bytes * (1 - limits.headroom):
            why.append(f"GPU: needs {_mem(p.gpu_bytes_needed, limits.gpu_bytes)} of {_mem(limits.gpu_bytes)}")
        if limits.host_bytes is not None and host > limits.host_bytes * (1 - limits.headroom):
            why.append(f"host RAM: needs {_mem(host, limits.host_bytes)} of {_mem(limits.host_bytes)}")
        if why:
            c.pruned = "; ".join(why) + f" (with {limits.headroom:.0%} headroom)"
            c.status = "pruned"


def what_would_fit(model: memory.ModelShape, run: memory.RunShape, limits: Limits, cands: list[Candidate]) -> str:
    """For a model that fits nowhere: the cheapest of more GPUs, NVMe offload, a smaller micro-batch that would."""

    def fits(r: memory.RunShape, lim: Limits) -> bool:
        p = memory.plan(model, r)
        gpu_ok = lim.gpu_bytes is None or p.gpu_bytes_needed <= lim.gpu_bytes * (1 - lim.headroom)
        return gpu_ok and (lim.host_bytes is None or host_needed(p, lim) <= lim.host_bytes * (1 - lim.headroom))

    smallest = min(cands, key=lambda c: c.plan["gpu_needed"] + c.plan["host_needed"])
    base = smallest.run_shape(run)
    ideas = []
    for world in (2, 4, 8, 16, 32, 64):
        if world > run.world:
            r = replace(base, gpus_per_node=min(world, 8), nodes=max(1, world // 8))
            if fits(r, replace(limits, ranks_per_node=r.gpus_per_node)):
                ideas.append(f"{world} GPUs ({smallest.label})")
                break
    nvme = replace(base, zero_stage=3, offload_optimizer="nvme", offload_params="nvme", activation_checkpointing=True)
    if fits(nvme, limits):
        ideas.append('NVMe offload (deepspeed.offload_optimizer = offload_params = "nvme", zero_stage = 3)')
    for m in (1, 2, 4):
        if m < min(c.micro_batch for c in cands):
            r = replace(base, micro_batch=m, activation_checkpointing=True)
            if fits(r, limits):
                ideas.append(f"micro-batch {m} (--micro-batch {m}, with a global batch it divides)")
                break
    spare = 1 - limits.headroom
    need = [f"a GPU of {_mem(smallest.plan['gpu_needed'] / spare)}"] if limits.gpu_bytes else []
    need += [f"{_mem(smallest.plan['host_needed'] / spare)} of host RAM per node"] if limits.host_bytes else []
    ideas.append(f"{' and '.join(need)} ({smallest.label}, with the headroom)")
    return "; ".join(ideas)


# ------------------------------------------------------------------------------------------------ predict


def predict_terms(c: Candidate, model: memory.ModelShape, run: memory.RunShape, hw: Hardware) -> dict[str, float]:
    """Seconds per optimizer step, term by term (docs/tune.md):
    compute        6·N + 12·L·h·T FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B), 8·N… with activation
                   checkpointing (the forward runs twice), over peak × efficiency; plus the optimizer step on the
                   device, bound by memory bandwidth (~32 bytes read and written per parameter of the shard);
    communication  the bytes each rank's collectives move (ring: 2(W-1)/W of the buffer for an all-reduce,
                   (W-1)/W for reduce-scatter or all-gather) over the bus bandwidth: ZeRO-0/1 reduce the gradients
                   once per step, ZeRO-2 reduce-scatters them every micro-step, ZeRO-3 also all-gathers the
                   parameters twice per micro-step (forward, backward), ZeRO 1-2 all-gather updated parameters;
    offload        CPU-Adam over the node's parameters, and gradients down and parameters up over PCIe (parameter
                   offload: the partition up twice per micro-step);
    overhead       a fixed cost per micro-step, and ZeRO-3's hooks per layer."""
    N, L, h, T = model.n_params, model.n_layer, model.hidden, run.seq_len
    W, a, b = run.world, c.grad_accum, memory.DTYPE_BYTES[run.dtype]
    tokens = c.micro_batch * T * a  # per rank per step
    flops = (6 * N + 12 * L * h * T) * tokens
    if c.activation_checkpointing:
        flops *= 4 / 3  # one more forward: 2N of the 6N
    shard = 1 if c.zero_stage == 0 else W
    compute = flops / (hw.peak_flops * hw.efficiency)
    if c.offload_optimizer == "none":
        compute += 32 * N / shard / hw.memory_bandwidth
    ring = (W - 1) / W
    gbytes = b * N  # the gradients (and parameters) in the compute dtype
    comm = {0: 2 * ring * gbytes, 1: 2 * ring * gbytes, 2: a * ring * gbytes + ring * gbytes, 3: a * 3 * ring * gbytes}[
        c.zero_stage
    ]
    communication = comm / hw.bus_bandwidth if W > 1 else 0.0
    offload = 0.0
    if c.offload_optimizer != "none":
        offload += N / hw.cpu_adam_params_per_s
        if hw.pcie_bandwidth:
            offload += (4 + b) * N / W / hw.pcie_bandwidth  # fp32 gradients down, parameters up
    if c.offload_params != "none" and hw.pcie_bandwidth:
        offload += a * 2 * b * N / W / hw.pcie_bandwidth
    overhead = a * (hw.micro_step_s + (L * hw.zero3_hook_s if c.zero_stage == 3 else 0.0))
    return {"compute": compute, "communication": communication, "offload": offload, "overhead": overhead}


class Calibration:
    """Predicted step time = Σ k_term × term. Before any measurement every k is 1; with fewer than four
    measurements (or a fit that gives a term no positive weight) one common k, the median ratio of measured to
    raw predicted; from four on, the k that minimise the relative squared error (least squares on terms/measured)."""

    def __init__(self) -> None:
        self.k = {t: 1.0 for t in TERMS}
        self.how = "uncalibrated"

    def predict(self, terms: dict[str, float]) -> float:
        return sum(self.k[t] * terms[t] for t in TERMS)

    def fit(self, measured: list[Candidate]) -> None:
        pts = [(c.terms, c.step_time_s) for c in measured if c.step_time_s]
        if not pts:
            return
        ratio = statistics.median(m / sum(t.values()) for t, m in pts)
        self.k, self.how = {t: ratio for t in TERMS}, f"one factor {ratio:.3g} from {len(pts)} measurement(s)"
        used = [t for t in TERMS if any(terms[t] > 0 for terms, _ in pts)]
        if len(pts) < max(4, len(used) + 1):
            return
        import numpy as np

        A = np.array([[terms[t] / m for t in used] for terms, m in pts])
        k, *_ = np.linalg.lstsq(A, np.ones(len(pts)), rcond=None)
        if all(v > 0 for v in k):
            self.k = {t: ratio for t in TERMS} | dict(zip(used, map(float, k)))
            self.how = "per term " + ", ".join(f"{t} ×{self.k[t]:.3g}" for t in used) + f" from {len(pts)} measurements"


# ------------------------------------------------------------------------------------------------ measure


@dataclass
class Measure:
    """How candidates are measured: bench's train command on `base_config` with these steps."""

    base_config: str
    nproc: int
    warmup_steps: int
    steps: int
    overrides: list[str]
    grad_accum_dtype: str  # the run's deepspeed.grad_accum_dtype
    stop_slower_by: float  # a run whose median step is this much slower than the best so far is stopped

    @property
    def max_steps(self) -> int:
        return self.warmup_steps + self.steps


def measure(c: Candidate, m: Measure, run_dir: Path, best_s: float | None, deadline: float | None) -> None:
    """One real run of `c`, watched through its metrics.jsonl: stopped once its median step (after warm-up, two
    steps at least) is clearly slower than `best_s`, or when `deadline` (time.monotonic) passes."""
    bc = BenchConfig(
        c.zero_stage, c.micro_batch, c.offload_optimizer, c.offload_params, c.grad_accum_dtype(m.grad_accum_dtype)
    )
    overrides = [
        *m.overrides,
        f"--train.grad_accum={c.grad_accum}",
        "--train.global_batch_size=0",
        f"--deepspeed.activation_checkpointing={str(c.activation_checkpointing).lower()}",
        f"--train.max_steps={m.max_steps}",
        "--train.profile_steps=0",
    ]
    cmd = train_command(bc, m.base_config, overrides, m.nproc, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"{c.name}.log"
    metrics = run_dir / "metrics.jsonl"
    started = time.monotonic()
    stopped = ""
    # its own session, so that stopping it stops the launcher's ranks too (one process group, ours)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if deadline is not None and time.monotonic() > deadline:
                    stopped = "stopped (budget)"
                elif best_s is not None and metrics.exists():
                    s = _timed(metrics, m.warmup_steps)
                    if s is not None and s > best_s * (1 + m.stop_slower_by):
                        stopped = "stopped early (slower)"
                if stopped:
                    _stop(proc)
                    break
        except BaseException:  # tune itself interrupted (Ctrl-C, SIGTERM): its run, in a session of its own, too
            _stop(proc)
            raise
    c.wall_s = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    if stopped:
        c.status = stopped
        records = _records(metrics)
        s = summarize(records, m.warmup_steps) if records else {}
        timed = [r for r in records if "loss" in r and r["step"] > m.warmup_steps]
        if s and len(timed) >= 2:
            c.step_time_s, c.tokens_per_s, c.peak_allocated = s["step_time_s"], s["tokens_per_s"], s["peak_allocated"]
            c.steps_timed = len(timed)
        return
    result = read_run(bc, proc.returncode, text, run_dir, m.warmup_steps, m.max_steps)
    c.status = result.status if not result.log_tail or result.measured else f"{result.status}: {_last(result.log_tail)}"
    if result.measured:
        c.step_time_s, c.tokens_per_s, c.peak_allocated = result.step_time_s, result.tokens_per_s, result.peak_allocated
        c.steps_timed = len([r for r in _records(metrics) if "loss" in r and r["step"] > m.warmup_steps])


def _records(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def _timed(metrics: Path, warmup_steps: int) -> float | None:
    """The median step time after warm-up, once two steps are in; None before."""
    times = [r["step_time_s"] for r in _records(metrics) if "loss" in r and r["step"] > warmup_steps]
    return statistics.median(times) if len(times) >= 2 else None


def _stop(proc: subprocess.Popen) -> None:
    """Stop a measuring run as train --nproc expects (distributed.launch_local): a first SIGTERM lets the ranks
    finish the step and exit, a second kills the launcher's process group and cleans up after it; SIGKILL to the
    run's own process group (it was started in a session of its own) if it still has not ended."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGTERM, 10)):
        try:
            proc.send_signal(sig)
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _last(tail: str) -> str:
    lines = [line for line in tail.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# ------------------------------------------------------------------------------------------------ the search


@dataclass
class Search:
    budget_s: float | None  # None: no limit (--exhaustive)
    exhaustive: bool
    max_measure: int | None
    min_measure: int  # measured before the predictions may end the search
    give_up_slower_by: float  # the search ends when the next is predicted this much slower than the best measured
    signature: dict = field(default_factory=dict)  # what a --resume must match (TuneArgs.signature)
    elapsed_before_s: float = 0.0  # spent by the calls this one resumes


def measurement_cost(c: Candidate, m: Measure, startup_s: float) -> float:
    """Seconds one measurement of `c` is expected to take: starting, then warm-up and timed steps."""
    return startup_s + m.max_steps * (c.predicted_s or 0.0)


def search(
    fitting: list[Candidate],
    model: memory.ModelShape,
    run: memory.RunShape,
    hw: Hardware,
    m: Measure,
    s: Search,
    out: Path,
    on_progress=print,
) -> tuple[Calibration, str]:
    """Measure candidates in the order of their calibrated prediction until the budget, the predictions or
    --max-measure say stop. Returns the calibration and why the search ended."""
    cal = Calibration()
    for c in fitting:
        c.terms = predict_terms(c, model, run, hw)
        c.predicted_s = cal.predict(c.terms)
    measured = [c for c in fitting if c.measured]  # from an earlier call (--resume)
    cal.fit(measured)
    for c in fitting:
        c.predicted_s = cal.predict(c.terms)
    start = time.monotonic() - s.elapsed_before_s
    deadline = None if s.budget_s is None else start + s.budget_s
    startup_s = hw.startup_s
    ended = "every fitting candidate was measured"
    while True:
        todo = sorted((c for c in fitting if c.status == "not measured"), key=lambda c: c.predicted_s or 0.0)
        if not todo:
            break
        c = todo[0]
        best = min((x for x in measured if x.status.startswith("ok")), key=lambda x: x.step_time_s or 0.0, default=None)
        done = len([x for x in fitting if x.status != "not measured"])
        if s.max_measure is not None and done >= s.max_measure:
            ended = f"--max-measure {s.max_measure} reached"
            break
        if not s.exhaustive and best and done >= s.min_measure:
            if (c.predicted_s or 0.0) > best.step_time_s * (1 + s.give_up_slower_by):
                ended = (
                    f"the {len(todo)} left are predicted over {s.give_up_slower_by:.0%} slower than the best measured"
                )
                break
        if deadline is not None and time.monotonic() + measurement_cost(c, m, startup_s) > deadline and done:
            ended = f"the budget would not hold another measurement ({len(todo)} left)"
            break
        c.predicted_before_s = c.predicted_s
        on_progress(
            f"[{done + 1}/{len(fitting)}] {c.label}: predicted {_ms(c.predicted_s)} ms/step"
            + (f", best so far {_ms(best.step_time_s)} ms ({best.label})" if best else "")
        )
        # the first measurement always runs to the end, so that a budget that held its estimate gives a winner
        measure(
            c,
            m,
            out / "runs" / c.name,
            None if s.exhaustive or not best else best.step_time_s,
            deadline if measured else None,
        )
        if c.measured:
            measured.append(c)
        if c.measured and c.status.startswith("ok"):  # what starting cost: the run's wall time less its steps
            startup_s = max(1.0, c.wall_s - m.max_steps * c.step_time_s)
        off = "" if not c.measured else f", {100 * (c.predicted_before_s / c.step_time_s - 1):+.0f}% predicted"
        on_progress(
            f"  {c.status}"
            + (f": {_ms(c.step_time_s)} ms/step, {c.tokens_per_s:,.0f} tokens/s{off}" if c.measured else "")
            + f" ({c.wall_s:.0f} s)"
        )
        cal.fit(measured)
        for x in fitting:
            x.predicted_s = cal.predict(x.terms)
        save_state(out, s.signature, time.monotonic() - start, fitting)
    return cal, ended


STATE = "tune-state.json"  # what --resume continues from: the grid's signature, the time spent, every measurement


def save_state(out: Path, signature: dict, elapsed_s: float, cands: list[Candidate]) -> None:
    rows = {c.name: c.row() for c in cands if c.status != "not measured"}
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps({"signature": signature, "elapsed_s": elapsed_s, "measured": rows}, indent=1))
    tmp.replace(out / STATE)


def load_state(out: Path, signature: dict, fitting: list[Candidate]) -> float:
    """Restore the measurements an earlier call made (the same grid, limits and steps); the seconds it spent."""
    path = out / STATE
    if not path.is_file():
        raise UserError(f"--resume: {out} holds no {STATE}; start without --resume")
    state = json.loads(path.read_text())
    if state["signature"] != signature:
        changed = sorted(k for k in signature if state["signature"].get(k) != signature[k])
        raise UserError(
            f"--resume: {out} was tuned with other settings ({', '.join(changed)} differ); use the same "
            "command, or start afresh with --overwrite"
        )
    by_name = {c.name: c for c in fitting}
    for name, row in state["measured"].items():
        if (c := by_name.get(name)) is None:  # planned to fit then, not now: the planner changed
            continue
        c.status, c.step_time_s, c.tokens_per_s = row["status"], row["step_time_s"], row["tokens_per_s"]
        c.peak_allocated, c.steps_timed, c.wall_s = row["peak_allocated"], row["steps_timed"], row["wall_s"]
        c.predicted_before_s = row["predicted_before_measuring_s"]
    return float(state["elapsed_s"])


# ------------------------------------------------------------------------------------------------ the verb

TARGETS = ("zerotrain", "deepspeed", "hf-trainer", "accelerate")


@dataclass
class TuneArgs:
    config: str
    nproc: int = 1
    budget_minutes: float = 30.0
    global_batch: int | None = None
    target: str = "zerotrain"
    out: str = "tune-results"
    gpu_memory: str | None = None
    host_memory: str | None = None
    headroom: float = 0.10
    micro_batches: list[int] | None = None
    warmup_steps: int = 3
    steps: int = 10
    exhaustive: bool = False
    max_measure: int | None = None
    min_measure: int = 3
    stop_slower_by: float = 0.10
    overwrite: bool = False
    resume: bool = False
    overrides: list[str] = field(default_factory=list)  # --section.key=value for the config and every run

    def signature(self) -> dict:
        """The settings a --resume must share with the call it continues (the budget and --max-measure may grow)."""
        keys = ("config", "nproc", "global_batch", "gpu_memory", "host_memory", "headroom", "micro_batches")
        keys += ("warmup_steps", "steps", "exhaustive", "overrides")
        return {k: getattr(self, k) for k in keys}


# the keys tune chooses: an override of one of them would be overridden in every measurement
TUNED_KEYS = (
    "deepspeed.zero_stage",
    "deepspeed.offload_optimizer",
    "deepspeed.offload_params",
    "deepspeed.activation_checkpointing",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.global_batch_size",
)


def model_of(cfg) -> memory.ModelShape:
    """The planner's shape of the run's model: model.hf's config.json, else zerotrain's GPT with the data's vocabulary."""
    from zerotrain import planning

    if cfg.model.hf:
        config = Path(cfg.model.hf) / "config.json"
        if not config.is_file():
            raise UserError(f"model.hf {cfg.model.hf} has no config.json; point it at a Hugging Face model directory")
        return memory.shape_from_hf_config(json.loads(config.read_text()), cfg.model.hf)
    vocab = cfg.model.vocab_size
    data_dir = cfg.data.dir or (cfg.data.dirs[0] if cfg.data.dirs else "")
    meta = Path(data_dir) / "meta.json"
    if vocab is None:
        if not meta.is_file():
            raise UserError(
                f"data.dir {data_dir or '(unset)'} holds no prepared data; run `zerotrain data prepare ... --out DIR` "
                "and set data.dir"
            )
        vocab = int(json.loads(meta.read_text())["vocab_size"])
    return planning.model_shape(cfg.model, vocab)


def setup(a: TuneArgs):
    """Everything tune checks and derives before it writes or runs anything: the model, the run, the candidates
    pruned and predicted, the limits and the hardware model. Bad input raises UserError here."""
    from zerotrain import planning
    from zerotrain.dsconfig import derive_batch
    from zerotrain.runconfig import load_run_config

    for name, value, low in (("--nproc", a.nproc, 1), ("--steps", a.steps, 1), ("--warmup-steps", a.warmup_steps, 0)):
        if value < low:
            raise UserError(f"{name} must be ≥ {low}, got {value}")
    if not a.budget_minutes > 0:
        raise UserError(f"--budget-minutes must be positive, got {a.budget_minutes:g}")
    if a.target not in TARGETS:
        raise UserError(f"unknown --for {a.target!r}; choose one of {', '.join(TARGETS)}")
    micro = sorted(set(a.micro_batches or MICRO_BATCHES))
    if micro[0] < 1:
        raise UserError("--micro-batch values must be ≥ 1")
    if not Path(a.config).is_file():
        raise UserError(f"run config {a.config} not found")
    for o in a.overrides:
        key = o.removeprefix("--").split("=", 1)[0]
        if key in TUNED_KEYS:
            what = "--global-batch" if key == "train.global_batch_size" else "--micro-batch or --global-batch"
            hint = what if key.startswith("train.") else "the grid"
            raise UserError(f"--{key} is what tune chooses; drop it (set the search with {hint})")
    out = Path(a.out)
    if a.resume and a.overwrite:
        raise UserError("--resume continues the results in --out and --overwrite replaces them; pass one")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (a.overwrite or a.resume):
        raise UserError(
            f"{out} is not empty; pass --resume to continue it, --overwrite to replace it, or choose another --out"
        )
    cfg = load_run_config(a.config, a.overrides)
    model = model_of(cfg)
    gpu_detected, device = planning.gpu_memory(None)
    on_gpu = gpu_detected is not None
    gpu_bytes = planning.gpu_memory(a.gpu_memory)[0] if a.gpu_memory else gpu_detected
    host_bytes = memory.parse_size(a.host_memory) if a.host_memory else planning.host_memory(None)[0]
    dtype = cfg.deepspeed.dtype if cfg.deepspeed.dtype != "auto" else ("bf16" if on_gpu else "fp32")
    run = replace(planning.run_shape(cfg, a.nproc, 1, dtype), overlap_comm=on_gpu and a.nproc > 1)
    if not on_gpu:  # as train's memory check plans a CPU run: buckets no bigger than the model (preflight.memory_check)
        n = model.n_params
        run = replace(
            run,
            reduce_bucket_size=min(run.reduce_bucket_size, n),
            allgather_bucket_size=min(run.allgather_bucket_size, n),
            prefetch_bucket_size=min(run.prefetch_bucket_size, n),
        )
    global_batch = a.global_batch or derive_batch(cfg.train, a.nproc).global_size
    cands = enumerate_candidates(global_batch, a.nproc, micro)
    limits = Limits(gpu_bytes, host_bytes, a.headroom, a.nproc, on_gpu, bool(cfg.model.hf or cfg.run.init_from))
    prune(cands, model, run, limits)
    fitting = [c for c in cands if not c.pruned]
    if not fitting:
        where = f"{a.nproc} {'GPU' if on_gpu or a.gpu_memory else 'rank'}(s)" + (
            f" of {_mem(gpu_bytes)}" if gpu_bytes else ""
        )
        host = f" and {_mem(host_bytes)} of host RAM" if host_bytes else ""
        raise UserError(
            f"none of the {len(cands)} configurations of {model.name} ({model.n_params / 1e6:,.1f}M parameters, global "
            f"batch {global_batch} × {run.seq_len} tokens) fits {where}{host} with {a.headroom:.0%} headroom; "
            f"what would: {what_would_fit(model, run, limits, cands)}"
        )
    hw = default_hardware(on_gpu, device)
    for c in fitting:
        c.terms = predict_terms(c, model, run, hw)
        c.predicted_s = sum(c.terms.values())
    if not a.exhaustive:
        first = min(fitting, key=lambda c: c.predicted_s or 0.0)
        cost = hw.startup_s + (a.warmup_steps + a.steps) * (first.predicted_s or 0.0)
        if cost > 60 * a.budget_minutes:
            raise UserError(
                f"--budget-minutes {a.budget_minutes:g} is too small to measure one configuration (about {cost:.0f} s "
                f"each here: starting the ranks and {a.warmup_steps + a.steps} steps); give at least "
                f"{math.ceil(cost / 60 * 3)} to measure three, or fewer --steps"
            )
    return cfg, model, run, cands, fitting, limits, hw, global_batch, device if on_gpu else "CPU"


def tune(a: TuneArgs, on_progress=print) -> dict:
    """The whole verb: setup (bad input stops here, before anything is written), the search, the winner's configs
    and the reports. Returns tune.json's summary."""
    cfg, model, run, cands, fitting, limits, hw, global_batch, device = setup(a)
    out = Path(a.out)
    elapsed_before = load_state(out, a.signature(), fitting) if a.resume else 0.0
    if out.exists() and a.overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    on_progress(
        f"tune {model.name} ({model.n_params / 1e6:,.1f}M parameters) on {a.nproc} × {device}: global batch "
        f"{global_batch} × {run.seq_len} tokens, {run.dtype}; {len(cands)} candidates, {len(cands) - len(fitting)} "
        f"pruned by the planner"
        + " ("
        + ", ".join(
            ([f"GPU {_mem(limits.gpu_bytes)}"] if limits.gpu_bytes else [])
            + ([f"host {_mem(limits.host_bytes)}"] if limits.host_bytes else [])
            + [f"{a.headroom:.0%} headroom"]
        )
        + ")"
    )
    for c in cands:
        if c.pruned:
            on_progress(f"  pruned {c.label}: {c.pruned}")
    overrides = [*a.overrides, *([f"--run.host_memory={a.host_memory}"] if a.host_memory else [])]
    if elapsed_before:
        done = [c for c in fitting if c.status != "not measured"]
        on_progress(f"resuming: {len(done)} measured in {elapsed_before:.0f} s by the earlier call(s)")
    m = Measure(a.config, a.nproc, a.warmup_steps, a.steps, overrides, run.grad_accum_dtype, a.stop_slower_by)
    s = Search(
        None if a.exhaustive else 60 * a.budget_minutes,
        a.exhaustive,
        a.max_measure,
        a.min_measure,
        a.stop_slower_by,
        a.signature(),
        elapsed_before,
    )
    started = time.monotonic()
    cal, ended = search(fitting, model, run, hw, m, s, out, on_progress)
    elapsed = elapsed_before + time.monotonic() - started
    ok = [c for c in fitting if c.status.startswith("ok")]
    winner = min(ok, key=lambda c: c.step_time_s or math.inf, default=None)
    written = []
    if winner:
        written = write_winner(cfg, winner, a, run.dtype, "cuda" if device != "CPU" else "cpu", out)
    summary = {
        "config": a.config,
        "model": model.name,
        "n_params": model.n_params,
        "nproc": a.nproc,
        "device": device,
        "dtype": run.dtype,
        "seq_len": run.seq_len,
        "global_batch": global_batch,
        "exhaustive": a.exhaustive,
        "budget_s": None if a.exhaustive else 60 * a.budget_minutes,
        "elapsed_s": elapsed,
        "ended": ended,
        "n_candidates": len(cands),
        "pruned": len(cands) - len(fitting),
        "measured": len([c for c in fitting if c.status != "not measured"]),
        "limits": {"gpu_bytes": limits.gpu_bytes, "host_bytes": limits.host_bytes, "headroom": limits.headroom},
        "hardware_model": hw.__dict__,
        "calibration": cal.how,
        "calibration_k": cal.k,
        "prediction_error": prediction_error(fitting),
        "winner": None
        if winner is None
        else {
            "name": winner.name,
            "label": winner.label,
            "step_time_s": winner.step_time_s,
            "tokens_per_s": winner.tokens_per_s,
        },
        "written": written,
    }
    write_reports(out, summary, cands)
    return summary


def write_winner(cfg, w: Candidate, a: TuneArgs, dtype: str, device_type: str, out: Path) -> list[str]:
    """The winner as a run config (tuned.toml), and with --for the ds_config / HF Trainer / Accelerate files."""
    from zerotrain import dsconfig
    from zerotrain.dsconfig.new import _hf_variant
    from zerotrain.runconfig import dumps_toml

    ds, t = cfg.deepspeed, cfg.train
    ds.zero_stage, ds.offload_optimizer, ds.offload_params = w.zero_stage, w.offload_optimizer, w.offload_params
    ds.activation_checkpointing = w.activation_checkpointing
    ds.grad_accum_dtype = w.grad_accum_dtype(ds.grad_accum_dtype)
    t.micro_batch_size, t.grad_accum = w.micro_batch, w.grad_accum
    if t.global_batch_size:
        t.global_batch_size = w.micro_batch * w.grad_accum * a.nproc
    written = ["tuned.toml"]
    (out / "tuned.toml").write_text(
        f"# zerotrain tune's winner ({w.label}): zerotrain train {out / 'tuned.toml'} --nproc {a.nproc}\n"
        + dumps_toml(cfg)
    )
    if a.target == "zerotrain":
        return written
    config = dsconfig.build(cfg, dsconfig.Batch(w.micro_batch, w.grad_accum, a.nproc), dtype, device_type)
    if a.target == "hf-trainer":
        if "bf16" not in config and "fp16" not in config:  # an fp32 run: the Trainer's own args decide
            config["bf16"] = {"enabled": False}
        config = _hf_variant(config)
    (out / "ds_config.json").write_text(json.dumps(config, indent=2) + "\n")
    written.append("ds_config.json")
    if a.target == "accelerate":
        import yaml

        accel = dsconfig.accelerate_config(str(out / "ds_config.json"), a.nproc, 1, w.zero_stage)
        (out / "accelerate_config.yaml").write_text(yaml.safe_dump(accel, sort_keys=False))
        written.append("accelerate_config.yaml")
    return written


# ------------------------------------------------------------------------------------------------ reports


def _gib(x) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def _mem(x: float, unit_of: float | None = None) -> str:
    """GiB from 10 GiB on, MiB with a decimal below (where candidates differ by less than a GiB); the unit is
    `unit_of`'s when given, so that a need and its limit read alike."""
    return f"{x / 2**30:.1f} GiB" if (unit_of or x) >= 10 * 2**30 else f"{x / 2**20:.1f} MiB"


def _ms(x) -> str:
    return "" if x is None else f"{1000 * x:.1f}"


def prediction_error(cands: list[Candidate]) -> dict:
    """How far off the predictions were: before each measurement (calibrated on the earlier ones only) and after
    calibrating on all of them, as |predicted/measured - 1|."""
    full = [c for c in cands if c.measured and c.status.startswith("ok")]
    before = [abs(c.predicted_before_s / c.step_time_s - 1) for c in full if c.predicted_before_s]
    after = [abs(c.predicted_s / c.step_time_s - 1) for c in full if c.predicted_s]
    stat = lambda xs: (
        {"median": statistics.median(xs), "max": max(xs), "n": len(xs)} if xs else {"median": None, "max": None, "n": 0}
    )
    return {"before_measuring": stat(before), "after_calibration": stat(after)}


def write_reports(out: Path, summary: dict, cands: list[Candidate]) -> None:
    (out / "tune.json").write_text(json.dumps({**summary, "candidates": [c.row() for c in cands]}, indent=2) + "\n")
    w = summary.get("winner")
    err = summary["prediction_error"]
    pct = lambda x: "" if x is None else f"{100 * x:.0f}%"
    lines = [
        f"# zerotrain tune: {summary['model']} on {summary['nproc']} × {summary['device']}",
        "",
        f"global batch {summary['global_batch']} sequences of {summary['seq_len']} tokens, {summary['dtype']}; "
        f"{summary['n_candidates']} candidates, {summary['pruned']} pruned by the planner, {summary['measured']} "
        f"measured in {summary['elapsed_s']:.0f} s; the search ended because {summary['ended']}.",
        "",
        f"winner: **{w['label']}**, {_ms(w['step_time_s'])} ms/step, {w['tokens_per_s']:,.0f} tokens/s"
        if w
        else "winner: none (no candidate ran to the end)",
        "",
        f"predicted step time vs measured: median {pct(err['before_measuring']['median'])} off "
        f"(max {pct(err['before_measuring']['max'])}) before each measurement, {pct(err['after_calibration']['median'])} "
        f"(max {pct(err['after_calibration']['max'])}) after calibrating on all ({summary['calibration']}).",
        "",
        "| candidate | status | predicted ms | measured ms | tokens/s | planned GPU GiB | planned host GiB | "
        "measured peak GiB | why pruned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cands, key=lambda c: (c.status == "pruned", c.step_time_s or math.inf, c.predicted_s or math.inf)):
        lines.append(
            f"| {c.label} | {c.status} | {_ms(c.predicted_before_s or c.predicted_s)} | {_ms(c.step_time_s)} | "
            f"{'' if c.tokens_per_s is None else f'{c.tokens_per_s:,.0f}'} | {_gib(c.plan.get('gpu_needed'))} | "
            f"{_gib(c.plan.get('host_needed'))} | {_gib(c.peak_allocated)} | {c.pruned} |"
        )
    lines += [
        "",
        "predicted ms: calibrated on the measurements made before the candidate ran (for those not measured: on all "
        "of them); planned GPU: reserved peak + CUDA context and NCCL; measured peak: peak allocated on a GPU, the "
        "process's peak RSS on a CPU. tune.json holds every number; tune.png plots them.",
    ]
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    _plot(cands, out)


def _plot(cands: list[Candidate], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    done = [c for c in cands if c.measured and c.predicted_before_s]
    if done:
        xs = [1000 * c.predicted_before_s for c in done]
        ys = [1000 * c.step_time_s for c in done]
        left.scatter(xs, ys, c=["tab:blue" if c.status.startswith("ok") else "tab:orange" for c in done])
        for c, x, y in zip(done, xs, ys):
            left.annotate(c.name, (x, y), fontsize=6)
        lim = [0, 1.1 * max(xs + ys)]
        left.plot(lim, lim, color="grey", linewidth=0.8)
    left.set_xlabel("predicted ms/step (before measuring)")
    left.set_ylabel("measured ms/step")
    left.set_title("Prediction vs measurement (orange: stopped early)")
    fitting = sorted((c for c in cands if not c.pruned), key=lambda c: c.predicted_s or 0.0)
    names = [c.name for c in fitting]
    right.barh(names, [1000 * (c.predicted_s or 0.0) for c in fitting], color="lightgrey", label="predicted")
    meas = [(c.name, 1000 * c.step_time_s) for c in fitting if c.measured]
    if meas:
        right.scatter([v for _, v in meas], [n for n, _ in meas], color="black", zorder=3, label="measured")
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=6)
    right.set_xlabel("ms/step")
    right.set_title(f"Fitting candidates ({len(cands) - len(fitting)} pruned)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tune.png", dpi=120)
    plt.close(fig)
