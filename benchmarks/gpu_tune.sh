#!/usr/bin/env bash
# Issue #27's GPU bar for `zerotrain tune`, on one GPU: GPT-2 XL and a 3B Llama-shaped GPT (Llama-3.2-3B's depth and
# width: 28 layers, 24 heads of 128, 3072 wide; zerotrain's GELU MLP, so 3.3B parameters), each tuned, then swept
# exhaustively over the same grid (`--exhaustive`: every fitting candidate measured to the end, no budget), then
# compared (benchmarks/tune_compare.py: pick within 5% of the fastest, in ≤ 1/3 of the time).
#     OUT=tune-gpu bash benchmarks/gpu_tune.sh [xl|3b]      (both by default)
# The exhaustive sweeps dominate: about (fitting candidates) × (startup + STEPS + WARMUP steps) each.
set -uo pipefail
OUT=${OUT:-tune-gpu}
GRID=${GRID:-"8 16 32"}          # micro-batches considered (the same for tune and the exhaustive sweep)
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-2}
BUDGET=${BUDGET:-30}             # minutes for tune itself
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
[ -f data/shakespeare-gpt2/meta.json ] || python -m zerotrain data prepare --source shakespeare --tokenizer gpt2 --out data/shakespeare-gpt2
{
  echo "date $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
  python -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
  free -g | head -2
} > "$OUT/env.txt"

config() {  # config NAME MODEL_LINES
  cat > "$OUT/$1.toml" <<TOML
[run]
out_dir = "$OUT/runs/$1"
tensorboard = false
[data]
dir = "data/shakespeare-gpt2"
[model]
$2
[train]
max_steps = 1000
micro_batch_size = 8
global_batch_size = 32
seq_len = 1024
[deepspeed]
zero_stage = 2
TOML
}
config xl 'preset = "gpt2-xl"'
config 3b 'preset = "gpt2-xl"
n_layer = 28
n_head = 24
n_embd = 3072
block_size = 2048'

for name in ${1:-xl 3b}; do
  common=("$OUT/$name.toml" --nproc 1 --micro-batch $GRID --steps "$STEPS" --warmup-steps "$WARMUP" --overwrite)
  python -m zerotrain tune "${common[@]}" --budget-minutes "$BUDGET" --out "$OUT/$name-tune" 2>&1 | tee "$OUT/$name-tune.log"
  python -m zerotrain tune "${common[@]}" --exhaustive --out "$OUT/$name-exhaustive" 2>&1 | tee "$OUT/$name-exhaustive.log"
  python benchmarks/tune_compare.py "$OUT/$name-tune" "$OUT/$name-exhaustive" | tee "$OUT/$name-compare.txt"
done
