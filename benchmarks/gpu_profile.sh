#!/usr/bin/env bash
# Profiled speed runs of `zerotrain train` (GPT-2 124M and XL, bf16, seq 1024) on a 4-GPU host, two lanes on GPU
# pairs (0,1) and (2,3). The `speed` runs of 2026-11-21 also compared SDPA backends and ZeRO-3 with compiled blocks
# through options that are gone (docs/performance.md says why); today it runs the defaults and larger micro-batches.
# Runs profile their last 2 steps (train.profile_steps) unless the mode turns it off: summaries land in $OUT.
#   OUT=results bash benchmarks/gpu_profile.sh speed     # the A/B runs
#   OUT=results bash benchmarks/gpu_profile.sh compare   # 2 GPUs vs 1 GPU and vs the HF GPT2 + raw DeepSpeed probe
#   OUT=results bash benchmarks/gpu_profile.sh profiles  # the defaults profiled (XL ZeRO-2/3, 124M ZeRO-2), pytest -m gpu
#   OUT=results bash benchmarks/gpu_profile.sh zero2     # 124M and XL ZeRO-2 only, side by side
# GPT-2's batch (512 sequences, 524,288 tokens) or llm.c's XL batch (1,048,576 tokens), docs/benchmarks.md:
#   batches   124M ZeRO-2 64 × 4, XL ZeRO-2 16 × 16, XL ZeRO-1 32 × 8; the ZeRO-3 compile check's bisection; XL ZeRO-3 16 × 4
#   batches2  XL ZeRO-1 32 × 16, XL ZeRO-2 32 × 8, 124M ZeRO-2 128 × 2; the leaf-hook probe; XL ZeRO-3 32 × 8
#   zero3     XL ZeRO-3 32 × 8 with blocks gathered whole and layer by layer, the 200-step 124M ZeRO-3 curves
#   zero1     XL ZeRO-1 32 × 16 without overlap_comm and with coordinate-descent tuning; pytest -m gpu; the HF probe at 16 × 16
#   tuned     the defaults (with coordinate-descent tuning): XL ZeRO-1 32 × 16, XL ZeRO-2 32 × 8, 124M ZeRO-2 128 × 2
#   best      XL ZeRO-1 32 × 16 and ZeRO-2 32 × 8, profiled
#   ab        same host: XL ZeRO-1 32 × 16 with and without DeepSpeed's bf16 overflow check; XL ZeRO-2 32 × 8 with the GELU
#             in cuBLASLt epilogues and in separate kernels
#   final     same GPUs, one after another: zerotrain XL ZeRO-2 at 16 × 16 and 32 × 8, the HF probe at 16 × 16 (it runs out
#             of memory at 32 × 8); beside them pytest -m gpu and 200-step 124M curves, GELU fused and separate
#   gelu      the GELU in cuBLASLt epilogues: its GPU tests and speed check, then XL ZeRO-1 32 × 16 and ZeRO-2 32 × 8
#   buckets   XL ZeRO-2 32 × 8 with DeepSpeed's reduce bucket at its default (5e8 elements), 2e8 and 5e7 (one profiled)
#   buckets16 XL ZeRO-2 32 × 16 with the reduce bucket at 2e8 and 5e8 elements, in both orders on the two lanes
#   epilogue  XL ZeRO-2 32 × 16 with and without deepspeed.reduce_without_host_wait, in both orders on the two lanes
#   confirm   pytest -m gpu tests/ then XL ZeRO-2 32 × 16 on GPUs 0,1; XL ZeRO-2 and ZeRO-1 32 × 16 on GPUs 2,3
#   proto     pytest -m gpu tests/ on GPUs 0,1; XL ZeRO-2 32 × 16 with NCCL's default protocol choice and NCCL_PROTO=Simple
#   reduce    benchmarks/attention_speed.py on GPU 0; XL ZeRO-2 32 × 16 with DeepSpeed's one all-reduce per bucket
#             (use_multi_rank_bucket_allreduce) against one reduce per owning rank, in both orders, and with NCCL_MAX_CTAS=8
#   mb40      XL ZeRO-2 at micro-batches 40 × 13 and 44 × 12 (expandable segments) beside 32 × 16, XL ZeRO-1 40 × 13;
#             the GPUs' clocks, power and temperature sampled every 10 s into clocks.csv
#   inplace   XL ZeRO-2 32 × 16 with the gradient buckets all-reduced in place and copied (DeepSpeed's way), in both
#             orders on the two lanes; clocks.csv as in mb40 (the in-place way and its ZEROTRAIN_AB_INPLACE switch were
#             in 82afbc7 only: +0.1-0.2%, within the noise, so the next commit took them out)
#   gaps      XL ZeRO-2 32 × 8 profiled, without and with Python stacks (ZEROTRAIN_PROFILE_STACK=1): benchmarks/idle_gaps.py
#             on each rank's trace, into gaps-*.txt
#   hfratio   HF GPT2 + raw DeepSpeed (the peers' probe) at its reference shape 8 × 8 and at 16 × 16, each on the GPUs
#             zerotrain's XL ZeRO-2 32 × 16 runs on just before or after; clocks.csv as in mb40
#   accum     gradients accumulated in bf16 (DeepSpeed's default) and in fp32 (data_types.grad_accum_dtype): XL ZeRO-2
#             32 × 16 on GPUs 0,1 and XL ZeRO-1 32 × 16 on GPUs 2,3, each pair one after the other; clocks.csv as in mb40
#   accum2    deepspeed.grad_accum_dtype = "fp32": XL ZeRO-1, 2 and 3 at micro-batch 1 × 2 (where the optimizer step's
#             buffers, not activations, make the peak: the planner's terms for it); 124M ZeRO-2 16 × 32 for 120 steps
#             with gradients summed in bf16 (GPUs 0,1) and in fp32 (GPUs 2,3), the same data and seed
#   matmuls   train.tuned_matmuls (each matmul by the faster of PyTorch's kernel and cuBLASLt's best candidate) on and
#             off: XL ZeRO-2 32 × 16 on GPUs 0,1, on / off / on one after the other (fits a 2-GPU host); clocks.csv
#   flash3    train.flash_attention_3 (FlashAttention-3's kernels) on and off: XL ZeRO-2 32 × 16 on GPUs 0,1, on / off / on
#             one after the other; clocks.csv as in mb40. Needs FlashAttention-3 installed or ZEROTRAIN_FLASH3_LIBRARY set
#             (zerotrain/kernels/flash3.py)
#   hfbest    a 2-GPU host: zerotrain's XL ZeRO-2 32 × 16 (defaults: FlashAttention-3 where installed), then the HF probe at
#             16 × 16, its best shape, on the same GPUs
#   flash3b   with it: XL ZeRO-1 32 × 16, 124M ZeRO-2 128 × 2, and 200-step 124M ZeRO-2 32 × 2 curves with it and without
# Needs data/shakespeare-gpt2 and benchmarks/reference_probe.py (../shared/reference/probe_raw_deepspeed.py).
set -uo pipefail
OUT=${OUT:-profile-results}
RUNS=${RUNS:-/tmp/zerotrain-profile}
mkdir -p "$OUT/lanes" "$RUNS"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
common=(configs/gpt2-124m.toml --run.checkpoints=false --run.tensorboard=false --run.resume= --train.eval_interval=0
        --train.early_stop_patience=0 --train.profile_steps=2)
{
  echo "date $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1
  python3 -c "import torch, deepspeed, transformers; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__, 'nccl', torch.cuda.nccl.version())"
  env | grep '^NCCL_' | sort | tr '\n' ' '; echo
} > "$OUT/env.txt"

