"""Checkpoints: DeepSpeed engine state written under a temporary tag and published atomically.

    out_dir/checkpoints/
      step_400/        DeepSpeed's files (model states, ZeRO optimizer shards) + zerotrain.json
      latest           names the newest complete tag (DeepSpeed's convention: load_checkpoint and
                       zero_to_fp32 read it)
      best -> step_400 symlink to the checkpoint with the lowest val loss
      final -> step_500 symlink to the checkpoint written when training ended
      step_400.universal/  its DeepSpeed universal copy, made when it is resumed at another world size or
                       ZeRO stage (zerotrain/universal.py); pruned with it

A checkpoint is written into `.tmp_step_N` (emptied first, so files of an earlier attempt never mix in),
every rank finishes, rank 0 adds zerotrain.json, renames the directory to `step_N` and only then rewrites
`latest` with an atomic rename. A crash at any point leaves `latest` on the previous complete checkpoint.
Checkpoints must live on a filesystem every node sees (as DeepSpeed's own default assumes).
"""

import contextlib
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

from zerotrain import UserError, faults, partial_offload

MANIFEST = "zerotrain.json"
FORMAT = "zerotrain-checkpoint"
VERSION = 1
STEP_TAG = re.compile(r"^step_(\d+)$")
POINTERS = ("best", "final")


def tag_for(step: int) -> str:
    return f"step_{step}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path, trash: Path) -> None:
    """Put the finished folder `tmp` at `final` by rename. A folder already at `final` is first renamed to `trash`
    and removed after, so `final` is never a half-written folder; the rename is made durable."""
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def _point(ckpt_dir: Path, name: str, tag: str) -> None:
    """Atomically make ckpt_dir/name a relative symlink to tag."""
    tmp = ckpt_dir / f".{name}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(tag, target_is_directory=True)
    os.replace(tmp, ckpt_dir / name)


