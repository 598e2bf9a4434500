"""The memory planner: measured GPU peaks, hand-computed cases, invariants, config parsing, the CLI."""

import importlib.util
import itertools
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import assert_clean_failure, run_ok, zerotrain
from zerotrain import UserError, memory, planning
from zerotrain.memory import PARTIAL_OFFLOAD_SUB_GROUP, GiB, ModelShape, RunShape, plan

MEASUREMENTS = Path(__file__).resolve().parent.parent / "docs" / "memory-measurements.jsonl"


def _shape_of_measurement(row: dict) -> ModelShape:
    """benchmarks/memory_probe.py names: zerotrain presets, hf-gpt2:PRESET (transformers GPT2, vocab 50257),
    llama:SHAPE (transformers Llama)."""
    if row["impl"] == "zerotrain":
        return memory.resolve_model(row["model"])
    family, _, name = row["model"].partition(":")
    if "vocab" in row:  # a Llama preset made with another vocabulary (benchmarks/hf_fast_path.py --vocab)
        return memory.shape_from_hf_config(
            {**memory.LLAMA_PRESETS[name], "vocab_size": row["vocab"], "model_type": "llama"}, row["model"]
        )
    if family == "hf-gpt2":
        p = memory.GPT2_PRESETS[name]
        return memory.shape_from_hf_config(
            {
                "model_type": "gpt2",
                "n_layer": p["n_layer"],
                "n_head": p["n_head"],
                "n_embd": p["n_embd"],
                "vocab_size": 50257,
                "n_positions": 1024,
            },
            row["model"],
        )
    return memory.resolve_model(name)


def _run_of_measurement(row: dict) -> RunShape:
    # zerotrain's ds_config turns contiguous_gradients on from stage 2 (dsconfig.build); the probe's HF runs always
    ours = row["impl"] in ("zerotrain", "zerotrain-hf")  # zerotrain train, with its own GPT or a model.hf
    contiguous = row["zero_stage"] >= 2 if ours else True
    overlap = row["gpus"] > 1 if ours else True
    return RunShape(
        gpus_per_node=row["gpus"],
        micro_batch=row["micro_batch"],
        seq_len=row["seq_len"],
        grad_accum=row["grad_accum"],
        dtype=row["dtype"],
        zero_stage=row["zero_stage"],
        offload_optimizer=row["offload_optimizer"],
        offload_params=row["offload_params"],
        offload_ratio=row.get("offload_ratio", 1.0),
        sub_group_size=PARTIAL_OFFLOAD_SUB_GROUP if row.get("offload_ratio", 1.0) < 1 else RunShape.sub_group_size,
        activation_checkpointing=row["activation_checkpointing"],
        contiguous_gradients=contiguous,
        overlap_comm=overlap,
        compile=row.get("compile", "none"),
        fused_loss=row.get("fused_loss", False),
        liger=row.get("liger", False),
        grad_accum_dtype=row.get("grad_accum_dtype", "auto"),
    )


def _measurements() -> list[dict]:
    return [json.loads(line) for line in MEASUREMENTS.read_text().splitlines()]


def test_every_gpu_measurement_is_predicted_within_5_percent():
    rows = _measurements()
    assert len(rows) >= 50
    errors = {}
    for row in rows:
        assert {"command", "commit", "gpu", "versions", "date"} <= set(row), row["name"]
        p = plan(_shape_of_measurement(row), _run_of_measurement(row))
        errors[row["name"]] = p.per_gpu["peak_allocated"] / row["peak_allocated"] - 1
        # every measured run ran, so the verdict for its GPU must be "fits"
        assert p.fits(row["gpu_total_bytes"]), row["name"]
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= 0.05, f"{worst}: {errors[worst]:+.1%}"
    assert sum(abs(e) for e in errors.values()) / len(errors) <= 0.03


def test_measurements_cover_the_axes_the_planner_claims():
    rows = _measurements()
    seen = lambda key: {r[key] for r in rows}
    assert seen("zero_stage") == {0, 1, 2, 3}
    assert seen("gpus") == {1, 2, 4}
    assert seen("set") == {"calibration", "holdout", "fast-path"}
    assert seen("activation_checkpointing") == {True, False}
    assert {r.get("grad_accum_dtype", "auto") for r in rows} == {"auto", "fp32"}
    assert {"cpu"} <= seen("offload_optimizer") and {"cpu"} <= seen("offload_params")
    assert {"bf16", "fp16", "fp32"} <= seen("dtype")
    assert len(seen("micro_batch")) >= 3 and len(seen("seq_len")) >= 2 and len(seen("grad_accum")) >= 2
    assert {"zerotrain", "hf", "zerotrain-hf"} == seen("impl")
    assert {True, False} == {r.get("liger", False) for r in rows if r["impl"] == "zerotrain-hf"}
    assert {"gpt2", "gpt2-xl"} <= seen("model") and any(m.startswith("llama:") for m in seen("model"))


# ------------------------------------------------------------------------------------------------ exact cases


def test_loss_chunk_matches_the_model():
    from zerotrain import model

    assert memory.FUSED_LOSS_CHUNK_TOKENS == model.LOSS_CHUNK_TOKENS
    assert memory.activations.FUSED_LOSS_CHUNK_ELEMENTS == model.LOSS_CHUNK_ELEMENTS
    for vocab in (300, 32000, 49152, 50304, 128256, 151936, 256000):
        assert memory.activations.fused_loss_chunk_tokens(vocab) == model.loss_chunk_tokens(vocab)
    assert model.loss_chunk_tokens(50304) == 4096 and model.loss_chunk_tokens(128256) == 1600


def test_parameter_counts_match_the_real_models():
    import torch  # noqa: F401  (the test may import torch; the planner must not)
    import transformers

    from zerotrain.gpt_config import config_from_preset
    from zerotrain.model import GPT

    for name in ("tiny", "gpt2"):
        assert memory.resolve_model(name).n_params == GPT(config_from_preset(name)).num_params()
    llama = {
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 300,
        "max_position_embeddings": 128,
    }
    for tied in (True, False):
        cfg = transformers.LlamaConfig(**llama, tie_word_embeddings=tied)
        real = sum(p.numel() for p in transformers.LlamaForCausalLM(cfg).parameters())
        assert memory.shape_from_hf_config(cfg.to_dict(), "tiny-llama").n_params == real
    qwen = transformers.Qwen2Config(**llama, tie_word_embeddings=True)
    real = sum(p.numel() for p in transformers.Qwen2ForCausalLM(qwen).parameters())
    assert memory.shape_from_hf_config(qwen.to_dict(), "tiny-qwen2").n_params == real
    gpt2 = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64)
    real = sum(p.numel() for p in transformers.GPT2LMHeadModel(gpt2).parameters())
    assert memory.shape_from_hf_config(gpt2.to_dict(), "tiny-gpt2").n_params == real


