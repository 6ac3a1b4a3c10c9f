#!/usr/bin/env bash
# Scoring prompts (prompt logprobs, as evaluation harnesses ask for them with echo + logprobs) against
# plain prefill on the same server: sbctl bench at c=64, PROMPT_TOKENS-token prompts (512), 1 output
# token, with and without --prompt-logprobs 1, 256 requests each, then the engine's step-time sum
# and count from /metrics. A request scores at most 256 prompt positions per engine step
# (Scheduler::kMaxPromptLogprobRows), so a 512-token prompt takes two steps instead of one.
# 3B checkpoint, default flags. Expects the CUDA build's sbserve, sbctl and sbmodel in
# $PWD/.gpu/{bin,lib} and $OUT for logs.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
# shellcheck disable=SC2086
setsid "$BIN"/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --log-requests=false ${SERVE_FLAGS:-} \
  > "$OUT/server_scoring.log" 2>&1 &
for _ in $(seq 180); do "$BIN"/sbctl health >/dev/null 2>&1 && break; sleep 1; done
for side in plain scored; do
  flags=""
  [ "$side" = scored ] && flags="--prompt-logprobs 1"
  echo "-- $side: c=64 requests=256 prompt ${PROMPT_TOKENS:-512} tokens, 1 output token $flags"
  # shellcheck disable=SC2086
  "$BIN"/sbctl bench --prompt-tokens "${PROMPT_TOKENS:-512}" --max-tokens 1 --requests 256 --concurrency 64 \
    --no-progress $flags --json "$OUT/scoring_$side.json" 2>&1 | grep -vE '^\s*$' | tail -8
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("prompt tokens/s %.0f, prompt_logprobs entries %d, TTFT p50 %.1f ms" % (j["prompt_tokens"]/j["wall_s"], j["prompt_logprobs"], j["ttft_ms"]["p50"]))' "$OUT/scoring_$side.json"
  curl -s localhost:8080/metrics | grep -E "^sbserve_engine_step_time_seconds_(sum|count)" | tr '\n' ' '; echo
done
pkill -TERM sbserve; for _ in $(seq 30); do pgrep sbserve >/dev/null || break; sleep 1; done
