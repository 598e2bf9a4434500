"""The training memory plan: per-GPU bytes of one ZeRO configuration, term by term and phase by phase (plan),
the configurations `zerotrain plan` compares (variants), and the fastest one that fits (recommend)."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from zerotrain.memory.activations import (
    _block_backward_transient,
    _checkpointed_block_input,
    _loss_terms,
    saved_bytes_per_token_per_layer,
)
from zerotrain.memory.shapes import (
    ALL_PERSISTENT,
    CUBLAS_WORKSPACE,
    CUDA_CONTEXT,
    DTYPE_BYTES,
    NCCL_BUFFERS,
    OPTIMIZER_STATE_BYTES,
    PROCESS_HOST_RAM,
    GiB,
    ModelShape,
    RunShape,
    bf16_master,
    check_run,
    fp32_grad_accum,
)


@dataclass
class MemoryPlan:
    model: ModelShape
    run: RunShape
    # per_gpu: the terms alive at the peak (params, grads, optimizer, activations, buffers; they add up to
    # peak_allocated), overhead outside the allocator, peak_allocated, peak_reserved (bytes)
    per_gpu: dict[str, int]
    peak_phase: str  # when the peak happens: "init", "backward", "optimizer step"
    host_ram_per_node: int
    nvme_bytes: int
    checkpoint_bytes: int
    # phases: phase -> its terms (bytes): what is alive at each moment
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # host_ram_per_node term by term: "processes" (each rank's Python, torch and libraries), "offload" (pinned
    # offload buffers and the optimizer states they hold), "loading" (reading pretrained weights or a checkpoint's
    # model states); and what resuming adds on top, "resuming" (torch.load of a checkpoint's optimizer shard)
    host_terms: dict[str, int] = field(default_factory=dict)

    @property
    def gpu_bytes_needed(self) -> int:
        """What the GPU must have free: the allocator's reserved peak plus the CUDA context and NCCL buffers."""
        return self.per_gpu["peak_reserved"] + self.per_gpu["overhead"]

    def fits(self, gpu_memory: int | None, headroom: float = 0.0, host_memory: int | None = None) -> bool:
        """Within the GPU's memory and, when given, the node's host RAM, with `headroom` (a fraction) to spare."""
        return not self.shortfalls(gpu_memory, headroom, host_memory)

    def shortfalls(self, gpu_memory: int | None, headroom: float = 0.0, host_memory: int | None = None) -> list[str]:
        """What does not fit, one phrase each ("GPU: needs 81.2 of 79.6 GiB"); empty when everything fits."""
        out = []
        if gpu_memory is not None and self.gpu_bytes_needed > gpu_memory * (1 - headroom):
            out.append(f"GPU: needs {self.gpu_bytes_needed / GiB:.1f} of {gpu_memory / GiB:.1f} GiB")
        if host_memory is not None and self.host_ram_per_node > host_memory * (1 - headroom):
            out.append(f"host RAM: needs {self.host_ram_per_node / GiB:.1f} of {host_memory / GiB:.1f} GiB per node")
        return out

    def largest_term(self) -> tuple[str, int]:
        """The largest of the terms alive at the GPU peak (params, grads, optimizer, activations, buffers)."""
        terms = {k: self.per_gpu[k] for k in ("params", "grads", "optimizer", "activations", "buffers")}
        name = max(terms, key=lambda k: terms[k])
        return name, terms[name]

    def to_json(self, gpu_memory: int | None = None, host_memory: int | None = None) -> dict:
        return {
            "zero_stage": self.run.zero_stage,
            "offload_optimizer": self.run.offload_optimizer,
            "offload_ratio": self.run.offload_ratio,
            "offload_params": self.run.offload_params,
            "micro_batch": self.run.micro_batch,
            "grad_accum": self.run.grad_accum,
            "seq_len": self.run.seq_len,
            "dtype": self.run.dtype,
            "grad_accum_dtype": "fp32" if fp32_grad_accum(self.run) else self.run.dtype,
            "master_weights": "bf16" if bf16_master(self.run) else "fp32",
            "notes": list(self.notes),
            "activation_checkpointing": self.run.activation_checkpointing,
            "params_kept_gathered": self.run.zero_stage == 3 and self.run.param_persistence_threshold >= ALL_PERSISTENT,
            "gpus": self.run.world,
            "per_gpu": {k: int(v) for k, v in self.per_gpu.items()},
            "peak_phase": self.peak_phase,
            "phases": {name: {k: int(v) for k, v in terms.items()} for name, terms in self.phases.items()},
            "host_ram_per_node": int(self.host_ram_per_node),
            "nvme_bytes": int(self.nvme_bytes),
            "checkpoint_bytes": int(self.checkpoint_bytes),
            "fits": None if gpu_memory is None else self.fits(gpu_memory, 0.0, host_memory),
            "host_fits": None if host_memory is None else self.host_ram_per_node <= host_memory,
        }


