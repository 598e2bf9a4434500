"""Typed run configuration: defaults -> TOML file -> `--section.key=value` overrides.

Every key is a dataclass field below with its unit in the name or the docstring. An unknown key or a
value of the wrong type is a UserError that lists the valid keys, so a typo never goes unnoticed.
"""

import ast
import dataclasses
import difflib
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from zerotrain import UserError

# Keys that take one of a few strings: the Literal is the one list of their values (validate() reads it).
Switch = Literal["auto", "on", "off"]
Offload = Literal["none", "cpu", "nvme"]


@dataclass
class RunSection:
    out_dir: str = "runs/default"
    """Run directory: config.toml, ds_config.json, metrics.jsonl, tb/, checkpoints/."""
    seed: int = 1337
    """Seeds model initialisation (same on every rank), dropout (offset by rank) and the data order."""
    resume: str = ""
    """"" starts afresh (an out_dir already holding a run is refused), "auto" continues from the latest
    checkpoint in out_dir (fresh if there is none), or a run/checkpoint path to continue from."""
    init_from: str = ""
    """A run or checkpoint whose weights start this run, with a fresh optimizer, schedule and step count."""
    tensorboard: bool = True
    """Write TensorBoard events to out_dir/tb."""
    wandb: bool = False
    """Log to Weights & Biases when the wandb package is installed (WANDB_MODE=offline works offline)."""
    wandb_project: str = "zerotrain"
    checkpoints: bool = True
    """Write checkpoints (periodic, best and final). false for benchmarks and memory measurements."""
    host_memory: str = ""
    """Host RAM one node may use, e.g. "125GiB" (`train --host-memory`); empty: this machine's cgroup limit or
    MemTotal, whichever is lower. The memory check compares the planned host RAM with it."""
    memory_check: bool = True
    """Before anything loads, plan the run's GPU and host memory and refuse a run that would not fit, naming the
    largest term and the cheapest change that fits. false: start anyway (for a model or kernel the planner misjudges)."""
    stall_timeout: float = 600.0
    """Seconds a rank may make no progress (no micro-step phase, evaluation or save ends) before every rank stops,
    naming the stalled rank(s) and what they last did (zerotrain/watchdog.py); the process group's timeout is set
    60 s beyond it, so the watchdog speaks first. Raise it for saves or evaluations slower than that; 0 turns the
    watchdog off (the process group then waits 30 minutes)."""


@dataclass
class DataSection:
    dir: str = ""
    """A directory made by `zerotrain data prepare` (train.bin, val.bin, meta.json)."""
    dirs: list[str] = field(default_factory=list)
    """Several prepared directories to mix, instead of dir; they must share one tokenizer."""
    weights: list[float] = field(default_factory=list)
    """Sampling weight of each entry of dirs (normalised); default: equal."""


@dataclass
class ModelSection:
    preset: str = "gpt2"
    """tiny, gpt2 (124M), gpt2-medium, gpt2-large or gpt2-xl; the fields below override its shape."""
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    """Longest sequence the model can see (size of the position embedding)."""
    dropout: float = 0.0
    vocab_size: int | None = None
    """Tokenizer vocabulary; default: the prepared data's. The embedding is padded to a multiple of 64."""
    hf: str = ""
    """A local Hugging Face causal LM directory (config.json, weights, tokenizer) to fine-tune instead of a preset;
    the data must be prepared with its tokenizer (`zerotrain data prepare --tokenizer DIR`)."""
    init_from_hf: str = ""
    """A local Hugging Face GPT-2 directory whose weights (and shape) start zerotrain's own GPT-2."""


