"""zerotrain tune: the candidate grid, the step-time model and its calibration, bad input refused before anything is
written, and a real 2-rank CPU tune whose chosen configuration trains."""

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import assert_clean_failure, metrics, run_ok, write_config, zerotrain
from zerotrain import UserError, memory
from zerotrain.preflight import async_io_builds
from zerotrain.tune import (
    TERMS,
    Calibration,
    Candidate,
    Limits,
    Measure,
    TuneArgs,
    default_hardware,
    enumerate_candidates,
    measure,
    predict_terms,
    prune,
    setup,
    split_batch,
)
from zerotrain.tune.grid import add_partial_offload, what_would_fit
from zerotrain.tune.search import measure_command

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NO_ASYNC_IO = "NVMe: DeepSpeed's async_io op does not build here (install libaio-dev; `zerotrain doctor` checks)"


def test_the_grid_keeps_the_global_batch_and_only_valid_offloads():
    cands = enumerate_candidates(16, 2, [1, 2, 4, 16])
    # per rank 8: micro-batches 1, 2 and 4 divide it, 16 does not; 8 stage × offload pairs × 2 checkpointing
    assert len(cands) == 3 * 8 * 2 and len({c.name for c in cands}) == len(cands)
    assert {(c.micro_batch, c.grad_accum) for c in cands} == {(1, 8), (2, 4), (4, 2)}
    for c in cands:
        assert c.micro_batch * c.grad_accum * 2 == 16
        assert c.offload_optimizer == "none" or c.zero_stage >= 1
        assert c.offload_params == "none" or (c.zero_stage == 3 and c.offload_optimizer == "cpu")
    assert split_batch(6, 4, [1, 2]) == [] and split_batch(8, 2, [8]) == []
    with pytest.raises(UserError, match="global batch 6 cannot be split over 4 rank"):
        enumerate_candidates(6, 4, [1, 2])


def test_the_step_time_model_ranks_stages_checkpointing_and_offload():
    model = memory.resolve_model("gpt2-xl")
    run = memory.RunShape(gpus_per_node=8, seq_len=1024, dtype="bf16")
    hw = default_hardware(on_gpu=True, device_name="NVIDIA H100 80GB HBM3")
    assert hw.peak_flops == 989e12
    t = lambda z, oo="none", op="none", ckpt=False, mb=4, accum=2: predict_terms(
        Candidate(z, oo, op, ckpt, mb, accum), model, run, hw
    )
    comm = [t(z)["communication"] for z in range(4)]
    assert comm[0] == comm[1] < comm[2] < comm[3]  # ZeRO-2 reduces every micro-step, ZeRO-3 also gathers parameters
    assert t(2, accum=4)["communication"] > t(2, accum=2)["communication"]
    assert t(2, ckpt=True)["compute"] > t(2)["compute"] and t(2)["offload"] == 0
    assert t(3, "cpu", "cpu")["offload"] > t(3, "cpu")["offload"] > 0
    assert (
        predict_terms(Candidate(3, "none", "none", False, 4, 2), model, replace(run, gpus_per_node=1), hw)[
            "communication"
        ]
        == 0
    )
    # the same tokens per step in fewer, larger micro-steps cost less fixed overhead
    assert t(2, mb=8, accum=1)["overhead"] < t(2, mb=1, accum=8)["overhead"]


def test_a_model_that_fits_nowhere_is_told_what_would():
    model = memory.resolve_model("llama3-8b")
    run = memory.RunShape(gpus_per_node=1, seq_len=2048, dtype="bf16")
    cands = enumerate_candidates(8, 1, [2, 4])
    limits = Limits(40 * 2**30, 64 * 2**30, 0.1, 1, True)  # one 40 GiB GPU, 64 GiB of host RAM
    prune(cands, model, run, limits)
    assert all(c.pruned for c in cands)
    ideas = what_would_fit(model, run, limits, cands).split("; ")
    # more GPUs (the fewest on which a configuration of the grid fits), NVMe, or the memory the smallest needs
    assert re.fullmatch(r"(2|4|8|16) GPUs \(ZeRO-\d.*, mb \d\)", ideas[0]) and ideas[1].startswith("NVMe offload")
    assert ideas[-1].startswith("a GPU of") and "of host RAM per node" in ideas[-1]


