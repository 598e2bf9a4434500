"""The step-time model tune orders candidates by: seconds per optimizer step as four terms (compute, communication,
offload, overhead) from the model's shape, the run and a few hardware constants (Hardware), scaled to the
measurements as they arrive (Calibration). docs/tune.md gives each term with its source."""

import statistics
from dataclasses import dataclass

from zerotrain import memory
from zerotrain.tune.grid import Candidate

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
    nvme_bandwidth: float = 3e9  # bytes/s one node's NVMe reads or writes (ZeRO-Infinity, Rajbhandari et al. 2021)


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
        micro_step_s=0.02,  # DeepSpeed's per-step Python and gloo latency dominate a small model's CPU step
        zero3_hook_s=0.0005,
        startup_s=20.0,
    )


def predict_terms(c: Candidate, model: memory.ModelShape, run: memory.RunShape, hw: Hardware) -> dict[str, float]:
    """Seconds per optimizer step, term by term (docs/tune.md):
    compute        6·N + 12·L·h·T FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B), 8·N… with activation
                   checkpointing (the forward runs twice), over peak × efficiency; plus the optimizer step on the
                   device, bound by memory bandwidth (~32 bytes read and written per parameter of the shard);
    communication  the bytes each rank's collectives move (ring: 2(W-1)/W of the buffer for an all-reduce,
                   (W-1)/W for reduce-scatter or all-gather) over the bus bandwidth: ZeRO-0/1 reduce the gradients
                   once per step, ZeRO-2 reduce-scatters them every micro-step, ZeRO-3 also all-gathers the
                   parameters twice per micro-step (forward, backward) unless they are kept gathered; ZeRO 1-2
                   (and ZeRO-3 with parameters kept gathered) all-gather the updated parameters;
    offload        CPU-Adam over the node's parameters (the offloaded share of them under partial offload; the GPU
                   steps the rest), and gradients down and parameters up over PCIe (parameter offload: the
                   partition up twice per micro-step); on NVMe, the optimizer states read and written each step
                   and the parameters read twice per micro-step, through the node's disk;
    overhead       a fixed cost per micro-step, and ZeRO-3's hooks per layer."""
    N, L, h, T = model.n_params, model.n_layer, model.hidden, run.seq_len
    W, a, b = run.world, c.grad_accum, memory.DTYPE_BYTES[run.dtype]
    tokens = c.micro_batch * T * a  # per rank per step
    flops = (6 * N + 12 * L * h * T) * tokens
    if c.activation_checkpointing:
        flops *= 4 / 3  # one more forward: 2N of the 6N
    shard = 1 if c.zero_stage == 0 else W
    compute = flops / (hw.peak_flops * hw.efficiency)
    on_cpu = c.offload_ratio if c.offload_optimizer != "none" else 0.0  # the optimizer's share stepped on the CPU
    compute += 32 * (1 - on_cpu) * N / shard / hw.memory_bandwidth
    ring = (W - 1) / W
    gbytes = b * N  # the gradients (and parameters) in the compute dtype
    comm = {0: 2 * ring * gbytes, 1: 2 * ring * gbytes, 2: a * ring * gbytes + ring * gbytes, 3: a * 3 * ring * gbytes}[
        c.zero_stage
    ]
    if c.zero_stage == 3 and c.persistent:  # parameters kept gathered: only gradients move, and updates once, as ZeRO-2
        comm = a * ring * gbytes + ring * gbytes
    communication = comm / hw.bus_bandwidth if W > 1 else 0.0
    offload = 0.0
    if on_cpu:
        offload += on_cpu * N / hw.cpu_adam_params_per_s
        if hw.pcie_bandwidth:
            offload += (4 + b) * on_cpu * N / W / hw.pcie_bandwidth  # fp32 gradients down, parameters up
    if c.offload_params != "none" and hw.pcie_bandwidth:
        offload += a * 2 * b * N / W / hw.pcie_bandwidth
    per_node = run.gpus_per_node / W  # the share of the model whose swaps go through one node's NVMe
    if c.offload_optimizer == "nvme":  # fp32 master weights and both moments read and written back every step
        offload += 2 * 12 * on_cpu * N * per_node / hw.nvme_bandwidth
    if c.offload_params == "nvme":  # the parameters read twice per micro-step (forward, backward)
        offload += a * 2 * b * N * per_node / hw.nvme_bandwidth
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