@dataclass
class TrainSection:
    max_steps: int = 1000
    """Optimizer steps (each one global batch)."""
    micro_batch_size: int = 8
    """Sequences per rank per forward/backward."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (ignored when global_batch_size is set)."""
    global_batch_size: int = 0
    """Sequences per optimizer step; 0 means micro_batch_size × grad_accum × world size."""
    allow_batch_change: bool = False
    """On a resume, let the batch keys above change the global batch the checkpoint trained with (the step count,
    LR schedule and data position carry on). Without it that is refused; a resume on another number of ranks with
    the keys unchanged keeps the checkpoint's global batch by changing the accumulation."""
    seq_len: int = 0
    """Tokens per training sequence; 0 means the model's block_size."""
    lr: float = 6e-4
    """Peak learning rate, reached after warmup_steps."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 100
    lr_decay_steps: int = 0
    """Step at which the cosine reaches min_lr; 0 means max_steps."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay; never applied to biases, norms or embeddings."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    eval_interval: int = 250
    """Evaluate every this many steps (and at the end); 0 disables evaluation."""
    eval_iters: int = 20
    """Micro-batches per rank in each evaluation."""
    log_interval: int = 10
    """Print and record metrics every this many steps."""
    save_interval: int = 1000
    """Checkpoint every this many steps; 0 saves only at the end."""
    keep_last: int = 2
    """Keep this many step checkpoints (the best and the latest are always kept)."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without a better val loss; 0 disables early stopping."""
    compile: Literal["auto", "blocks", "none"] = "auto"
    """torch.compile: "blocks" compiles each transformer block (a model.hf model's decoder layers) and the loss, "none"
    runs eager, "auto" compiles on GPUs at ZeRO stages 0-2 (not on CPU, where compiling takes longer than it saves). Never under ZeRO-3: with
    DeepSpeed 0.19.8 compiled blocks race with ZeRO-3's backward on GPUs and train on wrong gradients
    (docs/performance.md; benchmarks/zero3_compile_check.py shows it)."""
    fused_loss: bool = True
    """Cross-entropy a chunk of tokens at a time, with its gradient computed in the same pass, instead of
    materialising fp32 logits for the whole micro-batch (3 × 4 bytes × vocabulary per token). false: the
    textbook path, for comparison. Also for model.hf models of the Llama, Mistral, Qwen2/3 and GPT-2 families
    (their head becomes zerotrain's fused one; kernels/hf.py)."""
    hf_fast_path: bool = True
    """model.hf models: false runs transformers' code exactly as it is (fp32 logits, eager layers, no Liger Kernel),
    whatever train.fused_loss, train.compile and train.liger say; for comparison and debugging."""
    liger: Switch = "auto"
    """model.hf models of the Llama, Mistral and Qwen2/3 families: RMSNorm, SwiGLU and RoPE through Liger Kernel's
    Triton kernels (pip install liger-kernel). "auto": on GPUs in bf16/fp16 where the decoder layers are not compiled
    (ZeRO-3, train.compile = "none") and the package is installed; compiled layers fuse the same operations.
    "on": also with compiled layers; a run where it cannot stops and says why. "off": transformers' modules."""
    fused_gelu: Switch = "auto"
    """The MLP's GELU inside cuBLASLt's matmul epilogues (GELU_AUX_BIAS forward, DGELU backward; zerotrain/kernels/cublaslt.py)
    instead of separate kernels. "auto": with compiled blocks (GPUs, ZeRO 0-2), where it measured faster; eager
    blocks ran the MLP slower with it, their bias-gradient sums being separate kernels (docs/benchmarks.md). "on":
    also eager (at ZeRO-3 it needs deepspeed.zero3_gather_per_block); off the GPU and in fp32 the same function then
    runs as separate kernels. "off": separate kernels. zerotrain's GPT only."""
    tuned_matmuls: Switch = "auto"
    """Each matmul of the attention and MLP layers and of the fused loss's output projection (forward, input gradient,
    weight gradient) runs the faster of PyTorch's kernel and the best of the algorithms cuBLASLt's heuristic offers,
    timed for its shape on first use (zerotrain/kernels/cublaslt.py). "auto": with compiled blocks (GPUs, ZeRO 0-2); "on": also
    eager (at ZeRO-3 it needs deepspeed.zero3_gather_per_block); off the GPU and in fp32 PyTorch's kernels run. "off":
    PyTorch's kernels. zerotrain's GPT only."""
    flash_attention_3: Switch = "auto"
    """The attention through FlashAttention-3's Hopper kernels (zerotrain/kernels/flash3.py) instead of
    F.scaled_dot_product_attention, whose fastest backend on H100/H200 is cuDNN's: at GPT-2's head size its forward
    is a little slower than cuDNN's and its backward faster, so attention and training take less time
    (docs/benchmarks.md). FlashAttention-3 is not part of PyTorch: install the flash_attn_3 package (flash-attention's
    hopper/) or xformers 0.0.34, which ships a build (with a CUDA 13 PyTorch, also nvidia-cuda-runtime-cu12), or set
    ZEROTRAIN_FLASH3_LIBRARY to its _C.so. "auto": where it can run (Hopper GPUs, bf16/fp16, model.dropout = 0,
    kernels for the model's head size); "on": the same, and a run where it cannot stops and says why; "off":
    PyTorch's attention. zerotrain's GPT only."""
    time_phases: bool = False
    """Synchronize the device around forward, backward and the optimizer step and log their times
    (forward_s, backward_s, optimizer_s per step). Costs a little speed; `zerotrain bench` turns it on."""
    sample_prompt: str = ""
    """At each evaluation, continue this text by sample_tokens tokens (temperature 0.8, top-k 200) and print and
    record the result ("sample" in metrics.jsonl). Every rank runs the same fixed number of forwards, so under
    ZeRO-3, where each forward gathers parameters collectively, the ranks stay in step. Empty: no sampling."""
    sample_tokens: int = 64
    """Tokens to sample at each evaluation when sample_prompt is set."""
    profile_steps: int = 0
    """Run torch.profiler over the last this many steps: each rank writes profile/trace-rank{R}.json.gz (for
    Perfetto) and profile/summary-rank{R}.json (GPU time by kernel category, communication hidden by compute
    and waited for, idle GPU). Those steps are slower; their log records carry "profiled": true."""


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2
    """ZeRO stage: 0 (plain data parallel), 1 (optimizer states), 2 (+gradients), 3 (+parameters) partitioned."""
    offload_optimizer: Literal["none", "cpu", "nvme", "auto"] = "none"
    """none, cpu or nvme: where optimizer states live (stages 1-3). auto: the memory planner picks the least offload
    that fits this machine's GPU and host RAM (run.host_memory) at this zero_stage, in order: none; at stage 3 a
    partial offload (offload_optimizer_ratio in 5% steps); the whole optimizer on the CPU; at stage 3 parameters too;
    with nvme_path set, the optimizer on NVMe. `train` prints what it chose; `zerotrain plan --config` shows it."""
    offload_optimizer_ratio: float = 1.0
    """The fraction, in (0, 1], of the optimizer (fp32 master weights, Adam moments and fp32 gradients) offloaded to the
    CPU, where DeepSpeedCPUAdam steps it; the rest stays on the GPU and steps there (DeepSpeed's ZeRO-Offload++
    partial offload, offload_optimizer.ratio). Below 1 needs zero_stage = 3 and offload_optimizer = "cpu"; zerotrain
    then sets sub_group_size small enough that DeepSpeed's split, made in whole sub-groups, lands on the ratio."""
    offload_params: Offload = "none"
    """none, cpu or nvme: where parameters live between uses (stage 3 only)."""
    nvme_path: str = ""
    """Directory on a fast local disk for nvme offload (must exist and be writable; DeepSpeed's async_io op needs
    libaio, see `zerotrain doctor`). With offload_optimizer = "auto" it lets the planner choose NVMe."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """bf16, fp16 (dynamic loss scaling), fp32, or auto: bf16 where the GPU supports it, else fp32."""
    grad_accum_dtype: Literal["auto", "fp32"] = "auto"
    """Precision in which gradients are summed over the micro-steps of an optimizer step: auto (DeepSpeed's default,
    the training dtype: bf16 sums in bf16) or fp32 (DeepSpeed's data_types.grad_accum_dtype; bf16 at ZeRO 1-3 without
    offload). fp32 sums cost a little speed (docs/benchmarks.md) and 2 more bytes per parameter per rank at ZeRO-2/3,
    4 more per parameter at ZeRO-1, which then runs DeepSpeed's BF16_Optimizer (docs/memory.md)."""
    master_weights: Literal["fp32", "bf16"] = "fp32"
    """Precision of what the optimizer keeps: fp32 (DeepSpeed's default: fp32 master weights, Adam moments and
    gradient partitions, 12 bytes per parameter beside the bf16 weights and gradients) or bf16 (DeepSpeed's
    bf16.bf16_master_weights_and_grads and bf16_optimizer_states: 6 bytes per parameter, so a model twice as large
    fits without offload). bf16 updates round away what is smaller than the weight's last bit (2^-8 of it), which
    small learning rates can hit: opt in where memory decides. bf16 training at ZeRO 1-3, optimizer on the GPU."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward instead of keeping its activations."""
    zero3_gather_per_block: bool = True
    """ZeRO-3: gather each transformer block's parameters at once (DeepSpeed leaf modules: zerotrain's GPT blocks, a
    Hugging Face model's decoder layers), so ZeRO-3's Python hooks run once per block instead of around every
    Linear and norm, which trains GPT-2 XL faster at ZeRO-3 (docs/benchmarks.md). false gathers layer by layer,
    for blocks too large to hold whole on one GPU."""
    zero3_persistent_params: Switch = "auto"
    """ZeRO-3: keep every parameter gathered after its first use (DeepSpeed's stage3_param_persistence_threshold above
    the largest parameter), so forward and backward gather nothing and run at ZeRO-2's speed; gradients and optimizer
    states stay partitioned. Costs the full bf16/fp16 parameters on every GPU instead of a 1/world share (nothing
    more on one GPU). On, DeepSpeed's memory_efficient_linear is off: with nothing released it only costs host time.
    auto: on where the planner says the run fits the GPU that way with 10% to spare, else off;
    off: DeepSpeed's default (parameters under 100,000 elements persist)."""
    reduce_without_host_wait: bool = True
    """ZeRO-1/2 on GPUs: end each micro-step's gradient reduction with the compute stream waiting for DeepSpeed's
    reduction stream instead of the host waiting for the whole GPU, so the host queues the next micro-step while the
    last gradients reduce (a small gain for GPT-2 XL at ZeRO-2, docs/benchmarks.md). false keeps DeepSpeed's
    host wait."""
    config: str = ""
    """A ds_config JSON whose entries are merged over the generated one (for settings zerotrain has no key for)."""


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)