def test_model_states_by_hand():
    m = memory.resolve_model("gpt2")
    N = m.n_params
    assert N == 124_475_904
    z2 = plan(m, RunShape(gpus_per_node=2, zero_stage=2, micro_batch=1, seq_len=64)).per_gpu
    assert z2["params"] == 2 * N  # bf16 weights, whole on each rank below stage 3
    assert z2["optimizer"] == 12 * N // 2  # fp32 master + Adam m and v, 1/W each
    z0 = plan(m, RunShape(gpus_per_node=2, zero_stage=0, micro_batch=1, seq_len=64)).per_gpu
    assert z0["optimizer"] == 12 * N  # stage 0 keeps all of it on every rank
    fp32 = plan(m, RunShape(zero_stage=0, dtype="fp32", micro_batch=1, seq_len=64)).per_gpu
    assert fp32["params"] == 4 * N and fp32["optimizer"] == 8 * N  # no separate master copy in fp32
    sgd = plan(m, RunShape(zero_stage=0, dtype="fp32", optimizer="sgd-nomomentum", micro_batch=1, seq_len=64)).per_gpu
    assert sgd["optimizer"] == 0


def test_activations_by_hand():
    m = memory.resolve_model("dims:2,2,64,128")  # 2 layers, 2 heads, hidden 64, vocab 128
    run = RunShape(micro_batch=1, seq_len=8, zero_stage=2, compile="none", fused_loss=False)  # the plain path
    # per token per layer: 16·b·h (b=2) + two LayerNorms' mean/rstd (16) + SDPA log-sum-exp (4·heads)
    per_layer = 32 * 64 + 16 + 4 * 2
    head = 4 * 128 + 2 * 2 * 64 + 8  # fp32 log-softmax output, ln_f output + embedding sum, ln_f stats
    kept = 8 * (2 * per_layer + head)
    p = plan(m, run)
    assert p.phases["loss backward"]["activations"] == kept + 8 * 2 * 4 * 128  # + two fp32 logit gradients
    assert (
        p.phases["backward"]["activations"] == kept - 8 * 4 * 128 + 8 * 2 * 256
    )  # log-softmax freed; one MLP gradient
    assert p.per_gpu["peak_allocated"] == sum(p.phases[p.peak_phase].values())  # the reported terms add up to the peak
    # the fused loss: no fp32 logits; a chunk of them at the end of the forward (compiled: logits and gradient, 2·b each)
    fast = plan(m, replace(run, compile="blocks", fused_loss=True))
    kept = 8 * (2 * per_layer + 2 * 2 * 64 + 8) + 2 * 128 * 64  # + embedding sum and hidden gradient; + weight gradient
    forward = 8 * 2 * 64 + 8 * 128 * 4  # ln_f out, the one chunk (whose product is the weight gradient in `kept`)
    assert fast.phases["forward end"]["activations"] == kept + forward
    eager = plan(m, replace(run, compile="none", fused_loss=True))
    assert eager.phases["forward end"]["activations"] == kept + forward + 8 * 128 * (2 + 8 - 4)
    # more tokens than a chunk (4096 at this vocabulary): the weight gradient is summed in fp32 over the chunks
    s = 4096 + 8
    longer = plan(m, replace(run, compile="blocks", fused_loss=True, micro_batch=s // 8))
    kept = s * (2 * per_layer + 2 * 2 * 64 + 8) + 2 * 128 * 64
    forward = s * 2 * 64 + 4096 * 128 * 4 + 4 * 128 * 64 + 6 * 128 * 64 - 2 * 128 * 64  # + fp32 sum, product, copy
    assert longer.phases["forward end"]["activations"] == kept + forward


def test_kv_cache_by_hand_and_grouped_query_attention():
    m = memory.resolve_model("llama3-8b")
    ip = memory.plan_inference(m, batch=1, context=8192)
    assert ip.kv_cache == 2 * 32 * (8 * 128) * 8192 * 2 == GiB  # k and v × layers × kv heads·head dim × tokens × bf16
    full_heads = replace(m, n_kv_head=32)
    assert memory.plan_inference(full_heads, batch=1, context=8192).kv_cache == 4 * GiB
    assert ip.weights == 2 * m.n_params
    assert memory.plan_inference(m, batch=4, context=8192).kv_cache == 4 * GiB


# ------------------------------------------------------------------------------------------------ invariants

MODELS = ["gpt2", "gpt2-xl", "smollm2-135m", "llama3-8b"]


@pytest.mark.parametrize("name", MODELS)
def test_zero3_model_states_shrink_with_more_gpus(name):
    m = memory.resolve_model(name)
    states = []
    for gpus in (1, 2, 4, 8, 16):
        g = plan(m, RunShape(gpus_per_node=gpus, zero_stage=3, micro_batch=1, seq_len=512)).per_gpu
        states.append(g["params"] + g["grads"] + g["optimizer"])
    assert all(a > b for a, b in itertools.pairwise(states))


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_never_increases_activations(name):
    m = memory.resolve_model(name)
    for z in (0, 1, 2, 3):
        for mb in (1, 4, 16):
            for seq in (128, 1024):
                run = RunShape(gpus_per_node=2, zero_stage=z, micro_batch=mb, seq_len=seq)
                plain = max(t["activations"] for t in plan(m, run).phases.values())
                ckpt = max(
                    t["activations"] for t in plan(m, replace(run, activation_checkpointing=True)).phases.values()
                )
                assert ckpt <= plain


def test_offload_and_stages_order_model_states():
    m = memory.resolve_model("gpt2-xl")
    run = RunShape(gpus_per_node=4, micro_batch=4, grad_accum=4)
    peaks = {z: plan(m, replace(run, zero_stage=z)).per_gpu for z in (0, 1, 2)}
    assert peaks[1]["optimizer"] < peaks[0]["optimizer"] and peaks[2]["grads"] < peaks[1]["grads"]
    off = plan(m, replace(run, zero_stage=2, offload_optimizer="cpu"))
    assert (
        off.per_gpu["optimizer"] == 0 and off.host_ram_per_node > plan(m, replace(run, zero_stage=2)).host_ram_per_node
    )
    assert plan(m, replace(run, zero_stage=3, offload_optimizer="nvme", offload_params="nvme")).nvme_bytes > 0


def test_peak_grows_with_micro_batch_and_sequence():
    m = memory.resolve_model("gpt2")
    plans = [plan(m, RunShape(micro_batch=mb, seq_len=seq)) for mb, seq in ((1, 256), (2, 256), (2, 1024), (8, 1024))]
    activations = [max(t["activations"] for t in p.phases.values()) for p in plans]
    peaks = [p.per_gpu["peak_allocated"] for p in plans]
    assert activations == sorted(activations) and len(set(activations)) == 4
    assert peaks == sorted(peaks)  # small batches peak in the optimizer step, where the batch does not matter
    assert plans[0].peak_phase == "optimizer step" and plans[-1].peak_phase != "optimizer step"


def test_recommendation_prefers_no_offload_then_fast_stage_then_large_micro_batch():
    xl = memory.resolve_model("gpt2-xl")
    h100 = memory.gpu_memory_from_name("h100")[0]
    best = memory.recommend(xl, RunShape(gpus_per_node=2, micro_batch=8), h100, [1, 2, 4, 8, 16, 32])
    assert (best.run.zero_stage, best.run.offload_optimizer, best.run.micro_batch) == (1, "none", 16)
    assert best.fits(h100, 0.10) and not plan(xl, replace(best.run, micro_batch=32)).fits(h100, 0.10)
    small = memory.recommend(xl, RunShape(gpus_per_node=1, micro_batch=1), 16 * GiB, [1])
    assert small.run.offload_optimizer == "cpu"
    assert (
        memory.recommend(memory.resolve_model("llama3-8b"), RunShape(micro_batch=1, seq_len=8192), 8 * GiB, [1]) is None
    )


# ------------------------------------------------------------------------------------------------ inputs


def test_hf_config_directory_and_file(tmp_path):
    cfg = {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for spec in (f"hf:{tmp_path}", str(tmp_path), str(tmp_path / "config.json")):
        m = memory.resolve_model(spec)
        assert m.impl == "hf-llama" and m.kv_heads == 8 and m.n_params == memory.resolve_model("mistral-7b").n_params
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "n_positions": 1024}
    (tmp_path / "config.json").write_text(json.dumps(gpt2))
    m = memory.resolve_model(f"hf:{tmp_path}")
    assert m.impl == "hf-gpt2" and m.dropout == 0.1 and m.n_params == 124_439_808  # transformers' GPT2 124M


def test_the_fast_path_keeps_fewer_activations_of_a_llama_layer(tmp_path):
    from zerotrain.runconfig import load_run_config

    tiny = {**memory.LLAMA_PRESETS["tinyllama-1.1b"], "model_type": "llama"}
    m = memory.shape_from_hf_config(tiny, "tinyllama")
    h, ffn, b = m.hidden, m.ffn, 2
    eager = memory.saved_bytes_per_token_per_layer(m, b, "sdpa", 2048)
    fused = memory.saved_bytes_per_token_per_layer(m, b, "sdpa", 2048, fused_layers=True)
    assert eager - fused == 2 * 4 * h + b * ffn  # two fp32 RMSNorm inputs and silu's output
    peak = lambda **o: plan(m, RunShape(micro_batch=4, seq_len=2048, grad_accum=2, **o)).per_gpu["peak_allocated"]
    gap = peak(compile="none") - peak(compile="none", liger=True)
    assert gap == 4 * 2048 * m.n_layer * (eager - fused)  # Liger Kernel's modules plan the fast row
    assert peak(compile="auto") < peak(compile="none", liger=True)  # compiled layers too, and a compiled loss chunk
    assert peak(zero_stage=3, liger=True) < peak(zero_stage=3)
    # run_shape: train.liger = "on" is planned; "auto" plans it at ZeRO-3 only where liger-kernel is installed
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    cfg = lambda *o: load_run_config(None, [f"--model.hf={tmp_path}", "--data.dir=d", "--deepspeed.zero_stage=3", *o])
    assert planning.run_shape(cfg("--train.liger=on")).liger
    assert not planning.run_shape(cfg("--train.liger=off")).liger
    assert not planning.run_shape(cfg("--train.liger=on", "--train.hf_fast_path=false")).liger
    assert planning.run_shape(cfg()).liger == (importlib.util.find_spec("liger_kernel") is not None)


def test_parameters_persist_where_the_gpu_holds_them_all():
    """preflight.all_persistent_fits, the choice of deepspeed.zero3_persistent_params = "auto" at stage 3."""
    from zerotrain.preflight import MemoryCheck, all_persistent_fits

    def check(model, run, gpu_bytes):
        return MemoryCheck(model, run, plan(model, run), gpu_bytes, 10**15, "host", run.gpus_per_node, True)

    tiny = memory.shape_from_hf_config({**memory.LLAMA_PRESETS["tinyllama-1.1b"], "model_type": "llama"}, "t")
    one = RunShape(micro_batch=4, seq_len=2048, grad_accum=2, zero_stage=3)
    persistent = plan(tiny, replace(one, param_persistence_threshold=memory.ALL_PERSISTENT))
    # on one GPU a partition is the whole parameter: persisting costs nothing (measured: docs/memory.md)
    assert persistent.gpu_bytes_needed == plan(tiny, one).gpu_bytes_needed
    assert all_persistent_fits(check(tiny, one, 80 * GiB)) and not all_persistent_fits(check(tiny, one, None))
    # on 8 GPUs every GPU holds all of Llama-3-8B's 16 GB of bf16 weights instead of an eighth
    big = memory.resolve_model("llama3-8b")
    eight = replace(one, gpus_per_node=8, micro_batch=1, activation_checkpointing=True)
    shared = plan(big, eight).gpu_bytes_needed
    whole = plan(big, replace(eight, param_persistence_threshold=memory.ALL_PERSISTENT)).gpu_bytes_needed
    assert whole - shared > 12 * GiB
    assert not all_persistent_fits(check(big, eight, int((shared + whole) / 2 * 1.1)))
    assert all_persistent_fits(check(big, eight, int(whole * 1.12)))


def test_plan_of_a_zero3_run_config_keeps_parameters_gathered_where_train_would(tmp_path):
    (tmp_path / "z3.toml").write_text(
        '[data]\ndir = "d"\n[model]\npreset = "gpt2-xl"\n[deepspeed]\nzero_stage = 3\n[train]\nmicro_batch_size = 4\n'
    )
    said = "ZeRO-3 keeps every parameter gathered"
    plans = {}
    for gpu in ("h100", "24GiB"):
        r = run_ok("plan", "--config", tmp_path / "z3.toml", "--gpus", 8, "--gpu-memory", gpu)
        plans[gpu] = r.stdout
        r = run_ok("plan", "--config", tmp_path / "z3.toml", "--gpus", 8, "--gpu-memory", gpu, "--json")
        first = json.loads(r.stdout)["plans"][0]
        assert first["params_kept_gathered"] == (gpu == "h100")
        plans[gpu, "json"] = first["per_gpu"]["params"]
    assert said in plans["h100"] and said not in plans["24GiB"]  # 24 GiB holds the run only with them partitioned
    n = memory.resolve_model("gpt2-xl").n_params
    assert plans["h100", "json"] == pytest.approx(2 * n * (1 + 1 / 8), rel=0.01)  # whole, beside the 1/8 partitions
    assert plans["24GiB", "json"] < plans["h100", "json"] - 0.5 * n  # a partition and the gathered window


def test_ds_config_fills_the_run():
    ds = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 8,
        "fp16": {"enabled": True},
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu"},
            "offload_param": {"device": "nvme"},
            "reduce_bucket_size": 1e7,
            "stage3_max_live_parameters": 3e8,
            "stage3_prefetch_bucket_size": 1e6,
        },
    }
    run = memory.run_from_ds_config(ds, RunShape())
    assert (run.micro_batch, run.grad_accum, run.dtype, run.zero_stage) == (4, 8, "fp16", 3)
    assert (run.offload_optimizer, run.offload_params) == ("cpu", "nvme")
    assert (run.reduce_bucket_size, run.max_live_parameters, run.prefetch_bucket_size) == (10**7, 3 * 10**8, 10**6)
    with pytest.raises(UserError, match="auto"):
        memory.run_from_ds_config({"train_micro_batch_size_per_gpu": "auto"}, RunShape())


