"""Reading a ds_config file: parse errors at line:column with the fix, and files that once crashed or confused
`config check` / `explain`."""

import json

import pytest

from zerotrain import UserError
from zerotrain.dsconfig.parse import parse_config_text
from zerotrain.dsconfig.schema import FP16_SCHEMA, SCHEMA, ZERO_SCHEMA

from conftest import BASE, assert_clean_failure, write_ds_config, zerotrain


def test_parse_errors_name_line_and_column():
    with pytest.raises(UserError, match=r"f.json:3:3: not valid JSON: Expecting ',' delimiter"):
        parse_config_text('{\n  "a": 1\n  "b": 2}', "f.json")
    with pytest.raises(UserError, match=r"f.json:2:9: trailing comma before '}'; JSON allows none: remove it"):
        parse_config_text('{\n  "a": 1,\n    }', "f.json")
    with pytest.raises(UserError, match=r"f.json:2:3: JSON has no comments; remove the // lines"):
        parse_config_text('{\n  // ZeRO-2\n  "a": 1\n}', "f.json")
    with pytest.raises(UserError, match=r"f.json:1:10: JSON has no comments"):
        parse_config_text('{"a": 1, /* x */ "b": 2}', "f.json")
    with pytest.raises(UserError, match="JSON object"):
        parse_config_text("[1, 2]", "f.json")
    with pytest.raises(UserError, match="empty"):
        parse_config_text("  ", "f.json")
    with pytest.raises(UserError, match="NaN is not JSON"):
        parse_config_text('{"gradient_clipping": NaN}', "f.json")
    assert parse_config_text('{"url": "http://x//y"}') == {"url": "http://x//y"}


def test_cli_parse_error_and_missing_file(tmp_path):
    commented = write_ds_config(tmp_path, '{\n  // ZeRO\n  "train_batch_size": 8\n}')
    assert_clean_failure(zerotrain("config", "check", commented), "2:3", "JSON has no comments")
    assert zerotrain("config", "check", commented).returncode == 2
    assert_clean_failure(zerotrain("config", "check", tmp_path / "nope.json"), "not found")


# Files that crashed or confused `config check` / `explain` once: each must end in findings (exit 0/1) or one
# `error:` line (exit 2), never a traceback.
NASTY_FILES = {
    "empty": b"",
    "whitespace": b"  \n\t ",
    "binary": bytes(range(256)),
    "latin-1": '{"a": "caf\xe9"}'.encode("latin-1"),
    "utf-16": '{"train_batch_size": 8}'.encode("utf-16"),
    "bom": '\ufeff{"train_batch_size": 8}'.encode(),
    "null": b"null",
    "list": b"[]",
    "string": b'"str"',
    "number": b"3",
    "deep-10000": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep-500-under-zero": b'{"zero_optimization":' + b'{"offload_optimizer":' * 500 + b"1" + b"}" * 501,
    "deep-lists": b'{"a":' + b"[" * 900 + b"]" * 900 + b"}",
    "1e400": b'{"train_batch_size": 1e400, "train_micro_batch_size_per_gpu": -0, "gradient_clipping": -0.0}',
    "int-beyond-float": b'{"train_batch_size": 1' + b"0" * 400 + b', "train_micro_batch_size_per_gpu": 3}',
    "int-5000-digits": b'{"train_batch_size": ' + b"9" * 5000 + b"}",
    "huge-batch-prime-search": b'{"train_batch_size": 1000000000000000000, "train_micro_batch_size_per_gpu": 1}',
    "nan": b'{"gradient_clipping": NaN}',
    "infinity": b'{"gradient_clipping": -Infinity}',
    "nulls": json.dumps({k: None for k in SCHEMA}).encode(),
    "nulls-nested": json.dumps(
        {
            "train_batch_size": 8,
            "zero_optimization": {k: None for k in ZERO_SCHEMA},
            "fp16": {k: None for k in FP16_SCHEMA},
            "optimizer": {"type": None, "params": None},
            "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": None}},
        }
    ).encode(),
    "wrong-shapes": json.dumps(
        {
            "train_batch_size": [8],
            "zero_optimization": True,
            "fp16": 1,
            "bf16": "yes",
            "optimizer": [],
            "scheduler": 3,
            "activation_checkpointing": "x",
        }
    ).encode(),
    "wrong-shapes-nested": json.dumps(
        {
            "train_batch_size": 8,
            "zero_optimization": {
                "stage": [3],
                "offload_optimizer": "cpu",
                "offload_param": True,
                "reduce_bucket_size": {"a": 1},
            },
            "optimizer": {"type": 5, "params": [1]},
            "scheduler": {"type": ["WarmupLR"], "params": "x"},
        }
    ).encode(),
    "odd-keys": json.dumps(
        {
            "zero_optimization.stage": 2,
            "train_batch_size": 8,
            "ünïcødé": 1,
            "": {},
            "\x00": 1,
            "zero_optimization": {"ß.x": 3, "": 1},
        }
    ).encode(),
    "lone-surrogate": b'{"train_batch_size": 8, "\\ud800x": 1, "zero_optimization": {"\\udfff": "\\ud800"}}',
    "duplicates": b'{"train_batch_size": 8, "train_batch_size": 16, "zero_optimization": {"stage": 1, "stage": 3}}',
    "comments": b'{\n  // ZeRO\n  "train_batch_size": 8 /* x */\n}',
    "block-comment-first": b'/* x */ {"a": 1}',
    "trailing-comma": b'{"train_batch_size": 8, "zero_optimization": {"stage": 2,},}',
    "quoted-numbers": b'{"train_batch_size": "8", "zero_optimization": {"stage": "2", "reduce_bucket_size": "inf"}}',
    "auto-everywhere": b'{"train_batch_size": "auto", "zero_optimization": "auto", "optimizer": {"type": "auto"}}',
}
VERBS = [
    ("check", "--no-engine"),
    ("check", "--no-engine", "--json", "--world-size", "2", "--gpu", "v100"),
    ("check", "--hf", "--world-size", "4"),
    ("check", "--no-engine", "--fix", "--overwrite"),
    ("explain", "--no-engine"),
    ("explain", "--json"),
]