def test_zero3_gets_the_planners_partial_offload_where_the_gpu_alone_is_too_small():
    """A 3B Llama on one 80 GiB GPU: ZeRO-3 without offload does not fit, the whole optimizer on the CPU does; the
    grid gains ZeRO-3 with the smallest 5% step of the optimizer on the CPU that fits, predicted faster than the
    whole optimizer offloaded, and its run config carries the ratio."""
    model = memory.resolve_model("llama3.2-3b")
    run = memory.RunShape(gpus_per_node=1, seq_len=2048, dtype="bf16")
    limits = Limits(80 * 2**30, 500 * 2**30, 0.1, 1, True)
    cands = enumerate_candidates(8, 1, [4])
    prune(cands, model, run, limits)
    cands = add_partial_offload(cands, model, run, limits)
    partial = [c for c in cands if c.offload_ratio < 1]
    assert partial, [(c.name, c.pruned) for c in cands]
    hw = default_hardware(on_gpu=True, device_name="NVIDIA H100 80GB HBM3")
    for c in partial:
        assert c.zero_stage == 3 and c.offload_optimizer == "cpu" and not c.pruned and "-oo" in c.name
        bare = next(b for b in cands if b.name == c.name.replace(f"-oo{c.offload_ratio * 100:.0f}", ""))
        assert bare.pruned.startswith("GPU")
        less = replace(c, offload_ratio=round(c.offload_ratio - 0.05, 2), plan={}, pruned="")
        if less.offload_ratio > 0:  # one 5% step less does not fit
            prune([less], model, run, limits)
            assert less.pruned
        full = next(f for f in cands if f.name == bare.name.replace("zero3", "zero3-oo"))
        assert not full.pruned and c.plan["gpu_needed"] > full.plan["gpu_needed"]
        terms = lambda x: sum(predict_terms(x, model, run, hw).values())  # noqa: E731
        assert terms(c) < terms(full)
        assert c.row()["offload_optimizer_ratio"] == c.offload_ratio


def test_nvme_candidates_where_the_run_has_a_path_and_the_disk_and_async_io_allow():
    """Llama-3-8B on one 40 GiB GPU with 64 GiB of host RAM fits nowhere on the CPU offloads; with an nvme_path the
    grid gains ZeRO-3 with the optimizer (and the parameters) on NVMe, kept where DeepSpeed's async_io op builds and
    the disk holds them, pruned with the reason otherwise, and predicted slower than the same on the CPU."""
    model = memory.resolve_model("llama3-8b")
    run = memory.RunShape(gpus_per_node=1, seq_len=2048, dtype="bf16")
    assert not [c for c in enumerate_candidates(8, 1, [2]) if "nvme" in (c.offload_optimizer, c.offload_params)]
    cands = enumerate_candidates(8, 1, [2], nvme=True)
    nvme = [c for c in cands if "nvme" in (c.offload_optimizer, c.offload_params)]
    assert {(c.zero_stage, c.offload_optimizer, c.offload_params) for c in nvme} == {
        (3, "nvme", "none"),
        (3, "nvme", "nvme"),
    }
    assert {c.name for c in nvme} == {
        "zero3-on-mb2x4",
        "zero3-on-ckpt-mb2x4",
        "zero3-on-pn-mb2x4",
        "zero3-on-pn-ckpt-mb2x4",
    }
    disk = 2**40
    prune(cands, model, run, Limits(40 * 2**30, 64 * 2**30, 0.1, 1, True, nvme_free=disk, async_io=True))
    kept = {c.name for c in cands if not c.pruned}
    assert kept and kept <= {c.name for c in nvme}, [(c.name, c.pruned) for c in cands]  # only NVMe fits
    hw = default_hardware(on_gpu=True, device_name="NVIDIA H100 80GB HBM3")
    c = next(c for c in nvme if c.name in kept)
    on_cpu = replace(c, offload_optimizer="cpu", offload_params="cpu" if c.offload_params == "nvme" else "none")
    assert predict_terms(c, model, run, hw)["offload"] > predict_terms(on_cpu, model, run, hw)["offload"]
    prune(cands, model, run, Limits(40 * 2**30, 64 * 2**30, 0.1, 1, True, nvme_free=disk, async_io=False))
    assert all(c.pruned for c in cands)
    assert {c.pruned for c in cands if c.name in kept} == {NO_ASYNC_IO}
    prune(cands, model, run, Limits(40 * 2**30, 64 * 2**30, 0.1, 1, True, nvme_free=2**30, async_io=True))
    assert all("NVMe: needs" in c.pruned for c in cands if c.name in kept)


