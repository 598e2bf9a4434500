#!/usr/bin/env bash
# Issue #23's GPU bars on one GPU, in parts that each finish before a deadline (END seconds from the start):
#   8b   Llama-3-8B shape (vocabulary 50304), micro-batch 2 × accumulation ACCUM (16) × 2048, activation checkpointing,
#        ZeRO-3 with deepspeed.offload_optimizer = "auto" (the planner's least offload that fits: on an H200 with
#        125 GiB host RAM a 0.2 partial offload, on an H100 0.65): tokens/s, GPU peak and host RAM against the plan
#   3b   Llama-3.2-3B shape, micro-batch 4 × 2 × 2048, checkpointing, ZeRO-3: V3 variants of benchmarks/hf_fast_path.py
#        (default: fast = no offload, the bar's denominator; offload = the whole optimizer on the CPU; part50 = half of
#        it, offload ratio 0.5; super = DeepSpeed's SuperOffload merged through deepspeed.config; zenflow-z3 is refused
#        since session 26: it crashed on its first step, docs/log/2026-12-07-session26-one-h100.md)
#   tiny TinyLlama-1.1B, ZeRO-2 fast path vs the raw peer and ZeRO-3 (issue #24's MFU and ZeRO-3 bars)
#   smol SmolLM2-135M shape, ZeRO-2 vs ZeRO-3 (issue #24)
#   curves  the GPU tests of the fast path: Liger modules against transformers', 200-step loss curves (issue #24)
# First DeepSpeedCPUAdam's rate on this host (benchmarks/cpu_adam_rate.py, 100M parameters: beyond the caches).
#   OUT=results PARTS="8b 3b" END=560 bash benchmarks/gpu_offload.sh
# Each variant appends a JSON line to $OUT/hf/hf_fast_path.jsonl; a summary table is printed last.
T0=$SECONDS; END=${END:-560}; OUT=${OUT:-offload-results}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
mkdir -p "$OUT/hf"
{ date -u; git log --oneline -1 | cut -c1-72
  nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm --format=csv,noheader; nproc; free -g | head -2
  lscpu | grep -E "Model name|Thread|Core|Socket|L3"; } | tee "$OUT/env.txt"
left() { echo $(( END - (SECONDS - T0) )); }
python3 benchmarks/cpu_adam_rate.py --params 100000000 --seconds 3 2>&1 | grep -v -i warn | tail -2 | tee "$OUT/cpu_adam.txt"
for part in ${PARTS:-8b 3b}; do
  L=$(left); [ "$L" -lt 40 ] && { echo "skip $part: $L s left"; continue; }
  echo "== part $part at $((SECONDS - T0)) s, $L s left"
  case $part in
    8b) timeout "$L" python3 benchmarks/hf_fast_path.py --shape llama3-8b --micro-batch 2 --grad-accum "${ACCUM:-16}" \
          --checkpointing --variants auto-z3 --steps "${STEPS8:-6}" --log-interval 2 --out "$OUT/hf" ;;
    3b) timeout "$L" python3 benchmarks/hf_fast_path.py --shape llama3.2-3b --checkpointing \
          --variants "${V3:-fast-z3,offload-z3,part50-z3,super-z3}" --steps "${STEPS3:-6}" --log-interval 2 --out "$OUT/hf" ;;
    tiny) timeout "$L" python3 benchmarks/hf_fast_path.py --shape tinyllama-1.1b --variants "${VT:-fast-z2,peer-z2,fast-z3}" \
          --steps 15 --out "$OUT/hf" ;;
    smol) timeout "$L" python3 benchmarks/hf_fast_path.py --shape smollm2-135m --variants fast-z2,fast-z3 --steps 15 \
          --out "$OUT/hf" ;;
    curves) timeout "$L" python3 -m pytest --full -m gpu tests/test_gpu_hf.py -q -p no:cacheprovider 2>&1 | tail -15 ;;
    *) echo "unknown part $part (8b, 3b, tiny, smol, curves)" >&2 ;;
  esac
  echo "part $part rc $? at $((SECONDS - T0)) s"
  rm -rf models/llama3-8b-v50304 /tmp/hf_fast_path  # 16 GB of weights; the runs' directories
done
for f in "$OUT"/hf/*.log; do echo "== $f"; grep -E "error|Error|step [0-9]+/|offload|kept|Killed" "$f" | tail -6 | cut -c1-300; done
python3 - "$OUT/hf/hf_fast_path.jsonl" <<'PY'
import json, os, sys
rows = [json.loads(x) for x in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
print("| shape | variant | rc | tokens/s | MFU | GPU peak | plan | host peak | plan | offload chosen |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    g = lambda k, fmt="{:.2f}": fmt.format(r[k]) if isinstance(r.get(k), (int, float)) else "-"
    print(f"| {r['shape']} | {r['variant']} | {r.get('rc')} | {g('tokens_per_s', '{:,.0f}')} | {g('mfu', '{:.1%}')} | "
          f"{g('peak_gib')} | {g('planned_peak_gib')} | {g('host_peak_gib')} | {g('planned_host_gib')} | {r.get('offload_choice') or ''} |")
PY
