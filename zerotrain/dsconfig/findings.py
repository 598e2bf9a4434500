"""What `config check` reports and what its rules read. A finding is `(level, key, message, fix)`; the levels:
"error" means DeepSpeed rejects the config or silently does something else than it says; "warning" means it runs
but slower or riskier than it needs to; "info" explains what was derived. Every rule (key_rules.py,
training_rules.py) is a function of one _Context that yields findings."""

import difflib
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    level: str
    """error | warning | info"""
    key: str
    """dotted path of the offending key, e.g. zero_optimization.stage"""
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


LEVELS = ("error", "warning", "info")


def _fmt(n) -> str:
    if isinstance(n, int) and not isinstance(n, bool):
        return f"{n:,}" if abs(n) < 10**15 else f"{n:.3e}"
    return f"{n:g}" if isinstance(n, float) else repr(n)


@dataclass
class _Context:
    config: dict  # as written, "auto" values included
    view: dict  # "auto" values left out: what the other rules reason about
    world: int | None
    bf16_gpu: bool | None
    gpu_memory: int | None
    hf: bool
    model_params: int | None
    fits_without_offload: Callable | None


def _close(key: str, valid) -> list[str]:
    return difflib.get_close_matches(key, list(valid), n=2, cutoff=0.75)