train() {  # train GPUS PORT NAME OVERRIDES...
  local gpus=$1 port=$2 name=$3; shift 3
  local n=$(( $(tr -cd , <<< "$gpus" | wc -c) + 1 ))
  CUDA_VISIBLE_DEVICES=$gpus timeout ${RUN_TIMEOUT:-400} torchrun --nproc_per_node $n --master_port "$port" -m zerotrain train "${common[@]}" \
    --run.out_dir="$RUNS/$name" "$@" --overwrite > "$RUNS/$name.log" 2>&1 || echo "FAILED $name ($?)" >> "$OUT/speed.txt"
  python3 - "$RUNS/$name" "$name" "$n" >> "$OUT/speed.txt" <<'EOF'
import json, sys
run, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"loss"' in l]
except OSError:
    sys.exit()
timed = [r for r in rows if not r.get("profiled")][1:] or rows  # the first window holds compilation
best = max(timed, key=lambda r: r["tokens_per_s"])
last = timed[-1]
mfu = lambda r: "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
line = (f"{name:36s} {n} GPU step {last['step']:4d} loss {rows[-1]['loss']:.4f} last {last['tokens_per_s']:>10,.0f} tok/s {mfu(last):>6s} "
        f"best {best['tokens_per_s']:>10,.0f} {mfu(best):>6s} peak {rows[-1]['peak_mem_bytes'] / 2**30:.2f} GiB")
try:
    p = json.load(open(f"{run}/profile/summary-rank0.json"))
    cats = " ".join(f"{k.split()[0]}={1000 * v:.0f}" for k, v in p["kernel_s_by_category"].items())
    line += (f"\n    profile step {1000 * p['step_wall_s']:.0f} ms: {cats}; comm wait {1000 * p['communication_wait_s']:.1f} "
             f"hidden {1000 * p['communication_hidden_s']:.1f}; idle {1000 * p['gpu_idle_s']:.1f} ms")
except (OSError, KeyError):
    pass
print(line)
EOF
  mkdir -p "$OUT/lanes/$name"
  cp "$RUNS/$name/metrics.jsonl" "$RUNS/$name"/profile/summary-rank*.json "$OUT/lanes/$name/" 2>/dev/null
  grep -v "Warning\|warn(" "$RUNS/$name.log" | tail -3 > "$OUT/lanes/$name/log-tail.txt"
}

