"""zerotrain/clocks.py: the GPU clock readings in the log records (the NVML reads themselves run in the gpu tests)."""

import pytest

from zerotrain.bench import BenchConfig, BenchResult, summarize, write_reports
from zerotrain.clocks import ClockMonitor, summarize_samples
from zerotrain.metrics import format_line

POWER_CAP, THERMAL, IDLE = 0x4, 0x20, 0x1


def test_samples_summarize_the_working_gpu():
    samples = [(1500, 690.0, POWER_CAP), (1980, 300.0, 0), (345, 80.0, IDLE), (1410, 650.0, POWER_CAP | THERMAL)]
    s = summarize_samples(samples)
    assert s["gpu_sm_clock_mhz"] == pytest.approx((1500 + 1980 + 1410) / 3)  # the idle sample is left out
    assert s["gpu_power_w"] == pytest.approx((690 + 300 + 650) / 3)
    assert s["gpu_power_capped"] == pytest.approx(2 / 3) and s["gpu_thermal_capped"] == pytest.approx(1 / 3)
    assert summarize_samples([(345, 80.0, IDLE)]) == {} and summarize_samples([]) == {}


def test_the_step_line_names_the_clock_and_what_held_it_down():
    record = {
        "step": 3,
        "loss": 2.0,
        "lr": 1e-4,
        "step_time_s": 1.0,
        "tokens_per_s": 1e5,
        "mfu": 0.54,
        "peak_mem_bytes": 2**30,
    }
    assert "MHz" not in format_line(record, 10)
    assert format_line(
        {**record, "gpu_sm_clock_mhz": 1549.6, "gpu_power_capped": 0.9, "gpu_thermal_capped": 0.0}, 10
    ).endswith("| 1550 MHz (power limit)")
    assert format_line(
        {**record, "gpu_sm_clock_mhz": 1980, "gpu_power_capped": 0.2, "gpu_thermal_capped": 0.6}, 10
    ).endswith("| 1980 MHz (thermal limit)")
    assert format_line(
        {**record, "gpu_sm_clock_mhz": 1980, "gpu_power_capped": 0.0, "gpu_thermal_capped": 0.0}, 10
    ).endswith("| 1980 MHz")


def test_bench_reports_the_median_clock_of_the_records_that_have_one(tmp_path):
    steps = [
        {"step": s, "loss": 3.0, "step_time_s": 0.1, "tokens_per_s": 1e4, "mfu": 0.5, "peak_mem_bytes": 1}
        for s in range(1, 6)
    ]
    steps[2].update(gpu_sm_clock_mhz=1500.0, gpu_power_capped=1.0)  # short steps: not every window holds a sample
    steps[3].update(gpu_sm_clock_mhz=1600.0, gpu_power_capped=1.0)
    s = summarize(steps, warmup_steps=1)
    assert s["sm_clock_mhz"] == 1550.0 and s["power_capped"] == 1.0
    result = BenchResult(BenchConfig(2, 4), "ok", **s)
    write_reports([result], tmp_path, 2)
    row = next(line for line in (tmp_path / "bench.md").read_text().splitlines() if line.startswith("| ZeRO-2"))
    assert "| 1550 (power limit) |" in row
    assert (
        summarize([{k: v for k, v in r.items() if not k.startswith("gpu_")} for r in steps], 1)["sm_clock_mhz"] is None
    )


def test_no_monitor_without_an_nvidia_driver():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tests/test_gpu.py reads its clocks")
    assert ClockMonitor.start(torch.device("cpu")) is None  # the records simply lack the fields