def plan(model: ModelShape, run: RunShape) -> MemoryPlan:
    """Per-GPU memory of one training configuration."""
    check_run(run, model)
    N, W, b, s = model.n_params, run.world, DTYPE_BYTES[run.dtype], run.tokens
    z, L = run.zero_stage, model.n_layer
    opt_bytes = OPTIMIZER_STATE_BYTES[run.optimizer]
    # bf16 master weights (bf16_master_weights_and_grads + bf16_optimizer_states): the master partition and the
    # optimizer states in 2 bytes per element instead of 4, and no fp32 copy of the gradient partition at the step
    half_master = bf16_master(run)
    master_element = 2 if half_master else 4
    if half_master:
        opt_bytes //= 2
    offload_opt = run.offload_optimizer != "none"
    offload_par = run.offload_params != "none"
    # the share of the fp32 optimizer partition the GPU keeps: all of it, none when offloaded, 1 - ratio under ZeRO-3's
    # partial offload (stage3.py _create_fp32_partitions puts the first (1 - ratio) of the sub-groups on the GPU, where
    # torch's AdamW steps them, and the rest on the host for DeepSpeedCPUAdam)
    keep = 1 - run.offload_ratio if offload_opt else 1.0
    notes = []
    # gradients summed in fp32 (data_types.grad_accum_dtype): ZeRO-2/3 keep their gradient partition in fp32; ZeRO-1 runs
    # DeepSpeed's BF16_Optimizer, which keeps an fp32 gradient of every parameter beside the bf16 ones (bf16_optimizer.py)
    fp32_accum = fp32_grad_accum(run)
    bf16_optimizer = fp32_accum and z == 1
    g = 4 if fp32_accum else b  # bytes per element of the accumulated gradients
    if run.grad_accum_dtype == "fp32" and not fp32_accum and b < 4:
        notes.append(
            f"ZeRO-0 and offloaded-optimizer runs sum gradients in {run.dtype}: zerotrain sums them in fp32 at ZeRO 1-3 "
            "with the optimizer on the GPU, in bf16 training only"
        )

    # --- parameters: the compute-dtype weights each GPU holds
    if z < 3:
        params: float = b * N  # bytes; the per-rank shares below (N/W) are fractional
    else:
        # stage3.py: each rank keeps its 1/W partition (defragmented into one flat buffer) and small tensors whole;
        # forward/backward gather the rest, releasing what will not be reused within max_live_parameters.
        # A persistent parameter keeps its partition too (the optimizer steps it), beside the whole tensor.
        persistent = model.small_params(run.param_persistence_threshold)
        resident = 0 if offload_par else b * (N - persistent) / W + (b * persistent / W if W > 1 else 0)
        gathered = b * min(N - persistent, run.max_live_parameters + run.prefetch_bucket_size + model.largest_param)
        if W == 1 and not offload_par:
            gathered = 0  # one rank: the partition is the whole tensor and "gathering" is a view (_no_gather_coalesced)
        params = resident + b * persistent + gathered

    # --- optimizer: fp32 master weights + states (stage 0 under bf16/fp16: DeepSpeed's FP16_UnfusedOptimizer keeps
    # a full fp32 copy; stages 1-3 keep a 1/W fp32 partition, even in fp32, see stage_1_and_2.py single_partition_of_fp32_groups)
    master = 0 if (z == 0 and b == 4) else master_element
    shard = 1 if z == 0 else W
    optimizer = keep * (master + opt_bytes) * N / shard

    # --- gradients: accumulated over micro-batches, reduce buffers during backward, and at the optimizer step
    if z == 3:
        # stage3.py preallocates the gradient partition (b·N/W) and the reduce bucket (reduce_bucket_size elements);
        # with the optimizer offloaded the partition lives on the host, and the sub-groups stepped on the GPU (partial
        # offload) keep their fp32 gradients there from the start (initialize_optimizer_states)
        if offload_opt:
            grads_backward = b * run.reduce_bucket_size + keep * 4 * N / W
        else:
            grads_backward = g * N / W + b * run.reduce_bucket_size
        reduce_buffers = 0
        grads_step = grads_backward
    elif bf16_optimizer:
        # bf16_optimizer.py: the fp32 gradients of all N parameters from the start, the bf16 ones from the first backward
        # on (zeroed between steps, not freed); no reduce buckets: the fp32 gradients are all-reduced once per step
        grads_backward = (4 + b) * N
        reduce_buffers = 0
        grads_step = grads_backward
    else:
        accumulated = {0: b * N, 1: b * N, 2: g * N / W}[z]  # gradients summed over micro-batches so far
        grads_backward = accumulated if run.grad_accum > 1 else 0
        # From the first gradient hook of a backward, stages 1-2 hold reduce buffers: with contiguous_gradients
        # reduce_bucket_size elements, two with overlap_comm (stage_1_and_2.py setup_buckets; DeepSpeed's
        # default is off below stage 3); without it, a flattened copy of up to a bucket of gradients.
        if z == 0:
            reduce_buffers = 0
        elif run.contiguous_gradients:
            reduce_buffers = b * run.reduce_bucket_size * (2 if run.overlap_comm else 1)
        else:
            reduce_buffers = b * min(run.reduce_bucket_size, N)
        # at the step, stages 1-2 hold the reduced gradient partition (param.grad freed after the copy)
        grads_step = (b * N if z == 0 else g * N / W) + (reduce_buffers if run.contiguous_gradients else 0)
    buffers = 0
    if offload_opt and z in (1, 2):
        buffers += b * model.largest_param  # stage_1_and_2.py temp_grad_buffer_for_gpu_offload
    buffers += 2 * CUBLAS_WORKSPACE

    # --- activations kept for backward, and what comes on top at three moments: the end of the forward (the
    # fused loss's chunk loop), the start of backward (the plain loss's fp32 gradients) and the first block's
    # backward (reduce buffers allocated, the loss's scaled gradients alive)
    # train refuses compiled blocks at stage 3; model.hf models get compiled layers and the fused loss on the
    # fast path (kernels/hf.py), which run_shape folds into these two switches
    compiled = run.compile in ("blocks", "auto") and z < 3
    fused = run.fused_loss
    kept_loss, loss_forward, loss_backward = _loss_terms(model, b, s, fused, compiled)
    fused_layers = model.impl == "hf-llama" and (compiled or run.liger)
    per_layer = saved_bytes_per_token_per_layer(model, b, run.attention, run.seq_len, fused_layers)
    block_backward: float = s * _block_backward_transient(model, b)
    if run.activation_checkpointing:
        kept: float = s * L * _checkpointed_block_input(model, b) + kept_loss
        block_backward += s * per_layer  # the last block is recomputed before it runs backward
    else:
        kept = s * L * per_layer + kept_loss
    # By the first block's backward the plain path has freed its loss gradients and its fp32 log-softmax output;
    # the fused path has swapped its saved gradients for the scaled ones backward returned (same size).
    after_loss = (0 if fused else -s * 4 * model.vocab) + block_backward
    # --- phases: the terms alive at each moment; the peak is the largest sum, and its terms are reported
    # optimizer step: gradients complete; stage 0 bf16/fp16 makes fp32 copies of them (unfused_optimizer.py);
    # stages 1-2 flatten the partition (flatten_dense_tensors_aligned, b·N/W) and convert it (.to(fp32), 4·N/W)
    # with both alive (stage_1_and_2.py step); stage 3 builds fp32 gradients one sub-group at a time.
    if z == 0:
        step_extra: float = 4 * N if b < 4 else 0
    elif offload_opt:
        # partial offload: torch's AdamW (foreach) takes the square root of a GPU sub-group's second moments into a
        # new tensor; the CPU's share steps on the host
        step_extra = 4 * min(keep * N / W, run.sub_group_size) if z == 3 else 0
    elif bf16_optimizer:
        # engine.py allreduce_bucket: a parameter group's flat fp32 gradients (a bucket of one tensor: flattening is a
        # view) cast to bf16 for the all-reduce; the largest group holds every weight matrix but the embeddings
        largest_group = max(N - model.vocab * model.hidden - model.small_params(), model.vocab * model.hidden)
        step_extra = b * largest_group
    elif fp32_accum and z < 3:
        step_extra = 4 * N / W  # stage_1_and_2.py _build_compact_grad_partition_buffer: the partition, already in fp32
    elif half_master:
        # the flattened partition (b·N/W) is already in the master dtype: no converted copy; stage 3's sub-group
        # gradients are built in bf16
        step_extra = b * N / W if z < 3 else 2 * min(N / W, run.sub_group_size)
    else:
        step_extra = (4 + b) * N / W if z < 3 else 4 * min(N / W, run.sub_group_size)
    if model.impl == "zerotrain":
        # train.py builds the fp32 model on the GPU (whole on every rank, also at stage 3: no zero.Init yet),
        # then DeepSpeed casts it tensor by tensor
        init: float = 4 * N + b * model.largest_param
    else:
        # from_pretrained on the CPU, cast there, then moved (stage 3: partitioned by zero.Init as it loads)
        init = b * N if z < 3 else b * N / W + b * model.largest_param
    states: dict[str, float] = {"params": params, "optimizer": optimizer, "buffers": buffers}
    phases: dict[str, dict[str, float]] = {
        "forward end": {**states, "grads": grads_backward, "activations": kept + loss_forward},
        "loss backward": {**states, "grads": grads_backward, "activations": kept + loss_backward},
        "backward": {**states, "grads": grads_backward + reduce_buffers, "activations": kept + after_loss},
        "optimizer step": {**states, "grads": grads_step + step_extra, "activations": 0},
        "init": {"params": init, "optimizer": 0, "buffers": 0, "grads": 0, "activations": 0},
    }
    peak_phase = max(phases, key=lambda name: sum(phases[name].values()))
    terms = phases[peak_phase]
    peak_allocated = sum(terms.values())
    # The caching allocator keeps freed blocks for reuse; blocks freed between phases cannot always be merged
    # for a larger request. Measured reserved/allocated on H200 runs: docs/memory.md.
    peak_reserved = peak_allocated * 1.15 + 2 * GiB
    overhead = CUDA_CONTEXT + (NCCL_BUFFERS if W > 1 else 0)

    # --- host RAM per node: each rank's process, pinned offload buffers, and loading a checkpoint shard
    ranks = run.gpus_per_node
    host_per_rank: float = PROCESS_HOST_RAM
    if run.offload_optimizer == "cpu":
        # fp32 master, states and fp32 gradients of the host's share of the partition (pinned)
        host_per_rank += run.offload_ratio * (4 + opt_bytes + 4) * N / W
    if offload_opt and z == 3:
        host_per_rank += b * N / W  # stage3.py: the gradient partition in the training dtype, pinned on the host
    if run.offload_optimizer == "nvme":
        # swap_tensor/optimizer_utils.py: offload_optimizer.buffer_count (4) pinned fp32 buffers of the largest sub-group
        host_per_rank += 4 * 4 * min(run.sub_group_size, N / W)
    if run.offload_params == "nvme":
        # offload_param.buffer_count (5) pinned buffers of buffer_size (1e8) elements, in the training dtype
        host_per_rank += 5 * b * 100_000_000
    if run.offload_params == "cpu":
        host_per_rank += b * N / W + b * run.prefetch_bucket_size
    # reading weights (pretrained, or a checkpoint's model states), and on resume torch.load of an optimizer shard
    load_weights = b * N if z < 3 else b * N / W
    load_optimizer = (master_element + opt_bytes) * N / shard
    host_ram = ranks * (host_per_rank + load_weights)  # a fresh start; resuming adds host_terms["resuming"]
    host_terms = {
        "processes": ranks * PROCESS_HOST_RAM,
        "offload": ranks * (host_per_rank - PROCESS_HOST_RAM),
        "loading": ranks * load_weights,
        "resuming": ranks * load_optimizer,
    }
    nvme = 0
    if run.offload_optimizer == "nvme":
        nvme += (4 + opt_bytes + 4) * N
    if run.offload_params == "nvme":
        nvme += b * N
    checkpoint = b * N + (master_element + opt_bytes) * N  # weights in the compute dtype + master and optimizer states

    if run.attention == "eager":
        notes.append("eager attention keeps the T×T attention probabilities of every layer; SDPA does not")
    per_gpu = {**terms, "overhead": overhead, "peak_allocated": peak_allocated, "peak_reserved": peak_reserved}
    return MemoryPlan(
        model,
        run,
        {k: int(v) for k, v in per_gpu.items()},
        peak_phase,
        int(host_ram),
        int(nvme),
        int(checkpoint),
        {name: {k: int(v) for k, v in t.items()} for name, t in phases.items()},
        notes,
        {k: int(v) for k, v in host_terms.items()},
    )


