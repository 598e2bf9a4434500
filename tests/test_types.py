"""The pure modules type-check: mypy (settings in pyproject.toml [tool.mypy]) passes on the memory planner, the run
configuration and the ds_config package. mypy comes with the `test` extra, so CI runs this in its fresh virtualenv."""

import subprocess
import sys

import pytest

from conftest import REPO

TYPED = ["zerotrain/memory", "zerotrain/runconfig.py", "zerotrain/dsconfig"]


@pytest.mark.slow  # 18-27 s: in --full (CI), out of the quick tier
def test_pure_modules_pass_mypy(tmp_path):
    # a fresh cache each time: the verdict never depends on what an earlier run left behind (about 10 s cold)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), *TYPED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"mypy {' '.join(TYPED)} failed:\n{r.stdout}{r.stderr}"
