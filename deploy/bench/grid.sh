#!/usr/bin/env bash
# The standard serving grid of the benchmark notes (tests/bench/serving.md), measured with
# sbctl bench and printed as markdown rows ready to paste:
#   1. closed loop at c = 1, 16, 64, 128 with exact 512-token prompts and 128 output tokens;
#   2. Poisson arrivals at three rates (default: 25, 50 and 90% of the c=128 requests/s);
#   3. a shared 2,000-token prefix with 100-token suffixes, with the server started with prefix
#      caching on (its default) and again with $NO_PREFIX_CACHE_FLAG.
# Every run uses token-id prompts and ignore_eos, so the lengths in the rows are the real ones;
# rejected requests are retried after the server's retry-after and counted in the rows.
#
# On the GPU machine: the CUDA build's sbserve and sbctl with their libraries in $PWD/.gpu/{bin,lib}
# (../shared/gpu/pack.sh .gpu build/server/sbserve build/client/sbctl build/engine/tools/sbmodel),
# the 3B checkpoint in $MODEL (made with `sbmodel create --preset 3b` when missing), $OUT for the
# logs, JSON summaries, SVG plots and commands (grid-*.{json,svg,txt,cmd}) of each run.
#   deploy/bench/grid.sh                 # all three parts
#   deploy/bench/grid.sh closed prefix   # some of them
# Anything below can be set from the environment, e.g. SERVE_FLAGS="--kv-cache-mb 40000" for a
# hand-tuned comparison, or MODEL= (empty) with small lengths for a CPU smoke run on the demo model.
set -u

# The server flag that turns automatic prefix caching off (it is on by default).
NO_PREFIX_CACHE_FLAG=${NO_PREFIX_CACHE_FLAG:---enable-prefix-caching=false}

OUT=${OUT:-/tmp}
BIN=${BIN:-$PWD/.gpu/bin}
LIB=${LIB:-$PWD/.gpu/lib}
SBSERVE=${SBSERVE:-$BIN/sbserve}
SBCTL=${SBCTL:-$BIN/sbctl}
SBMODEL=${SBMODEL:-$BIN/sbmodel}
MODEL=${MODEL-/tmp/m3b}
SERVE_FLAGS=${SERVE_FLAGS:-}  # empty: the server's default flags
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-8080}
SEED=${SEED:-1}

PROMPT_TOKENS=${PROMPT_TOKENS:-512}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-128}
CONCURRENCIES=${CONCURRENCIES:-1 16 64 128}
REQUESTS_PER_CLIENT=${REQUESTS_PER_CLIENT:-4}  # closed loop: max(MIN_REQUESTS, this x c) requests
MIN_REQUESTS=${MIN_REQUESTS:-16}
RATES=${RATES:-}                               # requests/s; empty = 25, 50, 90% of the largest c's requests/s
POISSON_S=${POISSON_S:-30}                     # max(MIN_REQUESTS, rate x this) requests per Poisson row
PREFIX_TOKENS=${PREFIX_TOKENS:-2000}
SUFFIX_TOKENS=${SUFFIX_TOKENS:-100}
PREFIX_CONCURRENCY=${PREFIX_CONCURRENCY:-32}
PREFIX_REQUESTS=${PREFIX_REQUESTS:-256}

export LD_LIBRARY_PATH=$LIB:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
parts=${*:-closed poisson prefix}
addr=127.0.0.1:$PORT
rows=$OUT/grid.md
server_pid=
server_cmd=()

log() { echo "== $*" >&2; }

start_server() {  # FLAGS...: returns 1 when the server does not become ready
  local model_flag=()
  [ -n "$MODEL" ] && model_flag=(--model "$MODEL")
  # shellcheck disable=SC2206
  server_cmd=("$SBSERVE" "${model_flag[@]}" --host 127.0.0.1 --port "$PORT" --metrics-port "$METRICS_PORT"
              --log-requests=false $SERVE_FLAGS "$@")
  setsid "${server_cmd[@]}" >"$OUT/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1200); do
    kill -0 "$server_pid" 2>/dev/null || break
    "$SBCTL" --addr "$addr" health >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "sbserve $SERVE_FLAGS $* did not become ready; the end of its log:"
  tail -5 "$OUT/server.log" >&2
  stop_server
  return 1
}

stop_server() {
  [ -n "$server_pid" ] || return 0
  kill -TERM "$server_pid" 2>/dev/null
  wait "$server_pid" 2>/dev/null
  server_pid=
}
trap stop_server EXIT

preemptions() {
  curl -s "localhost:$METRICS_PORT/metrics" 2>/dev/null | awk '/^sbserve_num_preemptions_total/ {print $2}'
}