def variants(run: RunShape, stages: list[int], offload: bool = True) -> list[RunShape]:
    """The configurations `zerotrain plan` compares: each stage, and the offload variants that apply."""
    out = []
    for z in stages:
        plain = replace(run, zero_stage=z, offload_optimizer="none", offload_params="none", offload_ratio=1.0)
        out.append(plain)
        if offload and z >= 1:
            out.append(replace(plain, offload_optimizer="cpu"))
        if offload and z == 3:
            out.append(replace(plain, offload_optimizer="cpu", offload_params="cpu"))
    return out


# Stages from fastest to slowest under DeepSpeed 0.19 with bf16: ZeRO-1 and ZeRO-2 beat ZeRO-0, whose bf16 path
# runs DeepSpeed's per-tensor FP16_UnfusedOptimizer on the full model, and ZeRO-3 re-gathers parameters every
# micro-step. Measured in that order on 2×H200 with GPT-2 XL: under raw DeepSpeed in ../shared/reference, and
# zerotrain's own per stage in docs/benchmarks.md.
STAGES_FASTEST_FIRST = (1, 2, 0, 3)


def recommend(
    model: ModelShape,
    run: RunShape,
    gpu_memory: int,
    micro_batches: list[int] | None = None,
    headroom: float = 0.10,
    host_memory: int | None = None,
) -> MemoryPlan | None:
    """The fastest configuration that fits with `headroom` to spare: no offload before a partial optimizer offload
    at ZeRO-3 (the smallest ratio that fits) before the whole optimizer offloaded before parameter offload (each costs PCIe traffic and CPU Adam time); without activation checkpointing
    before with it (recomputing the forward costs about a third more compute, less than offload); then the
    faster ZeRO stage (STAGES_FASTEST_FIRST), then the largest micro-batch (better GPU utilisation).
    With host_memory, a configuration must also fit the node's host RAM. None when nothing fits."""
    candidates = micro_batches or [run.micro_batch]
    checkpointing = [True] if run.activation_checkpointing else [False, True]
    offloads = [("none", "none", 1.0), *(("cpu", "none", r) for r in OFFLOAD_RATIOS), ("cpu", "none", 1.0)]
    best = None
    for offload_rank, (oo, op, ratio) in enumerate([*offloads, ("cpu", "cpu", 1.0)]):
        for ckpt in checkpointing:
            for speed_rank, z in enumerate(STAGES_FASTEST_FIRST):
                if (oo != "none" and z == 0) or ((op != "none" or ratio < 1) and z != 3):
                    continue
                for mb in sorted(candidates, reverse=True):
                    candidate = replace(
                        run,
                        zero_stage=z,
                        offload_optimizer=oo,
                        offload_params=op,
                        offload_ratio=1.0,
                        micro_batch=mb,
                        activation_checkpointing=ckpt,
                    )
                    p = plan(model, partial(candidate, ratio) if ratio < 1 else candidate)
                    if p.fits(gpu_memory, headroom, host_memory):
                        key = (offload_rank, ckpt, speed_rank, -mb)
                        if best is None or key < best[0]:
                            best = (key, p)
                        break
    return best[1] if best else None


