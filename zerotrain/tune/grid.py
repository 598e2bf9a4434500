"""The candidates tune considers (stage × offload × activation checkpointing × micro-batch, each keeping the global
batch, plus the planner's partial offload where ZeRO-3 fits with part of the optimizer on the CPU) and the memory
planner's verdict on each: pruned with the reason, or kept."""

from dataclasses import dataclass, field, replace

from zerotrain import UserError, memory

OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"))  # (optimizer, parameters)
# ZeRO-Infinity, ZeRO-3 only, where the run sets deepspeed.nvme_path: the optimizer on NVMe, and the parameters too
NVME_OFFLOADS = (("nvme", "none"), ("nvme", "nvme"))
OFFLOAD_NAMES = {
    ("none", "none"): ("", ""),
    ("cpu", "none"): ("-oo", " + offload opt"),
    ("cpu", "cpu"): ("-oo-op", " + offload opt, params"),
    ("nvme", "none"): ("-on", " + opt on NVMe"),
    ("nvme", "nvme"): ("-on-pn", " + opt, params on NVMe"),
}
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Candidate:
    zero_stage: int
    offload_optimizer: str
    offload_params: str
    activation_checkpointing: bool
    micro_batch: int
    grad_accum: int
    offload_ratio: float = 1.0  # below 1 (ZeRO-3, optimizer to CPU): the share of the optimizer stepped on the CPU
    persistent: bool = False  # ZeRO-3 with every parameter kept gathered (where it fits: prune decides, as train would)
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
        off = OFFLOAD_NAMES[(self.offload_optimizer, self.offload_params)][0]
        off += f"{self.offload_ratio * 100:.0f}" if self.offload_ratio < 1 else ""
        ckpt = "-ckpt" if self.activation_checkpointing else ""
        return f"zero{self.zero_stage}{off}{ckpt}-mb{self.micro_batch}x{self.grad_accum}"

    @property
    def label(self) -> str:
        off = OFFLOAD_NAMES[(self.offload_optimizer, self.offload_params)][1]
        off = f" + offload {self.offload_ratio:.0%} of opt" if self.offload_ratio < 1 else off
        ckpt = ", ckpt" if self.activation_checkpointing else ""
        return f"ZeRO-{self.zero_stage}{off}{ckpt}, mb {self.micro_batch} × {self.grad_accum}"

    @property
    def measured(self) -> bool:
        return self.step_time_s is not None

    def run_shape(self, run: memory.RunShape) -> memory.RunShape:
        if self.offload_ratio < 1:  # zerotrain's sub-group size for partial offload, as the ds_config sets it
            run = memory.partial(run, self.offload_ratio)
        if self.persistent:
            run = replace(run, param_persistence_threshold=memory.ALL_PERSISTENT)
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
            master_weights=self.master_weights(run.master_weights),
        )

    def master_weights(self, asked: str) -> str:
        """The run's choice where DeepSpeed keeps bf16 master weights (ZeRO 1-3, optimizer on the device), fp32
        elsewhere."""
        return asked if memory.zero_optimizer_on_device(self.zero_stage, self.offload_optimizer) else "fp32"

    def grad_accum_dtype(self, asked: str) -> str:
        """The run's choice where zerotrain sums in fp32 (ZeRO 1-3, optimizer on the device), DeepSpeed's elsewhere."""
        return asked if memory.zero_optimizer_on_device(self.zero_stage, self.offload_optimizer) else "auto"

    def row(self) -> dict:
        return {
            "name": self.name,
            "zero_stage": self.zero_stage,
            "offload_optimizer": self.offload_optimizer,
            "offload_params": self.offload_params,
            "offload_optimizer_ratio": self.offload_ratio,
            "zero3_persistent_params": self.persistent,
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


def enumerate_candidates(
    global_batch: int, world: int, micro_batches: list[int], nvme: bool = False
) -> list[Candidate]:
    """Every stage × offload × checkpointing × (micro-batch, accumulation) that keeps the global batch. Offloading
    the optimizer needs ZeRO 1-3, the parameters ZeRO-3 (runconfig.validate refuses the others); with `nvme` (the
    run sets deepspeed.nvme_path) ZeRO-3 also gets the NVMe offloads."""
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
        for oo, op in OFFLOADS + (NVME_OFFLOADS if nvme else ()):
            if (oo != "none" and z == 0) or ((op != "none" or oo == "nvme") and z != 3):
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
    nvme_free: int | None = None  # free bytes at deepspeed.nvme_path (None: no path set)
    async_io: bool = False  # whether DeepSpeed's async_io op, which NVMe offload needs, builds here


def host_needed(p: memory.MemoryPlan, limits: Limits) -> int:
    from zerotrain.preflight import MemoryCheck

    check = MemoryCheck(
        p.model, p.run, p, 1 if limits.on_gpu else None, None, "", limits.ranks_per_node, limits.loads_weights
    )
    return check.host_needed(p)


def prune(cands: list[Candidate], model: memory.ModelShape, run: memory.RunShape, limits: Limits) -> None:
    """Plan each candidate; mark those that do not fit with the reason. A ZeRO-3 candidate keeps every parameter
    gathered where that fits too (deepspeed.zero3_persistent_params, as train's "auto" chooses on a GPU)."""
    from zerotrain.preflight import AUTO_OFFLOAD_HEADROOM

    for c in cands:
        c.persistent = False
        if limits.on_gpu:
            shape = c.run_shape(run)
            kept = memory.persisting(model, shape, lambda p: not _shortfall(p, limits, AUTO_OFFLOAD_HEADROOM))
            c.persistent = kept is not shape
        p = memory.plan(model, c.run_shape(run))
        host = host_needed(p, limits)
        c.plan = {
            "gpu_needed": int(p.gpu_bytes_needed),
            "peak_allocated": int(p.per_gpu["peak_allocated"]),
            "host_needed": int(host),
        }
        why = []
        if limits.gpu_bytes is not None and p.gpu_bytes_needed > limits.gpu_bytes * (1 - limits.headroom):
            why.append(f"GPU: needs {size_text(p.gpu_bytes_needed, limits.gpu_bytes)} of {size_text(limits.gpu_bytes)}")
        if limits.host_bytes is not None and host > limits.host_bytes * (1 - limits.headroom):
            why.append(f"host RAM: needs {size_text(host, limits.host_bytes)} of {size_text(limits.host_bytes)}")
        nvme = "nvme" in (c.offload_optimizer, c.offload_params)
        if nvme and limits.nvme_free is not None and p.nvme_bytes > limits.nvme_free * (1 - limits.headroom):
            why.append(f"NVMe: needs {size_text(p.nvme_bytes, limits.nvme_free)} of {size_text(limits.nvme_free)} free")
        if why:
            c.pruned = "; ".join(why) + f" (with {limits.headroom:.0%} headroom)"
            c.status = "pruned"
        elif nvme and not limits.async_io:
            c.pruned = (
                "NVMe: DeepSpeed's async_io op does not build here (install libaio-dev; `zerotrain doctor` checks)"
            )
            c.status = "pruned"


def _shortfall(p: memory.MemoryPlan, limits: Limits, headroom: float) -> bool:
    """Whether the plan needs more GPU memory or host RAM than the limits leave with `headroom` to spare."""
    gpu = limits.gpu_bytes is not None and p.gpu_bytes_needed > limits.gpu_bytes * (1 - headroom)
    return gpu or (limits.host_bytes is not None and host_needed(p, limits) > limits.host_bytes * (1 - headroom))


def add_partial_offload(
    cands: list[Candidate], model: memory.ModelShape, run: memory.RunShape, limits: Limits
) -> list[Candidate]:
    """After prune: for each ZeRO-3 candidate without offload that the GPU alone cannot hold, while its host RAM
    fits, the same candidate with the smallest share of the optimizer on the CPU that fits (memory.OFFLOAD_RATIOS,
    as `offload_optimizer = "auto"` chooses it), placed right after it; the whole optimizer offloaded is already in
    the grid. Returns the new list."""
    out = []
    for c in cands:
        out.append(c)
        gpu_only = c.pruned.startswith("GPU") and "host RAM" not in c.pruned
        if not (c.zero_stage == 3 and c.offload_optimizer == "none" and gpu_only):
            continue
        for r in memory.OFFLOAD_RATIOS:
            p = replace(
                c, offload_optimizer="cpu", offload_ratio=r, persistent=False, plan={}, pruned="", status="not measured"
            )
            prune([p], model, run, limits)
            if not p.pruned:
                out.append(p)
                break
    return out


def what_would_fit(model: memory.ModelShape, run: memory.RunShape, limits: Limits, cands: list[Candidate]) -> str:
    """For a model that fits nowhere: the cheapest of more GPUs, NVMe offload, a smaller micro-batch that would."""

    def fits(r: memory.RunShape, lim: Limits) -> bool:
        return not _shortfall(memory.plan(model, r), lim, lim.headroom)

    smallest = min(cands, key=lambda c: c.plan["gpu_needed"] + c.plan["host_needed"])
    base = smallest.run_shape(run)
    ideas = []
    # the fewest GPUs (8 per node) on which some configuration of the grid fits, the least sharded first
    more = ((w, c) for w in (2, 4, 8, 16, 32, 64) if w > run.world for c in cands)
    for world, c in more:
        r = replace(c.run_shape(run), gpus_per_node=min(world, 8), nodes=max(1, world // 8))
        if fits(r, replace(limits, ranks_per_node=r.gpus_per_node)):
            ideas.append(f"{world} GPUs ({c.label.rsplit(' × ', 1)[0]})")
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
    need = [f"a GPU of {size_text(smallest.plan['gpu_needed'] / spare)}"] if limits.gpu_bytes else []
    need += [f"{size_text(smallest.plan['host_needed'] / spare)} of host RAM per node"] if limits.host_bytes else []
    ideas.append(f"{' and '.join(need)} ({smallest.label}, with the headroom)")
    return "; ".join(ideas)


def size_text(x: float, unit_of: float | None = None) -> str:
    """GiB from 10 GiB on, MiB with a decimal below (where candidates differ by less than a GiB); the unit is
    `unit_of`'s when given, so that a need and its limit read alike."""
    return f"{x / 2**30:.1f} GiB" if (unit_of or x) >= 10 * 2**30 else f"{x / 2**20:.1f} MiB"