# row NAME LABEL BENCH_ARGS...: one bench run, one markdown row.
row() {
  local name=$1 label=$2
  shift 2
  local before after
  before=$(preemptions)
  rm -f "$OUT/grid-$name.json"
  log "$label: sbctl bench $*"
  # The commands of each row, for the notes.
  printf '%s\n' "${server_cmd[*]}" "$SBCTL --addr $addr bench --seed $SEED $*" >"$OUT/grid-$name.cmd"
  "$SBCTL" --addr "$addr" bench --seed "$SEED" --no-progress "$@" --json "$OUT/grid-$name.json" \
    --plot "$OUT/grid-$name.svg" >"$OUT/grid-$name.txt" 2>&1
  after=$(preemptions)
  if [ ! -s "$OUT/grid-$name.json" ]; then
    echo "| $label | sbctl bench failed: $(tail -1 "$OUT/grid-$name.txt") |" | tee -a "$rows"
    return
  fi
  python3 - "$OUT/grid-$name.json" "$label" "${before:-}" "${after:-}" <<'PY' | tee -a "$rows"
import json, sys
j = json.load(open(sys.argv[1]))
label, before, after = sys.argv[2], sys.argv[3], sys.argv[4]
if j["mode"] == "open":
    rate = j["request_rate"]
    load = "all at once" if rate == "inf" else f"{rate:g} req/s"
else:
    load = f"c={j['concurrency']}"
p, o = j["prompt_tokens_per_request"], j["output_tokens_per_request"]
def span(d):
    return f"{d['min']:.0f}" if d["min"] == d["max"] else f"{d['mean']:.0f} ({d['min']:.0f}–{d['max']:.0f})"
pre = f"{float(after) - float(before):.0f}" if before and after else "–"
t, i = j["ttft_ms"], j["itl_ms"]
print(f"| {label} | {load} | {span(p)} + {span(o)} | {j['succeeded']} / {j['failed']} / {j['retried_requests']} "
      f"| {j['requests_per_s']:.2f} | {j['output_tokens_per_s']:,.0f} | {j['total_tokens_per_s']:,.0f} "
      f"| {t['p50']:,.0f} / {t['p99']:,.0f} | {i['p50']:.1f} / {i['p99']:.1f} | {j['tpot_ms']['p50']:.1f} "
      f"| {j['e2e_ms']['p50']:,.0f} | {pre} |")
PY
}

warm_up() {
  "$SBCTL" --addr "$addr" bench --seed 999 --no-progress --requests 4 --concurrency 4 \
    --prompt-tokens "$PROMPT_TOKENS" --max-tokens 8 >/dev/null 2>&1
}

if [ -n "$MODEL" ] && [ ! -f "$MODEL/config.json" ]; then
  log "sbmodel create --preset 3b $MODEL"
  "$SBMODEL" create --preset 3b --variant R1 --dtype bf16 "$MODEL" >/dev/null || exit 1
fi

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
commit=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
  echo "${gpu:-no GPU (CPU backend)}, $(date -u +%Y-%m-%d), commit $commit, model ${MODEL:-demo},"
  echo "sbserve flags: \`${SERVE_FLAGS:-(defaults)}\`; \`deploy/bench/grid.sh $parts\`; token-id prompts, ignore_eos;"
  echo "shared prefix rows: one $PREFIX_TOKENS-token prefix + $SUFFIX_TOKENS-token suffixes, the server restarted for each."
  echo
  echo "| run | load | prompt + output tokens | ok / failed / retried | req/s | output tok/s | total tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | TPOT p50 ms | e2e p50 ms | preemptions |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
} | tee "$rows"

if [[ $parts == *closed* || $parts == *poisson* ]]; then
  start_server || exit 1
  warm_up
  lengths=(--prompt-tokens "$PROMPT_TOKENS" --max-tokens "$OUTPUT_TOKENS")
  if [[ $parts == *closed* ]]; then
    for c in $CONCURRENCIES; do
      n=$((REQUESTS_PER_CLIENT * c))
      [ "$n" -lt "$MIN_REQUESTS" ] && n=$MIN_REQUESTS
      row "c$c" "closed loop" --concurrency "$c" --requests "$n" "${lengths[@]}"
    done
  fi
  if [[ $parts == *poisson* ]]; then
    if [ -z "$RATES" ]; then
      c=${CONCURRENCIES##* }
      RATES=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["requests_per_s"]
print(" ".join(f"{r * f:.2f}" for f in (0.25, 0.5, 0.9)))' "$OUT/grid-c$c.json" 2>/dev/null)
      [ -n "$RATES" ] || { log "no RATES and no c=$c run to derive them from"; exit 1; }
    fi
    for r in $RATES; do
      n=$(python3 -c "import math; print(max($MIN_REQUESTS, math.ceil($r * $POISSON_S)))")
      row "rate$r" "Poisson" --request-rate "$r" --requests "$n" "${lengths[@]}"
    done
  fi
  stop_server
fi

if [[ $parts == *prefix* ]]; then
  shared=(--shared-prefixes 1 --prefix-tokens "$PREFIX_TOKENS" --prompt-tokens "$SUFFIX_TOKENS"
          --max-tokens "$OUTPUT_TOKENS" --concurrency "$PREFIX_CONCURRENCY" --requests "$PREFIX_REQUESTS")
  for mode in on off; do
    flags=()
    [ $mode == off ] && flags=("$NO_PREFIX_CACHE_FLAG")
    if start_server "${flags[@]}"; then
      warm_up
      row "prefix-$mode" "shared prefix, cache $mode" "${shared[@]}"
      stop_server
    else
      echo "| shared prefix, cache $mode | sbserve did not start with \`${flags[*]}\` |" | tee -a "$rows"
    fi
  done
fi
log "rows in $rows; JSON, SVG, bench output and commands in $OUT/grid-*"
