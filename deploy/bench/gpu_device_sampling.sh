#!/usr/bin/env bash
# Sampling on the host against sampling on the device (engine v2, step 3), on one server build:
# the same loads with SBSERVE_DEVICE_SAMPLING=0 (logits copied to the host, sampled by the CPU
# sampler) and with the default (engine/cuda/device_sampler). 3B checkpoint, default flags.
# Expects the CUDA build's sbserve, sbctl and sbmodel in $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
MODES=${MODES:-host device}
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1

bench() {  # label args...
  local label=$1; shift
  echo "-- $label: sbctl bench $*"
  $B/sbctl bench --prompt-tokens 512 --max-tokens 128 "$@" 2>&1 | grep -vE '^\s*$|progress' | tail -12
}
for mode in $MODES; do
  flag=1; [ "$mode" = host ] && flag=0
  echo "== sampling on the $mode (SBSERVE_DEVICE_SAMPLING=$flag)"
  SBSERVE_DEVICE_SAMPLING=$flag setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 \
    --log-requests=false > "$OUT/server_$mode.log" 2>&1 &
  for i in $(seq 180); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  bench "c=1 greedy" --requests 16 --concurrency 1
  bench "c=64 greedy" --requests 256 --concurrency 64
  bench "c=64 temperature 0.8" --requests 256 --concurrency 64 --temperature 0.8 --seed 7
  bench "c=64 greedy, logprobs 5" --requests 256 --concurrency 64 --logprobs 5
  pkill -TERM sbserve; for i in $(seq 30); do pgrep sbserve >/dev/null || break; sleep 1; done
done