def test_bf16_master_weights_by_hand():
    """deepspeed.master_weights = "bf16" (DeepSpeed's bf16_master_weights_and_grads + bf16_optimizer_states): the master
    partition and Adam's two moments in 2 bytes each instead of 4 (12 -> 6 bytes per parameter per rank), no fp32
    copy of the gradient partition at the step, half the optimizer bytes in a checkpoint; nothing where DeepSpeed
    keeps fp32 anyway (an offloaded optimizer)."""
    m = memory.resolve_model("gpt2-xl")
    N, W = m.n_params, 2
    run = RunShape(gpus_per_node=W, micro_batch=4, grad_accum=8)
    for z in (1, 2, 3):
        fp32, half = (plan(m, replace(run, zero_stage=z, master_weights=w)) for w in ("fp32", "bf16"))
        assert fp32.per_gpu["optimizer"] == 12 * N // W and half.per_gpu["optimizer"] == 6 * N // W
        assert fp32.checkpoint_bytes - half.checkpoint_bytes == 6 * N
    step = lambda w: plan(m, replace(run, master_weights=w)).phases["optimizer step"]["grads"]
    assert step("fp32") - step("bf16") == 4 * N // W  # the partition's fp32 copy
    assert "bf16 master weights" in replace(run, master_weights="bf16").describe()
    offloaded = replace(run, zero_stage=2, offload_optimizer="cpu")
    assert plan(m, replace(offloaded, master_weights="bf16")).per_gpu == plan(m, offloaded).per_gpu
    bf16 = {"bf16": {"enabled": True, "bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}}
    assert memory.run_from_ds_config(bf16, RunShape()).master_weights == "bf16"
    half = RunShape(master_weights="bf16")
    assert memory.run_from_ds_config({"bf16": {"enabled": True}}, half).master_weights == "fp32"
    # the planner's advice names the switch back where a change moves the optimizer off the GPU
    for label, changed in memory.changes_cheapest_first(replace(run, master_weights="bf16")):
        offloaded = changed.offload_optimizer != "none"
        assert offloaded == ('master_weights = "fp32"' in label) and changed.master_weights == (
            "fp32" if offloaded else "bf16"
        ), label


def test_fp32_gradient_sums_by_hand():
    """deepspeed.grad_accum_dtype = "fp32" under bf16: ZeRO-2/3 hold their gradient partition in fp32 (2 more bytes per
    parameter per rank); ZeRO-1 runs DeepSpeed's BF16_Optimizer, which keeps fp32 gradients of every parameter beside
    the bf16 ones; where DeepSpeed has no fp32 sums (ZeRO-0, an offloaded optimizer) the plan says it used bf16."""
    m = memory.resolve_model("gpt2-xl")
    N, W = m.n_params, 2
    run = RunShape(gpus_per_node=W, micro_batch=4, grad_accum=8, overlap_comm=True)
    sums = lambda z, acc: plan(m, replace(run, zero_stage=z, grad_accum_dtype=acc, contiguous_gradients=z >= 2)).phases[
        "forward end"
    ]["grads"]
    assert sums(2, "fp32") - sums(2, "auto") == 2 * N // W
    assert sums(3, "fp32") - sums(3, "auto") == 2 * N // W
    assert sums(1, "auto") == 2 * N and sums(1, "fp32") == 6 * N
    assert "in fp32" in replace(run, zero_stage=2, grad_accum_dtype="fp32").describe()
    for other in (
        replace(run, zero_stage=0),
        replace(run, zero_stage=2, offload_optimizer="cpu"),
        replace(run, dtype="fp16"),
    ):
        fp32 = plan(m, replace(other, grad_accum_dtype="fp32"))
        assert fp32.per_gpu == plan(m, other).per_gpu and any("sum gradients in" in n for n in fp32.notes)
    assert (
        memory.run_from_ds_config({"data_types": {"grad_accum_dtype": "fp32"}}, RunShape()).grad_accum_dtype == "fp32"
    )
    assert (
        memory.run_from_ds_config({"data_types": {"grad_accum_dtype": "bf16"}}, RunShape()).grad_accum_dtype == "auto"
    )
    with pytest.raises(UserError, match="must be auto or fp32"):
        plan(m, replace(run, grad_accum_dtype="fp64"))


def test_max_live_parameters_bounds_what_zero3_gathers():
    m = memory.resolve_model("llama3-8b")
    run = RunShape(gpus_per_node=8, zero_stage=3, micro_batch=1, seq_len=2048)
    assert plan(m, replace(run, max_live_parameters=10**8)).per_gpu["params"] < plan(m, run).per_gpu["params"]


def test_gpu_names_and_amounts():
    assert memory.gpu_memory_from_name("80GiB")[0] == 80 * GiB
    assert memory.gpu_memory_from_name("40GB")[0] == 40 * 10**9
    assert memory.gpu_memory_from_name("A100-40GB")[0] < memory.gpu_memory_from_name("h100")[0]
    with pytest.raises(UserError, match="did you mean"):
        memory.gpu_memory_from_name("h10")


def test_bad_runs_name_the_fix():
    m = memory.resolve_model("gpt2")
    for bad, words in (
        ({"zero_stage": 4}, "use 0, 1, 2 or 3"),
        ({"gpus_per_node": 0}, "≥ 1"),
        ({"micro_batch": 0}, "≥ 1"),
        ({"offload_params": "cpu", "zero_stage": 2}, "stage 3"),
        ({"seq_len": 4096}, "--seq-len ≤ 1024"),
    ):
        with pytest.raises(UserError, match=words):
            plan(m, RunShape(**bad))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_json_schema():
    r = zerotrain("plan", "--model", "gpt2-xl", "--gpus", "2", "--micro-batch", "8", "--gpu-memory", "h100", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["plans"]) == 8  # stages 0-3 and the offload variants
    for p in doc["plans"]:
        assert set(p["per_gpu"]) == {
            "params",
            "grads",
            "optimizer",
            "activations",
            "buffers",
            "overhead",
            "peak_allocated",
            "peak_reserved",
        }
        assert all(isinstance(v, int) and v >= 0 for v in p["per_gpu"].values())
        assert {
            "zero_stage",
            "offload_optimizer",
            "offload_params",
            "host_ram_per_node",
            "fits",
            "peak_phase",
            "phases",
        } <= set(p)
        g = p["per_gpu"]
        assert g["params"] + g["grads"] + g["optimizer"] + g["activations"] + g["buffers"] == g["peak_allocated"]
        assert isinstance(p["fits"], bool)
    assert doc["recommended"]["zero_stage"] == 1 and doc["recommended"]["micro_batch"] == 16
    assert {p["grad_accum_dtype"] for p in doc["plans"]} == {"bf16"}
    fp32 = json.loads(
        zerotrain("plan", "--model", "gpt2-xl", "--gpus", "2", "--grad-accum-dtype", "fp32", "--json").stdout
    )
    assert [p["grad_accum_dtype"] for p in fp32["plans"] if p["offload_optimizer"] == "none"] == [
        "bf16",
        "fp32",
        "fp32",
        "fp32",
    ]
    one = json.loads(zerotrain("plan", "--model", "gpt2", "--zero", "3", "--offload-optimizer", "cpu", "--json").stdout)
    assert [(p["zero_stage"], p["offload_optimizer"]) for p in one["plans"]] == [(3, "cpu")] and one[
        "recommended"
    ] is None


def test_cli_table_ds_config_run_config_and_inference(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(
        json.dumps({"train_micro_batch_size_per_gpu": 2, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}})
    )
    r = zerotrain("plan", "--model", "llama3-8b", "--gpus", "8", "--ds-config", str(ds), "--gpu-memory", "h100")
    assert r.returncode == 0, r.stderr
    assert "micro-batch 2" in r.stdout and "recommended:" in r.stdout
    r = zerotrain("plan", "--config", "configs/gpt2-124m.toml", "--gpus", "2", "--gpu-memory", "80GiB")
    assert r.returncode == 0 and "micro-batch 16 × 1024 tokens, accumulation 8" in r.stdout
    r = zerotrain(
        "plan",
        "--model",
        "gpt2-xl",
        "--gpus",
        "2",
        "--zero",
        "1,2",
        "--grad-accum",
        "16",
        "--grad-accum-dtype",
        "fp32",
        "--gpu-memory",
        "h200",
    )
    assert r.returncode == 0 and "accumulation 16 (summed in fp32)" in r.stdout, r.stdout + r.stderr
    r = zerotrain("plan", "--model", "gpt2-xl", "--gpus", "2", "--grad-accum-dtype", "fp32", "--gpu-memory", "h200")
    assert "note: ZeRO-0 and offloaded-optimizer runs sum gradients in bf16" in " ".join(r.stdout.split()), r.stdout
    r = zerotrain("plan", "--model", "llama3-8b", "--inference", "--batch", "1", "--context", "8192", "--json")
    assert json.loads(r.stdout)["inference"]["kv_cache"] == GiB


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "gpt5"],
        ["--model", "gpt2", "--zero", "4"],
        ["--model", "gpt2", "--gpus", "0"],
        ["--model", "gpt2", "--micro-batch", "0"],
        ["--model", "gpt2", "--zero", "2", "--offload-params", "cpu"],
        ["--model", "hf:/nonexistent/dir"],
        ["--model", "gpt2", "--gpu-memory", "h1000"],
        [],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args):
    assert_clean_failure(zerotrain("plan", *args))