def test_zero3_candidates_keep_parameters_gathered_where_the_gpu_holds_them():
    """On GPUs, prune decides each ZeRO-3 candidate's deepspeed.zero3_persistent_params as train's "auto" would; the
    measured run is told the decision, and a persistent candidate moves only gradients, as ZeRO-2 does."""
    model = memory.resolve_model("gpt2-xl")
    run = memory.RunShape(gpus_per_node=8, seq_len=1024, dtype="bf16")
    z3 = [c for c in enumerate_candidates(64, 8, [4]) if c.zero_stage == 3 and c.offload_params == "none"]
    prune(z3, model, run, Limits(80 * 2**30, None, 0.1, 8, True))
    assert all(c.persistent for c in z3 if not c.pruned)
    # 26.2 GiB less 10%: ZeRO-3 at micro-batch 4 fits with its parameters partitioned (23.1 GiB), not kept whole (24.0)
    prune(z3, model, run, Limits(int(26.2 * 2**30), None, 0.1, 8, True))
    bare = next(c for c in z3 if c.name == "zero3-mb4x2")
    assert not bare.pruned and not bare.persistent
    assert next(c for c in z3 if c.name == "zero3-ckpt-mb4x2").persistent
    hw = default_hardware(on_gpu=True, device_name="NVIDIA H100 80GB HBM3")
    c = z3[0]
    comm = lambda **o: predict_terms(replace(c, **o), model, run, hw)["communication"]  # noqa: E731
    assert comm(persistent=True) == comm(zero_stage=2) < comm(persistent=False)
    m = Measure("c.toml", 8, 1, 2, [], "auto", 0.2)
    assert "--deepspeed.zero3_persistent_params=on" in measure_command(replace(c, persistent=True), m, Path("r"))
    assert "--deepspeed.zero3_persistent_params=off" in measure_command(replace(c, persistent=False), m, Path("r"))
    cpu = [replace(c, persistent=False) for c in z3]  # on the CPU train's "auto" never persists: neither does prune
    prune(cpu, model, run, Limits(None, None, 0.1, 8, False))
    assert not any(c.persistent for c in cpu)


def test_calibration_recovers_the_scale_of_each_term():
    truth = {"compute": 2.0, "communication": 0.5, "offload": 3.0, "overhead": 1.5}
    cands = []
    for i in range(6):
        c = Candidate(2, "none", "none", False, 1, 1)
        c.terms = {"compute": 1.0 + i, "communication": 0.2 * (i % 3), "offload": 0.1 * (i % 2), "overhead": 0.05 * i}
        c.step_time_s = sum(truth[k] * c.terms[k] for k in TERMS)
        cands.append(c)
    cal = Calibration()
    cal.fit(cands[:2])  # too few for a per-term fit: one common factor
    assert cal.how.startswith("one factor") and len(set(cal.k.values())) == 1
    cal.fit(cands)
    assert cal.how.startswith("per term")
    assert all(cal.k[k] == pytest.approx(truth[k], rel=1e-6) for k in TERMS)
    assert all(cal.predict(c.terms) == pytest.approx(c.step_time_s) for c in cands)


