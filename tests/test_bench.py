"""zerotrain bench: real 2-rank CPU runs per ZeRO stage, reports, plots, failures recorded."""

import csv
import json

import pytest

from tests.conftest import assert_clean_failure, zerotrain
from zerotrain import memory
from zerotrain.bench import BenchConfig, run_one, summarize, sweep_configs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_configs_and_summary():
    configs = sweep_configs([0, 2, 3], [4, 8], offload=True)
    names = [c.name for c in configs]
    assert names == [
        "zero0-mb4",
        "zero0-mb8",
        "zero2-mb4",
        "zero2-oo-cpu-mb4",
        "zero2-mb8",
        "zero2-oo-cpu-mb8",
        "zero3-mb4",
        "zero3-oo-cpu-mb4",
        "zero3-oo-cpu-op-cpu-mb4",
        "zero3-mb8",
        "zero3-oo-cpu-mb8",
        "zero3-oo-cpu-op-cpu-mb8",
    ]
    fp32 = sweep_configs([0, 1, 2], [4], offload=True, grad_accum_dtype="fp32")  # where zerotrain sums in fp32
    assert [(c.name, c.grad_accum_dtype) for c in fp32] == [
        ("zero0-mb4", "auto"),
        ("zero1-mb4-fp32sums", "fp32"),
        ("zero2-mb4-fp32sums", "fp32"),
        ("zero2-oo-cpu-mb4", "auto"),
    ]
    assert fp32[1].label == "ZeRO-1, mb 4, fp32 sums"
    records = [
        {
            "step": s,
            "loss": 5.0 - s,
            "step_time_s": t,
            "tokens_per_s": 1000 / t,
            "mfu": None,
            "peak_mem_bytes": 10 * s,
            "forward_s": t / 4,
            "backward_s": t / 2,
            "optimizer_s": t / 4,
        }
        for s, t in ((1, 9.0), (2, 1.0), (3, 2.0), (4, 3.0))
    ]
    records.append(
        {**records[-1], "step": 5, "step_time_s": 50.0, "loss": 0.5, "profiled": True}
    )  # left out of the medians
    s = summarize(records, warmup_steps=1)
    assert s["step_time_s"] == 2.0 and s["tokens_per_s"] == 500.0  # median of the three steps after warm-up
    assert s["peak_allocated"] == 40 and (s["first_loss"], s["last_loss"]) == (4.0, 0.5) and s["mfu"] is None


def test_a_failing_configuration_is_recorded(tmp_path):
    result = run_one(BenchConfig(2, 4), str(tmp_path / "missing.toml"), [], 1, tmp_path / "runs" / "x", 0, 3)
    assert result.status == "failed (exit 2)" and not result.measured
    assert "missing.toml" in result.log_tail and (tmp_path / "runs" / "zero2-mb4.log").exists()


@pytest.mark.slow
def test_bench_compares_stages_on_two_cpu_ranks(tmp_path, char_data):
    out = tmp_path / "bench"
    r = zerotrain(
        "bench",
        "--model",
        "tiny",
        "--data",
        str(char_data),
        "--nproc",
        "2",
        "--stages",
        "0,3",
        "--micro-batch",
        "4",
        "--seq-len",
        "32",
        "--steps",
        "3",
        "--warmup-steps",
        "1",
        "--out",
        str(out),
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "bench.json").read_text())
    rows = {row["config"]: row for row in doc["results"]}
    assert set(rows) == {"zero0-mb4", "zero3-mb4"} and doc["nproc"] == 2
    for row in rows.values():
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["step_time_s"] > 0
        assert row["forward_s"] > 0 and row["backward_s"] > 0 and row["optimizer_s"] > 0
        assert row["last_loss"] < row["first_loss"]  # it trained
        assert row["communication_wait_s"] is None  # measured from GPU kernels only
        profile = json.loads((out / "runs" / row["config"] / "profile" / "summary-rank0.json").read_text())
        assert (profile["first_step"], profile["last_step"]) == (5, 6)  # 1 warm-up + 3 timed, then 2 profiled
        assert (
            row["predicted_peak_allocated"]
            == memory.plan(
                memory.resolve_model("tiny"),
                memory.RunShape(
                    gpus_per_node=2,
                    micro_batch=4,
                    seq_len=32,
                    dtype="fp32",
                    zero_stage=row["zero_stage"],
                    contiguous_gradients=row["zero_stage"] >= 2,
                    overlap_comm=False,
                ),
            ).per_gpu["peak_allocated"]
        )
    # the same seeded data and model: ZeRO-0 and ZeRO-3 train to the same losses
    assert rows["zero0-mb4"]["last_loss"] == pytest.approx(rows["zero3-mb4"]["last_loss"], rel=1e-3)
    with open(out / "bench.csv") as f:
        assert [row["config"] for row in csv.DictReader(f)] == ["zero0-mb4", "zero3-mb4"]
    table = (out / "bench.md").read_text()
    assert "ZeRO-0, mb 4" in table and "1.00×" in table
    for plot in ("memory.png", "throughput.png"):
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
    again = zerotrain("bench", "--model", "tiny", "--data", str(char_data), "--out", str(out))
    assert_clean_failure(again, "--overwrite")


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "gpt5"],
        ["--model", "hf:/x"],
        ["--model", "tiny", "--stages", "4"],
        ["--model", "tiny", "--stages", "a"],
        ["--model", "tiny", "--nproc", "0"],
    ],
)
def test_bench_bad_input(tmp_path, char_data, args):
    assert_clean_failure(zerotrain("bench", *args, "--data", str(char_data), "--out", str(tmp_path / "b")))


def test_bench_needs_prepared_data(tmp_path):
    assert_clean_failure(
        zerotrain("bench", "--model", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "b")), "data prepare"
    )


def test_a_configuration_that_would_not_fit_is_refused_not_run(tmp_path, char_data):
    """With --host-memory below what the planner predicts, each configuration's train run refuses itself before any
    rank starts; bench records why instead of waiting for the OOM killer."""
    r = zerotrain(
        "bench", "--model", "tiny", "--data", char_data, "--nproc", 2, "--stages", "2", "--micro-batch", 4,
        "--steps", 1, "--warmup-steps", 0, "--host-memory", "200MiB", "--out", tmp_path / "out",
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr  # nothing could be measured
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [row["status"] for row in report["results"]] == ["does not fit (planned)"]
    assert "would not fit (host RAM: needs" in (tmp_path / "out" / "runs" / "zero2-mb4.log").read_text()
