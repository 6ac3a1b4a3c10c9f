#!/usr/bin/env bash
# Measured GEMM plans (engine/cuda/gemm_tuner.h): small_gemm_test (the small kernels and the tuner
# against float64), small_gemm_bench (cuBLAS's default against the tuned plan, per 3B shape and row
# count), then `sbmodel bench` of the 3B checkpoint with SBSERVE_GEMM_TUNING=0 (cuBLAS's default and
# the small kernels, as before) and =1, same binary, alternating order per round; one verbose run
# lists the plans chosen at B = 64.
# Expects binaries in $PWD/.gpu/{bin,lib} (../shared/gpu/pack.sh), writes logs to $OUT.
# usage: deploy/bench/gpu_gemm_tuning.sh     env: BATCHES (default "1 2 4 8 16 32 64 128"), ROUNDS
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
creator=$!
start=$(date +%s)
timeout 300 "$BIN"/small_gemm_test > "$OUT/small_gemm_test.log" 2>&1
echo "small_gemm_test rc=$? ($(( $(date +%s) - start )) s): $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/small_gemm_test.log" | head -8 | tr '\n' ' ')"
"$BIN"/small_gemm_bench ${GEMM_ROWS:+--rows $GEMM_ROWS} 2>&1 | tee "$OUT/small_gemm_bench.log"
wait "$creator" || { echo "checkpoint creation failed"; cat "$OUT/create.log"; exit 1; }
run() {  # batch tuning
  echo "round $round B=$1 tuning=$2: $(SBSERVE_GEMM_TUNING=$2 "$BIN"/sbmodel bench --model /tmp/m3b --batch $1 --prompt-len 512 --gen 64 | grep -E 'prefill|decode' | tr '\n' ' ')"
}
for round in ${ROUNDS:-1 2}; do
  for b in ${BATCHES:-1 2 4 8 16 32 64 128}; do
    if [ $((round % 2)) = 1 ]; then run "$b" 0; run "$b" 1; else run "$b" 1; run "$b" 0; fi
  done
done
SBSERVE_GEMM_TUNING=verbose "$BIN"/sbmodel bench --model /tmp/m3b --batch 64 --prompt-len 512 --gen 8 > "$OUT/plans_b64.log" 2>&1
grep 'gemm plan' "$OUT/plans_b64.log"
