"""Regenerate tests/golden/losses.json: the per-step train and validation losses of the seeded 12-step run that
tests/conftest.py's `stage_runs` fixture trains at ZeRO stage 0 in 2 processes (tiny GPT, char tokenizer, fp32,
dropout 0.1, on the CPU).

    python tests/golden/make_golden_losses.py

tests/test_golden.py compares that fixture's run with this file at a tight tolerance, so a change that moves every
stage the same way (initialisation, data order, the LR schedule, dropout's RNG) is caught. Regenerate only for a
change meant to alter the losses, and say why in the commit message.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: conftest's corpus and run config, the very ones the fixture uses

from conftest import GOLDEN_RUN, REPO, make_corpus, run_ok, train_losses, val_losses, write_config  # noqa: E402


def main() -> None:
    import deepspeed
    import torch

    from zerotrain.data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text(make_corpus())
        prepare(str(tmp / "corpus.txt"), "char", tmp / "char")
        cfg = write_config(tmp / "golden.toml", out_dir=tmp / "run", data_dir=tmp / "char", **GOLDEN_RUN)
        run_ok("train", cfg, "--nproc", 2)
        train, val = train_losses(tmp / "run"), val_losses(tmp / "run")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    out = {
        "about": "tests/conftest.py stage_runs[0]: " + json.dumps(GOLDEN_RUN) + ", 2 CPU processes; "
        "made by python tests/golden/make_golden_losses.py",
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "train_loss": {str(k): v for k, v in train.items()},
        "val_loss": {str(k): v for k, v in val.items()},
    }
    (HERE / "losses.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {HERE / 'losses.json'}: {len(train)} train and {len(val)} validation losses")


if __name__ == "__main__":
    main()
