#!/usr/bin/env bash
# The small-batch GEMM kernels (engine/cuda/small_gemm.h): small_gemm_bench against cuBLAS on the 3B
# shapes, then `sbmodel bench` of the 3B checkpoint with them (default) and without them
# (SBSERVE_SMALL_GEMM_ROWS=0: cuBLAS for every GEMM), same binary, alternating, at small batches.
set -u
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
$B/small_gemm_bench
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
for round in ${ROUNDS:-1 2}; do
  for b in ${BATCHES:-1 2 4 8}; do
    for rows in 0 8; do
      echo "round $round B=$b small_gemm_rows=$rows: $(SBSERVE_SMALL_GEMM_ROWS=$rows $B/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 | grep -E 'prefill|decode' | tr '\n' ' ')"
    done
  done
done