@pytest.fixture()
def tiny_config(tmp_path, char_data):
    return write_config(tmp_path / "tiny.toml", out_dir=tmp_path / "run", data_dir=char_data, max_steps=6)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_config):
    out = tmp_path / "out"
    # global batch 3 over 2 ranks: no micro-batch keeps it
    r = zerotrain("tune", tiny_config, "--nproc", "2", "--global-batch", "3", "--out", out)
    assert_clean_failure(r, "global batch 3 cannot be split over 2 rank", "multiple of 2")
    # a budget too small to measure one configuration
    r = zerotrain("tune", tiny_config, "--nproc", "2", "--budget-minutes", "0.05", "--out", out)
    assert_clean_failure(r, "--budget-minutes 0.05 is too small to measure one configuration", "give at least")
    # a model that fits nowhere says what would
    xl = tmp_path / "xl.toml"
    xl.write_text(
        tiny_config.read_text()
        .replace('preset = "tiny"', 'preset = "gpt2-xl"')
        .replace("n_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 32\n", "")
    )
    r = zerotrain("tune", xl, "--gpu-memory", "6GiB", "--host-memory", "500GiB", "--global-batch", "8", "--out", out)
    line = assert_clean_failure(r, "none of the 64 configurations of gpt2-xl", "what would:")
    assert "a GPU of" in line and "GiB" in line
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = zerotrain("tune", tiny_config, "--out", out)
    assert_clean_failure(r, "--overwrite")


def limit_between(tiny_config, **kw) -> str:
    """A --gpu-memory (in MiB) halfway through the candidates' planned needs: about half of them do not fit."""
    *_, cands, _fitting, _limits, _hw, _batch, _device = setup(
        TuneArgs(config=str(tiny_config), gpu_memory="80GiB", headroom=0.0, **kw)
    )
    needs = sorted(c.plan["gpu_needed"] for c in cands)
    return f"{(needs[len(needs) // 2 - 1] + needs[len(needs) // 2]) / 2 / 2**20:.4f}MiB"