sample_clocks() {  # the GPUs' SM clocks, power and throttle reasons every 10 s into clocks.csv (its pid in $sampler)
  nvidia-smi --query-gpu=timestamp,index,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -l 10 > "$OUT/clocks.csv" 2>&1 & sampler=$!
}

s124=(--train.max_steps=30 --train.log_interval=5 --train.micro_batch_size=64 --train.grad_accum=2)
xl=(--model.preset=gpt2-xl --train.max_steps=12 --train.log_interval=2)
case "${1:-speed}" in
speed)
  (
    train 0,1 29610 124m-z2-mb64 "${s124[@]}" --deepspeed.zero_stage=2
    train 0,1 29610 xl-z2-mb16 "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=2
  ) &
  (
    train 2,3 29620 xl-z3-mb16 "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=3
    train 2,3 29620 xl-z1-mb32 "${xl[@]}" --train.micro_batch_size=32 --train.grad_accum=2 --deepspeed.zero_stage=1
  ) &
  wait
  ;;
zero2)  # the two ZeRO-2 rows alone, one per lane
  train 0,1 29610 124m-z2-mb64 "${s124[@]}" --deepspeed.zero_stage=2 &
  train 2,3 29620 xl-z2-mb16 "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=2 &
  wait
  ;;
compare)
  shift
  (
    train 0,1 29610 xl-z2-mb16-2gpu "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=2 "$@"
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 torchrun --nproc_per_node 2 --master_port 29610 benchmarks/reference_probe.py --model xl --mb 16 \
      --ga 4 --stages 2 --impls hf --steps 6 --warm 2 2>&1 | grep RESULT >> "$OUT/speed.txt"
  ) &
  (
    train 2 29620 xl-z2-mb16-1gpu "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=2 "$@"
  ) &
  wait
  ;;
profiles)  # the trainer's defaults, profiled (kernel categories, communication wait, GPU idle by host phase); then the GPU tests
  (
    train 0,1 29610 xl-z2-mb16 "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=2
    train 0,1 29610 xl-z3-mb16 "${xl[@]}" --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=3
  ) &
  (
    train 2,3 29620 124m-z2-mb64 "${s124[@]}" --deepspeed.zero_stage=2
    CUDA_VISIBLE_DEVICES=2,3 timeout 420 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 > "$OUT/pytest_gpu.txt"
  ) &
  wait
  ;;
batches)
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 124m-z2-mb64-ga4 "${s124[@]}" --train.grad_accum=4 --deepspeed.zero_stage=2 "${noprof[@]}"
    train 0,1 29610 xl-z2-mb16-ga16 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=16 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}"
    train 0,1 29610 xl-z1-mb32-ga8 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=1 "${noprof[@]}"
  ) &
  (
    CUDA_VISIBLE_DEVICES=2,3 timeout 330 torchrun --nproc_per_node 2 --master_port 29620 benchmarks/zero3_compile_check.py eager-leaf \
      compiled-leaf dynamo-eager-leaf aot-eager-leaf compiled-leaf-nodonate compiled-leaf-noreuse compiled-leaf-latesync \
      compiled-leaf-persist0 compiled-leaf-nocontig 2>&1 | grep "CHECK\|Error" > "$OUT/check.txt"
    train 2,3 29620 xl-z3-mb16-ga4 "${xl[@]}" --train.max_steps=10 --train.micro_batch_size=16 --train.grad_accum=4 --deepspeed.zero_stage=3
  ) &
  wait
  cat "$OUT/check.txt" >> "$OUT/speed.txt"
  ;;
