#!/usr/bin/env bash
# Default flags against hand-tuned ones on the GPU machine (issue: serving capacity). Starts sbserve
# on the generated 3B checkpoint with NO sizing flags, prints its capacity line and runs c=64 at
# ~512-token and ~1,100-token prompts (128 output tokens); then the same 512-token load with the
# hand-tuned flags of tests/bench/serving.md. Expects the CUDA build's sbserve, sbctl and sbmodel
# in $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
TUNED=${TUNED:---kv-cache-mb 40000 --max-batch-tokens 2048 --max-queued-tokens 10000000}
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1

serve() {  # name flags...
  local name=$1; shift
  setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --log-requests=false "$@" > "$OUT/server_$name.log" 2>&1 &
  for i in $(seq 180); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  grep -h "capacity:" "$OUT/server_$name.log" | sed 's/.*\] //'
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader
}
load() {  # words requests
  local before after
  before=$(curl -s localhost:8080/metrics | awk '/^sbserve_prompt_tokens_total/ {print $2}')
  $B/sbctl bench --requests "$2" --concurrency 64 --max-tokens 128 --prompt-words "$1"
  after=$(curl -s localhost:8080/metrics | awk '/^sbserve_prompt_tokens_total/ {print $2}')
  echo "mean prompt tokens: $(awk -v a="${before:-0}" -v b="${after:-0}" -v n="$2" 'BEGIN {printf "%.0f", (b - a) / n}')"
  curl -s localhost:8080/metrics | grep -E "^sbserve_(requests_rejected_total|num_preemptions_total|request_success_total)" | head -8
}
stop() { pkill -TERM sbserve; for i in $(seq 30); do pgrep sbserve >/dev/null || break; sleep 1; done; }

echo "== default flags"
serve default
echo "== c=64 ~512/128 default"; load 230 256
echo "== c=64 ~1100/128 default"; load 490 256
stop
echo "== tuned: $TUNED"
# shellcheck disable=SC2086
serve tuned $TUNED
echo "== c=64 ~512/128 tuned"; load 230 256
stop
