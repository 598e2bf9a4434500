"""The GPU's SM clock and power while it trains, read through NVML (nvidia-ml-py) in a background thread.

MFU divides by the tensor cores' peak at the boost clock; a GPU held at its power limit runs below that clock, so
the same code reaches a different MFU on another GPU of the same kind (H200s training GPT-2 XL sit at their power
limit, their SMs well below the boost clock: docs/benchmarks.md). Each log record gets the window's mean SM
clock and power and the share of samples in which a power or thermal limit held the clock down."""

import threading

import pynvml

POWER_CAP_REASONS = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
THERMAL_REASONS = pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonHwThermalSlowdown
GPU_IDLE = pynvml.nvmlClocksEventReasonGpuIdle


def summarize_samples(samples: list[tuple[float, float, int]]) -> dict:
    """(SM MHz, watts, reason bits) samples -> the record's fields. Samples with the GPU idle (evaluation,
    checkpoint writes, the host late) are left out: the fields describe the GPU while it worked."""
    busy = [s for s in samples if not s[2] & GPU_IDLE]
    if not busy:
        return {}
    n = len(busy)
    return {
        "gpu_sm_clock_mhz": sum(s[0] for s in busy) / n,
        "gpu_power_w": sum(s[1] for s in busy) / n,
        "gpu_power_capped": sum(1 for s in busy if s[2] & POWER_CAP_REASONS) / n,
        "gpu_thermal_capped": sum(1 for s in busy if s[2] & THERMAL_REASONS) / n,
    }


class ClockMonitor:
    """Samples one GPU every `interval_s` until close(); window() returns the summary since its last call."""

    def __init__(self, handle, interval_s: float):
        self._handle, self._interval = handle, interval_s
        self.max_sm_clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        self.power_limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
        self._samples: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zerotrain-clocks", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, device, interval_s: float = 0.2) -> "ClockMonitor | None":
        """The monitor of a CUDA device, or None where NVML cannot read it."""
        import torch

        try:
            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(device).uuid)  # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid)
            return cls(handle, interval_s)
        except (pynvml.NVMLError, RuntimeError, AttributeError):  # no driver, a GPU NVML cannot see, an older torch
            return None  # the records just lack the fields

    def _read(self) -> tuple[float, float, int]:
        h = self._handle
        return (
            pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            pynvml.nvmlDeviceGetPowerUsage(h) / 1000,
            pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                sample = self._read()
            except pynvml.NVMLError:
                sample = None  # a failed read loses one sample, not the run
            if sample is not None:
                with self._lock:
                    self._samples.append(sample)

    def window(self) -> dict:
        with self._lock:
            samples, self._samples = self._samples, []
        out = summarize_samples(samples)
        if out:
            out.update(gpu_max_sm_clock_mhz=self.max_sm_clock_mhz, gpu_power_limit_w=self.power_limit_w)
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self._interval + 1)
