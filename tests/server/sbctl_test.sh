#!/usr/bin/env bash
# sbctl against a real sbserve: health, info, tokenize, generate (text and JSON), abort, bench.
# usage: sbctl_test.sh SBSERVE SBCTL
set -euo pipefail
sbserve=$1
sbctl=$2
work=$(mktemp -d)
"$sbserve" --host 127.0.0.1 --port 0 --metrics-port -1 --cpu-threads 2 --log-requests false >"$work/out" 2>"$work/err" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 600); do grep -q "sbserve ready" "$work/out" && break; sleep 0.05; done
grep -q "sbserve ready" "$work/out" || { echo "server did not become ready"; cat "$work/err"; exit 1; }
port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/out" | head -n1)
addr="127.0.0.1:$port"
fail() { echo "FAIL: $*"; exit 1; }

"$sbctl" --addr "$addr" health | tee "$work/health"
grep -q '^live.*: SERVING' "$work/health" || fail "liveness"
grep -q 'ready (sbserve.v1.SbServe): SERVING' "$work/health" || fail "readiness"

"$sbctl" --addr "$addr" info | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["model"]["backend"] == "cpu", j
assert int(j["model"]["vocab_size"]) > 0, j
assert j["server"]["ready"] is True, j'

"$sbctl" --addr "$addr" tokenize "hello world" | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert len(j["ids"]) == len(j["pieces"]) > 0, j'

# Streaming text: the summary goes to stderr, the text to stdout.
"$sbctl" --addr "$addr" generate "Once upon a time" --max-tokens 12 --temperature 0 --ignore-eos \
  >"$work/gen.txt" 2>"$work/gen.err"
grep -q "FINISH_REASON_LENGTH, [0-9]* prompt + 12 completion tokens" "$work/gen.err" || fail "generate summary: $(cat "$work/gen.err")"

# JSON lines: ids add up to max_tokens and the last line carries the finish fields.
"$sbctl" --addr "$addr" generate "Once upon a time" --max-tokens 12 --temperature 0 --ignore-eos \
  --logprobs 3 --seed 5 --top-k 40 --top-p 0.9 --min-p 0.01 --repetition-penalty 1.1 \
  --presence-penalty 0.1 --frequency-penalty 0.1 --min-tokens 2 --json >"$work/gen.jsonl"
python3 - "$work/gen.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
ids = [i for l in lines for i in l.get("token_ids", [])]
assert len(ids) == 12, ids
assert lines[-1]["finish_reason"] == "FINISH_REASON_LENGTH", lines[-1]
assert lines[-1]["usage"]["completion_tokens"] == 12, lines[-1]
lps = [lp for l in lines for lp in l.get("logprobs", [])]
assert len(lps) == 12 and all(len(lp["top"]) == 3 for lp in lps), lps
PY

# Same request through the unary RPC gives the same text.
greedy=$("$sbctl" --addr "$addr" generate "Once upon a time" --max-tokens 12 --temperature 0 --ignore-eos --unary 2>/dev/null)
[ "$greedy" == "$(cat "$work/gen.txt")" ] || fail "unary and streaming differ"

# --prompt-logprobs: the first message scores every prompt token after the first (3 ids: 2 entries).
"$sbctl" --addr "$addr" generate --ids 5,6,7 --max-tokens 2 --temperature 0 --ignore-eos \
  --prompt-logprobs 1 --json >"$work/plp.jsonl"
python3 - "$work/plp.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["token_id"] for l in lines[0]["prompt_logprobs"]] == [6, 7], lines[0]
assert all(len(l["top"]) == 1 and l.get("logprob", 0) <= 0 for l in lines[0]["prompt_logprobs"]), lines[0]
assert all("prompt_logprobs" not in l for l in lines[1:]), lines
PY

# --logit-bias: +100 on token 300 makes every sampled id 300; a second flag biases another token.
"$sbctl" --addr "$addr" generate --ids 5,6,7 --max-tokens 6 --temperature 1 --ignore-eos \
  --logit-bias 300:100 --logit-bias 301:-5 --json >"$work/bias.jsonl"
python3 - "$work/bias.jsonl" <<'PY'
import json, sys
ids = [i for l in open(sys.argv[1]) for i in json.loads(l).get("token_ids", [])]
assert ids == [300] * 6, ids
PY
if "$sbctl" --addr "$addr" generate "x" --logit-bias 300:101 2>"$work/bad.err"; then fail "bias 101 accepted"; fi
grep -q "sampling.logit_bias" "$work/bad.err" || fail "error does not name logit_bias: $(cat "$work/bad.err")"

# Errors exit non-zero and name the field.
if "$sbctl" --addr "$addr" generate "x" --top-p 0 2>"$work/bad.err"; then fail "bad top_p accepted"; fi
grep -q "sampling.top_p" "$work/bad.err" || fail "error does not name the field: $(cat "$work/bad.err")"

"$sbctl" --addr "$addr" abort no-such-id | python3 -c 'import json,sys; assert "aborted" not in json.load(sys.stdin)'

"$sbctl" --addr "$addr" bench --requests 8 --concurrency 4 --max-tokens 8 --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert j["succeeded"] == 8 and j["output_tokens"] == 64, j
assert j["ttft_ms"]["p50"] > 0 and j["output_tokens_per_s"] > 0, j'

kill -TERM "$pid"
wait "$pid"
echo "sbctl: all checks passed"
