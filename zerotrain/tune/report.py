"""tune.md, tune.json and tune.png: every candidate, predicted vs measured speed and memory, why pruned, and how far
off the predictions were."""

import json
import math
import statistics
from pathlib import Path

from zerotrain.tune.grid import Candidate


def _gib(x) -> str:
    return "" if x is None else f"{x / 2**30:.2f}"


def ms_text(x) -> str:
    return "" if x is None else f"{1000 * x:.1f}"


def prediction_error(cands: list[Candidate]) -> dict:
    """How far off the predictions were for the candidates measured: before each measurement (calibrated on the
    earlier ones only) and after calibrating on all of them, as |predicted/measured - 1|."""
    full = [c for c in cands if c.measured]  # stopped early too: a median over two steps or more
    before = [abs(c.predicted_before_s / c.step_time_s - 1) for c in full if c.predicted_before_s]
    after = [abs(c.predicted_s / c.step_time_s - 1) for c in full if c.predicted_s]
    stat = lambda xs: (
        {"median": statistics.median(xs), "max": max(xs), "n": len(xs)} if xs else {"median": None, "max": None, "n": 0}
    )
    return {"before_measuring": stat(before), "after_calibration": stat(after)}


def write_reports(out: Path, summary: dict, cands: list[Candidate]) -> None:
    (out / "tune.json").write_text(json.dumps({**summary, "candidates": [c.row() for c in cands]}, indent=2) + "\n")
    w = summary.get("winner")
    err = summary["prediction_error"]
    pct = lambda x: "" if x is None else f"{100 * x:.0f}%"
    lines = [
        f"# zerotrain tune: {summary['model']} on {summary['nproc']} × {summary['device']}",
        "",
        f"global batch {summary['global_batch']} sequences of {summary['seq_len']} tokens, {summary['dtype']}; "
        f"{summary['n_candidates']} candidates, {summary['pruned']} pruned by the planner, {summary['measured']} "
        f"measured in {summary['elapsed_s']:.0f} s; the search ended because {summary['ended']}.",
        "",
        f"winner: **{w['label']}**, {ms_text(w['step_time_s'])} ms/step, {w['tokens_per_s']:,.0f} tokens/s"
        if w
        else "winner: none (no candidate ran to the end)",
        "",
        f"predicted step time vs measured: median {pct(err['before_measuring']['median'])} off "
        f"(max {pct(err['before_measuring']['max'])}) before each measurement, {pct(err['after_calibration']['median'])} "
        f"(max {pct(err['after_calibration']['max'])}) after calibrating on all ({summary['calibration']}).",
        "",
        "| candidate | status | predicted ms | measured ms | tokens/s | planned GPU GiB | planned host GiB | "
        "measured peak GiB | why pruned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(cands, key=lambda c: (c.status == "pruned", c.step_time_s or math.inf, c.predicted_s or math.inf)):
        lines.append(
            f"| {c.label} | {c.status} | {ms_text(c.predicted_before_s or c.predicted_s)} | {ms_text(c.step_time_s)} | "
            f"{'' if c.tokens_per_s is None else f'{c.tokens_per_s:,.0f}'} | {_gib(c.plan.get('gpu_needed'))} | "
            f"{_gib(c.plan.get('host_needed'))} | {_gib(c.peak_allocated)} | {c.pruned} |"
        )
    lines += [
        "",
        "predicted ms: calibrated on the measurements made before the candidate ran (for those not measured: on all "
        "of them); planned GPU: reserved peak + CUDA context and NCCL; measured peak: peak allocated on a GPU, the "
        "process's peak RSS on a CPU. tune.json holds every number; tune.png plots them.",
    ]
    (out / "tune.md").write_text("\n".join(lines) + "\n")
    _plot(cands, out)


def _plot(cands: list[Candidate], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    done = [c for c in cands if c.measured and c.predicted_before_s]
    if done:
        xs = [1000 * c.predicted_before_s for c in done]
        ys = [1000 * c.step_time_s for c in done]
        left.scatter(xs, ys, c=["tab:blue" if c.status.startswith("ok") else "tab:orange" for c in done])
        for c, x, y in zip(done, xs, ys):
            left.annotate(c.name, (x, y), fontsize=6)
        lim = [0, 1.1 * max(xs + ys)]
        left.plot(lim, lim, color="grey", linewidth=0.8)
    left.set_xlabel("predicted ms/step (before measuring)")
    left.set_ylabel("measured ms/step")
    left.set_title("Prediction vs measurement (orange: stopped early)")
    fitting = sorted((c for c in cands if not c.pruned), key=lambda c: c.predicted_s or 0.0)
    names = [c.name for c in fitting]
    right.barh(names, [1000 * (c.predicted_s or 0.0) for c in fitting], color="lightgrey", label="predicted")
    meas = [(c.name, 1000 * c.step_time_s) for c in fitting if c.measured]
    if meas:
        right.scatter([v for _, v in meas], [n for n, _ in meas], color="black", zorder=3, label="measured")
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=6)
    right.set_xlabel("ms/step")
    right.set_title(f"Fitting candidates ({len(cands) - len(fitting)} pruned)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tune.png", dpi=120)
    plt.close(fig)