def test_cli_malformed_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    r = zerotrain("plan", "--model", f"hf:{tmp_path}")
    assert_clean_failure(r)
    assert "not valid JSON" in r.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 512}))
    assert "not supported" in zerotrain("plan", "--model", f"hf:{tmp_path}").stderr


def test_plan_never_imports_torch_and_answers_fast():
    code = (
        "import sys, time; t = time.perf_counter(); from zerotrain.cli import main; "
        "main(['plan', '--model', 'gpt2-xl', '--gpus', '2', '--gpu-memory', 'h100', '--json']); "
        "print('ELAPSED', time.perf_counter() - t, 'torch' in sys.modules, 'deepspeed' in sys.modules, file=sys.stderr)"
    )
    started = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    wall = time.perf_counter() - started
    line = next(x for x in r.stderr.splitlines() if x.startswith("ELAPSED")).split()
    assert line[2:] == ["False", "False"], "plan imported torch or deepspeed"
    assert (
        float(line[1]) < 1.0 and wall < 5.0
    )  # the verb itself; wall includes interpreter start on a loaded CI machine


def test_config_check_asks_the_planner_whether_offload_is_needed(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "bf16": {"enabled": True},
                "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
            }
        )
    )
    needless = zerotrain(
        "config", "check", str(ds), "--world-size", "1", "--gpu", "h100", "--model", "gpt2", "--no-engine", "--json"
    )
    assert any("fits without offload" in f["message"] for f in json.loads(needless.stdout)["findings"])
    needed = zerotrain(
        "config",
        "check",
        str(ds),
        "--world-size",
        "1",
        "--gpu",
        "a100-40gb",
        "--model",
        "llama3-8b",
        "--no-engine",
        "--json",
    )
    assert not any("fits without offload" in f["message"] for f in json.loads(needed.stdout)["findings"])


