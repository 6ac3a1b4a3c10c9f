#!/usr/bin/env bash
# The GPU baselines of the benchmark notes, taken together in one device call (tests/bench/):
#   1. sb_attn_bench (all rows) and, right after it, the softmax / authors'-Triton yardstick
#      (kernels/bench/sb_attn_yardstick.py; --sbref DIR when $SBREF holds stickbreaking_attention/);
#   2. sbmodel bench on the 3B preset at B = 1, 16, 64 (prompt 512, 64 decode steps);
#   3. sbserve on that checkpoint under sbctl bench at concurrency 1 and 64 (512-token token-id
#      prompts, 128 output tokens, greedy, ignore_eos), then /metrics and a SIGTERM drain.
#      The full serving grid is deploy/bench/grid.sh.
# Expects the CUDA build's sb_attn_bench, sbmodel, sbserve and sbctl with their libraries in
# $PWD/.gpu/{bin,lib} (../shared/gpu/pack.sh .gpu ...), and $OUT as the folder for logs.
# usage: deploy/bench/gpu_baseline.sh [attn] [model] [serve]   (default: all three)
set -u
OUT=${OUT:-/tmp}
root=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
parts=${*:-attn model serve}
PROMPT_TOKENS=${PROMPT_TOKENS:-512}
SERVE_FLAGS=${SERVE_FLAGS:---kv-cache-mb 40000 --max-batch-tokens 2048 --max-queued-tokens 10000000}

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
if [[ $parts == *attn* ]]; then
  echo "== sb_attn_bench"; $B/sb_attn_bench
  echo "== yardstick"
  python3 "$root/kernels/bench/sb_attn_yardstick.py" ${SBREF:+--sbref "$SBREF"}
fi
if [[ $parts == *model* || $parts == *serve* ]]; then
  [ -f /tmp/m3b/config.json ] || { time $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null; } || exit 1
fi
if [[ $parts == *model* ]]; then
  for b in 1 16 64; do
    echo "== sbmodel bench B=$b"
    $B/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 --backend cuda
  done
fi
if [[ $parts == *serve* ]]; then
  # shellcheck disable=SC2086
  setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 $SERVE_FLAGS --log-requests=false \
    > "$OUT/server.log" 2>&1 &
  for i in $(seq 120); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  echo "== sbserve $SERVE_FLAGS"
  for c in 1 64; do
    n=$(( c == 1 ? 16 : 256 ))
    echo "== c=$c requests=$n"
    $B/sbctl bench --requests $n --concurrency $c --max-tokens 128 --prompt-tokens $PROMPT_TOKENS --no-progress
  done
  curl -s localhost:8080/metrics > "$OUT/metrics.txt"
  grep -E "^sbserve_engine_step_time_seconds_(sum|count)|^sbserve_generation_tokens_total|^sbserve_num_preemptions" "$OUT/metrics.txt"
  pkill -TERM sbserve; sleep 3; tail -5 "$OUT/server.log"
fi