# The partial-offload ratios the planner chooses among: steps of 5%, fine enough that the GPU is used to within a few
# GiB on a 8B model and coarse enough that a chosen ratio reads as a round number.
OFFLOAD_RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 20))

# sub_group_size under partial offload: DeepSpeed splits the optimizer between GPU and CPU in whole sub-groups
# (stage3.py _create_fp32_partitions), so with its default of 1e9 elements a 3B model on one GPU has 3-4 sub-groups and
# a ratio of 0.3 lands on 0 or 0.33; sub-groups of 1e7 elements put the split within 1% of the ratio above 1B
# parameters per rank, and cost one CPU Adam call (milliseconds) each.
PARTIAL_OFFLOAD_SUB_GROUP = 10_000_000  # zerotrain's ds_config (dsconfig/from_run.py, new.py) sets it


def partial(run: RunShape, ratio: float) -> RunShape:
    """`run` with `ratio` of the optimizer offloaded to the CPU at ZeRO-3, with zerotrain's sub-group size."""
    sub_group = min(run.sub_group_size, PARTIAL_OFFLOAD_SUB_GROUP) if ratio < 1 else run.sub_group_size
    return replace(run, zero_stage=3, offload_optimizer="cpu", offload_ratio=ratio, sub_group_size=sub_group)