SECTIONS: dict[str, type[Any]] = typing.get_type_hints(RunConfig)  # section name -> its dataclass, in field order


def compiles(t: "TrainSection", zero_stage: int, on_gpu: bool) -> bool:
    """train.compile resolved: "blocks" compiles (validate refuses it at ZeRO-3), "auto" on GPUs below ZeRO-3."""
    return t.compile == "blocks" or (t.compile == "auto" and on_gpu and zero_stage < 3)


def uses_liger(
    t: "TrainSection", on_gpu: bool, compiled: bool, dtype: str, patched: bool, installed: "Callable[[], bool]"
) -> bool:
    """train.liger resolved for a model.hf run on the fast path: "on" always (kernels/hf.py refuses it where it cannot
    run), "auto" on GPUs in bf16/fp16 where the decoder layers are not compiled, for a model type Liger Kernel
    patches (`patched`), with liger-kernel installed (`installed`, asked last: it may import the package)."""
    return t.liger == "on" or (
        t.liger == "auto" and on_gpu and not compiled and dtype in ("bf16", "fp16") and patched and installed()
    )


def _field_types(section_cls) -> dict[str, type]:
    return typing.get_type_hints(section_cls)


def _describe(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "none")


def _coerce(where: str, tp, value):
    """Check a TOML value against the field type; ints are accepted where floats are expected."""
    if typing.get_origin(tp) is Literal:  # the value's type here; whether it is one of the choices, in validate()
        return _coerce(where, type(typing.get_args(tp)[0]), value)
    if isinstance(tp, types.UnionType):  # `int | None`
        inner = [t for t in typing.get_args(tp) if t is not type(None)][0]
        return None if value is None else _coerce(where, inner, value)
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list of {item_tp.__name__}, got {value!r}")
        return [_coerce(f"{where}[{i}]", item_tp, v) for i, v in enumerate(value)]
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise UserError(f"{where} must be {_describe(tp)}, got {type(value).__name__} {value!r}")
    return value


