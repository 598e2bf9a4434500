import json

from zerotrain.metrics import MetricsWriter, format_line, peak_flops


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops(None) is None and peak_flops("Some Laptop GPU") is None


def test_metrics_line_has_units():
    line = format_line(
        {
            "step": 120,
            "loss": 3.4121,
            "lr": 6e-4,
            "grad_norm": 0.91,
            "step_time_s": 0.412,
            "tokens_per_s": 1.27e6,
            "mfu": 0.412,
            "peak_mem_bytes": 61.3 * 2**30,
        },
        5000,
    )
    assert (
        line
        == "step 120/5000 | loss 3.4121 | lr 6.0e-04 | norm 0.91 | 412 ms | 1.27M tok/s | mfu 41.2% | mem 61.30 GiB"
    )


def test_resume_drops_records_after_the_checkpoint_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 9)) + '{"step": 9, "lo')
    writer = MetricsWriter(tmp_path, resume_step=6, tensorboard=False, wandb=False, wandb_project="", config={})
    writer.write({"step": 7, "loss": 0.5})
    writer.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