batches2)
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 xl-z1-mb32-ga16 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=1 "${noprof[@]}"
    train 0,1 29610 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2 "${noprof[@]}"
    train 0,1 29610 124m-z2-mb128-ga2 "${s124[@]}" --train.micro_batch_size=128 --train.grad_accum=2 --deepspeed.zero_stage=2 "${noprof[@]}"
  ) &
  (
    CUDA_VISIBLE_DEVICES=2,3 timeout 200 torchrun --nproc_per_node 2 --master_port 29620 benchmarks/zero3_compile_check.py eager-leaf-probe \
      compiled-leaf-probe compiled-leaf-default-wait 2>&1 | grep "CHECK\|PROBE\|Error" > "$OUT/check.txt"
    train 2,3 29620 xl-z3-mb32-ga8 "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=3
  ) &
  wait
  cat "$OUT/check.txt" >> "$OUT/speed.txt"
  ;;
zero3)  # (the HF probe at 32 × 8 ran out of memory on 141 GB: it peaked at 95 GiB at 16 × 16)
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 xl-z3-mb32-ga8 "${xl[@]}" --train.max_steps=14 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=3
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 torchrun --nproc_per_node 2 --master_port 29610 benchmarks/reference_probe.py --model xl --mb 32 \
      --ga 8 --stages 2 --impls hf --steps 6 --warm 2 2>&1 | grep "RESULT\|Error" >> "$OUT/speed.txt"
    c124=(--train.max_steps=200 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=2 --deepspeed.zero_stage=3 "${noprof[@]}")
    train 0,1 29610 124m-z3-block-200 "${c124[@]}"
    train 0,1 29610 124m-z3-layer-200 "${c124[@]}" --deepspeed.zero3_gather_per_block=false
  ) &
  (
    train 2,3 29620 xl-z3-layer-mb32-ga8 "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=3 \
      --deepspeed.zero3_gather_per_block=false "${noprof[@]}"
    train 2,3 29620 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2 "${noprof[@]}"
  ) &
  wait
  ;;
zero1)  # (before coordinate-descent tuning became the default: it is switched on here by its environment variable)
  noprof=(--train.profile_steps=0)
  echo '{"zero_optimization": {"overlap_comm": false}}' > "$RUNS/no-overlap.json"
  (
    train 0,1 29610 xl-z1-mb32-ga16-nooverlap "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 \
      --deepspeed.zero_stage=1 --deepspeed.config="$RUNS/no-overlap.json" "${noprof[@]}"
    TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 train 0,1 29610 xl-z1-mb32-ga16-cdtune "${xl[@]}" --train.max_steps=6 \
      --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=1 "${noprof[@]}"
  ) &
  (
    CUDA_VISIBLE_DEVICES=2,3 timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -4 > "$OUT/pytest_gpu.txt"
    CUDA_VISIBLE_DEVICES=2,3 timeout 200 torchrun --nproc_per_node 2 --master_port 29620 benchmarks/reference_probe.py --model xl --mb 16 \
      --ga 16 --stages 2 --impls hf --steps 4 --warm 2 2>&1 | grep "RESULT\|Error" >> "$OUT/speed.txt"
  ) &
  wait
  cat "$OUT/pytest_gpu.txt" >> "$OUT/speed.txt"
  ;;
tuned)
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 xl-z1-mb32-ga16 "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=1 "${noprof[@]}"
    train 0,1 29610 124m-z2-mb128-ga2 "${s124[@]}" --train.micro_batch_size=128 --train.grad_accum=2 --deepspeed.zero_stage=2 "${noprof[@]}"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=10 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2 "${noprof[@]}"
  ) &
  wait
  ;;
best)
  (
    train 0,1 29610 xl-z1-mb32-ga16 "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=1
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=10 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2
  ) &
  wait
  ;;
