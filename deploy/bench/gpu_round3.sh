#!/usr/bin/env bash
# One device call in priority order (what ran is in $OUT if the call is cut short): the engine
# tests that have not run on a GPU since their last changes (cuda_backend_test, cuda_engine_test,
# device_sampler_test: piecewise graphs on by default, the device sampler's logit bias and forced
# rows, prompt logprobs); the prefill cases of sb_attn_test on every prefill kernel (the TMA-fed ones
# are new), sb_attn_bench's d = 64 prefill rows on every kernel (PREFILL_ROWS), compute-sanitizer on
# two prefill cases (SANITIZE_TOOLS);
# then sbmodel bench at B = 1, 16, 64 with the 16 x 512 prefill row and sbserve at c = 1 and 64
# (issue 9's engine and serving targets).
# Binaries as for gpu_combine_in_split.sh (plus sb_attn_bench) in $PWD/.gpu/{bin,lib}; logs to $OUT.
set -u
OUT=${OUT:-/tmp}
export OUT LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
creator=$!
run_test() {  # name, timeout, gtest filter (optional)
  local start; start=$(date +%s)
  timeout "$2" "$BIN/$1" ${3:+--gtest_filter=$3} > "$OUT/$1.log" 2>&1
  echo "$1 rc=$? ($(( $(date +%s) - start )) s): $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/$1.log" | head -8 | tr '\n' ' ')"
  grep -E 'Failure' -A6 "$OUT/$1.log" | head -14
}
run_test device_sampler_test 120
run_test cuda_backend_test 200
run_test sb_attn_test 240 'SbAttnPrefill.*:SbAttnApi.*:SbAttnFusedRows.*'
for r in ${PREFILL_ROWS-0 1 2 3 4 10}; do
  timeout 90 "$BIN"/sb_attn_bench --only prefill --prefill-row "$r" 2>&1 | grep -v '^device'
done
for tool in ${SANITIZE_TOOLS-memcheck racecheck synccheck}; do
  timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN/sb_attn_test" \
    --gtest_filter='SbAttnPrefill.SmallCase:SbAttnPrefill.ChunkedWithPrefixes' > "$OUT/sanitize_$tool.log" 2>&1
  echo "compute-sanitizer $tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' "$OUT/sanitize_$tool.log" | tr '\n' ' ')"
done
wait "$creator"
run_test cuda_engine_test 240
for b in 1 16 64; do
  echo "B=$b: $("$BIN"/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 --prefill-reps 5 | grep -E 'prefill|decode' | tr '\n' ' ')"
done
# Then the serving targets at the default flags (c = 1 and c = 64, 512-token prompts, 128 output tokens).
SIDES=A A='X=1' bash "$(dirname "$0")/gpu_serve_ab.sh"
