"""How far apart two bf16 fine-tunes drift when only their rounding differs: the control for the fast path's 200-step
loss-curve bar (tests/test_gpu_hf.py, issue #24). It trains the GPU test's small Llama (4 layers, 256 wide, the
test's 320-token BPE and corpus, micro-batch 4 × 32 tokens, lr 3e-4, bf16, ZeRO-2, one rank) with `zerotrain train`
in several variants and prints each one's largest per-step relative loss difference from the plain path's curve, and
the same over 10-step means:
  plain      train.hf_fast_path = false (the reference)
  perturbedK the plain path from the same weights nudged by a relative 2^-9 (half a bf16 ulp) of noise seeded K, so
             about half of them round to the neighbouring bf16 value: a change as small as a different kernel's
  fast       the fast path as it runs on this device (the CPU: the fused loss alone; a GPU: compiled layers or Liger)
    python benchmarks/curve_drift.py --out DIR [--steps 200] [--variants plain,perturbed1,perturbed2,fast] [--stage 2]
Runs on the CPU (DeepSpeed's CPU accelerator) or a GPU, whichever `zerotrain train` finds."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import make_corpus  # noqa: E402
from tests.test_gpu_hf import small_llama  # noqa: E402
from tests.test_hf import HF_RUN, build_tokenizer  # noqa: E402

PLAIN = ["--train.hf_fast_path=false"]
LR = [
    "--train.lr=3e-4",
    "--train.min_lr=3e-5",
]  # the GPU test's; 1e-3 (--extra) is where this model's curves are chaotic


def make_models(out: Path, seeds: list[int]) -> tuple[dict[str, Path], Path]:
    """The tokenizer and data (as the test's fixture makes them), the model ("plain") and its nudged copies
    ("perturbedK")."""
    from zerotrain.data import prepare

    corpus = out / "corpus.txt"
    corpus.write_text(make_corpus())
    tok = build_tokenizer(corpus.read_text(), out / "tok")
    dirs = {"plain": out / "llama"}
    model = small_llama(len(tok))
    model.save_pretrained(str(dirs["plain"]))
    tok.save_pretrained(str(dirs["plain"]))
    for seed in seeds:
        nudged = small_llama(len(tok))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in nudged.parameters():
                p.mul_(1 + 2.0**-9 * torch.randn(p.shape, generator=g))
        dirs[f"perturbed{seed}"] = out / f"llama-perturbed{seed}"
        nudged.save_pretrained(str(dirs[f"perturbed{seed}"]))
        tok.save_pretrained(str(dirs[f"perturbed{seed}"]))
    data = out / "data"
    prepare(str(corpus), str(dirs["plain"]), data)
    return dirs, data


def train(
    out: Path, name: str, model_dir: Path, data: Path, steps: int, stage: int, extra: list[str]
) -> dict[int, float]:
    run = out / name
    cfg = out / f"{name}.toml"
    cfg.write_text(
        HF_RUN.format(out_dir=run, resume="", data_dir=data, model_dir=model_dir, max_steps=steps, zero_stage=stage)
    )
    cmd = [sys.executable, "-m", "zerotrain", "train", str(cfg), "--overwrite", *([] if name == "fast" else PLAIN)]
    cmd += ["--deepspeed.dtype=bf16", "--train.eval_interval=0", "--run.checkpoints=false", *LR, *extra]
    log = (out / f"{name}.log").open("w")
    subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--variants", default="plain,perturbed1,perturbed2,fast")
    ap.add_argument(
        "--extra",
        default="",
        help="--section.key=value overrides for every run, e.g. '--train.lr=1e-3 --train.min_lr=3e-4'",
    )
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = a.variants.split(",")
    dirs, data = make_models(out, [int(n.removeprefix("perturbed")) for n in names if n.startswith("perturbed")])
    curves = {}
    for name in names:
        curves[name] = train(out, name, dirs.get(name, dirs["plain"]), data, a.steps, a.stage, a.extra.split())
    (out / "curves.json").write_text(json.dumps(curves))
    plain = curves["plain"]

    def windows(c: dict[int, float]) -> list[float]:
        return [sum(c[s] for s in range(i, i + 10)) / 10 for i in range(1, a.steps - 8, 10)]

    print(f"| variant | loss at 1 / {a.steps} | largest per-step difference | at step | over 10-step means |")
    print("|---|---|---|---|---|")
    for name, c in curves.items():
        diffs = {s: abs(c[s] - plain[s]) / plain[s] for s in plain}
        worst = max(diffs, key=diffs.get)
        wide = max(abs(x - y) / y for x, y in zip(windows(c), windows(plain)))
        print(f"| {name} | {c[1]:.4f} / {c[a.steps]:.4f} | {diffs[worst]:.2%} | {worst} | {wide:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