def offload_ladder(run: RunShape, nvme: bool = False) -> list[RunShape]:
    """The offload choices for `run`'s ZeRO stage, from the least offloaded to the most: none; at ZeRO-3 the optimizer
    partly on the CPU (OFFLOAD_RATIOS); the whole optimizer on the CPU; at ZeRO-3 the parameters too; with an NVMe
    path, the optimizer on NVMe (at ZeRO-3 then with the parameters on the CPU, then on NVMe too). Each step moves
    GPU memory to the host, and the NVMe steps move host memory to disk."""
    base = replace(run, offload_optimizer="none", offload_params="none", offload_ratio=1.0)
    z = run.zero_stage
    if z == 0:
        return [base]
    out = [base]
    if z == 3:
        out += [partial(base, r) for r in OFFLOAD_RATIOS]
    out.append(replace(base, offload_optimizer="cpu"))
    if z == 3:
        out.append(replace(base, offload_optimizer="cpu", offload_params="cpu"))
    if nvme:
        out.append(replace(base, offload_optimizer="nvme"))
        if z == 3:
            out.append(replace(base, offload_optimizer="nvme", offload_params="cpu"))
            out.append(replace(base, offload_optimizer="nvme", offload_params="nvme"))
    return out


def persisting(model: ModelShape, run: RunShape, fits: Callable[[MemoryPlan], bool]) -> RunShape:
    """deepspeed.zero3_persistent_params = "auto": a ZeRO-3 run with every parameter kept gathered where `fits`
    accepts that plan (and parameters are not offloaded), else the run as it is."""
    if run.zero_stage != 3 or run.offload_params != "none":
        return run
    persistent = replace(run, param_persistence_threshold=ALL_PERSISTENT)
    return persistent if fits(plan(model, persistent)) else run


