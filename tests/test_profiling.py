"""train.profile_steps: the trace and summary a run writes, the kernel categories, and the communication split."""

import gzip
import json

import pytest

from tests.conftest import metrics, run_ok, train_losses, write_config
from zerotrain.profiling import kernel_category, summarize_gpu_trace


@pytest.mark.parametrize(
    "name, category",
    [
        ("ncclDevKernel_ReduceScatter_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
        (
            "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, 128>>",
            "attention",
        ),
        ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0", "attention"),
        ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "matmul"),
        ("triton_per_fused_add_native_layer_norm_0", "compiled fused ops"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>",
            "optimizer",
        ),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::BFloat16Copy>", "other elementwise"),
    ],
)
def test_kernels_fall_into_categories(name, category):
    assert kernel_category(name) == category


def test_communication_hidden_and_waited_for():
    """Compute kernels at [0, 4) and [6, 10) ms, a reduce-scatter at [3, 8) ms: [3, 4) and [6, 8) are hidden behind
    compute (3 ms), [4, 6) is waited for (2 ms). A memcpy at [11, 12) ms counts as compute-side work. The step took
    15 ms of wall time, the GPU was busy for 11 ms of it: 4 ms idle, 1 ms of it between kernels."""
    us = 1000.0
    events = [
        {"cat": "kernel", "name": "nvjet_tst_gemm", "ts": 0 * us, "dur": 4 * us},
        {"cat": "kernel", "name": "triton_poi_fused_gelu", "ts": 6 * us, "dur": 4 * us},
        {"cat": "kernel", "name": "ncclDevKernel_ReduceScatter", "ts": 3 * us, "dur": 5 * us},
        {"cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 11 * us, "dur": 1 * us},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 99 * us},  # host events are not GPU time
        {"cat": "user_annotation", "name": "zerotrain.forward", "ts": 0, "dur": 9.5 * us},
        {"cat": "user_annotation", "name": "zerotrain.optimizer_step", "ts": 9.5 * us, "dur": 3 * us},
    ]
    s = summarize_gpu_trace(events, steps=1, wall_s=0.015)
    assert s["kernel_s_by_category"] == pytest.approx(
        {"communication": 0.005, "matmul": 0.004, "compiled fused ops": 0.004, "copies": 0.001}
    )
    assert s["communication_s"] == pytest.approx(0.005)
    assert s["communication_hidden_s"] == pytest.approx(0.003)
    assert s["communication_wait_s"] == pytest.approx(0.002)
    assert s["compute_busy_s"] == pytest.approx(0.009)
    assert s["gpu_idle_s"] == pytest.approx(0.015 - 0.011)
    # the one gap between kernels, [10, 11) ms, fell while the host was in the optimizer step
    assert s["gpu_idle_s_by_host_phase"] == pytest.approx({"optimizer_step": 0.001, "forward": 0.0})
    halved = summarize_gpu_trace(events, steps=2, wall_s=0.015)  # per step
    assert halved["communication_wait_s"] == pytest.approx(0.001)


def test_profiled_steps_write_a_trace_and_are_flagged(tmp_path, char_data):
    """The last two steps are profiled; the run's losses are those of an unprofiled run."""
    runs = {}
    for name, extra in (("plain", []), ("profiled", ["--train.profile_steps=2"])):
        cfg = write_config(
            tmp_path / f"{name}.toml",
            out_dir=tmp_path / name,
            data_dir=char_data,
            max_steps=6,
            eval_interval=0,
            save_interval=0,
        )
        runs[name] = run_ok("train", cfg, "--run.checkpoints=false", *extra)
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "profiled")
    assert "profile (steps 5-6)" in runs["profiled"].stdout
    flagged = [r["step"] for r in metrics(tmp_path / "profiled") if r.get("profiled")]
    assert flagged == [5, 6]
    summary = json.loads((tmp_path / "profiled" / "profile" / "summary-rank0.json").read_text())
    assert (summary["first_step"], summary["last_step"], summary["device"]) == (5, 6, "cpu")
    assert any("mm" in op for op in summary["top_ops_self_cpu_s"])
    with gzip.open(tmp_path / "profiled" / "profile" / "trace-rank0.json.gz") as f:
        trace = json.load(f)
    assert any(e.get("name") == "aten::addmm" for e in trace["traceEvents"])
