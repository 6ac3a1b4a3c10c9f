#!/usr/bin/env bash
# One server build under two environments, A then B (e.g. A='SBSERVE_SMALL_GEMM_ROWS=0' B=''):
# sbctl bench at c=1 (16 requests) and c=64 (256), 512-token prompts, 128 output tokens, greedy,
# each followed by the engine's cumulative step-time sum and count from /metrics. 3B checkpoint, default flags.
# SIDES="A" (or "B") runs one side only; PROMPT_TOKENS sets the prompt length (512).
# Expects the CUDA build's sbserve, sbctl and sbmodel in $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin  # not B: B names the second environment
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $BIN/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
for side in ${SIDES:-A B}; do
  envs=${!side-}
  echo "== $side: env '$envs' sbserve ${SERVE_FLAGS:-}"
  # shellcheck disable=SC2086
  env $envs setsid $BIN/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --log-requests=false ${SERVE_FLAGS:-} \
    > "$OUT/server_$side.log" 2>&1 &
  for i in $(seq 180); do $BIN/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  for c in 1 64; do
    n=$(( c == 1 ? 16 : 256 ))
    echo "-- c=$c requests=$n"
    $BIN/sbctl bench --prompt-tokens "${PROMPT_TOKENS:-512}" --max-tokens 128 --requests $n --concurrency $c --no-progress 2>&1 | grep -vE '^\s*$' | tail -12
    # Cumulative over the server's life (warm-up included): take differences between levels.
    curl -s localhost:8080/metrics | grep -E "^sbserve_engine_step_time_seconds_(sum|count)" | tr '\n' ' '; echo
  done
  pkill -TERM sbserve; for i in $(seq 30); do pgrep sbserve >/dev/null || break; sleep 1; done
done