def save(engine, ckpt_dir: Path, state, manifest: dict, d, keep_last: int, pointers: tuple[str, ...] = ()) -> str:
    """Collective: every rank calls it. `state` is the run's TrainState (its state_dict() is DeepSpeed's client
    state); `manifest` is written beside the shards. Written under a temporary tag, published by an atomic
    rename and then `latest`, so a crash mid-save never loses the previous checkpoint. Returns the published tag."""
    from zerotrain.distributed import barrier

    client_state = state.state_dict()  # collective too: every rank's RNG state is gathered
    tag = tag_for(state.step)
    step = state.step
    tmp_tag = f".tmp_{tag}"
    if d.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    barrier(d)
    try:
        with partial_offload.moments_in_saved_state(engine):  # DeepSpeed 0.19.8 would leave the GPU-stepped ones out
            engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state=client_state, save_latest=False)
        faults.point("save", step, d.rank)
        _fsync_tree(ckpt_dir / tmp_tag)  # durable before `latest` can name it, also across a power cut
    except (OSError, RuntimeError) as e:  # torch's writer reports a full disk as a RuntimeError
        if not _write_error(e):
            raise  # a collective that lost a peer: the partial folder stays for the next save to clear
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
        raise save_failed(ckpt_dir, tag, e) from e
    barrier(d)  # every rank's shard is on disk before anything is published
    if d.is_main:
        tmp = ckpt_dir / tmp_tag
        write_atomic(
            tmp / MANIFEST,
            json.dumps(
                manifest
                | {"format": FORMAT, "version": VERSION, "tag": tag, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                indent=1,
            )
            + "\n",
        )
        final = ckpt_dir / tag
        shutil.rmtree(ckpt_dir / f"{tag}.universal", ignore_errors=True)  # made from the checkpoint replaced below
        publish_dir(
            tmp, final, ckpt_dir / f".old_{tag}"
        )  # the same step saved again (e.g. after a resume): swapped whole
        write_atomic(ckpt_dir / "latest", tag)
        for name in pointers:
            _point(ckpt_dir, name, tag)
        prune(ckpt_dir, keep_last)
    barrier(d)
    return tag


def _write_error(e: BaseException | None) -> bool:
    """Whether e (or an exception it was raised from) is a failed write: torch's zip writer reports one as a
    RuntimeError ("iostream error", "unexpected pos"), DeepSpeed as an OSError."""
    while e is not None:
        text = str(e)
        if isinstance(e, OSError) or any(
            s in text for s in ("iostream error", "file write failed", "PytorchStreamWriter", "unexpected pos")
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def save_failed(ckpt_dir: Path, tag: str, e: BaseException) -> UserError:
    """The line for a checkpoint that could not be written: a full disk says so, with what is left."""
    import errno

    latest = read_pointer(ckpt_dir, "latest")
    kept = f"the last published checkpoint ({ckpt_dir / latest}) is intact" if latest else "no checkpoint was published"
    try:
        free = shutil.disk_usage(ckpt_dir).free
    except OSError:
        free = None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if getattr(e, "errno", None) == errno.ENOSPC or (free is not None and free < 64 * 2**20):
        return UserError(
            f"no space left on the device writing checkpoint {tag} to {ckpt_dir} ({free // 2**20 if free is not None else '?'} MiB "
            f"free); {kept}; free space there (train.keep_last keeps fewer) or choose another run.out_dir"
        )
    return UserError(f"writing checkpoint {tag} to {ckpt_dir} failed ({first}); {kept}")


def step_tags(ckpt_dir: Path) -> list[str]:
    """Complete step checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if STEP_TAG.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(tags, key=step_of)


def step_of(tag: str) -> int:
    return int(STEP_TAG.match(tag).group(1))


def newest(ckpt_dir: Path) -> str | None:
    """The newest complete step checkpoint. Usually what `latest` names; after a crash between publishing a
    checkpoint and rewriting `latest`, the one just published."""
    tags = step_tags(ckpt_dir)
    return tags[-1] if tags else None


def last_finite(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint whose weights were checked finite before it was published (the manifest says
    so); None when there is none."""
    for tag in reversed(step_tags(ckpt_dir)):
        try:
            if json.loads((ckpt_dir / tag / MANIFEST).read_text()).get("weights_finite"):
                return tag
        except (OSError, ValueError):
            continue
    return None


def check_finite(state: dict, where: Path | str) -> None:
    """Refuse weights holding inf or NaN (a checkpoint of a run that diverged): nothing sensible can be made of them."""
    import torch

    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(
            f"{where} holds non-finite weights ({len(bad)} of {len(state)} tensors, e.g. {bad[0]}): it was saved after "
            f"training diverged; use an earlier checkpoint, or retrain with a lower train.lr"
        )


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete step checkpoints beyond the newest keep_last, never one that latest/best/final names."""
    protected = {read_pointer(ckpt_dir, name) for name in ("latest", *POINTERS)}
    for tag in step_tags(ckpt_dir)[:-keep_last]:
        if tag not in protected:
            shutil.rmtree(ckpt_dir / tag)
    kept = set(step_tags(ckpt_dir))
    for copy in [*ckpt_dir.glob("step_*.universal"), *ckpt_dir.glob(".step_*.universal.tmp")]:
        if copy.name.strip(".").removesuffix(".tmp").removesuffix(".universal") not in kept:
            shutil.rmtree(copy, ignore_errors=True)  # universal copies go with their checkpoint
    for stale in [
        *ckpt_dir.glob(".tmp_step_*"),
        *ckpt_dir.glob(".old_step_*"),
    ]:  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)


def read_pointer(ckpt_dir: Path, name: str) -> str | None:
    p = ckpt_dir / name
    if name == "latest":
        return p.read_text().strip() if p.is_file() else None
    return os.readlink(p) if p.is_symlink() else None


def resolve(path: str | Path) -> tuple[Path, str]:
    """A run directory, its checkpoints/ directory or one checkpoint directory -> (checkpoints dir, tag)
    of a complete checkpoint; anything else is a UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"checkpoint path {p} does not exist; pass a run directory, its checkpoints/ directory or a checkpoint such as runs/x/checkpoints/step_100"
        )
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if (p / MANIFEST).is_file():
        return p.parent, p.name
    latest = read_pointer(p, "latest")
    if latest and (p / latest / MANIFEST).is_file():
        return p, latest
    raise UserError(
        f"{path} holds no complete zerotrain checkpoint (no {MANIFEST}; an interrupted save leaves none); "
        f"pass a run directory or a checkpoint directory that training published"
    )


def read_manifest(ckpt_dir: Path, tag: str) -> dict:
    path = ckpt_dir / tag / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path} cannot be read ({e}); the checkpoint is damaged: use another checkpoint of the run"
        ) from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(
            f"{ckpt_dir / tag} was written by an incompatible zerotrain (format {manifest.get('version')}); re-export it with that version"
        )
    return manifest