ab)
  noprof=(--train.profile_steps=0)
  echo '{"bf16": {"check_grad_overflow": false}}' > "$RUNS/no-overflow-check.json"
  echo '{"bf16": {"check_grad_overflow": true}}' > "$RUNS/overflow-check.json"
  (
    train 0,1 29610 xl-z1-mb32-ga16-check "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 \
      --deepspeed.zero_stage=1 --deepspeed.config="$RUNS/overflow-check.json" "${noprof[@]}"
    train 0,1 29610 xl-z2-mb32-ga8-separate-gelu "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=8 \
      --deepspeed.zero_stage=2 --train.fused_gelu=off "${noprof[@]}"
  ) &
  (
    train 2,3 29620 xl-z1-mb32-ga16-nocheck "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 \
      --deepspeed.zero_stage=1 --deepspeed.config="$RUNS/no-overflow-check.json" "${noprof[@]}"
    train 2,3 29620 xl-z2-mb32-ga8-cublaslt-gelu "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=8 \
      --deepspeed.zero_stage=2 --deepspeed.config="$RUNS/overflow-check.json" "${noprof[@]}"
  ) &
  wait
  ;;
final)
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 xl-z2-mb16-ga16 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=16 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}"
    CUDA_VISIBLE_DEVICES=0,1 timeout 200 torchrun --nproc_per_node 2 --master_port 29610 benchmarks/reference_probe.py --model xl --mb 16 \
      --ga 16 --stages 2 --impls hf --steps 4 --warm 2 2>&1 | grep "RESULT\|Error" >> "$OUT/speed.txt"
    train 0,1 29610 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2 "${noprof[@]}"
  ) &
  (
    CUDA_VISIBLE_DEVICES=2,3 timeout 240 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tail -4 > "$OUT/pytest_gpu.txt"
    c124=(--train.max_steps=200 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=2 --deepspeed.zero_stage=2 "${noprof[@]}")
    train 2,3 29620 124m-z2-gelu-cublaslt-200 "${c124[@]}"
    train 2,3 29620 124m-z2-gelu-separate-200 "${c124[@]}" --train.fused_gelu=off
  ) &
  wait
  cat "$OUT/pytest_gpu.txt" >> "$OUT/speed.txt"
  ;;
gelu)
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 -m pytest -q -m gpu tests/test_cublaslt.py -p no:cacheprovider 2>&1 | tail -4 >> "$OUT/speed.txt"
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 benchmarks/gelu_mlp_speed.py 2>&1 | grep "RESULT\|cuBLASLt\|Error" | tee "$OUT/mlp.txt" >> "$OUT/speed.txt"
  # the training runs only where the fused MLP beats the separate kernels, both compiled
  python3 -c "import re,sys; t=dict(re.findall(r'RESULT (.+?), compiled +([\d.]+) ms', open(sys.argv[1]).read())); sys.exit(float(t['cuBLASLt epilogues']) >= float(t['separate kernels']))" "$OUT/mlp.txt" \
    || { echo "fused MLP not faster: no training runs" >> "$OUT/speed.txt"; cat "$OUT/speed.txt"; exit 0; }
  noprof=(--train.profile_steps=0)
  (
    train 0,1 29610 xl-z1-mb32-ga16 "${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=1 "${noprof[@]}"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga8 "${xl[@]}" --train.max_steps=10 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2
  ) &
  wait
  ;;
buckets)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2)
  for n in 50000000 200000000 500000000; do echo "{\"zero_optimization\": {\"reduce_bucket_size\": $n}}" > "$RUNS/bucket-$n.json"; done
  (
    train 0,1 29610 xl-z2-mb32-ga8-bucket5e8 "${z2[@]}" --train.max_steps=8 --deepspeed.config="$RUNS/bucket-500000000.json" "${noprof[@]}"
    train 0,1 29610 xl-z2-mb32-ga8-bucket5e7 "${z2[@]}" --train.max_steps=8 --deepspeed.config="$RUNS/bucket-50000000.json" "${noprof[@]}"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga8-bucket2e8 "${z2[@]}" --train.max_steps=8 --deepspeed.config="$RUNS/bucket-200000000.json" "${noprof[@]}"
    train 2,3 29620 xl-z2-mb32-ga8-bucket5e7-profiled "${z2[@]}" --train.max_steps=10 --deepspeed.config="$RUNS/bucket-50000000.json"
  ) &
  wait
  ;;
buckets16)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  for n in 200000000 500000000; do echo "{\"zero_optimization\": {\"reduce_bucket_size\": $n}}" > "$RUNS/bucket-$n.json"; done
  (
    train 0,1 29610 xl-z2-mb32-ga16-bucket2e8-a "${z2[@]}" --deepspeed.config="$RUNS/bucket-200000000.json"
    train 0,1 29610 xl-z2-mb32-ga16-bucket5e8-a "${z2[@]}" --deepspeed.config="$RUNS/bucket-500000000.json"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga16-bucket5e8-b "${z2[@]}" --deepspeed.config="$RUNS/bucket-500000000.json"
    train 2,3 29620 xl-z2-mb32-ga16-bucket2e8-b "${z2[@]}" --deepspeed.config="$RUNS/bucket-200000000.json"
  ) &
  wait
  ;;