# ------------------------------------------------------------------------------------------------ host RAM


def test_sizes_parse_and_bad_sizes_name_the_form():
    assert memory.parse_size("125GiB") == 125 * GiB and memory.parse_size("64G") == 64 * GiB
    assert memory.parse_size("500MB") == 500 * 10**6 and memory.parse_size("2TiB") == 2048 * GiB
    assert memory.parse_size("1.5") == int(1.5 * GiB)
    for bad in ("lots", "-4GiB", "0", "12 parsecs"):
        with pytest.raises(UserError, match="is not a size; write it like 125GiB"):
            memory.parse_size(bad)


def test_host_memory_is_the_lower_of_cgroup_limit_and_memtotal(tmp_path):
    from zerotrain import planning

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       24576000 kB\nMemFree:  1000 kB\n")
    assert planning.host_memory(None, str(tmp_path))[0] == 24576000 * 1024
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text("max\n")  # no limit: MemTotal
    assert planning.host_memory(None, str(tmp_path))[0] == 24576000 * 1024
    (cgroup / "memory.max").write_text(f"{16 * GiB}\n")  # a container's limit below the machine's RAM wins
    amount, where = planning.host_memory(None, str(tmp_path))
    assert amount == 16 * GiB and "cgroup limit" in where
    assert planning.host_memory("100GiB", str(tmp_path)) == (100 * GiB, "100GiB (--host-memory)")
    assert planning.host_memory(None, str(tmp_path / "nowhere"))[0] is None