@pytest.mark.parametrize("name", NASTY_FILES)
def test_nasty_files_give_findings_or_one_error_line(name, tmp_path, capsys):
    from zerotrain.cli import main

    path = tmp_path / "ds.json"
    path.write_bytes(NASTY_FILES[name])
    for verb, *flags in VERBS:
        out = ["--out", str(tmp_path / "fixed.json")] if "--fix" in flags else []
        code = main(["config", verb, str(path), *flags, *out])
        stdout, stderr = capsys.readouterr()
        assert code in (0, 1, 2), (verb, flags)
        if code == 2:
            assert stderr.startswith("error: ") and stderr.count("\n") == 1 and not stdout, stderr
        else:
            assert stdout.strip(), (verb, flags)


def test_unusable_paths_are_one_error_line(tmp_path, capsys):
    from zerotrain.cli import main

    good = write_ds_config(tmp_path, BASE)
    cases = [
        (["config", "check", str(tmp_path)], "is a directory"),
        (["config", "explain", str(tmp_path / "missing.json")], "not found"),
        (["config", "check", str(good), "--no-engine", "--fix", "--out", str(tmp_path)], "is a directory"),
        (
            ["config", "check", str(good), "--no-engine", "--fix", "--out", str(tmp_path / "no" / "x.json")],
            "cannot write",
        ),
        (["config", "new", "--model", "gpt2", "--gpus", "2", "--no-engine", "--out", str(tmp_path)], "is a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr


def test_a_file_far_larger_than_a_ds_config_is_refused_before_parsing(tmp_path, capsys):
    """A ds_config is a few KB; a 191 MB JSON once took 40 s and 3.2 GB to check. Past 16 MiB the file is refused from
    its size alone (the file here is sparse, so the test writes almost nothing), by every verb that reads one; a
    ds_config padded with whitespace to 1 MiB still loads."""
    import time

    from zerotrain.cli import main
    from zerotrain.dsconfig import load_config_file
    from zerotrain.dsconfig.from_run import load_user_config
    from zerotrain.dsconfig.parse import MAX_FILE_BYTES

    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.write(b'{"train_batch_size": 8')
        f.truncate(MAX_FILE_BYTES + 1)  # a hole: no blocks written
    start = time.monotonic()
    for verb in ("check", "explain"):
        assert main(["config", verb, str(huge)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "too large for a ds_config" in err, err
    with pytest.raises(UserError, match="16 MiB"):
        load_user_config(str(huge))  # train's deepspeed.config and plan --ds-config
    assert time.monotonic() - start < 5
    padded = tmp_path / "padded.json"
    padded.write_text(json.dumps(BASE) + " " * 2**20)
    assert load_config_file(padded)[0] == BASE and load_user_config(str(padded)) == BASE
