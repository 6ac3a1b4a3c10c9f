#!/usr/bin/env bash
# The small-batch GEMM kernels (engine/cuda/small_gemm.h): small_gemm_bench (every launch variant
# against cuBLAS on the 3B shapes), then `sbmodel bench` of the 3B checkpoint without them
# (SBSERVE_SMALL_GEMM_ROWS=0: cuBLAS for every GEMM) and with them, each with plain launches
# (SBSERVE_PDL=0) or programmatic dependent ones, same binary, alternating: at B = 1 every
# combination and every variant (SBSERVE_SMALL_GEMM_VARIANT); at B = 2, 4, 16 and 64 the old path
# (cuBLAS, plain) against the new defaults.
set -u
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
$B/small_gemm_bench
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
run() {  # batch rows variant [pdl]
  echo "round $round B=$1 small_gemm_rows=$2 variant=$3 pdl=${4:-1}: $(SBSERVE_SMALL_GEMM_ROWS=$2 SBSERVE_SMALL_GEMM_VARIANT=$3 \
    SBSERVE_PDL=${4:-1} $B/sbmodel bench --model /tmp/m3b --batch $1 --prompt-len 512 --gen 64 | grep -E 'prefill|decode' | tr '\n' ' ')"
}
for round in ${ROUNDS:-1 2}; do
  run 1 0 0 0
  run 1 0 0 1
  run 1 3 0 0
  for v in ${VARIANTS:-0 1 2 3 4 5}; do run 1 3 "$v" 1; done
  for b in 2 4 16 64; do run $b 0 0 0; run $b 3 0 1; done
done