def _parse_override_value(where: str, tp, text: str):
    """Turn the text of `--section.key=value` into the field's type."""
    if isinstance(tp, types.UnionType):
        if text.lower() in ("none", ""):
            return None
        tp = [t for t in typing.get_args(tp) if t is not type(None)][0]
    if typing.get_origin(tp) is Literal:
        tp = type(typing.get_args(tp)[0])
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp)
        items = [t.strip() for t in text.split(",") if t.strip()]
        return [_parse_override_value(where, item_tp, t) for t in items]
    try:
        if tp is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        return tp(text)
    except ValueError:
        raise UserError(f"--{where}={text}: expected {_describe(tp)}") from None


def _unknown_key(where: str, key: str, valid) -> UserError:
    hint = difflib.get_close_matches(key, valid, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return UserError(f"unknown key {where}{did_you_mean}; valid keys: {', '.join(valid)}")


def _apply(cfg: RunConfig, section: str, key: str, value, origin: str, from_text: bool):
    if section not in SECTIONS:
        raise _unknown_key(f"[{section}] in {origin}", section, list(SECTIONS))
    sec = getattr(cfg, section)
    ftypes = _field_types(type(sec))
    if key not in ftypes:
        raise _unknown_key(f"{section}.{key} in {origin}", key, [f"{section}.{k}" for k in ftypes])
    where = f"{section}.{key}"
    parsed = _parse_override_value(where, ftypes[key], value) if from_text else _coerce(where, ftypes[key], value)
    setattr(sec, key, parsed)


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then the TOML file, then overrides of the form `section.key=value` (leading `--` optional)."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"config file {path} not found; pass the path of a run config such as configs/shakespeare-char.toml"
            )
        try:
            doc = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{path}: not valid TOML ({e}); fix the file") from None
        for section, table in doc.items():
            if not isinstance(table, dict):
                raise UserError(
                    f"{path}: top-level key {section!r} must be a [section]; valid sections: {', '.join(SECTIONS)}"
                )
            for key, value in table.items():
                _apply(cfg, section, key, value, str(path), from_text=False)
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text or "." not in text.split("=", 1)[0]:
            raise UserError(f"override {item!r} must look like --section.key=value, e.g. --train.lr=3e-4")
        dotted, value = text.split("=", 1)
        section, key = dotted.split(".", 1)
        _apply(cfg, section, key, value, "the command line", from_text=True)
    validate(cfg)
    return cfg


