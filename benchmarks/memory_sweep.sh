#!/usr/bin/env bash
# The GPU memory measurements `zerotrain plan` is checked against (tests/memory_measurements.jsonl).
# Runs benchmarks/memory_probe.py once per configuration, two configurations at a time on GPU pairs
# (0,1) and (2,3) of a 4-GPU machine; 1-GPU configurations take one GPU of a pair.
#   OUT=results bash benchmarks/memory_sweep.sh small|large
# Needs data/shakespeare-gpt2. Writes $OUT/measurements.jsonl, $OUT/snapshots.txt (where the peak of each
# --snapshot configuration comes from) and one log per lane.
set -uo pipefail
PART=${1:-small}
OUT=${OUT:-memory-results}
mkdir -p "$OUT/lanes"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

# lane GPUS PORT, then one configuration per line on stdin: NPROC IMPL ARGS...
lane() {
  local gpus=$1 port=$2 name=$3
  while read -r nproc impl args; do
    [ -z "$nproc" ] && continue
    local visible=$gpus
    [ "$nproc" = 1 ] && visible=${gpus%%,*}
    echo "=== $nproc $impl $args" >> "$OUT/lanes/$name.log"
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$visible timeout 400 torchrun --nproc_per_node "$nproc" --master_port "$port" \
      benchmarks/memory_probe.py "$impl" $args --out "$OUT/lanes/$name" >> "$OUT/lanes/$name.log" 2>&1 \
      || echo "FAILED ($?): $nproc $impl $args" | tee -a "$OUT/lanes/$name.log"
    grep MEASURED "$OUT/lanes/$name.log" | tail -1
  done
}

