#!/usr/bin/env bash
# One GPU: does a change of the code's shape leave training as fast as before? GPT-2 124M (ZeRO-2, micro-batch 32 x 4)
# and GPT-2 XL (ZeRO-1, micro-batch 16 x 4) under `zerotrain train` on one GPU, with the package from BASE (another
# checkout's zerotrain/ folder; python -P keeps the working directory off sys.path) and from this tree, interleaved base/new/new/base so a drift of the clocks shows; then the
# GPU tests. Prints one line per run (tokens/s and MFU of the last log window, peak memory) and the test summary.
#   BASE=.base OUT=results bash benchmarks/gpu_house_check.sh [speed|tests|all]
# Needs data/shakespeare-gpt2 (zerotrain data prepare --source shakespeare --tokenizer gpt2 --out data/shakespeare-gpt2).
set -uo pipefail
OUT=${OUT:-house-results}
BASE=${BASE:-.base}
RUNS=${RUNS:-/tmp/zerotrain-house}
mode=${1:-all}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
here=$PWD
common=(configs/gpt2-124m.toml --run.checkpoints=false --run.tensorboard=false --run.resume= --train.eval_interval=0
        --train.early_stop_patience=0)

train() {  # train CODE NAME OVERRIDES...: CODE is "base" or "new"
  local code=$1 name=$2; shift 2
  local path=$here
  [ "$code" = base ] && path=$here/$BASE
  PYTHONPATH="$path:${SITE:-}" timeout 400 python3 -P -m zerotrain train "${common[@]}" --run.out_dir="$RUNS/$name" "$@" \
    --overwrite > "$RUNS/$name.log" 2>&1 || { echo "FAILED $name ($?)"; tail -5 "$RUNS/$name.log"; return; }
  python3 - "$RUNS/$name/metrics.jsonl" "$name" <<'EOF' | tee -a "$OUT/speed.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
r = rows[-1]
print(f"{sys.argv[2]:24s} step {r['step']:3d} loss {r['loss']:.4f} {r['tokens_per_s']:>10,.0f} tok/s mfu {100 * r['mfu']:5.1f}% "
      f"peak {r['peak_mem_bytes'] / 2**30:6.2f} GiB sm {r.get('gpu_sm_clock_mhz') or 0:.0f} MHz")
EOF
  grep -m1 "^ZeRO stage" "$RUNS/$name.log" >> "$OUT/startup.txt"
}

{
  echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
  python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
  python3 -c "import torch.nn.attention as a; print('torch flash attention impls:', a.list_flash_attention_impls() if hasattr(a, 'list_flash_attention_impls') else 'no registry')"
} | tee "$OUT/env.txt"

if [ "$mode" = speed ] || [ "$mode" = all ]; then
  s124=(--train.max_steps=20 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=4 --deepspeed.zero_stage=2)
  sxl=(--model.preset=gpt2-xl --train.max_steps=6 --train.log_interval=3 --train.micro_batch_size=16 --train.grad_accum=4
       --deepspeed.zero_stage=1)
  for code in base new new base; do train "$code" "124m-z2-$code" "${s124[@]}"; done
  for code in base new; do train "$code" "xl-z1-$code" "${sxl[@]}"; done
fi
if [ "$mode" = tests ] || [ "$mode" = all ]; then
  PYTHONPATH="$here:${SITE:-}" timeout ${TEST_TIMEOUT:-400} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_cublaslt.py \
    tests/test_flash3.py 2>&1 | tail -15 | tee "$OUT/gpu-tests.txt"
fi
