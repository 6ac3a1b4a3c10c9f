#!/usr/bin/env bash
# The two front doors of one server under the same load (issue: OpenAI HTTP API): sbserve on the
# 3B checkpoint with --http-port, then at c = 1 and 64 (512-token id prompts, 128 output tokens,
# greedy, ignore_eos) `sbctl bench` over gRPC and deploy/bench/openai_bench.py over HTTP/SSE
# (/v1/completions, stream). Both ask for logprobs 0 (the sampled token's logprob): the HTTP client
# counts tokens by their logprobs entries, and the server then does the same work for both doors. Expects the CUDA build's sbserve, sbctl and sbmodel in
# $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
root=$(cd "$(dirname "$0")/../.." && pwd)
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --http-port 8000 --log-requests=false \
  > "$OUT/server_doors.log" 2>&1 &
for i in $(seq 180); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
for c in 1 64; do
  n=$(( c == 1 ? 16 : 256 ))
  for door in grpc http grpc http; do
    if [ $door = grpc ]; then
      echo "== gRPC c=$c $($B/sbctl bench --requests $n --concurrency $c --prompt-tokens 512 --max-tokens 128 --logprobs 0 --json \
        | python3 -c 'import json,sys; j=json.load(sys.stdin); print(json.dumps({k: j[k] for k in ("output_tokens_per_s","ttft_ms","itl_ms","failed")}))')"
    else
      echo "== HTTP c=$c $(python3 "$root/deploy/bench/openai_bench.py" --url http://127.0.0.1:8000 --concurrency $c \
        --requests $n --prompt-tokens 512 --max-tokens 128)"
    fi
  done
done
pkill -TERM sbserve; sleep 3