@pytest.mark.slow
def test_tune_on_two_cpu_ranks_prunes_measures_and_its_choice_trains(tmp_path, tiny_config):
    limit = limit_between(tiny_config, nproc=2, micro_batches=[2, 4])
    out = tmp_path / "tune"
    args = ["tune", tiny_config, "--nproc", "2", "--micro-batch", "2", "4", "--headroom", "0", "--gpu-memory", limit]
    args += ["--steps", "2", "--warmup-steps", "1", "--for", "hf-trainer", "--out", out]
    (tmp_path / "nvme").mkdir()
    args += [f"--deepspeed.nvme_path={tmp_path / 'nvme'}"]  # the grid gains ZeRO-3 with NVMe offload
    first = run_ok(*args, "--max-measure", "1", timeout=900)
    measured_first = json.loads((out / "tune.json").read_text())
    fitting = sum(c["status"] != "pruned" for c in measured_first["candidates"])
    assert f"[1/{fitting}]" in first.stdout and "--max-measure 1 reached" in first.stdout
    # an interrupted or cut-short tune continues where it stopped, its measurements and time kept
    r = run_ok(*args, "--max-measure", "2", "--resume", timeout=900)
    assert "resuming: 1 measured" in r.stdout and f"[2/{fitting}]" in r.stdout and f"[1/{fitting}]" not in r.stdout
    assert "predicted" in r.stdout and "ms/step" in r.stdout and "winner" in r.stdout  # progress as it goes
    doc = json.loads((out / "tune.json").read_text())
    cands = {c["name"]: c for c in doc["candidates"]}
    # the grid's 32, and ZeRO-3 with part of the optimizer on the CPU where the limit leaves ZeRO-3 without offload out
    partial = [c for c in cands.values() if c["offload_optimizer_ratio"] < 1]
    nvme = [c for c in cands.values() if c["offload_optimizer"] == "nvme"]
    assert doc["n_candidates"] == len(cands) == 32 + len(nvme) + len(partial) and partial and len(nvme) == 8
    if not async_io_builds():  # libaio missing, as on CI: said, and nothing measured on NVMe
        assert all(c["status"] == "pruned" for c in nvme) and any(c["pruned"] == NO_ASYNC_IO for c in nvme)
    cands = {k: c for k, c in cands.items() if c["offload_optimizer"] != "nvme"}
    for c in partial:
        assert c["status"] != "pruned" and c["zero_stage"] == 3 and c["offload_optimizer"] == "cpu"
        assert cands[c["name"].replace(f"-oo{c['offload_optimizer_ratio'] * 100:.0f}", "")]["status"] == "pruned"
    pruned = [c for c in cands.values() if c["status"] == "pruned"]
    assert 0 < len(pruned) < len(cands) and all(c["pruned"].startswith("GPU: needs") for c in pruned)
    measured = [c for c in cands.values() if c["step_time_s"] is not None]
    assert len(measured) == 2 and all(c["predicted_before_measuring_s"] > 0 for c in measured)
    winner = cands[doc["winner"]["name"]]
    assert winner["status"] == "ok" and not winner["pruned"] and winner["peak_allocated"] > 0
    assert winner["step_time_s"] == min(c["step_time_s"] for c in measured if c["status"] == "ok")
    assert doc["prediction_error"]["before_measuring"]["n"] >= 1 and doc["elapsed_s"] > measured_first["elapsed_s"]
    kept = measured_first["winner"]["name"]
    assert cands[kept]["wall_s"] == next(c["wall_s"] for c in measured_first["candidates"] if c["name"] == kept)
    assert (out / "tune.png").read_bytes()[:8] == PNG_MAGIC
    assert f"winner: **{doc['winner']['label']}**" in (out / "tune.md").read_text()
    ds = json.loads((out / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["zero_optimization"]["stage"] == winner["zero_stage"]

    # the chosen configuration trains
    run_dir = tmp_path / "tuned-run"
    run_ok(
        "train",
        out / "tuned.toml",
        "--nproc",
        "2",
        f"--run.out_dir={run_dir}",
        "--train.max_steps=3",
        "--run.checkpoints=false",
        "--train.eval_interval=0",
        timeout=600,
    )
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2, 3]
    used = json.loads((run_dir / "ds_config.json").read_text())
    assert used["zero_optimization"]["stage"] == winner["zero_stage"]
    assert used["train_micro_batch_size_per_gpu"] == winner["micro_batch"]
    assert used["gradient_accumulation_steps"] == winner["grad_accum"]
    assert ("offload_optimizer" in used["zero_optimization"]) == (winner["offload_optimizer"] != "none")


@pytest.mark.slow
def test_a_run_clearly_slower_than_the_best_is_stopped(tmp_path, tiny_config):
    import psutil

    c = Candidate(2, "none", "none", False, 4, 1)
    m = Measure(str(tiny_config), 2, 1, 200, [], "auto", stop_slower_by=0.1)
    run_dir = tmp_path / "runs" / c.name
    started = time.monotonic()
    measure(c, m, run_dir, best_s=1e-6, deadline=None)
    assert c.status == "stopped early (slower)"
    assert 2 <= c.steps_timed < 200 and c.step_time_s > 0 and time.monotonic() - started < 300
    assert (tmp_path / "runs" / f"{c.name}.log").is_file()
    # the launcher and both ranks are gone
    left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info["cmdline"] for p in left]


def test_bf16_master_weights_are_measured_and_written_only_where_deepspeed_keeps_them():
    """deepspeed.master_weights = "bf16" holds at ZeRO 1-3 with the optimizer on the device; ZeRO-0 and offload
    candidates are planned, run and written with fp32 master weights, which train accepts."""
    m = Measure("c.toml", 1, 1, 2, [], "auto", 0.1)
    for c, want in (
        (Candidate(2, "none", "none", False, 1, 1), "bf16"),
        (Candidate(3, "none", "none", False, 1, 1), "bf16"),
        (Candidate(0, "none", "none", False, 1, 1), "fp32"),
        (Candidate(2, "cpu", "none", False, 1, 1), "fp32"),
    ):
        assert c.master_weights("bf16") == want and c.master_weights("fp32") == "fp32"
        assert c.run_shape(memory.RunShape(master_weights="bf16")).master_weights == want
        command = measure_command(c, m, Path("r"))
        assert ("--deepspeed.master_weights=fp32" in command) == (want == "fp32"), command
