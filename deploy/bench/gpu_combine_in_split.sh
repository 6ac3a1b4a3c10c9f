#!/usr/bin/env bash
# The decode combine inside the split grid (SBSERVE_DECODE_COMBINE_IN_SPLIT), checked and timed in
# one device call: every GPU test, compute-sanitizer memcheck and racecheck on small decode cases
# (which take the in-split combine with several chunks), the decode step A/B (gpu_decode_ab.sh,
# combine kernel vs in-split), the small-GEMM shape <1, 2, 8> (variant 4) at B = 1 and 2, and the
# decode step without CUDA graphs at B = 1 and 64 (the launch cost that graphs of mixed steps could
# save), and the serving A/B (gpu_serve_ab.sh). Parts off: TESTS= (none), SANITIZE=0, DECODE=0, SERVE=0.
# Expects in $PWD/.gpu/{bin,lib}: sb_attn_test cuda_backend_test cuda_engine_test device_sampler_test
# small_gemm_test skinny_gemm_test sbmodel sbserve sbctl; logs to $OUT.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
here=$(dirname "$0")
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
creator=$!
for t in ${TESTS-sb_attn_test cuda_backend_test cuda_engine_test device_sampler_test small_gemm_test skinny_gemm_test}; do
  start=$(date +%s)
  filter=; [ "$t" = sb_attn_test ] && filter=${SB_ATTN_FILTER:-}  # e.g. the decode and API tests only
  timeout 400 "$BIN/$t" ${filter:+--gtest_filter=$filter} > "$OUT/$t.log" 2>&1
  echo "$t rc=$? ($(( $(date +%s) - start )) s): $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/$t.log" | head -8 | tr '\n' ' ')"
  grep -E 'Failure' -A6 "$OUT/$t.log" | head -14
done
if [ "${SANITIZE:-1}" = 1 ]; then
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN/sb_attn_test" \
      --gtest_filter='SbAttnDecode.SmallCase:SbAttnDecode.RemainderVariants' > "$OUT/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$OUT/sanitize_$tool.log" | tr '\n' ' ')"
  done
fi
wait "$creator"
[ "${DECODE:-1}" = 1 ] && A='SBSERVE_DECODE_COMBINE_IN_SPLIT=0' B='SBSERVE_DECODE_COMBINE_IN_SPLIT=1' TESTS= \
  EXTRA="1:SBSERVE_SMALL_GEMM_VARIANT=4 1:X=1 2:SBSERVE_SMALL_GEMM_VARIANT=4 2:X=1 1:SBSERVE_CUDA_GRAPHS=0 64:SBSERVE_CUDA_GRAPHS=0" OUT=$OUT bash "$here/gpu_decode_ab.sh"
[ "${DECODE:-1}" = 1 ] && for b in 1 16 64; do  # the prefill rows too, default flags
  echo "B=$b: $("$BIN"/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 --prefill-reps 5 | grep -E 'prefill|decode' | tr '\n' ' ')"
done
if [ "${SERVE:-1}" = 1 ]; then
  A='SBSERVE_DECODE_COMBINE_IN_SPLIT=0' B='SBSERVE_DECODE_COMBINE_IN_SPLIT=1' OUT=$OUT bash "$here/gpu_serve_ab.sh"
fi