def missing_files(ckpt_dir: Path, tag: str, manifest: dict) -> list[str]:
    """The DeepSpeed files a complete checkpoint of this stage and world size has and this one lacks (a copy that
    lost a rank's shard, say). Matched by pattern, as DeepSpeed names them: bf16 runs prefix the optimizer shards."""
    folder = ckpt_dir / tag
    stage, world = manifest["zero_stage"], manifest["world_size"]
    wanted = []
    if stage < 3:
        wanted.append(("mp_rank_00_model_states.pt", "mp_rank_00_model_states.pt"))
    for rank in range(world if stage > 0 else 0):
        if stage == 3:
            wanted.append((f"zero_pp_rank_{rank}_mp_rank_*_model_states.pt", f"rank {rank}'s model states"))
        wanted.append((f"*zero_pp_rank_{rank}_mp_rank_*_optim_states.pt", f"rank {rank}'s optimizer shard"))
    return [what for pattern, what in wanted if not any(folder.glob(pattern))]


def check_complete(ckpt_dir: Path, tag: str, manifest: dict) -> None:
    missing = missing_files(ckpt_dir, tag, manifest)
    if missing:
        raise UserError(
            f"checkpoint {ckpt_dir / tag} (ZeRO-{manifest['zero_stage']}, {manifest['world_size']} ranks) is incomplete: "
            f"{', '.join(missing)} missing; copy the whole checkpoint directory, or use another checkpoint"
        )


def info(path: str | Path) -> dict:
    """What `zerotrain checkpoint info` shows, from the manifest and the filesystem only (no torch import)."""
    from zerotrain import universal

    ckpt_dir, tag = resolve(path)
    manifest = read_manifest(ckpt_dir, tag)
    folder = ckpt_dir / tag
    copy = universal.folder_for(ckpt_dir, tag)
    stale = universal.stale_reason(ckpt_dir, tag) if copy.exists() else None
    return {
        "checkpoint": str(folder),
        "step": manifest["step"],
        "tokens_seen": manifest.get("tokens_seen"),
        "zero_stage": manifest["zero_stage"],
        "world_size": manifest["world_size"],
        "dtype": manifest["dtype"],
        "batch": manifest.get("batch"),
        "val_loss": manifest.get("val_loss"),
        "model": manifest["model"],
        "hf": manifest.get("hf"),
        "saved_at": manifest.get("saved_at"),
        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "files": sorted(p.name for p in folder.iterdir()),
        "missing": missing_files(ckpt_dir, tag, manifest),
        "universal": None
        if not copy.exists()
        else {
            "path": str(copy),
            "trusted": stale is None,
            "reason": stale,
            "bytes": sum(p.stat().st_size for p in copy.rglob("*") if p.is_file()),
        },
    }