def smallest_offload(
    model: ModelShape, run: RunShape, fits: Callable[[MemoryPlan], bool], nvme: bool = False
) -> MemoryPlan | None:
    """The first plan of offload_ladder(run, nvme) that `fits` accepts (GPU, host RAM and NVMe space, as the caller
    judges them); None when even the most offloaded does not fit."""
    for candidate in offload_ladder(run, nvme):
        p = plan(model, candidate)
        if fits(p):
            return p
    return None


def describe_offload(run: RunShape) -> str:
    """The offload of a run in run-config keys: 'deepspeed.offload_optimizer = "cpu", deepspeed.offload_optimizer_ratio
    = 0.35'."""
    parts = [f'deepspeed.offload_optimizer = "{run.offload_optimizer}"']
    if run.offload_ratio < 1:
        parts.append(f"deepspeed.offload_optimizer_ratio = {run.offload_ratio:g}")
    if run.offload_params != "none":
        parts.append(f'deepspeed.offload_params = "{run.offload_params}"')
    return ", ".join(parts)


def optimizer_step_seconds(model: ModelShape, run: RunShape, cpu_adam_params_per_s: float) -> float:
    """Seconds one optimizer step spends in CPU Adam: each rank steps its host share of its partition (ratio·N/W
    parameters), and the ranks of a node share its cores, so a node steps ratio·N·gpus_per_node/W parameters at the
    rate measured with all of them (planning.cpu_adam_rate). Transfers and the GPU's own share are not counted:
    DeepSpeed runs the CPU step after backward without overlap, and it dominates (docs/memory.md)."""
    if run.offload_optimizer == "none":
        return 0.0
    return run.offload_ratio * model.n_params * run.gpus_per_node / run.world / cpu_adam_params_per_s


