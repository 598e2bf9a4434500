"""Compare `zerotrain tune` with an exhaustive sweep of the same grid (`zerotrain tune --exhaustive`), for the bar of
issue #27: the configuration tune picks is within 5% of the fastest the exhaustive sweep measured, found in at most a
third of its time, with the predicted step time within 25% of measured for what tune measured.

    python benchmarks/tune_compare.py TUNE_DIR EXHAUSTIVE_DIR     (each holding a tune.json)

Speeds are the exhaustive sweep's measurements of both configurations (the same runs, one machine, one session), so
that the comparison does not mix two measurements of the winner. Exit 1 when a bar is missed.
"""

import json
import sys
from pathlib import Path


def main(tune_dir: str, exhaustive_dir: str) -> int:
    tune = json.loads((Path(tune_dir) / "tune.json").read_text())
    full = json.loads((Path(exhaustive_dir) / "tune.json").read_text())
    if not full.get("exhaustive"):
        print(f"{exhaustive_dir}/tune.json is not from --exhaustive", file=sys.stderr)
        return 2
    sweep = {c["name"]: c for c in full["candidates"] if c["status"] == "ok"}
    fastest = min(sweep.values(), key=lambda c: c["step_time_s"])
    pick = tune["winner"]["name"]
    if pick not in sweep:
        print(f"tune's pick {pick} did not run to the end in the exhaustive sweep", file=sys.stderr)
        return 1
    slower = sweep[pick]["step_time_s"] / fastest["step_time_s"] - 1
    time_ratio = tune["elapsed_s"] / full["elapsed_s"]
    errors = [
        abs(c["predicted_before_measuring_s"] / c["step_time_s"] - 1)
        for c in tune["candidates"]
        if c["status"] == "ok" and c["predicted_before_measuring_s"]
    ]
    print(f"{tune['model']} on {tune['nproc']} × {tune['device']}, global batch {tune['global_batch']}")
    print(f"  tune picked   {pick}: {1000 * sweep[pick]['step_time_s']:.1f} ms/step in the exhaustive sweep")
    print(f"  fastest       {fastest['name']}: {1000 * fastest['step_time_s']:.1f} ms/step")
    print(f"  pick slower by {100 * slower:.1f}% (bar ≤ 5%)")
    print(
        f"  time          tune {tune['elapsed_s']:.0f} s ({tune['measured']} measured) vs exhaustive "
        f"{full['elapsed_s']:.0f} s ({full['measured']} measured): {time_ratio:.2f} (bar ≤ 0.33)"
    )
    print(
        "  predicted vs measured (tune, before each measurement): "
        + ", ".join(f"{100 * e:.0f}%" for e in errors)
        + f"; after calibration: median {100 * (tune['prediction_error']['after_calibration']['median'] or 0):.0f}%"
        + " (bar ≤ 25%)"
    )
    ok = slower <= 0.05 and time_ratio <= 1 / 3
    print("bar met" if ok else "bar MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