def test_fits_needs_gpu_and_host_and_recommend_respects_the_host():
    xl = memory.resolve_model("gpt2-xl")
    h100 = memory.gpu_memory_from_name("h100")[0]
    run = RunShape(micro_batch=4)
    p = plan(xl, run)
    assert p.fits(h100) and not p.fits(h100, 0.0, p.host_ram_per_node - 1)
    assert p.shortfalls(h100, 0.0, 4 * GiB) == [f"host RAM: needs {p.host_ram_per_node / GiB:.1f} of 4.0 GiB per node"]
    # a fresh start; resuming adds the optimizer shard torch.load reads
    assert sum(p.host_terms.values()) - p.host_terms["resuming"] == p.host_ram_per_node
    # optimizer offload saves GPU memory but needs host RAM for the fp32 master weights and Adam moments
    offload = plan(xl, replace(run, zero_stage=2, offload_optimizer="cpu"))
    assert offload.host_ram_per_node > p.host_ram_per_node
    best = memory.recommend(xl, run, 40 * GiB, [1, 2, 4], host_memory=10**15)
    assert best is not None and best.host_ram_per_node > 4 * GiB
    # with less host RAM than that choice needs, the recommendation changes to one within it, or is None
    limited = memory.recommend(xl, run, 40 * GiB, [1, 2, 4], host_memory=best.host_ram_per_node)
    assert limited is None or limited.host_ram_per_node <= 0.9 * best.host_ram_per_node


def test_cli_plan_checks_host_ram_when_asked():
    r = zerotrain(
        "plan",
        "--model",
        "gpt2-xl",
        "--gpu-memory",
        "h100",
        "--micro-batch",
        "4",
        "--host-memory",
        "4GiB",
        env={"COLUMNS": "250"},
    )
    assert r.returncode == 0 and "NO (host)" in r.stdout and "the node has 4GiB (--host-memory)" in r.stdout
    r = zerotrain(
        "plan", "--model", "gpt2-xl", "--gpu-memory", "h100", "--micro-batch", "4", "--host-memory", "4GiB", "--json"
    )
    report = json.loads(r.stdout)
    assert report["host_memory"] == 4 * GiB and report["recommended"] is None
    assert all(p["host_fits"] is False and p["fits"] is False for p in report["plans"])
    # a plan for another machine's GPU does not judge it by this machine's RAM
    r = zerotrain("plan", "--model", "gpt2-xl", "--gpu-memory", "h100", "--micro-batch", "4", "--json")
    assert json.loads(r.stdout)["host_memory"] is None
    assert_clean_failure(
        zerotrain("plan", "--model", "gpt2", "--host-memory", "lots"), "--host-memory 'lots' is not a size"
    )


# ------------------------------------------------------------------------------------------------ offload


