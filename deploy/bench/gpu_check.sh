#!/usr/bin/env bash
# Every GPU test, then the engine benchmarks, in one device call (device time is scarce and a
# machine stays warm only briefly between calls). The 3B checkpoint is written in the background
# while the tests run (waited for by its PID: a `pgrep -f` pattern would also match this command).
# Expects the CUDA build's test binaries, sbmodel, small_gemm_bench, sbserve and sbctl in
# $PWD/.gpu/{bin,lib} (../shared/gpu/pack.sh .gpu build/tests/engine/cuda_backend_test ...), $OUT.
# usage: deploy/bench/gpu_check.sh [tests] [kernels] [model] [serve]   (default: tests model)
#   kernels: sb_attn_bench (if packed), prefill and decode tables (decode rows with both split kernels)
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
parts=${*:-tests model}
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
creator=
if [ ! -f /tmp/m3b/config.json ]; then
  "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
  creator=$!
fi
if [[ $parts == *tests* ]]; then
  for t in small_gemm_test device_sampler_test cuda_backend_test cuda_engine_test sb_attn_test; do
    [ -x "$BIN/$t" ] || { echo "$t: not packed"; continue; }
    start=$(date +%s)
    timeout 400 "$BIN/$t" > "$OUT/$t.log" 2>&1
    echo "$t rc=$? ($(( $(date +%s) - start )) s): $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/$t.log" | head -6 | tr '\n' ' ')"
  done
fi
if [[ $parts == *kernels* ]]; then
  if [ -x "$BIN/sb_attn_bench" ]; then "$BIN/sb_attn_bench" > "$OUT/sb_attn_bench.log" 2>&1; grep -E 'copy|prefill|decode' "$OUT/sb_attn_bench.log"
  else echo "sb_attn_bench: not packed"; fi
fi
[ -n "$creator" ] && { wait "$creator" || { echo "checkpoint creation failed"; cat "$OUT/create.log"; exit 1; }; }
if [[ $parts == *model* ]]; then
  [ -x "$BIN/small_gemm_bench" ] && "$BIN/small_gemm_bench" --rows 1,2,4,16
  for b in 1 2 16 64; do
    echo "B=$b: $("$BIN"/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 | grep -E 'prefill|decode' | tr '\n' ' ')"
  done
fi
if [[ $parts == *serve* ]]; then
  A=${A:-} B=${B:-} OUT=$OUT bash "$(dirname "$0")/gpu_serve_ab.sh"
fi
