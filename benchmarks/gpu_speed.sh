#!/usr/bin/env bash
# Speed of `zerotrain train` on GPT-2 124M and XL (bf16, seq 1024, accumulation), the HF GPT2 + raw DeepSpeed
# probe on the same machine, a 200-step loss-curve comparison of the fast path (compiled blocks, fused loss)
# against the plain path, and allocator traces of the fast path for the memory planner.
# Two lanes on GPU pairs (0,1) and (2,3) of a 4-GPU machine.   OUT=results bash benchmarks/gpu_speed.sh
# Needs data/shakespeare-gpt2 and ../shared/reference/probe_raw_deepspeed.py copied to benchmarks/reference_probe.py.
set -uo pipefail
OUT=${OUT:-speed-results}
RUNS=${RUNS:-/tmp/zerotrain-speed}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
common=(configs/gpt2-124m.toml --run.checkpoints=false --run.tensorboard=false --run.resume= --train.eval_interval=0
        --train.early_stop_patience=0)

train() {  # train GPUS PORT NAME OVERRIDES...
  local gpus=$1 port=$2 name=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpus timeout 500 torchrun --nproc_per_node 2 --master_port "$port" -m zerotrain train "${common[@]}" \
    --run.out_dir="$RUNS/$name" "$@" --overwrite > "$RUNS/$name.log" 2>&1 || echo "FAILED $name ($?)"
  python3 - "$RUNS/$name/metrics.jsonl" "$name" >> "$OUT/speed.txt" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
r = rows[-1]
mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
print(f"{sys.argv[2]:44s} step {r['step']:4d} loss {r['loss']:.4f} {r['tokens_per_s']:>10,.0f} tok/s mfu {mfu:>6s} "
      f"peak {r['peak_mem_bytes'] / 2**30:.2f} GiB reserved {r['peak_reserved_bytes'] / 2**30:.2f} GiB")
EOF
  cp "$RUNS/$name/metrics.jsonl" "$OUT/lanes/metrics-$name.jsonl" 2>/dev/null
}
mkdir -p "$OUT/lanes"
{
  echo "date $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
  python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt"

if [ "${1:-}" = more ]; then  # larger micro-batches, on GPUs 0,1 only
  train 0,1 29610 124m-z1-mb32-ga4-fast --train.max_steps=40 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=4 \
    --deepspeed.zero_stage=1 --train.compile=blocks
  train 0,1 29610 124m-z1-mb64-ga2-fast --train.max_steps=40 --train.log_interval=10 --train.micro_batch_size=64 --train.grad_accum=2 \
    --deepspeed.zero_stage=1 --train.compile=blocks
  train 0,1 29610 xl-z1-mb16-ga4-fast --model.preset=gpt2-xl --train.max_steps=12 --train.log_interval=4 --train.micro_batch_size=16 \
    --train.grad_accum=4 --deepspeed.zero_stage=1 --train.compile=blocks
  train 0,1 29610 xl-z2-mb16-ga4-fast --model.preset=gpt2-xl --train.max_steps=12 --train.log_interval=4 --train.micro_batch_size=16 \
    --train.grad_accum=4 --deepspeed.zero_stage=2 --train.compile=blocks
  tar czf "$OUT/metrics-more.tgz" -C "$OUT/lanes" $(cd "$OUT/lanes" && ls metrics-*.jsonl) 2>/dev/null
  rm -rf "$OUT/lanes"
  cat "$OUT/speed.txt"
  exit 0
fi
(
  train 0,1 29610 124m-z2-mb16-ga8-fast --train.max_steps=40 --train.log_interval=10 --train.micro_batch_size=16 --train.grad_accum=8 \
    --deepspeed.zero_stage=2 --train.compile=blocks
  train 0,1 29610 124m-z1-mb32-ga4-fast --train.max_steps=40 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=4 \
    --deepspeed.zero_stage=1 --train.compile=blocks
  train 0,1 29610 xl-z2-mb8-ga8-fast --model.preset=gpt2-xl --train.max_steps=12 --train.log_interval=4 --train.micro_batch_size=8 \
    --train.grad_accum=8 --deepspeed.zero_stage=2 --train.compile=blocks
  CUDA_VISIBLE_DEVICES=0,1 timeout 300 torchrun --nproc_per_node 2 --master_port 29610 benchmarks/reference_probe.py --model 124m --mb 16 \
    --ga 8 --stages 2 --impls hf --steps 10 --warm 3 2>&1 | grep RESULT >> "$OUT/speed.txt"
) &
(
  for c in blocks none; do
    CUDA_VISIBLE_DEVICES=2,3 timeout 300 torchrun --nproc_per_node 2 --master_port 29620 benchmarks/memory_probe.py zerotrain --model gpt2 \
      --zero 2 --micro-batch 16 --compile $c --snapshot --out "$OUT/lanes/mem" > "$RUNS/mem-$c.log" 2>&1 || echo "FAILED mem $c"
  done
  train 2,3 29620 124m-z2-mb16-parity-fast --train.max_steps=200 --train.log_interval=10 --train.micro_batch_size=16 --train.grad_accum=1 \
    --deepspeed.zero_stage=2 --train.compile=blocks
  train 2,3 29620 124m-z2-mb16-parity-plain --train.max_steps=200 --train.log_interval=10 --train.micro_batch_size=16 --train.grad_accum=1 \
    --deepspeed.zero_stage=2 --train.compile=none --train.fused_loss=false
  train 2,3 29620 xl-z1-mb8-ga8-fast --model.preset=gpt2-xl --train.max_steps=12 --train.log_interval=4 --train.micro_batch_size=8 \
    --train.grad_accum=8 --deepspeed.zero_stage=1 --train.compile=blocks
) &
wait
cat "$OUT"/lanes/mem/measurements.jsonl > "$OUT/memory.jsonl" 2>/dev/null
for s in "$OUT"/lanes/mem/*.pickle; do
  [ -e "$s" ] && python3 benchmarks/memory_snapshot_report.py "$s" --top 22 >> "$OUT/snapshots.txt"
done
python3 - "$OUT" <<'EOF' >> "$OUT/speed.txt"
import json, sys
a = {r["step"]: r["loss"] for r in map(json.loads, open(f"{sys.argv[1]}/lanes/metrics-124m-z2-mb16-parity-fast.jsonl")) if "loss" in r}
b = {r["step"]: r["loss"] for r in map(json.loads, open(f"{sys.argv[1]}/lanes/metrics-124m-z2-mb16-parity-plain.jsonl")) if "loss" in r}
diffs = [abs(a[s] - b[s]) / b[s] for s in sorted(set(a) & set(b))]
print(f"parity over {len(diffs)} logged steps: max rel loss diff {max(diffs):.4f}, final fast {a[max(a)]:.4f} plain {b[max(b)]:.4f}")
EOF
tar czf "$OUT/metrics.tgz" -C "$OUT/lanes" $(cd "$OUT/lanes" && ls metrics-*.jsonl) 2>/dev/null
rm -rf "$OUT/lanes"
for f in "$RUNS"/*.log; do echo "== $f"; grep -v "Warning\|warn(" "$f" | tail -4; done > "$OUT/logs.txt"
cat "$OUT/speed.txt"
