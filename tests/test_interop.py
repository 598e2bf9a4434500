"""Interop: the ds_configs `zerotrain config new --for hf-trainer | accelerate` writes run unchanged under
transformers.Trainer (examples/hf_trainer_finetune.py, torchrun) and `accelerate launch`
(examples/accelerate_finetune.py), 2 processes on CPU, on a tiny random Llama and GPT-2 built offline.

`config new` picks ZeRO-1 for models this small (the fastest layout that fits); ZeRO-2 and ZeRO-3 are tested by
changing `zero_optimization.stage` in the generated file and letting `zerotrain config check --fix` add what
ZeRO-3 needs (stage3_gather_16bit_weights_on_model_save), as a user would."""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_ok

pytestmark = pytest.mark.slow

EXAMPLES = REPO / "examples"
STEPS = 8
SEQ_LEN = 64


def tiny_tokenizer(corpus: Path, out: Path):
    """A 300-token byte-level BPE trained on the test corpus: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus.read_text().splitlines(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    fast.save_pretrained(out)
    return fast


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, corpus_file) -> dict[str, Path]:
    """Random-initialised Llama and GPT-2 (hidden 64, 2 layers) saved with the tokenizer, as from_pretrained reads them."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hf_models")
    dirs = {"llama": root / "llama", "gpt2": root / "gpt2"}
    tok = tiny_tokenizer(corpus_file, dirs["llama"])
    tok.save_pretrained(dirs["gpt2"])
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **special,
        )
    ).save_pretrained(dirs["llama"])
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2, n_head=4, **special)
    ).save_pretrained(dirs["gpt2"])
    return dirs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list, cwd: Path, port: int) -> subprocess.CompletedProcess:
    """Run a launcher command line; afterwards unlink the /dev/shm buffers DeepSpeed's CPU all-reduce left under `port`."""
    from zerotrain.distributed import remove_shm_buffers

    # the console scripts of the packages this Python has (a virtualenv used without activating it has them beside
    # its python, not on PATH); the test extra installs accelerate, deepspeed and torch, so none is ever missing
    beside = Path(sys.executable).parent / cmd[0]
    exe = str(beside) if beside.exists() else shutil.which(cmd[0])
    assert exe, f"{cmd[0]} is neither beside {sys.executable} nor on PATH: pip install -e '.[test]' installs it"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    try:
        return subprocess.run(
            [exe, *map(str, cmd[1:])], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        remove_shm_buffers("127.0.0.1", str(port))


def generate(model_dir: Path, target: str, cwd: Path, stage: int | None, *extra) -> dict:
    """`zerotrain config new ... --out ds_config.json` in cwd; with `stage`, that key changed and `config check --fix`."""
    run_ok(
        "config",
        "new",
        "--model",
        f"hf:{model_dir}",
        "--gpus",
        2,
        "--for",
        target,
        "--out",
        "ds_config.json",
        *extra,
        cwd=cwd,
    )
    path = cwd / "ds_config.json"
    config = json.loads(path.read_text())
    assert config["zero_optimization"]["stage"] in (0, 1), config  # what the planner picks for a tiny model
    if stage is not None:
        config["zero_optimization"]["stage"] = stage
        path.write_text(json.dumps(config, indent=2))
        hf = ["--hf"] if target == "hf-trainer" else []
        run_ok("config", "check", path, "--world-size", 2, *hf, "--fix", "--in-place", cwd=cwd)
        config = json.loads(path.read_text())
    if config["zero_optimization"]["stage"] == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    return config


def assert_trained_and_reloads(out: Path, model_dir: Path):
    """The saved directory loads with from_pretrained, with whole (never [0]-shaped) weights that moved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tuned_params = dict(tuned.named_parameters())
    for name, p in start.named_parameters():
        assert tuned_params[name].shape == p.shape, name
    assert any(not torch.equal(tuned_params[n], p) for n, p in start.named_parameters()), "the weights never changed"
    ids = AutoTokenizer.from_pretrained(out)("the king and queen", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(tuned(ids).logits).all()


@pytest.fixture(scope="module")
def trainer_run(hf_models, corpus_file, tmp_path_factory):
    """run(model, stage) -> (folder, ds_config, result): the README's torchrun of examples/hf_trainer_finetune.py on 2
    ranks with the generated config (`stage` set as in `generate`), STEPS steps and a Trainer checkpoint at the last
    one. Each run is made once and shared by the tests of this module: a launch costs 20-40 s on 2 CPU cores."""
    runs = {}

    def run(model: str, stage: int | None):
        if (model, stage) not in runs:
            folder = tmp_path_factory.mktemp(f"trainer-{model}-{stage}")
            config = generate(hf_models[model], "hf-trainer", folder, stage)
            port = free_port()  # the README's command, plus a port of its own so it can run beside other jobs
            r = launch(
                ["torchrun", "--nproc_per_node", 2, "--master_port", port, EXAMPLES / "hf_trainer_finetune.py"]
                + [hf_models[model], corpus_file, "--deepspeed", "ds_config.json", "--out", "finetuned"]
                + ["--max-steps", STEPS, "--save-steps", STEPS, "--seq-len", SEQ_LEN],
                folder,
                port,
            )
            runs[model, stage] = folder, config, r
        return runs[model, stage]

    return run


@pytest.mark.parametrize("model,stage", [("llama", None), ("gpt2", 3)], ids=["llama-as-generated", "gpt2-zero3"])
def test_hf_trainer_runs_the_generated_config(hf_models, trainer_run, model, stage):
    folder, config, r = trainer_run(model, stage)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    expected = config["zero_optimization"]["stage"]
    assert f"× world 2, ZeRO stage {expected}" in r.stdout, r.stdout  # the Trainer filled "auto" for 2 processes
    m = re.search(r"loss (\S+) -> (\S+) over (\d+) steps \(ZeRO stage (\d)\)", r.stdout)
    assert m, r.stdout[-3000:]
    first, last, steps, engine_stage = float(m[1]), float(m[2]), int(m[3]), int(m[4])
    assert (steps, engine_stage) == (STEPS, expected)
    assert math.isfinite(first) and math.isfinite(last) and last < first, (first, last)
    assert_trained_and_reloads(folder / "finetuned", hf_models[model])


@pytest.mark.parametrize(
    "model,stage", [("gpt2", None), ("llama", 2), ("llama", 3)], ids=["gpt2-as-generated", "llama-zero2", "llama-zero3"]
)
def test_accelerate_launch_runs_the_generated_config(hf_models, corpus_file, tmp_path, model, stage):
    import yaml

    # Batch sizes are numbers in this form: plan them for the sequence length the script trains with.
    config = generate(hf_models[model], "accelerate", tmp_path, stage, "--micro-batch", 4, "--seq-len", SEQ_LEN)
    accel_path = tmp_path / "accelerate_config.yaml"
    accel = yaml.safe_load(accel_path.read_text())
    assert accel["deepspeed_config"]["deepspeed_config_file"] == "ds_config.json"
    if stage == 3:  # what `config new` writes next to a ZeRO-3 ds_config
        accel["deepspeed_config"]["zero3_init_flag"] = True
        accel_path.write_text(yaml.safe_dump(accel, sort_keys=False))
    port = free_port()
    r = launch(
        [
            "accelerate",
            "launch",
            "--config_file",
            "accelerate_config.yaml",
            "--main_process_port",
            port,
            EXAMPLES / "accelerate_finetune.py",
            hf_models[model],
            corpus_file,
            "--out",
            "finetuned",
            "--max-steps",
            STEPS,
            "--seq-len",
            SEQ_LEN,
        ],
        tmp_path,
        port,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    expected = config["zero_optimization"]["stage"]
    assert f"global batch 8 = micro 4 × accumulation 1 × world 2, ZeRO stage {expected}" in r.stdout, r.stdout
    losses = [float(x) for x in re.findall(r"^step \d+/\d+ \| loss (\S+)$", r.stdout, flags=re.MULTILINE)]
    assert len(losses) == STEPS, r.stdout[-3000:]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert f"saved finetuned after {STEPS} steps" in r.stdout
    assert_trained_and_reloads(tmp_path / "finetuned", hf_models[model])


def test_export_reads_the_hf_trainers_deepspeed_checkpoint(hf_models, trainer_run, tmp_path):
    """The Trainer's checkpoint-N/ (DeepSpeed's global_stepN/ shards, latest, zero_to_fp32.py) of a ZeRO-3 run
    exports with `zerotrain export CKPT --config MODEL_DIR` to a verified folder holding the weights the Trainer
    itself saves at that step (the run's last: the checkpoint and the final save hold the same step)."""
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import assert_clean_failure, zerotrain

    folder, _, r = trainer_run("gpt2", 3)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    ckpt = folder / "finetuned" / f"checkpoint-{STEPS}"
    assert (ckpt / "latest").read_text().strip() == f"global_step{STEPS}" and (ckpt / "zero_to_fp32.py").is_file()
    out = run_ok("export", ckpt, "--config", hf_models["gpt2"], "--out", tmp_path / "hf")
    assert "verified: max |logit diff|" in out.stdout
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    trainer_saved = AutoModelForCausalLM.from_pretrained(folder / "finetuned", dtype=torch.float32).eval()
    saved = dict(trainer_saved.named_parameters())
    for name, p in exported.named_parameters():
        assert torch.allclose(p, saved[name], atol=1e-6), name  # the fp32 masters of the same step
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert_clean_failure(
        zerotrain("export", ckpt, "--config", hf_models["llama"], "--out", tmp_path / "wrong"),
        "does not hold the weights",
        "--config",
    )
    assert not (tmp_path / "wrong").exists()
