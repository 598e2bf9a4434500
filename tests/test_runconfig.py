import dataclasses
import re

import pytest

from zerotrain import UserError
from zerotrain.runconfig import SECTIONS, dumps_toml, from_dict, load_run_config, to_dict


def write(tmp_path, text):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_toml_then_overrides(tmp_path):
    p = write(tmp_path, '[data]\ndir = "d"\n[train]\nlr = 1e-3\nmax_steps = 10\n[deepspeed]\nzero_stage = 3\n')
    cfg = load_run_config(
        p,
        [
            "--train.lr=3e-4",
            "train.micro_batch_size=2",
            "--deepspeed.activation_checkpointing=true",
            "--data.dirs=",
            "--model.n_layer=6",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 10 and cfg.train.micro_batch_size == 2
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.activation_checkpointing is True
    assert cfg.model.n_layer == 6 and cfg.model.n_head is None


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    p = write(tmp_path, '[data]\ndir = "d"\n[train]\ngrad_clipp1ng = 1.0\n')
    with pytest.raises(
        UserError,
        match=r"unknown key train.grad_clipp1ng .*did you mean 'train.grad_clip'.*valid keys: train.max_steps",
    ):
        load_run_config(p)
    with pytest.raises(UserError, match=r"unknown key \[trian\].*did you mean 'train'"):
        load_run_config(write(tmp_path, "[trian]\nlr = 1\n"))
    with pytest.raises(UserError, match="unknown key train.lrr"):
        load_run_config(write(tmp_path, '[data]\ndir = "d"\n'), ["--train.lrr=1"])


def test_wrong_types(tmp_path):
    with pytest.raises(UserError, match="train.max_steps must be int, got str '100'"):
        load_run_config(write(tmp_path, '[data]\ndir = "d"\n[train]\nmax_steps = "100"\n'))
    with pytest.raises(UserError, match="must be int, got bool"):
        load_run_config(write(tmp_path, '[data]\ndir = "d"\n[train]\nmax_steps = true\n'))
    with pytest.raises(UserError, match="--train.lr=fast: expected float"):
        load_run_config(write(tmp_path, '[data]\ndir = "d"\n'), ["--train.lr=fast"])
    cfg = load_run_config(write(tmp_path, '[data]\ndir = "d"\n[train]\nlr = 1\n'))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def test_value_problems_are_all_reported(tmp_path):
    p = write(
        tmp_path,
        '[data]\ndir = "d"\n[train]\nmax_steps = 0\n[deepspeed]\nzero_stage = 4\noffload_params = "cpu"\ndtype = "fp8"\n',
    )
    with pytest.raises(UserError) as e:
        load_run_config(p)
    message = str(e.value)
    for part in (
        "train.max_steps must be > 0",
        "zero_stage = 4",
        "offload_params needs zero_stage = 3",
        "dtype = 'fp8'",
    ):
        assert part in message


def test_compiled_blocks_are_refused_at_zero3(tmp_path):
    """On GPUs compiled blocks race with ZeRO-3's backward (benchmarks/zero3_compile_check.py): refused, with the fix."""
    p = write(tmp_path, '[data]\ndir = "d"\n[train]\ncompile = "blocks"\n[deepspeed]\nzero_stage = 3\n')
    with pytest.raises(UserError, match='use train.compile = "auto" or "none" at stage 3'):
        load_run_config(p)
    load_run_config(p, ["--deepspeed.zero_stage=2"])  # fine below stage 3
    load_run_config(p, ["--train.compile=auto"])  # auto runs ZeRO-3 eager


def test_fp32_gradient_sums_are_refused_where_deepspeed_has_none(tmp_path):
    p = write(tmp_path, '[data]\ndir = "d"\n[deepspeed]\ndtype = "bf16"\ngrad_accum_dtype = "fp32"\n')
    assert load_run_config(p).deepspeed.grad_accum_dtype == "fp32"  # bf16 at ZeRO-2 (the default stage)
    for override, fix in (
        ("--deepspeed.zero_stage=0", "raise zero_stage"),
        ("--deepspeed.dtype=fp16", "train in bf16"),
        ("--deepspeed.offload_optimizer=cpu", 'offload_optimizer = "none"'),
    ):
        with pytest.raises(UserError, match=fix):
            load_run_config(p, [override])
    load_run_config(p, ["--deepspeed.zero_stage=0", "--deepspeed.dtype=fp32"])  # fp32 training sums in fp32 anyway
    with pytest.raises(UserError, match="is not one of auto, fp32"):
        load_run_config(p, ["--deepspeed.grad_accum_dtype=bf16"])


def test_bf16_master_weights_are_refused_where_deepspeed_has_none(tmp_path):
    p = write(tmp_path, '[data]\ndir = "d"\n[deepspeed]\ndtype = "bf16"\nmaster_weights = "bf16"\n')
    assert load_run_config(p).deepspeed.master_weights == "bf16"  # bf16 at ZeRO-2 (the default stage)
    load_run_config(p, ["--deepspeed.zero_stage=1"])
    load_run_config(p, ["--deepspeed.zero_stage=3"])
    for override, fix in (
        ("--deepspeed.zero_stage=0", "raise zero_stage"),
        ("--deepspeed.dtype=fp16", 'set dtype = "bf16"'),
        ("--deepspeed.dtype=fp32", 'set dtype = "bf16"'),
        ("--deepspeed.offload_optimizer=cpu", 'offload_optimizer = "none"'),
        ("--deepspeed.offload_optimizer=auto", 'offload_optimizer = "none"'),
        ("--deepspeed.grad_accum_dtype=fp32", 'grad_accum_dtype = "auto"'),
    ):
        with pytest.raises(UserError, match=fix):
            load_run_config(p, [override])
    with pytest.raises(UserError, match="is not one of fp32, bf16"):
        load_run_config(p, ["--deepspeed.master_weights=fp16"])


def test_offload_ratio_and_auto_are_checked(tmp_path):
    """The partial offload ratio is a fraction in (0, 1] of the optimizer, only at ZeRO-3 with the optimizer on the CPU
    (DeepSpeed has it nowhere else); offload_optimizer = "auto" chooses the ratio and the parameters' offload itself."""
    p = write(tmp_path, '[data]\ndir = "d"\n[deepspeed]\nzero_stage = 3\noffload_optimizer = "cpu"\n')
    assert load_run_config(p, ["--deepspeed.offload_optimizer_ratio=0.5"]).deepspeed.offload_optimizer_ratio == 0.5
    assert load_run_config(p, ["--deepspeed.offload_optimizer=auto"]).deepspeed.offload_optimizer == "auto"
    for overrides, fix in (
        (["--deepspeed.offload_optimizer_ratio=0"], r"offload_optimizer_ratio = 0.0 must be in \(0, 1\]"),
        (["--deepspeed.offload_optimizer_ratio=1.5"], r"offload_optimizer_ratio = 1.5 must be in \(0, 1\]"),
        (["--deepspeed.offload_optimizer_ratio=-0.2"], r"must be in \(0, 1\]"),
        (["--deepspeed.offload_optimizer_ratio=0.5", "--deepspeed.zero_stage=2"], "needs zero_stage = 3"),
        (
            ["--deepspeed.offload_optimizer_ratio=0.5", "--deepspeed.offload_optimizer=none"],
            'offload_optimizer = "cpu"',
        ),
        (
            [
                "--deepspeed.offload_optimizer_ratio=0.5",
                "--deepspeed.offload_optimizer=nvme",
                "--deepspeed.nvme_path=/x",
            ],
            "needs zero_stage = 3",
        ),
        (["--deepspeed.offload_optimizer_ratio=0.5", "--deepspeed.offload_optimizer=auto"], "chooses the ratio itself"),
        (["--deepspeed.offload_optimizer=auto", "--deepspeed.offload_params=cpu"], 'set offload_params = "none"'),
        (["--deepspeed.offload_params=cpu", "--deepspeed.zero_stage=2"], "offload_params needs zero_stage = 3"),
        (["--deepspeed.offload_optimizer=cloud"], "is not one of none, cpu, nvme, auto"),
    ):
        with pytest.raises(UserError, match=fix):
            load_run_config(p, overrides)


@pytest.mark.parametrize("key", ["fused_gelu", "tuned_matmuls"])
def test_block_kernels_on_are_refused_where_they_cannot_apply(tmp_path, key):
    p = write(
        tmp_path,
        f'[data]\ndir = "d"\n[train]\n{key} = "on"\n[deepspeed]\nzero_stage = 3\nzero3_gather_per_block = false\n',
    )
    with pytest.raises(UserError, match=f'train.{key} = "on" at ZeRO-3 needs deepspeed.zero3_gather_per_block = true'):
        load_run_config(p)
    load_run_config(p, ["--deepspeed.zero3_gather_per_block=true"])
    load_run_config(p, [f"--train.{key}=auto"])  # auto leaves the layers alone there
    with pytest.raises(UserError, match=f'train.{key} = "on" applies to zerotrain\'s GPT'):
        load_run_config(p, ["--deepspeed.zero3_gather_per_block=true", "--model.hf=some/dir"])
    with pytest.raises(UserError, match="is not one of auto, on, off"):
        load_run_config(p, [f"--train.{key}=yes"])


def test_flash_attention_3_on_is_refused_where_it_cannot_apply(tmp_path):
    p = write(tmp_path, '[data]\ndir = "d"\n[train]\nflash_attention_3 = "on"\n')
    load_run_config(p)
    with pytest.raises(UserError, match='train.flash_attention_3 = "on" applies to zerotrain\'s GPT'):
        load_run_config(p, ["--model.hf=some/dir"])
    with pytest.raises(UserError, match="set model.dropout = 0"):
        load_run_config(p, ["--model.dropout=0.1"])
    load_run_config(p, ["--model.dropout=0.1", "--train.flash_attention_3=auto"])  # PyTorch's attention there
    with pytest.raises(UserError, match="is not one of auto, on, off"):
        load_run_config(p, ["--train.flash_attention_3=true"])


def test_missing_data_and_bad_toml(tmp_path):
    with pytest.raises(UserError, match="set data.dir"):
        load_run_config(write(tmp_path, "[train]\nlr = 1e-3\n"))
    with pytest.raises(UserError, match="not valid TOML"):
        load_run_config(write(tmp_path, "[train\nlr = 1e-3\n"))
    with pytest.raises(UserError, match="not found"):
        load_run_config(tmp_path / "nope.toml")


def test_round_trip_through_toml(tmp_path):
    cfg = load_run_config(write(tmp_path, '[data]\ndirs = ["a", "b"]\nweights = [1, 3]\n[model]\nn_layer = 3\n'))
    import tomllib

    again = from_dict(tomllib.loads(dumps_toml(cfg)))
    assert to_dict(again) == to_dict(cfg)
    assert again.data.weights == [1.0, 3.0]


def test_config_keys_lists_every_key_with_type_default_and_first_sentence(capsys):
    from zerotrain.cli import main

    assert main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fields = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert [line.split()[0] for line in lines] == fields  # one line per dataclass field, in order
    by_key = dict(zip(fields, lines))
    assert {key.split(".")[0] for key in by_key} == {"run", "data", "model", "train", "deepspeed"}
    assert re.fullmatch(
        r"train\.lr +float +0\.0006 +Peak learning rate, reached after warmup_steps\.", by_key["train.lr"]
    )
    assert re.fullmatch(
        r'deepspeed\.dtype +"auto" \| "bf16" \| "fp16" \| "fp32" +"auto" +bf16, fp16 .*', by_key["deepspeed.dtype"]
    )
    assert re.fullmatch(r"model\.n_layer +int \| none +none", by_key["model.n_layer"])  # no docstring: nothing after
    assert by_key["train.compile"].endswith("(not on CPU, where compiling takes longer than it saves).")  # one sentence
