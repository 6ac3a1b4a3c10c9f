#!/usr/bin/env bash
# Per-kernel GPU time of one decode step of the 3B model (B = 1 and B = 64, 512-token contexts) under
# Nsight Compute (gpu__time_duration per kernel; kernels serialised, graphs off so each kernel is
# seen). Summarise with deploy/bench/ncu_step_summary.py. Expects the CUDA build's sbmodel in
# $PWD/.gpu/{bin,lib} and $OUT for the CSVs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
for b in ${BATCHES:-1 64}; do
  SBSERVE_CUDA_GRAPHS=0 timeout 240 "$NCU" --csv --metrics gpu__time_duration.sum \
    $B/sbmodel bench --model /tmp/m3b --batch "$b" --prompt-len 512 --gen 2 > "$OUT/ncu_b$b.csv" 2> "$OUT/ncu_b$b.err"
  echo "B=$b: rc $? $(wc -l < "$OUT/ncu_b$b.csv") lines"
  SBSERVE_CUDA_GRAPHS=1 $B/sbmodel bench --model /tmp/m3b --batch "$b" --prompt-len 512 --gen 32 | tail -3
done