# (section, key) -> the values a Literal[...] field accepts, read from its annotation.
CHOICES = {
    (section, key): typing.get_args(tp)
    for section, cls in SECTIONS.items()
    for key, tp in _field_types(cls).items()
    if typing.get_origin(tp) is Literal
}
POSITIVE = [("train", k) for k in ("max_steps", "micro_batch_size", "grad_accum", "eval_iters", "log_interval")]
NON_NEGATIVE = [
    ("train", k)
    for k in (
        "global_batch_size",
        "seq_len",
        "warmup_steps",
        "lr_decay_steps",
        "weight_decay",
        "grad_clip",
        "eval_interval",
        "save_interval",
        "early_stop_patience",
        "min_lr",
        "profile_steps",
        "sample_tokens",
    )
]


def validate(cfg: RunConfig) -> None:
    """Value checks that need no data or hardware; every problem found is reported in one message."""
    problems = []
    for (sec, key), choices in CHOICES.items():
        value = getattr(getattr(cfg, sec), key)
        if value not in choices:
            problems.append(f"{sec}.{key} = {value!r} is not one of {', '.join(choices)}")
    if cfg.train.compile == "blocks" and cfg.deepspeed.zero_stage == 3:
        problems.append(
            'train.compile = "blocks" does not work with ZeRO-3 (compiled blocks race with its backward on GPUs '
            'and train on wrong gradients; docs/performance.md); use train.compile = "auto" or "none" at stage 3'
        )
    for key in ("fused_gelu", "tuned_matmuls"):
        if getattr(cfg.train, key) != "on":
            continue
        if cfg.deepspeed.zero_stage == 3 and not cfg.deepspeed.zero3_gather_per_block:
            problems.append(
                f'train.{key} = "on" at ZeRO-3 needs deepspeed.zero3_gather_per_block = true (the block reads '
                f'its layers\' weights, which are then gathered with the block); set it, or train.{key} = "auto"'
            )
        if cfg.model.hf:
            problems.append(
                f'train.{key} = "on" applies to zerotrain\'s GPT; a Hugging Face model (model.hf) runs its own '
                'layers: use "auto" or "off"'
            )
    if cfg.train.flash_attention_3 == "on" and cfg.model.hf:
        problems.append(
            'train.flash_attention_3 = "on" applies to zerotrain\'s GPT; a Hugging Face model (model.hf) runs its '
            'own attention: use "auto" or "off"'
        )
    if cfg.train.flash_attention_3 == "on" and cfg.model.dropout:
        problems.append(
            'train.flash_attention_3 = "on" runs without attention dropout (FlashAttention-3 has none): set '
            'model.dropout = 0, or train.flash_attention_3 = "auto" (PyTorch\'s attention where there is dropout)'
        )
    for sec, key in POSITIVE:
        if getattr(getattr(cfg, sec), key) <= 0:
            problems.append(f"{sec}.{key} must be > 0")
    for sec, key in NON_NEGATIVE:
        if getattr(getattr(cfg, sec), key) < 0:
            problems.append(f"{sec}.{key} must be >= 0")
    if cfg.run.stall_timeout < 0:
        problems.append("run.stall_timeout must be >= 0 (0 turns the watchdog off)")
    for sec in ("run", "train", "model", "deepspeed"):
        for f in dataclasses.fields(getattr(cfg, sec)):
            value = getattr(getattr(cfg, sec), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{sec}.{f.name} = {value} is not a finite number; give a number")
    t, ds, d, m = cfg.train, cfg.deepspeed, cfg.data, cfg.model
    if t.lr <= 0:
        problems.append("train.lr must be > 0")
    if t.min_lr > t.lr:
        problems.append(f"train.min_lr {t.min_lr} is above train.lr {t.lr}; lower min_lr")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        problems.append("train.beta1 and train.beta2 must be in [0, 1)")
    if t.keep_last < 1:
        problems.append("train.keep_last must be >= 1")
    if not 0 <= m.dropout < 1:
        problems.append("model.dropout must be in [0, 1)")
    shape_keys = [
        f"model.{k}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size") if getattr(m, k) is not None
    ]
    if (m.hf or m.init_from_hf) and shape_keys:
        problems.append(
            f"{', '.join(shape_keys)} cannot be set with model.hf / model.init_from_hf: the Hugging Face model's "
            "config.json gives the shape; remove them"
        )
    if m.hf and m.init_from_hf:
        problems.append(
            "model.hf and model.init_from_hf exclude each other: fine-tune the HF model (hf) or start zerotrain's GPT-2 from it (init_from_hf)"
        )
    if (m.hf or m.init_from_hf) and cfg.run.init_from:
        problems.append("run.init_from and model.hf / model.init_from_hf both name starting weights; keep one")
    if ds.zero_stage not in (0, 1, 2, 3):
        problems.append(f"deepspeed.zero_stage = {ds.zero_stage} must be 0, 1, 2 or 3")
    if ds.offload_optimizer != "none" and ds.zero_stage == 0:
        problems.append(
            'deepspeed.offload_optimizer needs zero_stage 1, 2 or 3; raise zero_stage or set offload_optimizer = "none"'
        )
    if ds.offload_params != "none" and ds.zero_stage != 3:
        problems.append('deepspeed.offload_params needs zero_stage = 3; set zero_stage = 3 or offload_params = "none"')
    if ds.grad_accum_dtype == "fp32" and ds.dtype in ("bf16", "fp16", "auto"):
        if ds.dtype == "fp16":
            problems.append(
                'deepspeed.grad_accum_dtype = "fp32" applies to bf16 training; with dtype = "fp16" set '
                'grad_accum_dtype = "auto", or train in bf16'
            )
        elif ds.zero_stage == 0:
            problems.append(
                'deepspeed.grad_accum_dtype = "fp32" needs zero_stage 1, 2 or 3 (without ZeRO DeepSpeed refuses '
                'the mix); raise zero_stage or set grad_accum_dtype = "auto"'
            )
        elif ds.offload_optimizer != "none":
            problems.append(
                'deepspeed.grad_accum_dtype = "fp32" is not supported with an offloaded optimizer (DeepSpeed\'s '
                'offload path sums gradients in the training dtype); set offload_optimizer = "none" or grad_accum_dtype = "auto"'
            )
    if ds.master_weights == "bf16":
        if ds.dtype in ("fp16", "fp32"):
            problems.append(
                f'deepspeed.master_weights = "bf16" needs bf16 training, not dtype = "{ds.dtype}"; set dtype = "bf16" '
                'or master_weights = "fp32"'
            )
        if ds.zero_stage == 0:
            problems.append(
                'deepspeed.master_weights = "bf16" needs zero_stage 1, 2 or 3 (DeepSpeed keeps bf16 master weights in '
                'its ZeRO optimizers only); raise zero_stage or set master_weights = "fp32"'
            )
        if ds.offload_optimizer != "none":
            problems.append(
                'deepspeed.master_weights = "bf16" keeps the optimizer on the GPU (zerotrain does not build '
                'DeepSpeedCPUAdam with bf16 moments); set offload_optimizer = "none" or master_weights = "fp32"'
            )
        if ds.grad_accum_dtype == "fp32":
            problems.append(
                'deepspeed.master_weights = "bf16" keeps gradient partitions in bf16, grad_accum_dtype = "fp32" in '
                'fp32: set one of them back (master_weights = "fp32" or grad_accum_dtype = "auto")'
            )
    if not 0 < ds.offload_optimizer_ratio <= 1:
        problems.append(
            f"deepspeed.offload_optimizer_ratio = {ds.offload_optimizer_ratio} must be in (0, 1]: the fraction of the "
            "optimizer offloaded to the CPU (1: all of it)"
        )
    elif ds.offload_optimizer_ratio < 1 and ds.offload_optimizer == "auto":
        problems.append(
            'deepspeed.offload_optimizer = "auto" chooses the ratio itself; remove offload_optimizer_ratio or set '
            'offload_optimizer = "cpu"'
        )
    elif ds.offload_optimizer_ratio < 1 and (ds.zero_stage != 3 or ds.offload_optimizer != "cpu"):
        problems.append(
            "deepspeed.offload_optimizer_ratio below 1 (partial offload) needs zero_stage = 3 and "
            'offload_optimizer = "cpu" (DeepSpeed supports it nowhere else); set both, or offload_optimizer_ratio = 1'
        )
    if ds.offload_optimizer == "auto" and ds.offload_params != "none":
        problems.append(
            'deepspeed.offload_optimizer = "auto" chooses offload_params too; set offload_params = "none" (or choose '
            "offload_optimizer yourself)"
        )
    if "nvme" in (ds.offload_optimizer, ds.offload_params) and not ds.nvme_path:
        problems.append("nvme offload needs deepspeed.nvme_path (a directory on a fast local disk)")
    if d.dir and d.dirs:
        problems.append("set either data.dir or data.dirs, not both")
    if not d.dir and not d.dirs:
        problems.append("no training data: set data.dir to a directory made by `zerotrain data prepare`")
    if d.weights and len(d.weights) != len(d.dirs):
        problems.append(
            f"data.weights has {len(d.weights)} entries for {len(d.dirs)} data.dirs; give one weight per dir"
        )
    if any(w <= 0 for w in d.weights):
        problems.append("data.weights must all be > 0")
    if cfg.run.resume and cfg.run.init_from:
        problems.append("set run.resume (continue a run) or run.init_from (new run from its weights), not both")
    if problems:
        raise UserError("; ".join(problems))


