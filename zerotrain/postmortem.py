"""`zerotrain doctor explain`: the post-mortem of a failed run.

`explain()` reads a failed run's logs, metrics and configs; recognises CUDA OOM, host OOM, NCCL watchdog
timeouts, fp16 loss-scale collapse, op build failures and rank crashes; for a CUDA OOM the memory planner
names the largest term and the cheapest change that fits, with its predicted memory.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from zerotrain import UserError

GiB = 2**30


@dataclass
class Diagnosis:
    kind: str  # cuda_oom, host_oom, nccl_timeout, loss_scale, op_build, rank_crash, unknown
    summary: str
    evidence: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "summary": self.summary,
            "evidence": self.evidence,
            "fix": self.fix,
            "data": self.data,
        }


@dataclass
class RunEvidence:
    logs: dict[str, str]  # path -> text
    config: object = None  # runconfig.RunConfig from config.toml
    ds_config: dict | None = None
    metrics: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.logs.values())


LOG_PATTERNS = ("*.log", "*.out", "*.err", "*.txt", "logs/*")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise UserError(f"{path} not found; pass the log file of the failed run or its run directory") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; pass the log file or the run directory itself") from None
    except OSError as e:
        raise UserError(
            f"cannot read {path} ({e.strerror or e}); check its permissions, or copy the log somewhere readable"
        ) from None


def read_evidence(path: str | Path) -> RunEvidence:
    """A log file (and the run directory around it, when there is one), or a run directory: its logs,
    metrics.jsonl, config.toml and ds_config.json."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} not found; pass the log file of the failed run or its run directory")
    run_dir = path if path.is_dir() else path.parent
    if path.is_dir():
        try:
            files = sorted({p for pattern in LOG_PATTERNS for p in path.glob(pattern) if p.is_file()})
        except OSError as e:
            raise UserError(f"cannot list {path} ({e.strerror or e}); check its permissions") from None
        logs = {str(p): _read_text(p) for p in files}
    else:
        logs = {str(path): _read_text(path)}
    ev = RunEvidence(logs)
    if (run_dir / "config.toml").is_file():
        from zerotrain.runconfig import load_run_config

        try:
            ev.config = load_run_config(run_dir / "config.toml")
        except UserError:
            ev.config = None  # a config from another zerotrain version: the logs still speak
    if (run_dir / "ds_config.json").is_file():
        try:
            ev.ds_config = json.loads(_read_text(run_dir / "ds_config.json"))
        except json.JSONDecodeError:
            ev.ds_config = None
    if (run_dir / "metrics.jsonl").is_file():
        for line in _read_text(run_dir / "metrics.jsonl").splitlines():
            try:
                ev.metrics.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
    if path.is_dir() and not logs and not ev.metrics:
        raise UserError(
            f"{path} holds no logs ({', '.join(LOG_PATTERNS)}) or metrics.jsonl; pass the log file itself "
            f"(save one with `zerotrain train ... 2>&1 | tee {path}/train.log`)"
        )
    return ev


