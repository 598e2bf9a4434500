"""The shape of zerotrain's GPT model, without torch: preflight checks it and the planner sizes it before any
process imports torch; model.py builds the network from it."""

import math
from dataclasses import dataclass, replace

from zerotrain import UserError
from zerotrain.memory import GPT2_PRESETS, VOCAB_MULTIPLE

PRESETS = GPT2_PRESETS  # the shapes live with the planner, which must not import torch


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50257  # the tokenizer's vocabulary; the embedding is padded to padded_vocab_size
    dropout: float = 0.0

    @property
    def padded_vocab_size(self) -> int:
        """Padded to a multiple of VOCAB_MULTIPLE so the embedding/lm_head matmuls hit tensor-core friendly shapes."""
        return math.ceil(self.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def config_from_preset(preset: str, **overrides) -> GPTConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown model.preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return replace(GPTConfig(**PRESETS[preset]), **overrides)