epilogue)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  (
    train 0,1 29610 xl-z2-mb32-ga16-streamwait-a "${z2[@]}" --deepspeed.reduce_without_host_wait=true
    train 0,1 29610 xl-z2-mb32-ga16-sync-a "${z2[@]}" --deepspeed.reduce_without_host_wait=false
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga16-sync-b "${z2[@]}" --deepspeed.reduce_without_host_wait=false
    train 2,3 29620 xl-z2-mb32-ga16-streamwait-b "${z2[@]}" --deepspeed.reduce_without_host_wait=true
  ) &
  wait
  ;;
confirm)
  noprof=(--train.profile_steps=0)
  big=("${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 "${noprof[@]}")
  (
    CUDA_VISIBLE_DEVICES=0,1 timeout 320 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tail -4 > "$OUT/pytest_gpu.txt"
    train 0,1 29610 xl-z2-mb32-ga16-a "${big[@]}" --deepspeed.zero_stage=2
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga16-b "${big[@]}" --deepspeed.zero_stage=2
    train 2,3 29620 xl-z1-mb32-ga16-b "${big[@]}" --deepspeed.zero_stage=1
  ) &
  wait
  cat "$OUT/pytest_gpu.txt" >> "$OUT/speed.txt"
  ;;
proto)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  (
    CUDA_VISIBLE_DEVICES=0,1 timeout 280 python3 -m pytest -q -rf -m gpu tests/ -p no:cacheprovider > "$OUT/pytest_gpu_full.txt" 2>&1
    tail -8 "$OUT/pytest_gpu_full.txt" > "$OUT/pytest_gpu.txt"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga16-nccl-default "${z2[@]}"
    NCCL_PROTO=Simple train 2,3 29620 xl-z2-mb32-ga16-nccl-simple "${z2[@]}"
  ) &
  wait
  cat "$OUT/pytest_gpu.txt" >> "$OUT/speed.txt"
  ;;
reduce)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  echo '{"zero_optimization": {"use_multi_rank_bucket_allreduce": false}}' > "$RUNS/reduce.json"
  CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/attention_speed.py 2>&1 | grep -v Warn | tee "$OUT/attention.txt" >> "$OUT/speed.txt"
  CUDA_VISIBLE_DEVICES=0 timeout 60 python3 benchmarks/attention_speed.py --batch 16 2>&1 | grep RESULT >> "$OUT/speed.txt"
  (
    train 0,1 29610 xl-z2-mb32-ga16-allreduce-a "${z2[@]}"
    train 0,1 29610 xl-z2-mb32-ga16-reduce-a "${z2[@]}" --deepspeed.config="$RUNS/reduce.json"
    NCCL_MAX_CTAS=8 train 0,1 29610 xl-z2-mb32-ga16-allreduce-ctas8-a "${z2[@]}"
  ) &
  (
    train 2,3 29620 xl-z2-mb32-ga16-reduce-b "${z2[@]}" --deepspeed.config="$RUNS/reduce.json"
    train 2,3 29620 xl-z2-mb32-ga16-allreduce-b "${z2[@]}"
    NCCL_MAX_CTAS=8 train 2,3 29620 xl-z2-mb32-ga16-reduce-ctas8-b "${z2[@]}" --deepspeed.config="$RUNS/reduce.json"
  ) &
  wait
  ;;