def changes_cheapest_first(run: RunShape) -> list[tuple[str, RunShape]]:
    """Single changes to a run, from the cheapest in speed to the dearest: a higher ZeRO stage below 3 (almost
    free), a smaller micro-batch with accumulation keeping the global batch, activation checkpointing (~1/3 more
    compute), ZeRO-3 (re-gathers parameters every micro-step), part of the optimizer on the CPU at ZeRO-3 (5% steps),
    the whole optimizer offloaded, then parameter offload, then the optimizer on NVMe (host RAM to disk).
    Each comes with a label naming the run-config keys to set."""
    out = []
    if run.world > 1:
        for z in range(run.zero_stage + 1, 3):
            out.append((f"ZeRO-{z} (deepspeed.zero_stage = {z})", replace(run, zero_stage=z)))
    mb = run.micro_batch // 2
    while mb >= 1:
        accum = run.grad_accum * run.micro_batch // mb
        keeps = run.grad_accum * run.micro_batch % mb == 0
        label = (
            f"micro-batch {mb} with accumulation {accum}, the same global batch (train.micro_batch_size = {mb}, "
            f"train.grad_accum = {accum})"
            if keeps
            else f"micro-batch {mb} (train.micro_batch_size = {mb})"
        )
        out.append((label, replace(run, micro_batch=mb, grad_accum=accum if keeps else run.grad_accum)))
        mb //= 2
    if not run.activation_checkpointing:
        label = "activation checkpointing (deepspeed.activation_checkpointing = true)"
        out.append((label, replace(run, activation_checkpointing=True)))
    if run.world > 1 and run.zero_stage < 3:
        out.append(("ZeRO-3 (deepspeed.zero_stage = 3)", replace(run, zero_stage=3)))
    some = run.offload_optimizer == "cpu" and run.offload_ratio < 1
    if run.offload_optimizer == "none" or some:
        done = run.offload_ratio if some else 0.0
        for r in (r for r in OFFLOAD_RATIOS if r > done):
            label = (
                f"{r:.0%} of the optimizer on the CPU at ZeRO-3 (deepspeed.zero_stage = 3, "
                f'deepspeed.offload_optimizer = "cpu", deepspeed.offload_optimizer_ratio = {r:g})'
            )
            out.append((label, partial(run, r)))
        z = max(run.zero_stage, 1)
        label = f'optimizer offload to CPU at ZeRO-{z} (deepspeed.offload_optimizer = "cpu")'
        out.append((label, replace(run, zero_stage=z, offload_optimizer="cpu", offload_ratio=1.0)))
    if run.offload_params == "none":
        label = "ZeRO-3 with optimizer and parameter offload to CPU"
        out.append(
            (label, replace(run, zero_stage=3, offload_optimizer="cpu", offload_params="cpu", offload_ratio=1.0))
        )
    nvme = 'deepspeed.offload_optimizer = "nvme", deepspeed.nvme_path = a directory on a fast local disk'
    if run.offload_optimizer != "nvme":
        z = max(run.zero_stage, 1)
        out.append(
            (
                f"optimizer offload to NVMe at ZeRO-{z} ({nvme})",
                replace(run, zero_stage=z, offload_optimizer="nvme", offload_ratio=1.0),
            )
        )
    if run.offload_params == "none":
        label = f'ZeRO-3 with the optimizer on NVMe and the parameters on the CPU (deepspeed.zero_stage = 3, {nvme}, deepspeed.offload_params = "cpu")'
        out.append(
            (label, replace(run, zero_stage=3, offload_optimizer="nvme", offload_params="cpu", offload_ratio=1.0))
        )
    if run.master_weights == "bf16":  # DeepSpeed keeps bf16 master weights only with the optimizer on the GPU
        out = [
            (f'{label}, deepspeed.master_weights = "fp32"', replace(changed, master_weights="fp32"))
            if changed.offload_optimizer != "none"
            else (label, changed)
            for label, changed in out
        ]
    return out


def cheapest_change_that_fits(
    model: ModelShape, run: RunShape, gpu_memory: int | None, host_memory: int | None, headroom: float = 0.10
) -> tuple[str, MemoryPlan] | None:
    """The first of changes_cheapest_first whose plan fits GPU and host with `headroom`; None when none does."""
    for label, changed in changes_cheapest_first(run):
        p = plan(model, changed)
        if p.fits(gpu_memory, headroom, host_memory):
            return label, p
    return None
