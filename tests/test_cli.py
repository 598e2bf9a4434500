"""Bad input through the CLI: one `error:` line naming the fix, a non-zero exit, no traceback, and
nothing overwritten."""

import shutil

import pytest

from zerotrain import UserError

from conftest import assert_clean_failure, run_ok, tree_digest, write_config, zerotrain


def test_missing_and_empty_corpus(tmp_path):
    assert_clean_failure(
        zerotrain("data", "prepare", "--source", tmp_path / "nope.txt", "--tokenizer", "char", "--out", tmp_path / "d"),
        "not found",
        "--source",
    )
    (tmp_path / "empty.txt").write_text("")
    assert_clean_failure(
        zerotrain(
            "data", "prepare", "--source", tmp_path / "empty.txt", "--tokenizer", "char", "--out", tmp_path / "d"
        ),
        "holds no text",
    )
    assert not (tmp_path / "d").exists()


def test_data_prepare_refuses_to_replace_other_data(tmp_path, char_data):
    out = tmp_path / "d"
    shutil.copytree(char_data, out)
    before = tree_digest(out)
    (tmp_path / "other.txt").write_text("different text entirely\n")
    assert_clean_failure(
        zerotrain("data", "prepare", "--source", tmp_path / "other.txt", "--tokenizer", "char", "--out", out),
        "--overwrite",
    )
    assert tree_digest(out) == before


@pytest.fixture
def bad_data(tmp_path, char_data):
    d = tmp_path / "data"
    shutil.copytree(char_data, d)
    return d


def test_shard_with_wrong_magic(tmp_path, bad_data):
    shard = bad_data / "train.bin"
    shard.write_bytes(b"GARBAGE!" + shard.read_bytes()[8:])
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=bad_data)
    assert_clean_failure(zerotrain("train", cfg), "bad magic", "zerotrain data prepare")
    assert not (tmp_path / "run").exists()


def test_shard_with_wrong_version(tmp_path, bad_data):
    raw = bytearray((bad_data / "val.bin").read_bytes())
    raw[8] = 7
    (bad_data / "val.bin").write_bytes(raw)
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=bad_data)
    assert_clean_failure(zerotrain("train", cfg, "--nproc", 2), "version 7", "regenerate")