mb40)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=6 --deepspeed.zero_stage=2 "${noprof[@]}")
  sample_clocks
  lanes=()
  (
    train 0,1 29610 xl-z2-mb40-ga13-a "${z2[@]}" --train.micro_batch_size=40 --train.grad_accum=13
    train 0,1 29610 xl-z2-mb32-ga16-a "${z2[@]}" --train.micro_batch_size=32 --train.grad_accum=16
  ) & lanes+=($!)
  (
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True train 2,3 29620 xl-z2-mb44-ga12-b "${z2[@]}" --train.micro_batch_size=44 --train.grad_accum=12
    train 2,3 29620 xl-z1-mb40-ga13-b "${xl[@]}" --train.max_steps=6 --deepspeed.zero_stage=1 "${noprof[@]}" --train.micro_batch_size=40 --train.grad_accum=13
  ) & lanes+=($!)
  wait "${lanes[@]}"
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  ;;
inplace)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  sample_clocks
  lanes=()
  (
    ZEROTRAIN_AB_INPLACE=1 train 0,1 29610 xl-z2-mb32-ga16-inplace-a "${z2[@]}"
    ZEROTRAIN_AB_INPLACE=0 train 0,1 29610 xl-z2-mb32-ga16-copied-a "${z2[@]}"
  ) & lanes+=($!)
  (
    ZEROTRAIN_AB_INPLACE=0 train 2,3 29620 xl-z2-mb32-ga16-copied-b "${z2[@]}"
    ZEROTRAIN_AB_INPLACE=1 train 2,3 29620 xl-z2-mb32-ga16-inplace-b "${z2[@]}"
  ) & lanes+=($!)
  wait "${lanes[@]}"
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  ;;
gaps)
  z2=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=8 --deepspeed.zero_stage=2)
  lanes=()
  ( train 0,1 29610 xl-z2-mb32-ga8-gaps "${z2[@]}" ) & lanes+=($!)
  ( ZEROTRAIN_PROFILE_STACK=1 train 2,3 29620 xl-z2-mb32-ga8-gaps-stack "${z2[@]}" ) & lanes+=($!)
  wait "${lanes[@]}"
  for name in xl-z2-mb32-ga8-gaps xl-z2-mb32-ga8-gaps-stack; do
    for rank in 0 1; do
      python3 benchmarks/idle_gaps.py "$RUNS/$name/profile/trace-rank$rank.json.gz" --depth 3 > "$OUT/gaps-$name-rank$rank.txt" 2>&1
    done
  done
  ;;
hfratio)
  noprof=(--train.profile_steps=0)
  z2=("${xl[@]}" --train.max_steps=8 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  probe() {  # probe GPUS PORT MB GA STEPS
    CUDA_VISIBLE_DEVICES=$1 timeout 240 torchrun --nproc_per_node 2 --master_port "$2" benchmarks/reference_probe.py --model xl --mb "$3" \
      --ga "$4" --stages 2 --impls hf --steps "$5" --warm 2 2>&1 | grep "RESULT\|Error" | sed "s/^/GPUs $1: /" >> "$OUT/speed.txt"
  }
  sample_clocks
  lanes=()
  (
    probe 0,1 29610 8 8 6
    train 0,1 29610 xl-z2-mb32-ga16-a "${z2[@]}"
  ) & lanes+=($!)
  (
    train 2,3 29620 xl-z2-mb32-ga16-b "${z2[@]}"
    probe 2,3 29620 16 16 4
  ) & lanes+=($!)
  wait "${lanes[@]}"
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  ;;
accum)
  noprof=(--train.profile_steps=0)
  run=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 "${noprof[@]}")
  echo '{"data_types": {"grad_accum_dtype": "fp32"}}' > "$RUNS/fp32accum.json"
  sample_clocks
  lanes=()
  (
    train 0,1 29610 xl-z2-mb32-ga16-bf16accum "${run[@]}" --deepspeed.zero_stage=2
    train 0,1 29610 xl-z2-mb32-ga16-fp32accum "${run[@]}" --deepspeed.zero_stage=2 --deepspeed.config="$RUNS/fp32accum.json"
  ) & lanes+=($!)
  (
    train 2,3 29620 xl-z1-mb32-ga16-fp32accum "${run[@]}" --deepspeed.zero_stage=1 --deepspeed.config="$RUNS/fp32accum.json"
    train 2,3 29620 xl-z1-mb32-ga16-bf16accum "${run[@]}" --deepspeed.zero_stage=1
  ) & lanes+=($!)
  wait "${lanes[@]}"
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  ;;
accum2)
  noprof=(--train.profile_steps=0)
  small=("${xl[@]}" --train.max_steps=4 --train.log_interval=1 --train.micro_batch_size=1 --train.grad_accum=2 "${noprof[@]}"
         --deepspeed.grad_accum_dtype=fp32)
  curve=(--train.max_steps=120 --train.log_interval=10 --train.micro_batch_size=16 --train.grad_accum=32
         --deepspeed.zero_stage=2 "${noprof[@]}")
  lanes=()
  (
    train 0,1 29610 xl-z1-mb1-ga2-fp32accum "${small[@]}" --deepspeed.zero_stage=1
    train 0,1 29610 xl-z3-mb1-ga2-fp32accum "${small[@]}" --deepspeed.zero_stage=3
    train 0,1 29610 124m-z2-mb16-ga32-bf16accum "${curve[@]}"
  ) & lanes+=($!)
  (
    train 2,3 29620 xl-z2-mb1-ga2-fp32accum "${small[@]}" --deepspeed.zero_stage=2
    train 2,3 29620 124m-z2-mb16-ga32-fp32accum "${curve[@]}" --deepspeed.grad_accum_dtype=fp32
  ) & lanes+=($!)
  wait "${lanes[@]}"
  for name in 124m-z2-mb16-ga32-bf16accum 124m-z2-mb16-ga32-fp32accum; do
    python3 -c "import json, sys; print(sys.argv[1], [(r['step'], round(r['loss'], 4)) for r in map(json.loads, open(sys.argv[2])) if 'loss' in r])" \
      "$name" "$RUNS/$name/metrics.jsonl" >> "$OUT/speed.txt"
  done
  ;;