def test_partial_offload_splits_the_optimizer_between_gpu_and_host():
    """ZeRO-3 with offload_optimizer.ratio r: the GPU keeps 1 - r of the fp32 master weights and Adam moments (12 bytes
    a parameter) and their fp32 gradients (4), the host the other r of the 16 bytes, pinned, beside the gradient
    partition in the training dtype that every ZeRO-3 offload keeps on the host (stage3.py)."""
    m = ModelShape(
        name="t", impl="hf-llama", n_layer=2, n_head=4, hidden=256, vocab=1024, intermediate=512, tied_embeddings=False
    )
    N, W = m.n_params, 2
    assert N == 1_836_288
    run = RunShape(
        gpus_per_node=2,
        zero_stage=3,
        micro_batch=1,
        seq_len=128,
        offload_optimizer="cpu",
        offload_ratio=0.25,
        reduce_bucket_size=1000,
        sub_group_size=100_000,
    )
    p, full = plan(m, run), plan(m, replace(run, offload_ratio=1.0))
    none = plan(m, replace(run, offload_optimizer="none", offload_ratio=1.0))
    assert p.phases["backward"]["optimizer"] == 0.75 * 12 * N // W
    assert p.phases["backward"]["grads"] == 2 * 1000 + 0.75 * 4 * N // W  # the bf16 reduce bucket + fp32 gradients
    # at the step torch's AdamW takes the square root of one GPU sub-group's second moments into a new tensor
    assert p.phases["optimizer step"]["grads"] == 2 * 1000 + 0.75 * 4 * N // W + 4 * 100_000
    assert p.host_terms["offload"] == 2 * (0.25 * 16 * N // W + 2 * N // W)
    assert p.host_terms["processes"] == 2 * memory.PROCESS_HOST_RAM
    assert p.host_terms["loading"] == 2 * (2 * N // W) and p.host_terms["resuming"] == 2 * (12 * N // W)
    assert p.host_ram_per_node == sum(p.host_terms[k] for k in ("processes", "offload", "loading"))
    # the whole optimizer offloaded keeps nothing of it on the GPU; none offloaded keeps all of it and no host buffers
    assert full.phases["backward"]["optimizer"] == 0 and full.phases["backward"]["grads"] == 2 * 1000
    assert full.host_terms["offload"] == 2 * (16 * N // W + 2 * N // W)
    assert none.phases["backward"]["optimizer"] == 12 * N // W and none.host_terms["offload"] == 0
    # the ratio moves memory from the GPU to the host and nowhere else
    assert full.per_gpu["peak_allocated"] < p.per_gpu["peak_allocated"] < none.per_gpu["peak_allocated"]
    assert none.host_ram_per_node < p.host_ram_per_node < full.host_ram_per_node


def test_partial_offload_is_checked_and_read_from_a_ds_config():
    m = memory.resolve_model("gpt2")
    for bad, fix in (
        (RunShape(zero_stage=3, offload_optimizer="cpu", offload_ratio=0.0), r"must be in \(0, 1\]"),
        (RunShape(zero_stage=3, offload_optimizer="cpu", offload_ratio=1.5), r"must be in \(0, 1\]"),
        (RunShape(zero_stage=2, offload_optimizer="cpu", offload_ratio=0.5), "needs ZeRO stage 3"),
        (RunShape(zero_stage=3, offload_optimizer="none", offload_ratio=0.5), "optimizer offloaded to cpu"),
    ):
        with pytest.raises(UserError, match=fix):
            plan(m, bad)
    cfg = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.4}}}
    assert memory.run_from_ds_config(cfg, RunShape()).offload_ratio == 0.4


LLAMA_8B_RUN = RunShape(micro_batch=2, seq_len=2048, zero_stage=3, activation_checkpointing=True)


@pytest.mark.parametrize(
    "gpu,host_gib,nvme,chosen,ratios",
    [
        # the whole optimizer on the host would need 134 GiB of 125: part of it stays on the H200 (the exact ratio
        # moves with the activation terms; the ladder test below pins it to the least that fits)
        ("h200", 125, False, ("cpu", "none"), (0.2, 0.5)),
        ("h200", 10_000, False, ("cpu", "none"), (0.2, 0.5)),
        ("h100", 1000, False, ("cpu", "none"), (0.6, 0.9)),
        # an H100 with 125 GiB: nothing fits on GPU and host alone; with an NVMe path the optimizer goes there
        ("h100", 125, False, None, None),
        ("h100", 125, True, ("nvme", "none"), (1, 1)),
        # a 24 GB GPU: the parameters leave it too, for the host
        ("rtx4090", 125, True, ("nvme", "cpu"), (1, 1)),
    ],
)
def test_auto_offload_is_the_least_that_fits_gpu_and_host(gpu, host_gib, nvme, chosen, ratios):
    m, gpu_bytes = memory.resolve_model("llama3-8b"), memory.gpu_memory_from_name(gpu)[0]
    fits = lambda p: p.fits(gpu_bytes, 0.10, host_gib * GiB)  # noqa: E731
    best = memory.smallest_offload(m, LLAMA_8B_RUN, fits, nvme=nvme)
    assert (best and (best.run.offload_optimizer, best.run.offload_params)) == chosen
    if best is None:
        return
    assert ratios[0] <= best.run.offload_ratio <= ratios[1] and fits(best)
    ladder = memory.offload_ladder(LLAMA_8B_RUN, nvme)
    assert all(not fits(plan(m, r)) for r in ladder[: ladder.index(best.run)])  # nothing less offloaded fits
    if best.run.offload_ratio < 1:  # DeepSpeed's split is in whole sub-groups: zerotrain makes them small
        assert best.run.sub_group_size == memory.PARTIAL_OFFLOAD_SUB_GROUP
        text = memory.describe_offload(best.run)
        assert (
            text
            == f'deepspeed.offload_optimizer = "cpu", deepspeed.offload_optimizer_ratio = {best.run.offload_ratio:g}'
        )


def test_auto_offload_leaves_a_model_that_fits_alone_and_keeps_the_stage():
    m, h100 = memory.resolve_model("gpt2-xl"), memory.gpu_memory_from_name("h100")[0]
    for z in (1, 2, 3):
        best = memory.smallest_offload(m, RunShape(micro_batch=4, zero_stage=z), lambda p: p.fits(h100, 0.10))
        assert best is not None and best.run.offload_optimizer == "none" and best.run.zero_stage == z
    # below ZeRO-3 there is no partial offload: the ladder goes from none to the whole optimizer
    ladder = memory.offload_ladder(RunShape(zero_stage=2), nvme=True)
    assert [(r.offload_optimizer, r.offload_ratio, r.offload_params) for r in ladder] == [
        ("none", 1.0, "none"),
        ("cpu", 1.0, "none"),
        ("nvme", 1.0, "none"),
    ]
    assert len(memory.offload_ladder(RunShape(zero_stage=3))) == 1 + 19 + 2


