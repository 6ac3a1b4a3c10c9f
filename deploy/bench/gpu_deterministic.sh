#!/usr/bin/env bash
# The cost of batch-invariant mode (--deterministic) against the default, one server binary, the 3B
# checkpoint, default flags otherwise: a lone 512-token prompt (TTFT) and decode at c=1, and c=64
# with 512-token prompts and 128 output tokens. Expects the CUDA build's sbserve, sbctl and sbmodel
# in $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
bench() {  # label args...
  local label=$1; shift
  echo "-- $label: sbctl bench --prompt-tokens 512 --max-tokens 128 $*"
  $B/sbctl bench --prompt-tokens 512 --max-tokens 128 "$@" 2>&1 | grep -E '^(requests|output tokens|ttft|itl|tpot)'
}
for mode in default deterministic; do
  flags=""; [ "$mode" = deterministic ] && flags="--deterministic"
  echo "== $mode ($flags)"
  # shellcheck disable=SC2086
  setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --log-requests=false $flags \
    > "$OUT/server_$mode.log" 2>&1 &
  for i in $(seq 180); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  grep -h "capacity:" "$OUT/server_$mode.log" | sed 's/.*\] //'
  bench "c=1" --requests 16 --concurrency 1
  bench "c=64" --requests 256 --concurrency 64
  bench "c=64 temperature 0.8" --requests 256 --concurrency 64 --temperature 0.8 --seed 7
  pkill -TERM sbserve; for i in $(seq 30); do pgrep sbserve >/dev/null || break; sleep 1; done
done