def test_token_id_beyond_model_vocabulary(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(zerotrain("train", cfg, "--model.vocab_size=10"), "holds token id", "model.vocab_size")


def test_sequence_longer_than_block_size(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(zerotrain("train", cfg, "--train.seq_len=64"), "larger than the model's block_size 32")


def test_batch_triple_that_does_not_divide(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    r = zerotrain("train", cfg, "--nproc", 2, "--train.global_batch_size=12")
    assert_clean_failure(r, "not divisible by micro_batch_size 4 × world 2 = 8", "multiple of 8")
    assert "launching" not in r.stdout  # refused before any process was started


def test_unknown_key_and_wrong_type(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(
        zerotrain("train", cfg, "--train.gradient_clipp1ng=1"), "unknown key train.gradient_clipp1ng", "valid keys"
    )
    assert_clean_failure(zerotrain("train", cfg, "--train.max_steps=ten"), "expected int")
    cfg.write_text(cfg.read_text().replace("max_steps = 12", 'max_steps = "12"'))
    assert_clean_failure(zerotrain("train", cfg), "train.max_steps must be int")


def test_mixing_data_with_different_tokenizers(tmp_path, char_data):
    other = tmp_path / "other"
    (tmp_path / "o.txt").write_text("0123456789 digits only\n" * 50)
    assert (
        zerotrain("data", "prepare", "--source", tmp_path / "o.txt", "--tokenizer", "char", "--out", other).returncode
        == 0
    )
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    cfg.write_text(cfg.read_text().replace(f'dir = "{char_data}"', f'dirs = ["{char_data}", "{other}"]'))
    assert_clean_failure(zerotrain("train", cfg), "different tokenizers")


@pytest.mark.slow
def test_resume_without_a_complete_checkpoint(tmp_path, stage_runs, char_data):
    partial = tmp_path / "partial"
    shutil.copytree(stage_runs[2] / "checkpoints" / "step_6", partial)
    (partial / "zerotrain.json").unlink()  # as an interrupted save leaves it
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(zerotrain("train", cfg, f"--run.resume={partial}"), "no complete zerotrain checkpoint")
    assert_clean_failure(zerotrain("train", cfg, f"--run.resume={tmp_path / 'nowhere'}"), "does not exist")
    assert_clean_failure(zerotrain("export", partial, "--out", tmp_path / "hf"), "no complete zerotrain checkpoint")
    assert not (tmp_path / "run").exists() and not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_resume_on_a_world_size_that_cannot_split_the_global_batch_is_refused(tmp_path, stage_runs, char_data):
    """Other world sizes and ZeRO stages resume through a universal checkpoint (tests/test_resume.py); a number of
    ranks that cannot split the checkpoint's global batch is refused before any rank starts."""
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, zero_stage=2)
    r = zerotrain("train", cfg, "--nproc", 3, f"--run.resume={stage_runs[2]}")
    assert_clean_failure(r, "global batch 8 (micro 4 × accumulation 1 × world 2)", "3 ranks cannot split evenly")
    assert "launching" not in r.stdout
    assert not (tmp_path / "run").exists() and not (stage_runs[2] / "checkpoints" / "step_12.universal").exists()


@pytest.mark.slow
def test_out_dir_holding_a_run_is_not_overwritten(tmp_path, stage_runs, char_data):
    run = tmp_path / "run"
    shutil.copytree(stage_runs[2], run, symlinks=True)
    before = tree_digest(run)
    cfg = write_config(tmp_path / "c.toml", out_dir=run, data_dir=char_data, dropout=0.1)
    assert_clean_failure(zerotrain("train", cfg, "--nproc", 2), "already holds a run", "run.resume", "--overwrite")
    assert_clean_failure(
        zerotrain("train", cfg, "--nproc", 2, "--run.resume=auto", "--model.n_layer=3"),
        "holds a different run",
        "model.n_layer",
    )
    assert tree_digest(run) == before
    # a finished run continued with resume=auto has nothing left to do, and says so without harm
    r = zerotrain("train", cfg, "--nproc", 2, "--run.resume=auto")
    assert r.returncode == 0, r.stderr[-2000:]
    # --overwrite replaces it
    r = zerotrain("train", cfg, "--nproc", 2, "--overwrite", "--train.max_steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "checkpoints" / "latest").read_text() == "step_2" and not (run / "checkpoints" / "step_12").exists()


@pytest.mark.slow
def test_export_refuses_a_non_empty_destination(tmp_path, stage_runs):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_failure(zerotrain("export", stage_runs[2], "--out", out), "not empty", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


@pytest.mark.slow
def test_generate_with_characters_outside_the_vocabulary(stage_runs):
    assert_clean_failure(zerotrain("generate", stage_runs[2], "--prompt", "Zebra €"), "not in this char vocabulary")


@pytest.mark.slow
def test_generate_with_top_k_beyond_the_vocabulary_samples_among_all_tokens(stage_runs):
    # the default --top-k 200 exceeds a character vocabulary: the README's demo depends on this
    for flags in ([], ["--top-k", "100000"]):
        r = run_ok("generate", stage_runs[2], "--prompt", "the", "--max-new-tokens", 5, "--seed", 1, *flags)
        assert r.stdout.startswith("the"), r.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("--model.n_head=3", "not divisible by model.n_head 3"),
        ("--model.preset=gpt5", "unknown model.preset 'gpt5'"),
        ("--model.block_size=0", "model.block_size must be > 0"),
    ],
)
def test_bad_model_shapes(tmp_path, char_data, override, message):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(zerotrain("train", cfg, override), message)
    assert not (tmp_path / "run").exists()


def test_srun_without_torchrun_is_refused(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    assert_clean_failure(zerotrain("train", cfg, env={"SLURM_NTASKS": "4"}), "srun started 4 tasks", "torchrun")


@pytest.mark.slow
def test_overwrite_never_deletes_the_checkpoint_it_starts_from(tmp_path, stage_runs, char_data):
    run = tmp_path / "run"
    shutil.copytree(stage_runs[2], run, symlinks=True)
    before = tree_digest(run)
    cfg = write_config(tmp_path / "c.toml", out_dir=run, data_dir=char_data)
    assert_clean_failure(
        zerotrain("train", cfg, "--overwrite", f"--run.init_from={run}/checkpoints/step_6"),
        "--overwrite would delete run.init_from",
    )
    assert tree_digest(run) == before


@pytest.mark.slow
def test_resume_of_another_run_into_a_run_dir_and_in_another_dtype(tmp_path, stage_runs, char_data):
    run = tmp_path / "run"
    shutil.copytree(stage_runs[2], run, symlinks=True)
    before = tree_digest(run)
    cfg = write_config(tmp_path / "c.toml", out_dir=run, data_dir=char_data, dropout=0.1)
    assert_clean_failure(
        zerotrain(
            "train", cfg, "--nproc", 2, f"--run.resume={stage_runs[1]}/checkpoints/step_6", "--deepspeed.zero_stage=1"
        ),
        "names another run's checkpoint",
    )
    assert_clean_failure(
        zerotrain("train", cfg, "--nproc", 2, f"--run.resume={run}/checkpoints/step_6"),
        "older than step_12",
        "new run.out_dir",
    )
    assert tree_digest(run) == before
    cfg2 = write_config(tmp_path / "c2.toml", out_dir=tmp_path / "new", data_dir=char_data, dropout=0.1)
    assert_clean_failure(
        zerotrain("train", cfg2, "--nproc", 2, f"--run.resume={stage_runs[2]}", "--deepspeed.dtype=bf16"),
        "trained in fp32",
        'deepspeed.dtype = "fp32"',
    )


def test_a_run_that_does_not_fit_the_host_is_refused_before_it_loads(tmp_path, char_data):
    """The memory check plans the run before any rank starts: on the CPU the model states and activations live in host
    RAM, so a tiny --host-memory refuses it with the size it needs and what to change, and nothing is written."""
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    big = ["--model.n_layer=12", "--model.n_head=12", "--model.n_embd=768", "--model.block_size=256"]
    line = assert_clean_failure(
        zerotrain("train", cfg, "--nproc", 2, "--host-memory", "7GiB", *big, "--train.micro_batch_size=16"),
        "would not fit (host RAM: needs",
        "of 7GiB (--host-memory) per node",
        "largest term: activations",
        "cheapest change that fits: micro-batch 8 with accumulation 2, the same global batch",
    )
    assert "run.memory_check = false" in line
    assert not (tmp_path / "run").exists()
    assert_clean_failure(zerotrain("train", cfg, "--host-memory", "plenty"), "--host-memory 'plenty' is not a size")
    # the same run on a node that has the RAM (and without the check) is not refused by it
    ok = zerotrain(
        "train", cfg, "--nproc", 2, "--host-memory", "3GiB", *big, "--run.memory_check=false", "--train.max_steps=0"
    )
    assert "would not fit" not in ok.stderr


@pytest.mark.slow
def test_bad_offload_input_is_refused_before_anything_is_written(tmp_path, char_data):
    """One line naming the fix, a non-zero exit and no run dir for each: a ratio outside (0, 1] or below ZeRO-3,
    parameter offload below ZeRO-3, an NVMe path that is missing or a file, a host memory that is not a size."""
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, zero_stage=3)
    nvme = ["--deepspeed.offload_optimizer=nvme"]
    for args, fix in (
        (["--deepspeed.offload_optimizer=cpu", "--deepspeed.offload_optimizer_ratio=1.5"], "must be in (0, 1]"),
        (
            [
                "--deepspeed.offload_optimizer=cpu",
                "--deepspeed.offload_optimizer_ratio=0.5",
                "--deepspeed.zero_stage=2",
            ],
            "needs zero_stage = 3",
        ),
        (["--deepspeed.offload_params=cpu", "--deepspeed.zero_stage=1"], "offload_params needs zero_stage = 3"),
        ([*nvme, f"--deepspeed.nvme_path={tmp_path / 'nowhere'}"], "does not exist; create it on a fast local disk"),
        ([*nvme, f"--deepspeed.nvme_path={cfg}"], "is not a directory"),
        (["--host-memory", "lots"], "--host-memory 'lots' is not a size"),
    ):
        assert_clean_failure(zerotrain("train", cfg, "--nproc", 2, *args), fix)
        assert not (tmp_path / "run").exists()


def test_nvme_path_must_be_writable_and_async_io_buildable(tmp_path, monkeypatch):
    from zerotrain import preflight
    from zerotrain.runconfig import DeepSpeedSection

    ds = DeepSpeedSection(zero_stage=3, offload_optimizer="nvme", nvme_path=str(tmp_path))
    monkeypatch.setattr(preflight, "async_io_builds", lambda: False)
    with pytest.raises(UserError, match="apt-get install libaio-dev"):
        preflight.check_nvme_path(ds)
    monkeypatch.setattr(preflight, "async_io_builds", lambda: True)
    preflight.check_nvme_path(ds)
    monkeypatch.setattr(preflight.os, "access", lambda path, mode: False)  # as a non-root user meets a read-only dir
    with pytest.raises(UserError, match="is not writable by this user"):
        preflight.check_nvme_path(ds)
    preflight.check_nvme_path(DeepSpeedSection(offload_optimizer="cpu", nvme_path="/nowhere"))  # not used: not checked


def test_cpu_memory_check_counts_what_glibc_keeps_of_zero3s_per_parameter_tensors():
    """On the CPU a rank's device memory is host RAM; at ZeRO-3 glibc also keeps three copies of the model (gathers in
    forward and backward, per-parameter gradients) freed into its heap (docs/log/2026-12-07-offload-that-fits.md)."""
    from zerotrain import memory, preflight

    model = memory.resolve_model("gpt2")
    for stage, copies in ((2, 0), (3, 3)):
        run = memory.RunShape(gpus_per_node=2, zero_stage=stage, dtype="fp32", micro_batch=1, seq_len=64)
        p = memory.plan(model, run)
        mc = preflight.MemoryCheck(model, run, p, None, None, "", 2, False)
        device = p.per_gpu["peak_allocated"] + preflight.CPU_PROCESS_HOST_RAM - memory.PROCESS_HOST_RAM
        base = p.host_ram_per_node - p.host_terms["loading"] + 2 * device
        assert mc.host_needed(p) == base + 2 * copies * 4 * model.n_params


def test_superoffload_merged_through_deepspeed_config_is_in_the_host_plan(tmp_path, char_data):
    """SuperOffload's CPU-Adam worker process and its fp32 gradient buffer (docs/log/2026-12-07-offload-one-h100.md)
    are counted when a user's ds_config turns it on."""
    import json

    from zerotrain import memory
    from zerotrain.preflight import memory_check, preflight
    from zerotrain.runconfig import load_run_config

    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data, zero_stage=3)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"super_offload": True}}}))
    needs = []
    for extra in ([], [f"--deepspeed.config={ds}"]):
        plan = preflight(load_run_config(str(cfg), ["--deepspeed.offload_optimizer=cpu", *extra]), 2, overwrite=True)
        mc = memory_check(plan, 2, False)
        needs.append(mc.host_needed(mc.planned))
    assert needs[1] - needs[0] == 2 * (memory.PROCESS_HOST_RAM + 4 * mc.model.n_params // 2)


@pytest.mark.slow  # 18-27 s: in --full (CI), out of the quick tier
def test_out_dir_that_is_holds_or_lies_inside_the_data_is_refused(tmp_path, char_data):
    """Without this, --overwrite deleted the data dir's tokenizer/ (a run artifact) and the ranks crashed."""
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    before = tree_digest(data)
    for out_dir, where in ((data, "is data.dir"), (data / "run", "lies inside data.dir"), (tmp_path, "contains")):
        cfg = write_config(tmp_path / "c.toml", out_dir=out_dir, data_dir=data)
        for flags in ((), ("--overwrite",), ("--nproc", 2, "--overwrite")):
            r = zerotrain("train", cfg, *flags)
            assert_clean_failure(r, f"run.out_dir {out_dir} {where}", str(data), "choose another run.out_dir")
            assert "launching" not in r.stdout
        assert tree_digest(data) == before and not (data / "run").exists()


@pytest.mark.parametrize(
    "nproc,message",
    [("0", "--nproc 0 starts no ranks"), ("-2", "--nproc -2 starts no ranks"), ("9999", "lower --nproc to at most")],
)
def test_nproc_that_is_no_number_of_ranks_or_far_beyond_the_machine(tmp_path, char_data, nproc, message):
    import os

    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    r = zerotrain("train", cfg, "--nproc", nproc)
    line = assert_clean_failure(r, message)
    if nproc == "9999":
        assert f"{os.cpu_count()} CPU cores" in line and "--force-nproc" in line
    assert "launching" not in r.stdout and not (tmp_path / "run").exists()


def test_force_nproc_lets_a_large_nproc_through_the_check(tmp_path, char_data):
    cfg = write_config(tmp_path / "c.toml", out_dir=tmp_path / "run", data_dir=char_data)
    # past the --nproc check, the run still stops at the next problem, before anything starts
    r = zerotrain("train", cfg, "--nproc", 9999, "--force-nproc", "--model.n_head=3")
    assert_clean_failure(r, "not divisible by model.n_head 3")
    assert "launching" not in r.stdout


def test_a_run_dir_in_use_is_refused(tmp_path, char_data):
    """A lock held (here by this test process) refuses a second train into that out_dir, --overwrite or not."""
    import os

    from zerotrain.runlock import LOCK_NAME, RunLock

    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", out_dir=run, data_dir=char_data)
    with RunLock(run):
        for flags in ((), ("--overwrite",), ("--nproc", 2)):
            assert_clean_failure(
                zerotrain("train", cfg, *flags), f"in use by a running zerotrain train (pid {os.getpid()}", "kill -TERM"
            )
        assert [p.name for p in run.iterdir()] == [LOCK_NAME]
    assert list(run.iterdir()) == []


@pytest.mark.slow
def test_a_second_train_into_a_running_run_dir_is_refused(sigterm_run):
    """conftest's sigterm_run tried a second train (plain and with --overwrite) into the run dir of its running 2-rank
    run before stopping it with SIGTERM (the launch is shared with tests/test_train.py)."""
    for second in sigterm_run["second"]:
        assert_clean_failure(second, f"(pid {sigterm_run['pid']} on", "kill -TERM")
    assert sigterm_run["returncode"] == 0, sigterm_run["out"][-4000:]
    assert "stopped by SIGTERM" in sigterm_run["out"] and not sigterm_run["lock_left"]


@pytest.mark.parametrize("key", ["model.hf", "model.init_from_hf"])
def test_out_dir_that_holds_the_hugging_face_model_is_refused(tmp_path, char_data, key):
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "config.json").write_text("{}")
    cfg = write_config(tmp_path / "c.toml", out_dir=run, data_dir=char_data)
    shape = ("n_layer = 2\n", "n_head = 2\n", "n_embd = 32\n", "block_size = 32\n")
    cfg.write_text("".join(line for line in cfg.read_text().splitlines(True) if line not in shape))
    assert_clean_failure(
        zerotrain("train", cfg, "--overwrite", f"--{key}={run / 'hf'}"),
        f"run.out_dir {run} contains {key} {run / 'hf'}",
        "choose another run.out_dir",
    )
    assert sorted(p.name for p in run.rglob("*")) == ["config.json", "hf"]
