#!/usr/bin/env bash
# GPT-2 124M with `zerotrain train` on 1 and 2 GPUs (ZeRO-2, bf16, seq 1024, micro-batch 16, accumulation 8),
# then the GPU tests and a torchrun launch. Writes metrics and logs to $OUT (default ./gpu-results).
# Needs data/shakespeare-gpt2 (zerotrain data prepare --source shakespeare --tokenizer gpt2 --out data/shakespeare-gpt2).
set -uo pipefail
OUT=${OUT:-gpu-results}
RUNS=${RUNS:-/tmp/zerotrain-runs}
STEPS=${STEPS:-60}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) date $(date -u +%Y-%m-%d)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda)"
} | tee "$OUT/env.txt"
common=(configs/gpt2-124m.toml --train.max_steps=$STEPS --train.eval_interval=$STEPS --train.save_interval=$STEPS
        --train.early_stop_patience=0 --train.log_interval=10 --run.tensorboard=false)
python3 -m zerotrain train "${common[@]}" --run.out_dir=$RUNS/g1 --overwrite 2>&1 | tee "$OUT/train_1gpu.log"
cp $RUNS/g1/metrics.jsonl "$OUT/metrics_1gpu.jsonl"
python3 -m zerotrain train "${common[@]}" --run.out_dir=$RUNS/g2 --overwrite --nproc 2 2>&1 | tee "$OUT/train_2gpu.log"
cp $RUNS/g2/metrics.jsonl "$OUT/metrics_2gpu.jsonl"
# the same run started by torchrun instead of zerotrain's launcher, a few steps
torchrun --nproc_per_node 2 -m zerotrain train "${common[@]}" --run.out_dir=$RUNS/tr --overwrite --train.max_steps=10 \
  2>&1 | tail -5 | tee "$OUT/torchrun.log"
python3 -m zerotrain export $RUNS/g2 --out $RUNS/g2-hf 2>&1 | tail -2 | tee -a "$OUT/torchrun.log"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/pytest_gpu.log"
