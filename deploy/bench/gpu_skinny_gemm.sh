#!/usr/bin/env bash
# The tensor-core skinny GEMMs (engine/cuda/skinny_gemm.h) in one device call: skinny_gemm_test
# (every split, variant and epilogue against float64), small_gemm_bench (cuBLAS against each split x
# variant per 3B shape), then, only if the test passed, `sbmodel bench` of the 3B checkpoint with the
# kernels off (SBSERVE_SKINNY_GEMM_ROWS=0) and on at each variant in VARIANTS, alternating order per
# round. PROFILE=SPLIT:VARIANT also profiles that launch against cuBLAS with ncu (LM head and
# mlp c_proj at ROWS).
# Expects skinny_gemm_test, small_gemm_bench and sbmodel in $PWD/.gpu/{bin,lib}
# (../shared/gpu/pack.sh .gpu build/tests/engine/skinny_gemm_test build/engine/small_gemm_bench
# build/engine/sbmodel), writes logs to $OUT.
# usage: deploy/bench/gpu_skinny_gemm.sh   env: ROWS (4,16,64), BATCHES ("16 64"), VARIANTS ("6 8"),
#                                               ROUNDS ("1 2"), PROFILE (unset)
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
creator=$!
timeout 300 "$BIN"/skinny_gemm_test > "$OUT/skinny_gemm_test.log" 2>&1
rc=$?
echo "skinny_gemm_test rc=$rc: $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/skinny_gemm_test.log" | head -8 | tr '\n' ' ')"
grep -E 'Failure' -A4 "$OUT/skinny_gemm_test.log" | head -20
timeout 300 "$BIN"/small_gemm_bench --rows "${ROWS:-4,16,64}" > "$OUT/small_gemm_bench.log" 2>&1
# Each row's cuBLAS and tuned times (its first columns) and the skinny lines in full.
awk '/skinny|copy/ { print; next } /^[a-z_+]+ +[0-9]+ / { print substr($0, 1, 62) }' "$OUT/small_gemm_bench.log"
if [ -n "${PROFILE:-}" ]; then
  for shape in lm_head fc_proj+res; do
    ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
      "$BIN"/small_gemm_bench --profile "$PROFILE" --shape "$shape" --rows "${ROWS:-4,16,64}" > "$OUT/ncu_$shape.txt" 2>&1
    grep -E '^  [a-zA-Z_].*\(|Duration|DRAM Throughput|Achieved Occupancy' "$OUT/ncu_$shape.txt" | cut -c1-140
  done
fi
wait "$creator" || { echo "checkpoint creation failed"; cat "$OUT/create.log"; exit 1; }
[ "$rc" = 0 ] || { echo "skinny_gemm_test failed: no model runs"; exit 1; }
run() {  # batch rows variant
  echo "round $round B=$1 skinny_rows=$2 variant=$3: $(SBSERVE_SKINNY_GEMM_ROWS=$2 SBSERVE_SKINNY_GEMM_VARIANT=$3 \
    "$BIN"/sbmodel bench --model /tmp/m3b --batch "$1" --prompt-len 512 --gen 64 | grep -E 'decode' | tr '\n' ' ')"
}
for round in ${ROUNDS:-1 2}; do
  for b in ${BATCHES:-16 64}; do
    for v in ${VARIANTS:-6 8}; do
      if [ $((round % 2)) = 1 ]; then run "$b" 0 "$v"; run "$b" 64 "$v"; else run "$b" 64 "$v"; run "$b" 0 "$v"; fi
    done
  done
done
