"""An experiment, not a product path: `zerotrain train` with compiled decoder layers at ZeRO-3, which zerotrain
refuses (compiled blocks trained on wrong gradients under ZeRO-3 on 2 GPUs, docs/performance.md). On one GPU with
every parameter kept gathered (deepspeed.zero3_persistent_params = "on") nothing is gathered or released inside a
step; whether the losses then match ZeRO-2's and how fast it runs is what benchmarks/hf_fast_path.py's `compiled`
variant asks. Each decoder layer's forward is compiled, not the module's call, so DeepSpeed's ZeRO-3 hooks on the
layer (a leaf module) run outside the graph, as in the GPT experiment.
    python benchmarks/z3_compiled_probe.py train CONFIG.toml --train.compile=blocks --deepspeed.zero_stage=3 ..."""

import torch

from zerotrain import runconfig
from zerotrain.cli import main_exit
from zerotrain.kernels import hf as hf_kernels
from zerotrain.model import LMHead, _chunk_loss_and_grad_fusable

checked = runconfig.validate


def validate(cfg) -> None:
    """The run config's checks, except the refusal of train.compile = "blocks" at ZeRO-3."""
    if cfg.train.compile != "blocks" or cfg.deepspeed.zero_stage != 3:
        return checked(cfg)
    cfg.train.compile = "none"
    try:
        checked(cfg)
    finally:
        cfg.train.compile = "blocks"


def compile_layer_forwards(inner, layer_classes) -> None:
    for module in inner.modules():
        if type(module) in layer_classes:
            module.forward = torch.compile(module.forward)
    if isinstance(inner.lm_head, LMHead):
        inner.lm_head.chunk_fn = torch.compile(_chunk_loss_and_grad_fusable, dynamic=False)


runconfig.validate = validate
hf_kernels.compile_layers = compile_layer_forwards
main_exit()