_UNIT = {"B": 1, "bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def _bytes(value: str, unit: str) -> int:
    return int(float(value) * _UNIT[unit])


def _rank_of(line: str) -> int | None:
    m = re.search(r"\[(?:rank|Rank )(\d+)\]|\bRank (\d+)\]", line)
    return int(m.group(1) or m.group(2)) if m else None


def _last_exception(lines: list[str]) -> str | None:
    for line in lines:
        m = re.search(r"(?:\[rank\d+\]:\s*)?((?:[\w.]+)?(?:Error|Exception|Interrupt)\b:?.*)$", line)
        if m and not line.lstrip().startswith(("File ", "raise ")) and "Traceback" not in line:
            return m.group(1).strip()
    return None


def _phase_before(lines: list[str], index: int) -> str | None:
    """Which part of the step a traceback ending at `index` was in."""
    window = "\n".join(lines[max(0, index - 60) : index])
    for needle, phase in (
        ("initialize(", "init"),
        (".backward(", "backward"),
        ("in backward", "backward"),
        (".step(", "optimizer step"),
        ("in step", "optimizer step"),
        ("forward", "forward"),
    ):
        if needle in window:
            return phase
    return None


def planner_inputs(ev: RunEvidence, model_spec: str | None = None):
    """(ModelShape, RunShape) of the run from its config.toml and ds_config.json (or --model), None when the
    model cannot be known."""
    import dataclasses

    from zerotrain import memory

    run = memory.RunShape(micro_batch=8)
    model = memory.resolve_model(model_spec) if model_spec else None
    cfg = ev.config
    if cfg is not None:
        m, t, ds = cfg.model, cfg.train, cfg.deepspeed
        vocab = m.vocab_size
        meta = Path(cfg.data.dir or (cfg.data.dirs or [""])[0]) / "meta.json"
        if vocab is None and meta.is_file():
            vocab = json.loads(meta.read_text()).get("vocab_size")
        if model is None:
            from zerotrain.planning import model_shape

            model = model_shape(m, vocab)
        run = dataclasses.replace(
            run,
            micro_batch=t.micro_batch_size,
            grad_accum=t.grad_accum,
            zero_stage=ds.zero_stage,
            offload_optimizer="none" if ds.offload_optimizer == "auto" else ds.offload_optimizer,  # the ds_config says
            offload_ratio=ds.offload_optimizer_ratio,
            offload_params=ds.offload_params,
            activation_checkpointing=ds.activation_checkpointing,
            dtype="bf16" if ds.dtype == "auto" else ds.dtype,
            seq_len=t.seq_len or model.max_positions,
        )
    if ev.ds_config:
        try:
            run = memory.run_from_ds_config(ev.ds_config, run)
        except UserError:
            pass
        tb = ev.ds_config.get("train_batch_size")
        if isinstance(tb, int) and run.micro_batch * run.grad_accum and tb % (run.micro_batch * run.grad_accum) == 0:
            run = dataclasses.replace(run, gpus_per_node=max(1, tb // (run.micro_batch * run.grad_accum)))
        if ev.ds_config.get("activation_checkpointing"):
            run = dataclasses.replace(run, activation_checkpointing=True)
    if model is None:
        return None
    if cfg is None and not model_spec:
        return None
    return model, run


def _oom_advice(diag: Diagnosis, ev: RunEvidence, total: int | None, model_spec: str | None) -> None:
    from zerotrain import memory

    inputs = planner_inputs(ev, model_spec)
    if inputs is None:
        diag.fix.append(
            "lower the micro-batch (raise accumulation to keep the global batch), turn on activation checkpointing, "
            "raise the ZeRO stage, or offload the optimizer; pass --model (e.g. gpt2-xl, hf:DIR) or explain the run "
            "directory (with its config.toml) to have the planner rank these with predicted memory"
        )
        return
    model, run = inputs
    base = memory.plan(model, run)
    terms = {k: base.per_gpu[k] for k in ("params", "grads", "optimizer", "activations", "buffers")}
    largest = max(terms, key=terms.get)
    gib = lambda x: f"{x / GiB:.1f} GiB"
    diag.data["plan"] = {
        "run": run.describe(),
        "peak_phase": base.peak_phase,
        "terms": terms,
        "largest": largest,
        "needed_bytes": base.gpu_bytes_needed,
    }
    diag.evidence.append(
        f"planner, {model.name} ({model.n_params / 1e6:,.0f}M params), {run.describe()}: peak in {base.peak_phase}, "
        + ", ".join(f"{k} {gib(v)}" for k, v in terms.items())
        + f"; needs {gib(base.gpu_bytes_needed)}"
    )
    diag.evidence.append(
        f"largest term: {largest} ({gib(terms[largest])}, {terms[largest] / max(1, sum(terms.values())):.0%} of the peak)"
    )
    if total is None:
        diag.fix.append(
            "the log does not give the GPU's capacity; run `zerotrain plan --config RUN/config.toml --gpu-memory GPU` to compare"
        )
        return
    if base.fits(total):
        diag.evidence.append(
            f"the planner predicts {gib(base.gpu_bytes_needed)} of {gib(total)}: this configuration should fit"
        )
        diag.fix.append(
            "something outside the plan took the memory: another process on the GPU, fragmentation "
            "(set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), or a larger eval/sequence batch"
        )
    for label, changed in memory.changes_cheapest_first(run):
        p = memory.plan(model, changed)
        if p.fits(total, 0.10):
            diag.fix.append(
                f"cheapest change that fits: {label} → predicted {gib(p.gpu_bytes_needed)} of {gib(total)} "
                f"(was {gib(base.gpu_bytes_needed)})"
            )
            diag.data["cheapest"] = {"change": label, "needed_bytes": p.gpu_bytes_needed, "gpu_bytes": total}
            break
    else:
        diag.fix.append(f"no single change fits in {gib(total)} with 10% headroom")
    # The batch left as it is: the fastest stage and offload layout that fits (what `zerotrain plan` recommends).
    best = memory.recommend(model, run, total, [run.micro_batch])
    if best is not None:
        r = best.run
        diag.fix.append(
            f"keeping micro-batch {r.micro_batch}, the fastest layout that fits: ZeRO-{r.zero_stage}"
            + (f", offload optimizer {r.offload_optimizer}" if r.offload_optimizer != "none" else "")
            + (f", offload params {r.offload_params}" if r.offload_params != "none" else "")
            + (", activation checkpointing" if r.activation_checkpointing and not run.activation_checkpointing else "")
            + f" → {gib(best.gpu_bytes_needed)}"
        )


def _explain_cuda_oom(ev: RunEvidence, lines: list[str], model_spec: str | None) -> Diagnosis | None:
    hits = [i for i, line in enumerate(lines) if "CUDA out of memory" in line]
    if not hits:
        return None
    line = lines[hits[0]]
    text = " ".join(lines[hits[0] : hits[0] + 3])
    tried = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB|KiB|B)", text)
    total = re.search(r"total capacity of ([\d.]+) (GiB|MiB)", text) or re.search(
        r"([\d.]+) (GiB|MiB) total capacity", text
    )
    free = re.search(r"of which ([\d.]+) (GiB|MiB|KiB|B) is free", text) or re.search(
        r"([\d.]+) (GiB|MiB|KiB|B) free", text
    )
    by_torch = re.search(r"([\d.]+) (GiB|MiB) is allocated by PyTorch", text) or re.search(
        r"([\d.]+) (GiB|MiB) already allocated", text
    )
    unalloc = re.search(r"([\d.]+) (GiB|MiB|KiB|B) is reserved by PyTorch but unallocated", text)
    gpu = re.search(r"GPU (\d+)", text)
    ranks = sorted({r for i in hits if (r := _rank_of(lines[i])) is not None})
    total_bytes = _bytes(*total.groups()) if total else None
    phase = _phase_before(lines, hits[0])
    d = Diagnosis(
        "cuda_oom",
        f"CUDA out of memory{f' on rank(s) {ranks}' if ranks else ''}"
        + (f" in {phase}" if phase else "")
        + (f": tried to allocate {tried.group(1)} {tried.group(2)}" if tried else "")
        + (f" on GPU {gpu.group(1)} of {total.group(1)} {total.group(2)}" if gpu and total else ""),
    )
    d.evidence.append(line.strip()[:400])
    d.data.update(
        tried_bytes=_bytes(*tried.groups()) if tried else None,
        gpu_bytes=total_bytes,
        free_bytes=_bytes(*free.groups()) if free else None,
        ranks=ranks,
        phase=phase,
        allocated_bytes=_bytes(*by_torch.groups()) if by_torch else None,
    )
    if unalloc and total_bytes and _bytes(*unalloc.groups()) > 0.05 * total_bytes:
        d.fix.append(
            f"{unalloc.group(1)} {unalloc.group(2)} was reserved but unallocated (fragmentation): "
            "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
        )
    _oom_advice(d, ev, total_bytes, model_spec)
    return d


def _explain_host_oom(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    patterns = (
        r"Out of memory: Killed process (\d+)",
        r"oom-kill",
        r"invoked oom-killer",
        r"exits with return code = -9",
        r"exitcode\s*:\s*-9",
        r"Signal 9 \(SIGKILL\)",
        r"^\s*Killed\s*$",
    )
    hits = [line.strip() for line in lines if any(re.search(p, line) for p in patterns)]
    if not hits:
        return None
    d = Diagnosis(
        "host_oom", "a process was killed with SIGKILL (-9): the Linux OOM killer ran out of host RAM", hits[:3]
    )
    inputs = planner_inputs(ev)
    if inputs:
        from zerotrain import memory

        p = memory.plan(*inputs)
        d.evidence.append(
            f"planner: {p.host_ram_per_node / GiB:.1f} GiB host RAM per node for {p.run.describe()} "
            f"(ranks, pinned offload buffers, loading a checkpoint shard)"
        )
        d.data["host_ram_per_node"] = p.host_ram_per_node
    d.fix += [
        (
            "check with `dmesg -T | grep -i oom` on the node; give the job more host RAM (SLURM --mem), run fewer ranks per node, "
            "or offload less (CPU offload keeps fp32 master weights and Adam states in pinned host memory)"
        ),
        "if it died while loading a checkpoint: every rank holds its shard in host RAM at once; resume on more nodes or with more RAM",
    ]
    return d


def _explain_nccl_timeout(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    pat = re.compile(
        r"Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(\d+), OpType=(\w+)"
        r"(?:, NumelIn=(\d+), NumelOut=(\d+))?.*?Timeout\(ms\)=(\d+)\)"
    )
    timed_out = {}
    for line in lines:
        m = pat.search(line)
        if m:
            timed_out.setdefault(_rank_of(line), (int(m.group(1)), m.group(2), int(m.group(5))))
    if not timed_out and not any("NCCL timeout" in line or "ProcessGroupNCCL's watchdog" in line for line in lines):
        return None
    ranks_seen = {r for line in lines if (r := _rank_of(line)) is not None}
    world = None
    if ev.ds_config and isinstance(ev.ds_config.get("train_batch_size"), int):
        per = (ev.ds_config.get("train_micro_batch_size_per_gpu") or 1) * (
            ev.ds_config.get("gradient_accumulation_steps") or 1
        )
        world = ev.ds_config["train_batch_size"] // per if isinstance(per, int) and per else None
    everyone = set(range(world)) if world else ranks_seen
    reported = {r for r in timed_out if r is not None}
    silent = sorted(everyone - reported)
    first = min(timed_out.values()) if timed_out else None
    d = Diagnosis(
        "nccl_timeout",
        "NCCL collective timed out"
        + (
            f": {first[1]} #{first[0]} did not finish within {first[2] / 1000:g} s on rank(s) {sorted(reported) or '?'}"
            if first
            else ""
        ),
    )
    d.evidence += [
        f"rank {r}: {op} SeqNum {seq}, timeout {ms / 1000:g} s"
        for r, (seq, op, ms) in sorted(timed_out.items(), key=lambda x: (x[0] is None, x[0] or 0))
    ]
    seqs = {seq for seq, _, _ in timed_out.values()}
    if silent and reported:
        d.evidence.append(
            f"rank(s) {', '.join(map(str, silent))} reported no timeout: they probably never reached that collective"
        )
        d.fix.append(
            f"look at rank(s) {', '.join(map(str, silent))} first (their traceback or last log line): a crash, a hang in "
            f"data loading or I/O, or a code path that skips a collective on some ranks"
        )
    elif len(seqs) > 1:
        behind = sorted(r for r, (seq, _, _) in timed_out.items() if seq == min(seqs) and r is not None)
        d.fix.append(
            f"rank(s) {behind} were at an earlier collective (SeqNum {min(seqs)}) than the others: they fell behind; "
            "look at what they do differently"
        )
    d.fix.append(
        "run `zerotrain doctor comm --timeout 60` (or under the same launcher) to test every rank and link; "
        "rerun with NCCL_DEBUG=INFO TORCH_NCCL_TRACE_BUFFER_SIZE=2000 to see where each rank stopped"
    )
    d.data.update(timed_out={str(k): v for k, v in timed_out.items()}, silent=silent)
    return d


def _explain_loss_scale(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    hits = [line.strip() for line in lines if "loss scale already at minimum" in line]
    if not hits:
        return None
    d = Diagnosis(
        "loss_scale", "fp16 dynamic loss scaling hit its minimum: gradients overflowed step after step", hits[:1]
    )
    scales = [(r["step"], r["loss_scale"]) for r in ev.metrics if r.get("loss_scale") is not None]
    if scales:
        d.evidence.append(
            f"loss scale {scales[0][1]:g} at step {scales[0][0]} → {scales[-1][1]:g} at step {scales[-1][0]}"
        )
    skipped = [r["skipped_steps"] for r in ev.metrics if r.get("skipped_steps") is not None]
    if skipped:
        d.evidence.append(f"{skipped[-1]} optimizer steps skipped for overflow")
    losses = [(r["step"], r["loss"]) for r in ev.metrics if "loss" in r]
    if losses:
        d.evidence.append(f"last logged loss {losses[-1][1]} at step {losses[-1][0]}")
    d.fix += [
        'train in bf16 where the GPU has it (A100, H100, L40S, RTX 30xx/40xx): deepspeed.dtype = "bf16" needs no loss scaling',
        "in fp16: lower train.lr, raise train.warmup_steps, keep train.grad_clip = 1.0; continue from the last good checkpoint",
    ]
    return d


def _explain_op_build(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    ext = next((m.group(1) for line in lines if (m := re.search(r"Error building extension '(\w+)'", line))), None)
    checks = [
        (r"Ninja is required to load C\+\+ extensions", "ninja is missing", "pip install ninja"),
        (
            r"nvcc fatal\s*:\s*(.*)",
            "nvcc failed",
            (
                "make CUDA_HOME point to a toolkit matching torch's CUDA version (one new "
                "enough for this GPU), and set TORCH_CUDA_ARCH_LIST (e.g. 9.0 for H100/H200)"
            ),
        ),
        (
            r"fatal error: ([\w/.]+): No such file or directory",
            "a header is missing",
            "install the package that provides it (Python.h: python3-dev; cuda_runtime.h: the CUDA toolkit; libaio.h: libaio-dev)",
        ),
        (
            r"detected CUDA version \(([\d.]+)\) mismatches the version that was used to compile\s+PyTorch \(([\d.]+)\)",
            "the CUDA toolkit and torch's CUDA differ",
            "install the toolkit matching torch.version.cuda, or the torch build for your toolkit",
        ),
        (
            r"(?:c\+\+|g\+\+|gcc): (?:error|fatal error)",
            "the C++ compiler failed",
            "check the compiler version DeepSpeed supports",
        ),
    ]
    found = []
    for pattern, what, fix in checks:
        for line in lines:
            if re.search(pattern, line):
                found.append((line.strip(), what, fix))
                break
    if ext is None and not found and not any("ninja: build stopped" in line for line in lines):
        return None
    d = Diagnosis(
        "op_build",
        f"DeepSpeed could not JIT-build {'the ' + ext + ' op' if ext else 'an op'}"
        + (f": {found[0][1]}" if found else ""),
        [f[0][:300] for f in found],
    )
    d.fix += [f[2] for f in found]
    d.fix.append(
        f"`zerotrain doctor` lists which ops can build here; or pre-build at install: "
        f"DS_BUILD_{(ext or 'OPS').upper()}=1 pip install --no-build-isolation deepspeed"
    )
    d.data["extension"] = ext
    return d


def _explain_rank_crash(ev: RunEvidence, lines: list[str]) -> Diagnosis | None:
    codes = [
        (m.group(1), int(m.group(2)))
        for line in lines
        if (m := re.search(r"(.*?)exits with return code = (-?\d+)", line)) and int(m.group(2)) != 0
    ]
    failures = [
        (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n?\s*exitcode\s*:\s*(-?\d+)", "\n".join(lines))
    ]
    errors = [
        (i, line)
        for i, line in enumerate(lines)
        if re.match(r"\s*(?:\[rank\d+\]:\s*)?[\w.]*(?:Error|Exception)\b.*:", line)
    ]
    if not codes and not failures:
        return None
    d = Diagnosis("rank_crash", "a rank exited with an error and the launcher stopped the others")
    if failures:
        rank, code = failures[0]
        d.summary = f"rank {rank} failed first with exit code {code}"
        d.data.update(rank=rank, exit_code=code)
    elif codes:
        d.data["exit_code"] = codes[0][1]
        d.summary += f" (exit code {codes[0][1]})"
    if errors:
        line = errors[0][1]
        rank = _rank_of(line)
        d.evidence.append(f"first error{f' (rank {rank})' if rank is not None else ''}: {line.strip()[:300]}")
        if rank is not None and "rank" not in d.data:
            d.data["rank"] = rank
            d.summary = f"rank {rank} crashed first; the launcher stopped the others"
    d.evidence += [f"{where.strip()} exits with return code = {code}" for where, code in codes[:2]]
    if d.data.get("exit_code") == -9:
        d.fix.append("exit code -9 is SIGKILL: usually the host's OOM killer (see host_oom)")
    d.fix.append("read the first traceback above (the first rank to fail); the other ranks' errors are consequences")
    return d


EXPLAINERS = (
    _explain_cuda_oom,
    _explain_op_build,
    _explain_loss_scale,
    _explain_nccl_timeout,
    _explain_host_oom,
    _explain_rank_crash,
)


def explain(path: str | Path, model_spec: str | None = None) -> dict:
    """Every failure the logs show, the most specific first; {"sources", "diagnoses"}."""
    ev = read_evidence(path)
    lines = ev.text.splitlines()
    diagnoses = []
    for fn in EXPLAINERS:
        d = fn(ev, lines, model_spec) if fn is _explain_cuda_oom else fn(ev, lines)
        if d:
            diagnoses.append(d)
    if len(diagnoses) > 1:  # the launcher's "exits with return code" follows from the cause already named
        diagnoses = [d for d in diagnoses if d.kind != "rank_crash"]
    if not diagnoses:
        last = _last_exception(reversed(lines))
        diagnoses.append(
            Diagnosis(
                "unknown",
                "no known failure pattern (CUDA/host OOM, NCCL timeout, loss scale, op build, rank crash)",
                [f"last error line: {last}"] if last else [],
                ["pass the complete log of every rank (`2>&1 | tee train.log`)"],
            )
        )
    sources = list(ev.logs) + [
        name
        for name, present in (
            ("config.toml", ev.config is not None),
            ("ds_config.json", ev.ds_config is not None),
            ("metrics.jsonl", bool(ev.metrics)),
        )
        if present
    ]
    return {"sources": sources, "diagnoses": [d.to_dict() for d in diagnoses]}


def format_explain(report: dict) -> str:
    lines = [f"read: {', '.join(report['sources'])}"]
    for d in report["diagnoses"]:
        lines.append(f"\n[{d['kind']}] {d['summary']}")
        lines += [f"  · {e}" for e in d["evidence"]]
        lines += [f"  → {f}" for f in d["fix"]]
    return "\n".join(lines)
