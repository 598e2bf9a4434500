"""The ds_config: built from the run config for zerotrain's own runs, and checked, fixed, explained or written
from intent for any DeepSpeed config (`zerotrain config`). Only engine.py imports torch and DeepSpeed.

  from_run.py       the ds_config of a zerotrain run (build): batch triple, dtype, ZeRO sections, user ds_config merged
  schema.py         DeepSpeed 0.19.8's keys and types, aliases, removed and deprecated keys, defaults, descriptions
  parse.py          reading a ds_config file: JSON, with line:column errors that name the fix
  lint.py           the lint (check): runs every rule, collects every finding, never stopping at the first
  findings.py       a finding (level, key, message, fix), the levels, and the context every rule reads
  key_rules.py      the rules on keys and values: unknown, removed and deprecated keys, "auto", types, ranges
  training_rules.py the rules on settings together: batch triple, precision, offload, optimizer, scheduler, performance
  engine.py         DeepSpeed's own config parser as the last word
  fixes.py          the unambiguous fixes (fix)
  effective.py      the effective config, DeepSpeed's defaults filled in (explain)
  new.py            a ds_config from intent: model, GPUs, batch (`zerotrain config new`)
"""

from zerotrain.dsconfig.effective import explain
from zerotrain.dsconfig.engine import engine_findings, implied_world_size
from zerotrain.dsconfig.findings import LEVELS, Finding
from zerotrain.dsconfig.fixes import fix
from zerotrain.dsconfig.from_run import (
    Batch,
    build,
    derive_batch,
    get_dotted,
    grad_accum_dtype,
    load_user_config,
    merge_user_config,
    resolve_dtype,
    uses_config_optimizer,
)
from zerotrain.dsconfig.lint import check, check_text, gpu_spec, planner_fits_without_offload
from zerotrain.dsconfig.new import TARGETS, Layout, accelerate_config, choose_layout, new_config
from zerotrain.dsconfig.parse import load_config_file, parse_config_text
from zerotrain.dsconfig.schema import DEEPSPEED_VERSION

__all__ = [
    "DEEPSPEED_VERSION",
    "LEVELS",
    "TARGETS",
    "Batch",
    "Finding",
    "Layout",
    "accelerate_config",
    "build",
    "check",
    "check_text",
    "choose_layout",
    "derive_batch",
    "engine_findings",
    "explain",
    "fix",
    "get_dotted",
    "gpu_spec",
    "grad_accum_dtype",
    "implied_world_size",
    "load_config_file",
    "load_user_config",
    "merge_user_config",
    "new_config",
    "parse_config_text",
    "planner_fits_without_offload",
    "resolve_dtype",
    "uses_config_optimizer",
]
