#!/usr/bin/env bash
# GPU serving load run (tests/bench/serving.md, H100 history): generates the 3B
# checkpoint, starts sbserve on it, runs sbctl bench at concurrency 1/32/64, scrapes /metrics,
# drains. Expects the CUDA build's sbserve, sbctl and sbmodel (with their libraries, as packed by
# the GPU machine's pack.sh) in $PWD/.gpu-eng/{bin,lib}, and $OUT as the folder for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu-eng/lib:/usr/local/cuda/lib64
B=$PWD/.gpu-eng/bin
$B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --kv-cache-mb 24000 --max-batch-tokens 2048 --log-requests=false > $OUT/server.log 2>&1 &
for i in $(seq 90); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
$B/sbctl info | head -40
$B/sbctl generate "def fibonacci(n):" --max-tokens 24
echo "== c=1"; $B/sbctl bench --requests 16 --concurrency 1 --max-tokens 128 --prompt-words 64
echo "== c=32"; $B/sbctl bench --requests 200 --concurrency 32 --max-tokens 128 --prompt-words 64
echo "== c=64"; $B/sbctl bench --requests 256 --concurrency 64 --max-tokens 128 --prompt-words 64
curl -s localhost:8080/metrics > $OUT/metrics.txt; grep -E "^sbserve_engine_step_time_seconds_(sum|count)|^sbserve_generation_tokens_total|^sbserve_num_preemptions" $OUT/metrics.txt
pkill -TERM sbserve; sleep 3; tail -5 $OUT/server.log
