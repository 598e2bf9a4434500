#!/usr/bin/env bash
# Issue #27's GPU bar for `zerotrain tune`, on one GPU: GPT-2 XL and a 3B Llama-shaped GPT (Llama-3.2-3B's depth and
# width: 28 layers, 24 heads of 128, 3072 wide; zerotrain's GELU MLP, so 3.3B parameters). Per model, three steps:
#   tune        zerotrain tune with a budget
#   exhaustive  the same grid, every fitting candidate measured to the end (--exhaustive: no early stop, no budget)
#   compare     benchmarks/tune_compare.py: the pick within 5% of the fastest, in ≤ 1/3 of the time
#     OUT=tune-gpu bash benchmarks/gpu_tune.sh xl tune; ... xl exhaustive; ... xl compare   (then 3b)
# Each step runs at most LIMIT seconds (default 540, under a 10-minute command limit); one cut short exits 3 and
# continues where it stopped when run again (tune --resume: its measurements and time are kept), as long as OUT is
# still there. The exhaustive sweeps dominate: about 28 (XL) and 18 (3B) fitting candidates of the default grid,
# each started afresh and run WARMUP + STEPS steps.
set -uo pipefail
MODEL=${1:?usage: gpu_tune.sh xl|3b tune|exhaustive|compare}
STEP=${2:?usage: gpu_tune.sh xl|3b tune|exhaustive|compare}
OUT=${OUT:-tune-gpu}
GRID=${GRID:-"8 16"}             # micro-batches considered (the same for tune and the exhaustive sweep)
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-2}
BUDGET=${BUDGET:-10}             # minutes for tune itself
LIMIT=${LIMIT:-540}
EXTRA=${EXTRA:-}                 # run-config overrides for every run, e.g. --train.compile=none (shorter starts)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f data/shakespeare-gpt2/meta.json ] || python -m zerotrain data prepare --source shakespeare --tokenizer gpt2 --out data/shakespeare-gpt2
[ -f "$OUT/env.txt" ] || {
  echo "date $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
  python -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
  free -g | head -2
} > "$OUT/env.txt"

case $MODEL in
  xl) shape='preset = "gpt2-xl"' ;;
  3b) shape=$'preset = "gpt2-xl"\nn_layer = 28\nn_head = 24\nn_embd = 3072\nblock_size = 2048' ;;
  *) echo "unknown model $MODEL (xl or 3b)" >&2; exit 2 ;;
esac
cat > "$OUT/$MODEL.toml" <<TOML
[run]
out_dir = "$OUT/runs/$MODEL"
tensorboard = false
[data]
dir = "data/shakespeare-gpt2"
[model]
$shape
[train]
max_steps = 1000
micro_batch_size = 8
global_batch_size = 32
seq_len = 1024
[deepspeed]
zero_stage = 2
TOML

sweep() {  # sweep DIR FLAGS...: run tune, resuming what an earlier call of the same step left
  local dir=$1; shift
  local resume=(); [ -f "$dir/tune-state.json" ] && resume=(--resume)
  timeout "$LIMIT" python -m zerotrain tune "$OUT/$MODEL.toml" --nproc 1 --micro-batch $GRID --steps "$STEPS" \
    --warmup-steps "$WARMUP" --out "$dir" "${resume[@]}" "$@" $EXTRA 2>&1 | tee -a "$dir.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ]; then echo "cut short at ${LIMIT} s: run the same command again to continue" >&2; exit 3; fi
  return "$rc"
}
case $STEP in
  tune) sweep "$OUT/$MODEL-tune" --budget-minutes "$BUDGET" ;;
  exhaustive) sweep "$OUT/$MODEL-exhaustive" --exhaustive ;;
  compare) python benchmarks/tune_compare.py "$OUT/$MODEL-tune" "$OUT/$MODEL-exhaustive" | tee "$OUT/$MODEL-compare.txt" ;;
  *) echo "unknown step $STEP (tune, exhaustive or compare)" >&2; exit 2 ;;
esac
