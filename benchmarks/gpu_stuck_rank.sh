#!/usr/bin/env bash
# One GPU: a rank whose GPU hangs is named and stopped within run.stall_timeout (issue #26's GPU check). GPT-2 124M
# on Shakespeare; ZEROTRAIN_FAULT=hang:6:0 queues a kernel that spins for about 20 minutes after step 6's forward,
# so the rank's next wait for the GPU never returns, as with a hung kernel. Expected: exit code 3 within about
# 1.5 x STALL seconds of the hang, one `error: no progress ...` line naming rank 0 and its last phase, no process
# left on the GPU, and the step-5 checkpoint published and whole.
#   OUT=results [STALL=30] [EXTRA="--train.compile=none"] bash benchmarks/gpu_stuck_rank.sh
# (STALL must exceed the first step, which compiles: the watchdog sees no progress while it does)
set -uo pipefail
OUT=${OUT:-stuck-results}; STALL=${STALL:-30}; RUN=${RUN:-/tmp/zerotrain-stuck}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
started=$(date +%s.%N)
ZEROTRAIN_FAULT=hang:6:0 timeout 600 python3 -m zerotrain train "${CONFIG:-configs/gpt2-124m.toml}" --run.out_dir="$RUN" \
  --run.resume= --overwrite --run.stall_timeout="$STALL" --train.max_steps=1000 --train.save_interval=5 \
  --train.eval_interval=0 --train.log_interval=1 --train.micro_batch_size=8 --train.grad_accum=1 \
  --run.tensorboard=false ${EXTRA:-} > "$OUT/stuck.log" 2>&1
code=$?
ended=$(date +%s.%N)
hung_at=$(python3 -c "import json,os; print(max(os.path.getmtime('$RUN/metrics.jsonl'), 0))" 2>/dev/null || echo "$started")
sleep 2
left=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l)
python3 -m zerotrain checkpoint info "$RUN" > "$OUT/checkpoint.txt" 2>&1; info=$?
{
  echo "exit code: $code (3 = stopped by the watchdog)"
  echo "seconds from the last logged step to the exit: $(python3 -c "print(round($ended - $hung_at, 1))")"
  echo "whole run: $(python3 -c "print(round($ended - $started, 1))") s; run.stall_timeout: $STALL s"
  echo "error lines: $(grep -c '^error:' "$OUT/stuck.log")"; grep '^error:' "$OUT/stuck.log"
  echo "tracebacks: $(grep -c Traceback "$OUT/stuck.log")"
  echo "processes left on the GPU: $left"
  echo "checkpoint info exit code: $info"; head -5 "$OUT/checkpoint.txt"
} | tee "$OUT/stuck.txt"
