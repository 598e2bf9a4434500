#!/usr/bin/env bash
# `zerotrain doctor` and `zerotrain doctor comm` on a 2-GPU machine (NCCL), then the same preflight under torchrun,
# a stalled-rank check over NCCL, and the launch dry-runs. Writes everything to $OUT (default ./gpu-results).
# Run from the repository root after `pip install --no-build-isolation -e .`. Leaves NCCL_NVLS_ENABLE as the machine sets it.
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) date $(date -u +%Y-%m-%d)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  env | grep -E '^(NCCL|CUDA)_' | sort
} | tee "$OUT/env.txt"

# 1. environment report (timed: it must answer in a few seconds)
{ /usr/bin/time -f "doctor wall %e s" python3 -m zerotrain doctor; } > "$OUT/doctor.txt" 2>&1; echo "doctor rc=$?" >> "$OUT/doctor.txt"
python3 -m zerotrain doctor --json > "$OUT/doctor.json" 2> "$OUT/doctor_json.err"
cat "$OUT/doctor.txt"

# 2. communication preflight: 2 ranks started by zerotrain (DeepSpeed launcher), NCCL, 4 KiB .. 1 GiB
python3 -m zerotrain doctor comm --nproc 2 --timeout 120 --json "$OUT/comm.json" 2>&1 | tee "$OUT/comm.txt"
echo "comm rc=${PIPESTATUS[0]}" | tee -a "$OUT/comm.txt"

# 3. the same under torchrun (it serves MASTER_PORT itself: the preflight must share its store)
torchrun --nproc_per_node 2 -m zerotrain doctor comm --sizes 1M,256M --timeout 120 2>&1 | tee "$OUT/comm_torchrun.txt"
echo "comm torchrun rc=${PIPESTATUS[0]}" | tee -a "$OUT/comm_torchrun.txt"

# 4. a rank that stalls: rank 1 must be named within the 20 s timeout and the job must end non-zero
start=$(date +%s)
ZEROTRAIN_DOCTOR_STALL_RANK=1 timeout 300 python3 -m zerotrain doctor comm --nproc 2 --sizes 1M --timeout 20 > "$OUT/comm_stall.txt" 2>&1
echo "stall rc=$? after $(( $(date +%s) - start )) s" | tee -a "$OUT/comm_stall.txt"
grep -h "TIMEOUT" "$OUT/comm_stall.txt"

# 5. launch dry-runs for this host (no ssh, nothing started)
python3 -m zerotrain launch --hosts "$(hostname)" --gpus-per-node 2 --dry-run --out /tmp/zt-launch -- train configs/gpt2-124m.toml \
  > "$OUT/launch_dry_run.txt" 2>&1; echo "launch rc=$?" >> "$OUT/launch_dry_run.txt"

# 6. the quick doctor/launch tests on this machine too
python3 -m pytest -q tests/test_doctor.py tests/test_comm.py tests/test_postmortem.py tests/test_launch.py -m "not slow" -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/pytest_doctor.txt"
