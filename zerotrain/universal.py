"""DeepSpeed universal checkpoints: how a checkpoint written by one world size and ZeRO stage resumes under another.

ZeRO-1/2/3 checkpoints hold each rank's flat partition of the optimizer state, which only the same world size and
stage can load. DeepSpeed's `ds_to_universal` rewrites them as one file per parameter and state (fp32 master,
exp_avg, exp_avg_sq, step) that any world size and stage load with `"checkpoint": {"load_universal": true}`.
zerotrain converts a checkpoint once and keeps the copy beside it:

    checkpoints/
      step_6/                      the original: read, never written
      step_6.universal/
        step_6/                    DeepSpeed's universal layout (zero/<param>/*.pt, zero/optimizer_state.pt, model states)
        latest_universal           DeepSpeed's pointer (ds_to_universal writes it)
        zerotrain_universal.json   the source tag, its files' sizes and mtimes, the DeepSpeed version; written last
      .step_6.universal.tmp/       a conversion in progress: never read, removed by the next conversion

The copy is written into the temporary folder and renamed into place after its manifest, so a crash mid-conversion
leaves only the `.tmp` folder. A copy is trusted only while its manifest names the same source files (size and
mtime) and this DeepSpeed version; otherwise it is converted again.

ds_to_universal leaves each copy in the layout of its source stage; `_loadable_at_any_stage` completes it so that
ZeRO-1/2 and ZeRO-3 both load it (DeepSpeed 0.19.8 reads per-parameter dicts and step files at stage 1/2, a nested
optimizer state at stage 3, and a model-states file named for the stage it runs).

ZeRO-0 is outside DeepSpeed's universal checkpoints: its optimizer is the plain torch AdamW, whole on every rank.
For fp32 runs zerotrain writes a ZeRO-0 checkpoint in the same layout itself (`_zero0_to_universal`) and loads a
universal copy into a ZeRO-0 engine itself (`load_into_zero0`); both are whole tensors, nothing to re-partition.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path

from zerotrain import UserError, checkpoint, faults

MANIFEST = "zerotrain_universal.json"
FORMAT = "zerotrain-universal"
VERSION = 1
SUFFIX = ".universal"


def folder_for(ckpt_dir: Path, tag: str) -> Path:
    """Where the universal copy of ckpt_dir/tag is cached (DeepSpeed's load_dir; the tag is its sub-folder)."""
    return ckpt_dir / f"{tag}{SUFFIX}"


def deepspeed_version() -> str:
    """The installed DeepSpeed's version, read without importing it (checkpoint info stays fast)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepspeed")
    except PackageNotFoundError:
        import deepspeed

        return deepspeed.__version__


def _source_files(folder: Path) -> dict[str, list[int]]:
    """Every file of a checkpoint with its size and mtime: what a universal copy was made from. (Sizes and mtimes,
    not checksums: hashing a multi-GB checkpoint at every resume would cost minutes.)"""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            files[str(p.relative_to(folder))] = [st.st_size, st.st_mtime_ns]
    return files


def stale_reason(ckpt_dir: Path, tag: str, folder: Path | None = None) -> str | None:
    """None when `folder` (default: the cache beside the checkpoint) holds a trusted universal copy of ckpt_dir/tag,
    else why it does not."""
    folder = folder or folder_for(ckpt_dir, tag)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        return "no universal copy"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        return f"{manifest_file} is unreadable"
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        return f"{folder} was written by another zerotrain (format {manifest.get('version')})"
    if manifest.get("deepspeed") != deepspeed_version():
        return f"{folder} was made by DeepSpeed {manifest.get('deepspeed')}, this is DeepSpeed {deepspeed_version()}"
    if manifest.get("source_tag") != tag or manifest.get("source_files") != _source_files(ckpt_dir / tag):
        return f"{folder} was made from other files than {ckpt_dir / tag} holds now"
    if not (folder / tag / "zero" / "optimizer_state.pt").is_file():
        return f"{folder} lacks {tag}/zero/optimizer_state.pt"
    return None


def convert(
    ckpt_dir: Path, tag: str, out: str | Path | None = None, say=print, workers: int = 1, overwrite: bool = False
) -> Path:
    """The universal copy of ckpt_dir/tag (DeepSpeed's load_dir: it holds `tag/` and `latest_universal`), made
    unless a trusted one exists. `out` defaults to the cache beside the checkpoint. One process converts (rank 0
    while the others wait, or the CLI); the original is only read. `workers` > 1 lets ds_to_universal fork that
    many processes, which is only safe outside a process group. An `out` holding anything but a universal copy is
    replaced only with `overwrite`."""
    manifest = checkpoint.read_manifest(ckpt_dir, tag)
    checkpoint.check_complete(ckpt_dir, tag, manifest)
    if manifest["zero_stage"] == 0 and manifest["dtype"] != "fp32":
        raise UserError(
            f"{ckpt_dir / tag} is a ZeRO-0 {manifest['dtype']} checkpoint, whose optimizer is DeepSpeed's mixed-precision "
            f"wrapper, not a universal-checkpoint one; resume it at ZeRO-0 (any world size), or start a new run from its "
            f"weights with run.init_from"
        )
    folder = Path(out) if out else folder_for(ckpt_dir, tag)
    if out and folder.exists() and any(folder.iterdir()) and not (folder / MANIFEST).is_file() and not overwrite:
        raise UserError(f"{folder} exists and is not a universal copy; choose a new --out or pass --overwrite")
    reason = stale_reason(ckpt_dir, tag, folder)
    if reason is None:
        return folder
    if reason != "no universal copy":
        say(f"not using the universal copy: {reason}; converting again")
    started = time.perf_counter()
    say(
        f"converting {ckpt_dir / tag} (ZeRO-{manifest['zero_stage']}, {manifest['world_size']} ranks) to a universal checkpoint in {folder}"
    )
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written copy of an earlier attempt is never trusted
    tmp.mkdir(parents=True)
    try:
        if manifest["zero_stage"] == 0:
            _zero0_to_universal(ckpt_dir / tag, tmp / tag, manifest)
        else:
            _ds_to_universal(ckpt_dir / tag, tmp / tag, workers)
            _loadable_at_any_stage(tmp / tag)
        faults.point("convert", manifest["step"], 0)
        record = {
            "format": FORMAT,
            "version": VERSION,
            "source_tag": tag,
            "source_files": _source_files(ckpt_dir / tag),
            "deepspeed": deepspeed_version(),
            "zero_stage": manifest["zero_stage"],
            "world_size": manifest["world_size"],
            "step": manifest["step"],
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        checkpoint._fsync_tree(tmp)
        checkpoint.write_atomic(tmp / MANIFEST, json.dumps(record, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint.publish_dir(tmp, folder, folder.with_name(f".{folder.name}.old"))  # a stale copy is swapped out whole
    say(f"converted in {time.perf_counter() - started:.1f} s")
    return folder


def _ds_to_universal(source: Path, output: Path, workers: int) -> None:
    """DeepSpeed's converter, called as its command line would call it; its progress output is kept back and
    shown only when it fails."""
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(output),
        num_extract_workers=workers,
        num_merge_workers=workers,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # engine.save_checkpoint records no universal_checkpoint_info of its own
    )
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            ds_to_universal.main(args)
    except Exception as e:
        tail = " | ".join(log.getvalue().strip().splitlines()[-3:])
        raise UserError(
            f"DeepSpeed's ds_to_universal could not convert {source} ({type(e).__name__}: {e}; {tail}); resume it "
            f"with the world size and ZeRO stage that wrote it, or start a new run from its weights with run.init_from"
        ) from None


def _loadable_at_any_stage(folder: Path) -> None:
    """Complete a universal copy so that both of DeepSpeed 0.19.8's loaders read it, whatever stage wrote it:
    - ZeRO-1/2 read every zero/<param>/<state>.pt as {"param": tensor in the parameter's shape} plus a step.pt;
      a ZeRO-3 source's merge writes flat tensors and no step;
    - ZeRO-1/2 check optimizer_state.pt's ds_version and take its top-level param_groups; ZeRO-3 reads the step
      from a nested optimizer_state_dict, which a ZeRO-1/2 source's copy lacks;
    - each stage looks for its own model-states file name (mp_rank_00_... or zero_pp_rank_0_mp_rank_00_...)."""
    import torch
    from deepspeed.checkpoint.constants import (
        DS_VERSION,
        FP32_FLAT_GROUPS,
        OPTIMIZER_STATE_DICT,
        PARAM,
        PARAM_GROUPS,
        PARAM_SHAPES,
    )

    names = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
    rank0 = next(folder / n for n in names if (folder / n).is_file())
    model_state = torch.load(rank0, map_location="cpu", weights_only=False)
    shapes = {name: shape for group in model_state[PARAM_SHAPES] for name, shape in group.items()}
    zero = folder / "zero"
    optim = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=False)
    inner = optim.get(OPTIMIZER_STATE_DICT)
    if inner and inner.get("state"):
        step = next(iter(inner["state"].values()))["step"]
    else:
        step = torch.load(next(zero.glob("*/step.pt")), map_location="cpu", weights_only=False)
    for name, shape in shapes.items():
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            f = zero / name / f"{key}.pt"
            value = torch.load(f, map_location="cpu", weights_only=False)
            if not isinstance(value, dict):
                torch.save({PARAM: value.view(shape)}, f)
        if not (zero / name / "step.pt").is_file():
            torch.save(step, zero / name / "step.pt")
    if inner:  # ZeRO-3's copy is rank 0's whole optimizer state: only the step and the groups are read from it
        inner["state"] = {k: {"step": v["step"]} for k, v in inner["state"].items()}
        optim.pop(FP32_FLAT_GROUPS, None)
    else:
        optim[OPTIMIZER_STATE_DICT] = {"state": {0: {"step": step}}, PARAM_GROUPS: optim[PARAM_GROUPS]}
    optim.setdefault(PARAM_GROUPS, optim[OPTIMIZER_STATE_DICT][PARAM_GROUPS])
    optim.setdefault(DS_VERSION, model_state.get(DS_VERSION) or deepspeed_version())
    torch.save(optim, zero / "optimizer_state.pt")
    for name in names:
        if not (folder / name).is_file():
            try:
                os.link(rank0, folder / name)  # a second name for the same bytes: nothing writes either
            except OSError:
                shutil.copy2(rank0, folder / name)


def _zero0_to_universal(source: Path, output: Path, manifest: dict) -> None:
    """A ZeRO-0 fp32 checkpoint in the universal layout: its model-states file holds the whole weights and torch
    AdamW's state dict, whose parameters are numbered in the order of the manifest's parameter groups."""
    import torch
    from deepspeed.checkpoint.constants import DS_VERSION, OPTIMIZER_STATE_DICT, PARAM, PARAM_GROUPS

    model_file = source / "mp_rank_00_model_states.pt"
    model_state = torch.load(model_file, map_location="cpu", weights_only=False)
    optim = model_state["optimizer"]
    zero = output / "zero"
    for group, names in zip(optim[PARAM_GROUPS], manifest["param_group_names"], strict=True):
        for index, name in zip(group["params"], names, strict=True):
            (zero / name).mkdir(parents=True)
            state = optim["state"][index]
            torch.save({PARAM: model_state["module"][name].float()}, zero / name / "fp32.pt")
            for key in ("exp_avg", "exp_avg_sq"):
                torch.save({PARAM: state[key]}, zero / name / f"{key}.pt")
            torch.save(state["step"], zero / name / "step.pt")
    step = next(iter(optim["state"].values()))["step"]
    groups = optim[PARAM_GROUPS]
    torch.save(
        {
            PARAM_GROUPS: groups,
            OPTIMIZER_STATE_DICT: {"state": {0: {"step": step}}, PARAM_GROUPS: groups},
            DS_VERSION: model_state.get(DS_VERSION) or deepspeed_version(),
        },
        zero / "optimizer_state.pt",
    )
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        shutil.copy2(model_file, output / name)
    (output.parent / "latest_universal").write_text(output.name)


def load_into_zero0(engine, folder: Path) -> dict:
    """Load a universal copy (folder = load_dir/tag) into a ZeRO-0 fp32 engine, whose optimizer is torch's AdamW
    (DeepSpeed's universal loaders serve ZeRO-1/2/3 only): the weights from the fp32 masters, AdamW's state from the
    moments and steps. Returns the checkpoint's client state."""
    import torch

    zero = folder / "zero"
    load = lambda name, key: torch.load(zero / name / f"{key}.pt", map_location="cpu", weights_only=False)  # noqa: E731
    names = {p: n for n, p in engine.module.named_parameters()}
    with torch.no_grad():
        for p, name in names.items():
            p.copy_(load(name, "fp32")["param"].view_as(p))
    state, groups, index = {}, [], 0
    for group in engine.optimizer.param_groups:
        ids = []
        for p in group["params"]:
            name = names[p]
            state[index] = {"step": load(name, "step")} | {
                key: load(name, key)["param"].view_as(p).to(p.dtype) for key in ("exp_avg", "exp_avg_sq")
            }
            ids.append(index)
            index += 1
        groups.append({k: v for k, v in group.items() if k != "params"} | {"params": ids})
    engine.optimizer.load_state_dict({"state": state, "param_groups": groups})
    checkpoint_state = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {"zerotrain": checkpoint_state["zerotrain"]}