def to_dict(cfg: RunConfig) -> dict:
    """Nested dict without None values (TOML has no null), as written to the run's config.toml."""
    return {
        name: {k: v for k, v in dataclasses.asdict(getattr(cfg, name)).items() if v is not None} for name in SECTIONS
    }


def from_dict(doc: dict) -> RunConfig:
    cfg = RunConfig()
    for section, table in doc.items():
        for key, value in table.items():
            _apply(cfg, section, key, value, "a saved config", from_text=False)
    return cfg


def dumps_toml(cfg: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def field_docs(section_cls) -> dict[str, str]:
    """Each field's docstring: the string literal under it in the class body. Python keeps no attribute
    docstrings at run time, so they are read from the source."""
    class_def = ast.parse(textwrap.dedent(inspect.getsource(section_cls))).body[0]
    assert isinstance(class_def, ast.ClassDef)  # getsource of a class is its class statement (decorators included)
    body = class_def.body
    return {
        node.target.id: inspect.cleandoc(doc.value.value)
        for node, doc in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def type_name(tp) -> str:
    """A field's type as TOML values spell it: `"auto" | "on" | "off"`, `int | none`, `list[str]`."""
    if typing.get_origin(tp) is Literal:
        return " | ".join(json.dumps(v) for v in typing.get_args(tp))
    if isinstance(tp, types.UnionType):
        return " | ".join(type_name(t) for t in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return "none" if tp is type(None) else tp.__name__


def key_table() -> list[tuple[str, str, object, str]]:
    """(section.key, type, default, docstring) of every run-config key, in the order of the dataclasses above."""
    rows = []
    for section, cls in SECTIONS.items():
        docs, hints = field_docs(cls), _field_types(cls)
        for f in dataclasses.fields(cls):
            # a field has a default or a default_factory; callable() tells them apart where `is MISSING` cannot
            # narrow the type
            default = f.default_factory() if callable(f.default_factory) else f.default
            rows.append((f"{section}.{f.name}", type_name(hints[f.name]), default, docs.get(f.name, "")))
    return rows