def save_fp32(path: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """One consolidated fp32 state dict (load_fp32_state_dict) as a safetensors file, written atomically; tied
    tensors are stored under each of their names."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; choose another --out or pass --overwrite")
    ckpt_dir, tag = resolve(path)
    manifest = read_manifest(ckpt_dir, tag)
    state = load_fp32_state_dict(ckpt_dir, tag)
    seen: set[int] = set()
    tensors = {}
    for name, t in state.items():  # safetensors refuses tensors that share memory
        tensors[name] = t.clone().contiguous() if id(t) in seen else t.contiguous()
        seen.add(id(t))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(
            tensors,
            str(tmp),
            metadata={"format": "zerotrain-fp32", "checkpoint": str(ckpt_dir / tag), "step": str(manifest["step"])},
        )
        os.replace(tmp, out)
    except Exception as e:  # safetensors reports a full disk as its own SafetensorError
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"writing {out} failed: {first}; free space there or choose another --out") from None
    return {
        "checkpoint": str(ckpt_dir / tag),
        "step": manifest["step"],
        "out": str(out),
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "bytes": out.stat().st_size,
    }


def _bf16_optimizer_fp32_state_dict(folder: Path) -> dict:
    """ZeRO-1 in bf16 with fp32 gradient sums runs DeepSpeed's BF16_Optimizer, whose shards hold the fp32 master
    partitions laid out as ZeRO-1/2's but without the zero_stage entry zero_to_fp32 looks for: merge them with
    zero_to_fp32's ZeRO-2 merge."""
    import torch
    from deepspeed.utils import zero_to_fp32

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model_states = zero_to_fp32.parse_model_states(zero_to_fp32.get_model_state_files(str(folder)))
        files = zero_to_fp32.get_optim_files(str(folder))
        partitions = [
            torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"][
                "single_partition_of_fp32_groups"
            ]
            for f in files
        ]
        return zero_to_fp32._get_fp32_state_dict_from_zero2_checkpoint(
            len(files), partitions, model_states, exclude_frozen_parameters=False
        )


def load_fp32_state_dict(ckpt_dir: Path, tag: str) -> dict:
    """Full fp32 weights from a checkpoint of any ZeRO stage and world size, on CPU, without DeepSpeed's
    engine. ZeRO 1-3 keep fp32 master partitions in shard files, which DeepSpeed's zero_to_fp32
    consolidates (BF16_Optimizer's shards too, above). At stage 0 the model states file holds the full weights: in fp32 runs they are the
    masters; in bf16/fp16 runs they are 16-bit copies and the masters are the optimizer's fp32_groups,
    matched to names through the parameter groups recorded in the manifest."""
    import zipfile

    import torch

    manifest = read_manifest(ckpt_dir, tag)
    folder = ckpt_dir / tag
    check_complete(ckpt_dir, tag, manifest)
    for f in folder.glob("*.pt"):  # torch.save writes zip archives: a cut one lacks its central directory
        if not zipfile.is_zipfile(f):
            raise UserError(
                f"{f} is damaged (truncated or overwritten); copy the checkpoint again, or use another checkpoint"
            )
    # DeepSpeed prefixes every bf16 run's shard files with "bf16_", whichever optimizer wrote them; BF16_Optimizer
    # (ZeRO-1 with fp32 gradient sums) is told by the manifest.
    bf16_optimizer = (manifest.get("zero_stage"), manifest.get("dtype"), manifest.get("grad_accum_dtype")) == (
        1,
        "bf16",
        "fp32",
    )
    if bf16_optimizer and any(folder.glob("bf16_zero_*_optim_states.pt")):
        state = _bf16_optimizer_fp32_state_dict(folder)
    elif any(folder.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):  # its progress output
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        model_states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        state = dict(model_states["module"])
        fp32_groups = (model_states.get("optimizer") or {}).get("fp32_groups")
        if fp32_groups:
            for names, tensors in zip(manifest["param_group_names"], fp32_groups, strict=True):
                state.update(zip(names, tensors, strict=True))
    state = {k: v.float() for k, v in state.items()}
    if "transformer.wte.weight" in state:  # zerotrain's GPT: tied; consolidators list it once or as a stale copy
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state
