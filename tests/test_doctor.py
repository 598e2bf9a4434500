"""zerotrain doctor: the environment report (versions, ops, host facts) and its findings."""

import json
import time

from zerotrain import doctor

from conftest import run_ok


def test_report_json_has_versions_ops_and_host_facts():
    started = time.perf_counter()
    r = run_ok("doctor", "--json")
    elapsed = time.perf_counter() - started
    report = json.loads(r.stdout)
    for key in (
        "python",
        "torch",
        "cuda_build",
        "cudnn",
        "nccl",
        "deepspeed",
        "ops",
        "gpus",
        "topology",
        "shm",
        "ram",
        "env",
        "findings",
    ):
        assert key in report, key
    assert report["ops"] and all(isinstance(v, bool) for v in report["ops"].values())
    assert report["ram"]["total_bytes"] > 0
    assert elapsed < 30, (
        f"zerotrain doctor took {elapsed:.1f} s"
    )  # ~3 s on an idle 2-core machine; slack for a loaded CI box


def test_report_text_and_findings(monkeypatch):
    text = run_ok("doctor", env={"NCCL_P2P_DISABLE": "1"}).stdout
    assert "deepspeed" in text and "host RAM" in text and "/dev/shm" in text
    assert "NVMe offload  " in text  # whether DeepSpeed's async_io op builds here
    assert "NCCL_P2P_DISABLE=1" in text and "warning  NCCL_P2P_DISABLE" in text


def test_findings_for_a_broken_gpu_machine():
    r = {
        "gpus": [
            {"index": 0, "name": "Tesla V100", "bf16": False, "compute_capability": "7.0"},
            {"index": 1, "name": "A100", "bf16": True, "compute_capability": "8.0"},
        ],
        "driver": "550.54",
        "cuda_available": False,
        "torch": "2.4.0+cpu",
        "ninja": False,
        "cxx": None,
        "cuda_home": None,
        "cuda_build": "12.1",
        "nvcc": "11.8",
        "ops": {"fused_adam": False, "async_io": False},
        "deepspeed": "0.19.8",
        "shm": {"total_bytes": 64 * 2**20, "free_bytes": 64 * 2**20},
        "env": {},
    }
    keys = {f["key"]: f for f in doctor.environment_findings(r)}
    assert keys["torch"]["level"] == "error" and "index-url" in keys["torch"]["fix"]
    assert {"gpus", "gpu0", "ninja", "c++", "CUDA_HOME", "nvcc", "ops", "/dev/shm"} <= set(keys)
    assert "--shm-size" in keys["/dev/shm"]["fix"]
    # NVMe offload needs DeepSpeed's async_io op, which needs libaio: its own finding, naming the package
    assert keys["async_io"]["level"] == "warning" and "libaio-dev" in keys["async_io"]["fix"]
    assert "async_io" not in keys["ops"]["message"]


def test_a_hopper_gpu_without_flash_attention_3_is_told_how_to_get_it():
    r = {
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H200",
                "bf16": True,
                "compute_capability": "9.0",
                "memory_bytes": 141 * 2**30,
                "multiprocessors": 132,
            }
        ],
        "driver": "580.1",
        "cuda_available": True,
        "torch": "2.11.0+cu130",
        "ninja": True,
        "cxx": "/usr/bin/c++",
        "cuda_home": "/usr/local/cuda",
        "cuda_build": "13.0",
        "nvcc": "13.0",
        "ops": {},
        "deepspeed": "0.19.8",
        "shm": None,
        "env": {},
        "flash_attention_3": "FlashAttention-3 is not installed (...)",
    }
    keys = {f["key"]: f for f in doctor.environment_findings(r)}
    assert (
        "not installed" in keys["FlashAttention-3"]["message"] and "xformers==0.0.34" in keys["FlashAttention-3"]["fix"]
    )
    r["flash_attention_3"] = "ok"
    assert "FlashAttention-3" not in {f["key"] for f in doctor.environment_findings(r)}
    assert "FlashAttn-3   ok" in doctor.format_report(
        {
            **r,
            "hostname": "h",
            "cpus": 16,
            "platform": "linux",
            "python": "3.12",
            "cudnn": 91900,
            "nccl": "2.28.9",
            "topology": None,
            "accelerator": "cuda",
            "ram": {"total_bytes": 2**40, "available_bytes": 2**40},
            "findings": doctor.environment_findings(r),
        }
    )