if [ "$PART" = small ]; then
lane 0,1 29510 a <<'EOF' &
2 zerotrain --model gpt2 --zero 0 --micro-batch 16 --snapshot
2 zerotrain --model gpt2 --zero 1 --micro-batch 16 --snapshot
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --snapshot
2 zerotrain --model gpt2 --zero 3 --micro-batch 16 --snapshot
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --grad-accum 4
2 zerotrain --model gpt2 --zero 1 --micro-batch 16 --grad-accum 4
2 zerotrain --model gpt2 --zero 2 --micro-batch 8 --seq-len 512
2 zerotrain --model gpt2 --zero 2 --micro-batch 32
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --checkpointing --snapshot
2 zerotrain --model gpt2 --zero 3 --micro-batch 16 --checkpointing
2 zerotrain --model gpt2 --zero 2 --micro-batch 8 --dtype fp32
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --dtype fp16
EOF
lane 2,3 29520 b <<'EOF' &
2 hf --model hf-gpt2:gpt2 --zero 0 --micro-batch 16 --snapshot
2 hf --model hf-gpt2:gpt2 --zero 1 --micro-batch 16 --snapshot
2 hf --model hf-gpt2:gpt2 --zero 2 --micro-batch 16 --snapshot
2 hf --model hf-gpt2:gpt2 --zero 3 --micro-batch 16 --snapshot
2 hf --model llama:smollm2-135m --zero 2 --micro-batch 16 --snapshot
2 hf --model llama:smollm2-135m --zero 3 --micro-batch 16
1 zerotrain --model gpt2 --zero 2 --micro-batch 16
1 zerotrain --model gpt2 --zero 3 --micro-batch 16
1 zerotrain --model gpt2 --zero 0 --micro-batch 16
2 zerotrain --model gpt2-medium --zero 2 --micro-batch 8
2 zerotrain --model gpt2-medium --zero 3 --micro-batch 8
EOF
elif [ "$PART" = fast-a ] || [ "$PART" = fast-b ]; then
# zerotrain's default GPU path: compiled blocks below stage 3 and the fused loss (train.compile = auto)
if [ "$PART" = fast-b ]; then
lane 2,3 29540 fb <<'EOF'
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --compile auto --snapshot
2 zerotrain --model gpt2 --zero 0 --micro-batch 16 --compile auto
2 zerotrain --model gpt2 --zero 1 --micro-batch 16 --compile auto
2 zerotrain --model gpt2 --zero 3 --micro-batch 16 --compile auto
2 zerotrain --model gpt2 --zero 2 --micro-batch 32 --compile auto
2 zerotrain --model gpt2 --zero 2 --micro-batch 16 --checkpointing --compile auto
2 zerotrain --model gpt2-medium --zero 2 --micro-batch 8 --grad-accum 2 --compile auto
1 zerotrain --model gpt2 --zero 2 --micro-batch 16 --compile auto
2 zerotrain --model gpt2 --zero 3 --micro-batch 8 --checkpointing --compile auto
EOF
else
lane 0,1 29550 fa <<'EOF'
2 zerotrain --model gpt2-xl --zero 2 --micro-batch 8 --compile auto
2 zerotrain --model gpt2-xl --zero 3 --micro-batch 8 --compile auto
2 zerotrain --model gpt2-xl --zero 1 --micro-batch 8 --grad-accum 4 --compile auto
2 zerotrain --model gpt2-large --zero 1 --micro-batch 8 --seq-len 512 --compile auto
EOF
fi
elif [ "$PART" = holdout ]; then
# configurations the planner's formulas were not derived from: other shapes, 1 and 4 GPUs
lane 0,1 29510 a <<'EOF' &
2 zerotrain --model gpt2-large --zero 3 --micro-batch 4 --grad-accum 2
1 zerotrain --model gpt2-medium --zero 0 --micro-batch 4 --seq-len 512 --dtype fp16
1 zerotrain --model gpt2-xl --zero 3 --micro-batch 8
1 zerotrain --model gpt2 --zero 2 --micro-batch 24 --offload-optimizer cpu
2 hf --model hf-gpt2:gpt2-medium --zero 1 --micro-batch 8 --checkpointing
2 zerotrain --model gpt2-large --zero 2 --micro-batch 12 --seq-len 768 --grad-accum 2
EOF
lane 2,3 29520 b <<'EOF' &
2 hf --model llama:tinyllama-1.1b --zero 1 --micro-batch 4 --seq-len 2048
1 hf --model llama:smollm2-135m --zero 0 --micro-batch 8
2 hf --model llama:tinyllama-1.1b --zero 2 --micro-batch 8 --offload-optimizer cpu
1 zerotrain --model gpt2-xl --zero 1 --micro-batch 4 --checkpointing
2 hf --model hf-gpt2:gpt2-large --zero 3 --micro-batch 4 --grad-accum 4
EOF
wait
lane 0,1,2,3 29530 c <<'EOF'
4 zerotrain --model gpt2-xl --zero 2 --micro-batch 8
4 zerotrain --model gpt2-xl --zero 3 --micro-batch 8
4 hf --model llama:tinyllama-1.1b --zero 3 --micro-batch 8
4 zerotrain --model gpt2-medium --zero 1 --micro-batch 16 --grad-accum 2
EOF
else
lane 0,1 29510 a <<'EOF' &
2 zerotrain --model gpt2-xl --zero 0 --micro-batch 8
2 zerotrain --model gpt2-xl --zero 1 --micro-batch 8
2 zerotrain --model gpt2-xl --zero 2 --micro-batch 8
2 zerotrain --model gpt2-xl --zero 3 --micro-batch 8
2 zerotrain --model gpt2-xl --zero 2 --micro-batch 8 --grad-accum 8
2 zerotrain --model gpt2-xl --zero 2 --micro-batch 16 --checkpointing
2 zerotrain --model gpt2-xl --zero 3 --micro-batch 16 --checkpointing
EOF
lane 2,3 29520 b <<'EOF' &
2 zerotrain --model gpt2-large --zero 1 --micro-batch 8
2 zerotrain --model gpt2-xl --zero 2 --micro-batch 8 --offload-optimizer cpu
2 zerotrain --model gpt2-medium --zero 3 --micro-batch 8 --offload-optimizer cpu --offload-params cpu
2 hf --model hf-gpt2:gpt2-xl --zero 2 --micro-batch 8
2 hf --model hf-gpt2:gpt2-xl --zero 3 --micro-batch 4
2 hf --model llama:tinyllama-1.1b --zero 2 --micro-batch 8
2 hf --model llama:tinyllama-1.1b --zero 3 --micro-batch 8 --checkpointing
EOF
fi
wait
cat "$OUT"/lanes/*/measurements.jsonl >> "$OUT/measurements.jsonl" 2>/dev/null
for s in "$OUT"/lanes/*/*.pickle; do
  [ -e "$s" ] && python3 benchmarks/memory_snapshot_report.py "$s" --top 25 >> "$OUT/snapshots.txt" && rm "$s"
done
for f in "$OUT"/lanes/*.log; do grep -v "Warning\|warn(" "$f" | tail -c 200000 > "$OUT/$(basename "$f")"; done
rm -rf "$OUT/lanes"
python3 - "$OUT/measurements.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['name']:60s} setup {r['setup_allocated'] / 2**30:7.2f}  peak {r['peak_allocated'] / 2**30:7.2f}  reserved {r['peak_reserved'] / 2**30:7.2f} GiB")
EOF
