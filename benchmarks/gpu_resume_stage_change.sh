#!/usr/bin/env bash
# One GPU: a checkpoint saved at ZeRO-2 resumes at ZeRO-3 (issue #25's GPU bar). GPT-2 124M on Shakespeare, bf16:
# a straight ZeRO-2 run of 2N steps saving at step N, then its step_N resumed at ZeRO-3 (zerotrain converts it
# to a universal checkpoint first) for steps N+1..2N; prints both loss curves and the largest relative difference.
#   OUT=results N=20 [EXTRA="--train.compile=none"] bash benchmarks/gpu_resume_stage_change.sh
set -uo pipefail
OUT=${OUT:-resume-results}; N=${N:-20}; RUNS=${RUNS:-/tmp/zerotrain-resume}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
common=(--train.max_steps=$((2 * N)) --train.log_interval=1 --train.eval_interval=0 --train.early_stop_patience=0
  --train.micro_batch_size=8 --train.grad_accum=2 --run.tensorboard=false --overwrite ${EXTRA:-})
python3 -m zerotrain train configs/gpt2-124m.toml --run.out_dir="$RUNS/straight-z2" --run.resume= \
  --deepspeed.zero_stage=2 --train.save_interval="$N" --train.keep_last=4 "${common[@]}" > "$OUT/straight-z2.log" 2>&1 \
  || echo "straight run failed: $(tail -3 "$OUT/straight-z2.log")"
python3 -m zerotrain checkpoint info "$RUNS/straight-z2/checkpoints/step_$N" > "$OUT/info.txt" 2>&1
python3 -m zerotrain train configs/gpt2-124m.toml --run.out_dir="$RUNS/resumed-z3" \
  --run.resume="$RUNS/straight-z2/checkpoints/step_$N" --deepspeed.zero_stage=3 --train.save_interval=0 "${common[@]}" \
  > "$OUT/resumed-z3.log" 2>&1 || echo "resumed run failed: $(tail -3 "$OUT/resumed-z3.log")"
python3 - "$RUNS" "$N" <<'PY' | tee "$OUT/resume.txt"
import json, sys
runs, n = sys.argv[1], int(sys.argv[2])
def losses(name):
    try:
        return {r["step"]: r for r in map(json.loads, open(f"{runs}/{name}/metrics.jsonl")) if "loss" in r}
    except OSError:
        return {}
a, b = losses("straight-z2"), losses("resumed-z3")
common = sorted(set(a) & set(b))
print(f"resumed steps {min(b, default=None)}..{max(b, default=None)}; straight steps 1..{max(a, default=None)}")
for s in common:
    print(f"step {s}: z2 {a[s]['loss']:.5f}  z3-resumed {b[s]['loss']:.5f}  lr {a[s]['lr']:.3e}/{b[s]['lr']:.3e}  "
          f"tokens {a[s].get('tokens_seen')}/{b[s].get('tokens_seen')}")
if common:
    print(f"largest relative loss difference over {len(common)} steps: "
          f"{max(abs(a[s]['loss'] - b[s]['loss']) / a[s]['loss'] for s in common):.2e}")
PY
grep -E "convert|resum|ZeRO|zero_stage" "$OUT/resumed-z3.log" | head -8