matmuls)
  noprof=(--train.profile_steps=0)
  run=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}")
  sample_clocks
  train 0,1 29610 xl-z2-mb32-ga16-tuned-1 "${run[@]}" --train.tuned_matmuls=on
  train 0,1 29610 xl-z2-mb32-ga16-pytorch "${run[@]}" --train.tuned_matmuls=off
  train 0,1 29610 xl-z2-mb32-ga16-tuned-2 "${run[@]}" --train.tuned_matmuls=on
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  grep -h "matmul kernels\|GELU" "$RUNS"/xl-z2-mb32-ga16-*.log | sort | uniq -c | head -5 >> "$OUT/speed.txt"
  ;;
flash3)
  noprof=(--train.profile_steps=0)
  run=("${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 "${noprof[@]}")
  sample_clocks
  train 0,1 29610 xl-z2-mb32-ga16-fa3-1 "${run[@]}" --deepspeed.zero_stage=2 --train.flash_attention_3=on
  train 0,1 29610 xl-z2-mb32-ga16-sdpa "${run[@]}" --deepspeed.zero_stage=2 --train.flash_attention_3=off
  train 0,1 29610 xl-z2-mb32-ga16-fa3-2 "${run[@]}" --deepspeed.zero_stage=2 --train.flash_attention_3=on
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  grep -h "ZeRO stage" "$RUNS"/*fa3*.log "$RUNS"/*sdpa*.log | sed 's/, lr .*//' | sort | uniq -c | head -5 >> "$OUT/speed.txt"
  ;;
hfbest)
  noprof=(--train.profile_steps=0)
  sample_clocks
  train 0,1 29610 xl-z2-mb32-ga16 "${xl[@]}" --train.max_steps=4 --train.micro_batch_size=32 --train.grad_accum=16 --deepspeed.zero_stage=2 "${noprof[@]}"
  CUDA_VISIBLE_DEVICES=0,1 timeout 200 torchrun --nproc_per_node 2 --master_port 29610 benchmarks/reference_probe.py --model xl --mb 16 \
    --ga 16 --stages 2 --impls hf --steps 4 --warm 2 2>&1 | grep "RESULT\|Error" >> "$OUT/speed.txt"
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  grep -h "ZeRO stage" "$RUNS"/xl-z2-mb32-ga16.log | sed 's/, lr .*//' >> "$OUT/speed.txt"
  ;;
flash3b)
  noprof=(--train.profile_steps=0)
  sample_clocks
  train 0,1 29610 xl-z1-mb32-ga16-fa3 "${xl[@]}" --train.max_steps=6 --train.micro_batch_size=32 --train.grad_accum=16 \
    --deepspeed.zero_stage=1 --train.flash_attention_3=on "${noprof[@]}"
  train 0,1 29610 124m-z2-mb128-fa3 "${s124[@]}" --train.micro_batch_size=128 --train.grad_accum=2 --deepspeed.zero_stage=2 \
    --train.flash_attention_3=on "${noprof[@]}"
  c124=(--train.max_steps=200 --train.log_interval=10 --train.micro_batch_size=32 --train.grad_accum=2 --deepspeed.zero_stage=2 "${noprof[@]}")
  train 0,1 29610 124m-z2-fa3-200 "${c124[@]}" --train.flash_attention_3=on
  train 0,1 29610 124m-z2-sdpa-200 "${c124[@]}" --train.flash_attention_3=off
  kill $sampler; wait $sampler 2>/dev/null  # stop sample_clocks
  ;;
esac
tar czf "$OUT/lanes.tgz" -C "$OUT" lanes && rm -rf "$OUT/lanes"
cat "$OUT/speed.txt"