def test_recommend_and_the_cheapest_change_know_partial_offload():
    m, h200 = memory.resolve_model("llama3-8b"), memory.gpu_memory_from_name("h200")[0]
    best = memory.recommend(m, LLAMA_8B_RUN, h200, [1, 2], host_memory=125 * GiB)
    assert best is not None and best.run.zero_stage == 3 and 0 < best.run.offload_ratio < 1
    label, fitting = memory.cheapest_change_that_fits(m, replace(LLAMA_8B_RUN, micro_batch=1), h200, 125 * GiB)
    assert "deepspeed.offload_optimizer_ratio = " in label and fitting.run.offload_ratio < 1
    # an H100 with 125 GiB: the host cannot take the optimizer, an NVMe disk can
    h100 = memory.gpu_memory_from_name("h100")[0]
    label, fitting = memory.cheapest_change_that_fits(m, LLAMA_8B_RUN, h100, 125 * GiB)
    assert "deepspeed.nvme_path" in label and fitting.run.offload_optimizer == "nvme" and fitting.nvme_bytes > 0


def test_optimizer_step_time_from_the_cpu_adam_rate():
    m = memory.resolve_model("llama3-8b")
    run = replace(LLAMA_8B_RUN, gpus_per_node=2, offload_optimizer="cpu", offload_ratio=0.5)
    # each of the node's 2 ranks steps half of its half; the ranks share the node's cores
    assert memory.optimizer_step_seconds(m, run, 1e9) == pytest.approx(0.5 * m.n_params / 1e9)
    assert memory.optimizer_step_seconds(m, replace(run, nodes=2), 1e9) == pytest.approx(0.25 * m.n_params / 1e9)
    assert memory.optimizer_step_seconds(m, replace(run, offload_optimizer="none", offload_ratio=1.0), 1e9) == 0


def test_cpu_adam_rate_is_measured_on_request_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rate, why = planning.cpu_adam_rate()
    assert rate is None and "--measure-cpu-adam" in why
    started = time.perf_counter()
    rate, why = planning.cpu_adam_rate(measure=True)
    assert rate > 1e6 and time.perf_counter() - started < 10  # about a second on an idle machine
    assert planning.cpu_adam_rate()[0] == rate and (tmp_path / "zerotrain" / "cpu_adam.json").is_file()
    record = json.loads((tmp_path / "zerotrain" / "cpu_adam.json").read_text())
    (tmp_path / "zerotrain" / "cpu_adam.json").write_text(json.dumps({**record, "cores": -1}))
    assert planning.cpu_adam_rate()[0] is None  # measured with other cores: not this host's rate


def test_cli_plan_shows_partial_offload_auto_and_the_cpu_step(tmp_path):
    env = {"COLUMNS": "250", "XDG_CACHE_HOME": str(tmp_path)}
    args = ("plan", "--model", "llama3-8b", "--gpu-memory", "h200", "--host-memory", "125GiB", "--micro-batch", "2")
    r = run_ok(*args, "--activation-checkpointing", "--offload-optimizer", "auto", "--json", env=env)
    report = json.loads(r.stdout)
    ratio = report["plans"][-1]["offload_ratio"]
    assert report["plans"][-1]["zero_stage"] == 3 and 0 < ratio < 1
    assert report["cpu_adam_params_per_s"] is None and report["plans"][-1]["cpu_adam_step_s"] is None
    r = run_ok(*args, "--activation-checkpointing", "--cpu-adam-rate", "2e9", env=env)
    step = ratio * memory.resolve_model("llama3-8b").n_params / 2e9  # the host's share at 2e9 parameters/s
    assert f"opt cpu {ratio:.0%}" in r.stdout and f"{step:.2f} s" in r.stdout
    # the recommendation may trade micro-batch for ratio; it says its keys
    assert "recommended: ZeRO-3, offload optimizer cpu (ratio 0." in r.stdout
    assert (
        'as run-config keys: deepspeed.zero_stage = 3, deepspeed.offload_optimizer = "cpu", deepspeed.offload_optimizer_ratio = 0.'
        in r.stdout
    )
    r = run_ok(*args, "--zero", "3", "--offload-optimizer", "cpu", "--offload-ratio", "0.5", "--json", env=env)
    assert json.loads(r.stdout)["plans"][0]["offload_ratio"] == 0.5
    for bad, fix in (
        (("--zero", "3", "--offload-optimizer", "cpu", "--offload-ratio", "1.5"), "must be in (0, 1]"),
        (("--zero", "2", "--offload-optimizer", "cpu", "--offload-ratio", "0.5"), "needs ZeRO stage 3"),
        (("--cpu-adam-rate", "0"), "--cpu-adam-rate 0 must be > 0"),
        (("--host-memory", "lots"), "--host-memory 'lots' is not a size"),
    ):
        assert_clean_failure(zerotrain(*args[:-2], *bad, env=env), fix)
    assert_clean_failure(
        zerotrain("plan", "--model", "gpt2", "--offload-optimizer", "auto", env=env), "needs one GPU's memory"
    )


def test_cli_plan_resolves_a_run_configs_auto_offload_for_its_hugging_face_model(tmp_path):
    model = tmp_path / "llama3b"
    model.mkdir()
    shape = {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24}
    shape |= {"num_key_value_heads": 8, "vocab_size": 50304, "max_position_embeddings": 8192}
    (model / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
    (tmp_path / "run.toml").write_text(
        f'[data]\ndir = "d"\n[model]\nhf = "{model}"\n[train]\nmicro_batch_size = 4\nseq_len = 2048\n'
        '[deepspeed]\nzero_stage = 3\noffload_optimizer = "auto"\nactivation_checkpointing = true\n'
    )
    r = run_ok("plan", "--config", tmp_path / "run.toml", "--gpu-memory", "40GiB", "--host-memory", "125GiB", "--json")
    (only,) = json.loads(r.stdout)["plans"]
    assert only["zero_stage"] == 3 and only["offload_optimizer"] == "cpu" and 0.5 < only["offload_ratio"] < 1
    assert only["fits"] is True
