"""The verb table. Parses arguments, calls the library, formats output; the only place that exits.

Heavy imports (torch, deepspeed, transformers) happen inside the verbs that need them.
"""

import argparse
import os
import sys
import warnings

from zerotrain import UserError, __version__

EXIT_USER_ERROR = 2


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _quiet_deepspeed() -> None:
    """Name the CPU accelerator up front when there is no GPU, which spares DeepSpeed's detection
    warning in every process."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch
        if not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


# ------------------------------------------------------------------------------------------------ verbs

def cmd_data_prepare(args, _extra) -> int:
    from zerotrain.data import prepare

    meta = prepare(args.source, args.tokenizer, args.out, args.val_fraction, args.overwrite)
    state = "up to date" if meta.get("up_to_date") else "wrote"
    print(f"{state} {args.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
          f"({meta['tokenizer']['kind']} tokenizer, vocab {meta['vocab_size']}, {meta['dtype']}, {meta['documents']} documents)")
    return 0


def _split_overrides(extra: list[str]) -> list[str]:
    """Accept both `--train.lr=3e-4` and `--train.lr 3e-4`."""
    out, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise UserError(f"unexpected argument {item!r}; overrides look like --section.key=value")
        if "=" not in item and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            item, i = f"{item}={extra[i + 1]}", i + 1
        out.append(item)
        i += 1
    return out


def cmd_train(args, extra) -> int:
    from zerotrain.distributed import in_launcher, launch_local
    from zerotrain.runconfig import load_run_config
    from zerotrain.train import preflight

    overrides = _split_overrides(extra)
    cfg = load_run_config(args.config, overrides)
    _quiet_deepspeed()
    if args.nproc and in_launcher():
        raise UserError("--nproc starts its own ranks; drop it when running under deepspeed, torchrun or srun")
    if args.nproc and args.nproc > 1:
        preflight(cfg, args.nproc, args.overwrite)  # bad input fails here, before any process starts
        return launch_local(args.nproc, ["train", args.config, *overrides, *(["--overwrite"] if args.overwrite else [])])
    from zerotrain.train import train

    summary = train(cfg, overwrite=args.overwrite)
    if _is_main_rank() and summary["val_loss"] is not None:
        print(f"done: step {summary['step']}, val loss {summary['val_loss']:.4f} (best {summary['best_val_loss']:.4f}), "
              f"checkpoint {summary['checkpoint']}")
    return 0


def cmd_export(args, _extra) -> int:
    _quiet_deepspeed()
    from zerotrain.export import export

    report = export(args.path, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported {report['checkpoint']} (step {report['step']}) to {args.out} as {report['dtype']} safetensors; "
          f"verified: max |logit diff| {report['max_abs_logit_diff']:.2e} vs the checkpoint, tied embeddings kept")
    return 0


def cmd_generate(args, _extra) -> int:
    _quiet_deepspeed()
    from zerotrain.generate import generate

    text = generate(args.path, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None, args.seed, args.device)
    print(text)
    return 0


# ------------------------------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zerotrain", description="Plan, configure, train and export GPT models under DeepSpeed ZeRO.")
    p.add_argument("--version", action="version", version=f"zerotrain {__version__}")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="prepare token shards").add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    prep = data.add_parser("prepare", help="tokenize a corpus into train.bin / val.bin / meta.json")
    prep.add_argument("--source", required=True, help="a text file, a directory of .txt, a .jsonl with a \"text\" field, or 'shakespeare'")
    prep.add_argument("--tokenizer", required=True, help="char, gpt2, or a Hugging Face tokenizer directory")
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument("--val-fraction", type=float, default=0.1, help="fraction of tokens held out for validation (default 0.1)")
    prep.add_argument("--overwrite", action="store_true", help="replace data already in --out")
    prep.set_defaults(func=cmd_data_prepare)

    tr = verbs.add_parser("train", help="train a GPT under DeepSpeed ZeRO",
                          description="Train from a TOML run config; any key can be overridden with --section.key=value.")
    tr.add_argument("config", help="run config (TOML), e.g. configs/shakespeare-char.toml")
    tr.add_argument("--nproc", type=int, default=0, help="start this many local ranks with the DeepSpeed launcher (GPUs, or CPU processes)")
    tr.add_argument("--overwrite", action="store_true", help="replace a run already in run.out_dir")
    tr.set_defaults(func=cmd_train)

    ex = verbs.add_parser("export", help="checkpoint -> verified Hugging Face folder (safetensors)")
    ex.add_argument("path", help="run directory, its checkpoints/ or one checkpoint directory")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="weight precision on disk (default fp32)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=cmd_export)

    ge = verbs.add_parser("generate", help="sample text from a run, checkpoint or export")
    ge.add_argument("path", help="run directory, checkpoint directory or export folder")
    ge.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    ge.add_argument("--max-new-tokens", type=int, default=200)
    ge.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    ge.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 for all")
    ge.add_argument("--seed", type=int, default=1337)
    ge.add_argument("--device", default="cpu", help="cpu or cuda")
    ge.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    # DeepSpeed 0.19 calls a torch.distributed function torch has deprecated, once per collective call site.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except UserError as e:
        if _is_main_rank():  # the same input error is raised on every rank; say it once
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
