#!/usr/bin/env bash
# sbctl bench against real sbserve processes (demo model, CPU): closed and open loop, exact
# token-id prompt lengths (the server's usage.prompt_tokens), length ranges, JSONL input and
# --save-input, shared prefixes, RESOURCE_EXHAUSTED retried after the server's RetryInfo (a second
# server with tiny admission limits), the JSON keys, goodput, --plot SVG, the progress line on a
# terminal, and workload errors.
# usage: sbctl_bench_test.sh SBSERVE SBCTL
set -euo pipefail
sbserve=$1
sbctl=$2
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

# start NAME FLAGS...: a server on a free loopback port.
start() {
  local name=$1
  shift
  "$sbserve" --host 127.0.0.1 --port 0 --metrics-port -1 --cpu-threads 2 --log-requests false "$@" \
    >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
}
addr_of() {
  local name=$1
  for _ in $(seq 1 600); do grep -q "sbserve ready" "$work/$name.out" && break; sleep 0.05; done
  grep -q "sbserve ready" "$work/$name.out" || { echo "server $name did not become ready" >&2; cat "$work/$name.err" >&2; exit 1; }
  echo "127.0.0.1:$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/$name.out" | head -n1)"
}
start main
# At most 2 running and 1 waiting: a burst of 12 is mostly refused with RESOURCE_EXHAUSTED and a
# 50 ms retry-after.
start tight --max-num-seqs 2 --max-queued-requests 1 --retry-after 50ms
main=$(addr_of main)
tight=$(addr_of tight)
bench() { "$sbctl" --addr "$main" bench "$@"; }

# check FILE PYTHON: assertions on the bench JSON `j` (every key and percentile present first).
check() {
  python3 - "$1" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for k in ["mode", "request_rate", "concurrency", "workload", "requests", "succeeded", "failed", "failed_by_status",
          "retried_requests", "retries", "retry_wait_s", "wall_s", "max_in_flight", "prompt_tokens", "output_tokens",
          "prompt_tokens_per_request", "output_tokens_per_request", "requests_per_s", "output_tokens_per_s",
          "total_tokens_per_s", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "goodput", "timeline"]:
    assert k in j, ("missing key", k, j)
for k in ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "prompt_tokens_per_request", "output_tokens_per_request"]:
    for p in ["p50", "p90", "p95", "p99", "max", "mean", "min", "count"]:
        assert p in j[k], ("missing", k, p)
    d = j[k]
    assert d["min"] <= d["p50"] <= d["p90"] <= d["p95"] <= d["p99"] <= d["max"], (k, d)
for k in ["slo_ttft_ms", "slo_itl_ms", "requests", "requests_per_s"]:
    assert k in j["goodput"], ("goodput", k)
assert j["requests"] == j["succeeded"] + j["failed"], j
assert sum(j["failed_by_status"].values()) == j["failed"], j
exec(sys.argv[2])
PY
}

# Closed loop, exact prompt and output lengths: every request's usage.prompt_tokens is 37.
bench --requests 12 --concurrency 4 --prompt-tokens 37 --max-tokens 5 --json "$work/closed.json" \
  --plot "$work/closed.svg" >"$work/closed.txt"
check "$work/closed.json" '
assert j["mode"] == "closed" and j["concurrency"] == 4, j
assert j["succeeded"] == 12 and j["failed"] == 0 and j["retries"] == 0, j
p, o = j["prompt_tokens_per_request"], j["output_tokens_per_request"]
assert p["min"] == p["max"] == 37 and j["prompt_tokens"] == 12 * 37, p
assert o["min"] == o["max"] == 5 and j["output_tokens"] == 60, o
assert j["ttft_ms"]["count"] == 12 and j["tpot_ms"]["count"] == 12 and j["itl_ms"]["count"] == 12 * 4, j
assert j["e2e_ms"]["p50"] >= j["ttft_ms"]["p50"] > 0, j
assert abs(j["total_tokens_per_s"] - (12 * 37 + 60) / j["wall_s"]) < 1e-6 * j["total_tokens_per_s"], j
assert abs(j["output_tokens_per_s"] - 60 / j["wall_s"]) < 1e-6 * j["output_tokens_per_s"], j
assert sum(j["timeline"]["output_tokens_per_s"]) * j["timeline"]["bin_s"] - 60 < 1e-6, j["timeline"]
assert j["goodput"]["requests"] == 12, j  # no SLO: every request counts
'

# Scoring prompts (--prompt-logprobs): every prompt token after the first comes back scored.
bench --requests 6 --concurrency 3 --prompt-tokens 37 --max-tokens 2 --prompt-logprobs 1 --json "$work/scored.json" \
  >/dev/null
check "$work/scored.json" '
assert j["succeeded"] == 6 and j["prompt_logprobs"] == 6 * 36, j
'
grep -q "requests 12: ok 12, failed 0" "$work/closed.txt" || fail "summary: $(cat "$work/closed.txt")"
python3 - "$work/closed.svg" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ns = "{http://www.w3.org/2000/svg}"
assert root.tag == ns + "svg", root.tag
lines = root.findall(".//" + ns + "polyline")
assert len(lines) == 3 and all(len(l.get("points").split()) >= 2 for l in lines), [l.get("points") for l in lines]
text = " ".join(t.text or "" for t in root.iter(ns + "text"))
for want in ["TTFT CDF", "Inter-token latency CDF", "Output throughput", "12 ok / 0 failed"]:
    assert want in text, (want, text)
PY

# Open loop (Poisson), lengths drawn from ranges; --save-input records exactly what was sent.
bench --requests 10 --request-rate 40 --prompt-tokens 10:20 --max-tokens 3:6 --seed 7 --json "$work/open.json" \
  --save-input "$work/sent.jsonl" >/dev/null
check "$work/open.json" '
assert j["mode"] == "open" and j["request_rate"] == 40 and j["concurrency"] is None, j
assert j["succeeded"] == 10, j
p, o = j["prompt_tokens_per_request"], j["output_tokens_per_request"]
assert 10 <= p["min"] and p["max"] <= 20 and p["min"] < p["max"], p
assert 3 <= o["min"] and o["max"] <= 6, o
'
python3 - "$work/sent.jsonl" "$work/open.json" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
j = json.load(open(sys.argv[2]))
assert len(lines) == 10, lines
assert sum(len(l["prompt_ids"]) for l in lines) == j["prompt_tokens"], j
assert sum(l["max_tokens"] for l in lines) == j["output_tokens"], j
ids = [i for l in lines for i in l["prompt_ids"]]
# Random ids come from the middle of the demo model's 2,048-id vocabulary (specials sit at the ends).
assert 256 <= min(ids) and max(ids) < 2048 - 256, (min(ids), max(ids))
assert len(set(map(tuple, (l["prompt_ids"] for l in lines)))) == 10, "prompts repeat"
PY

# An open loop capped by --concurrency never has more requests in flight.
bench --requests 8 --request-rate inf --concurrency 2 --prompt-tokens 8 --max-tokens 3 --json "$work/cap.json" >/dev/null
check "$work/cap.json" 'assert j["succeeded"] == 8 and 1 <= j["max_in_flight"] <= 2 and j["concurrency"] == 2, j'

# The same seed gives the same workload; replaying the saved file sends the same tokens.
bench --requests 10 --request-rate inf --prompt-tokens 10:20 --max-tokens 3:6 --seed 7 --save-input "$work/again.jsonl" >/dev/null
cmp "$work/sent.jsonl" "$work/again.jsonl" || fail "--seed 7 gave a different workload"
bench --input "$work/sent.jsonl" --concurrency 3 --json "$work/replay.json" >/dev/null
check "$work/replay.json" '
import os
o = json.load(open(os.path.join(os.path.dirname(sys.argv[1]), "open.json")))
assert j["requests"] == 10 and j["succeeded"] == 10, j
assert j["prompt_tokens"] == o["prompt_tokens"] and j["output_tokens"] == o["output_tokens"], (j, o)
'

# JSONL input: text and id prompts; a line without max_tokens takes --max-tokens.
printf '%s\n' '{"prompt_ids": [5, 6, 7, 8, 9], "max_tokens": 3}' '' '{"prompt": "hello world"}' \
  '{"prompt_ids": [11, 12, 13, 14, 15, 16, 17], "max_tokens": 2}' >"$work/in.jsonl"
hello=$("$sbctl" --addr "$main" tokenize "hello world" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ids"]))')
bench --input "$work/in.jsonl" --max-tokens 4 --json "$work/jsonl.json" >/dev/null
check "$work/jsonl.json" "
assert j['requests'] == 3 and j['succeeded'] == 3, j
assert j['output_tokens'] == 3 + 4 + 2, j
assert j['prompt_tokens'] == 5 + 7 + $hello, j
"
echo '{"prompt_ids": [1, "x"]}' >"$work/bad.jsonl"
rc=0; bench --input "$work/bad.jsonl" 2>"$work/bad.err" >/dev/null || rc=$?
if [ "$rc" != 2 ] || ! grep -q "bad.jsonl:1: \"prompt_ids\" holds a value that is not a token id" "$work/bad.err"; then
  fail "bad JSONL: rc $rc, $(cat "$work/bad.err")"
fi

# Shared prefixes: 8 prompts of 40 + 6 ids, two distinct prefixes used in turn, unique suffixes.
bench --requests 8 --concurrency 4 --shared-prefixes 2 --prefix-tokens 40 --prompt-tokens 6 --max-tokens 2 \
  --json "$work/prefix.json" --save-input "$work/prefix.jsonl" >/dev/null
check "$work/prefix.json" '
p = j["prompt_tokens_per_request"]
assert j["succeeded"] == 8 and p["min"] == p["max"] == 46, j
assert j["shared_prefixes"] == 2 and j["prefix_tokens"] == 40, j
'
python3 - "$work/prefix.jsonl" <<'PY'
import json, sys
ids = [json.loads(l)["prompt_ids"] for l in open(sys.argv[1])]
assert len(ids) == 8 and all(len(x) == 46 for x in ids), ids
heads = [tuple(x[:40]) for x in ids]
assert len(set(heads)) == 2, "want two distinct prefixes"
assert all(heads[i] == heads[i % 2] for i in range(8)), heads
assert len(set(tuple(x[40:]) for x in ids)) == 8, "suffixes repeat"
PY

# Goodput: an unmeetable TTFT SLO admits no request, a generous one every request.
bench --requests 4 --concurrency 2 --prompt-tokens 8 --max-tokens 3 --slo-ttft 0.001 --json "$work/slo0.json" >/dev/null
check "$work/slo0.json" 'assert j["goodput"]["requests"] == 0 and j["goodput"]["slo_ttft_ms"] == 0.001 and j["succeeded"] == 4, j'
bench --requests 4 --concurrency 2 --prompt-tokens 8 --max-tokens 3 --slo-ttft 1e9 --slo-itl 1e9 --json - >"$work/slo1.json"
check "$work/slo1.json" 'assert j["goodput"]["requests"] == 4, j'

# --duration: issuing stops after 1 s, not after a request count.
bench --duration 1s --concurrency 2 --prompt-tokens 8 --max-tokens 2 --json "$work/dur.json" >/dev/null
check "$work/dur.json" 'assert j["requests"] >= 1 and j["failed"] == 0 and j["wall_s"] >= 1.0, j'

# Retries: a burst against the tight server is refused, retried after its retry-after (50 ms plus
# up to half again of jitter), and every request ends well.
# (--max-retries is no limit here: on a loaded machine a request may be refused many times.)
"$sbctl" --addr "$tight" bench --requests 12 --request-rate inf --prompt-tokens 20 --max-tokens 6 --max-retries 100000 \
  --json "$work/retry.json" >"$work/retry.txt" || fail "retried run failed: $(cat "$work/retry.txt")"
check "$work/retry.json" '
assert j["succeeded"] == 12 and j["failed"] == 0 and j["failed_by_status"] == {}, j
assert j["retries"] > 0 and 0 < j["retried_requests"] <= j["retries"], j
per = j["retry_wait_s"] / j["retries"]
assert 0.050 <= per <= 0.075 + 1e-9, ("not the server retry-after of 50 ms", per)
assert j["output_tokens"] == 72, j
'
# Without retries the refusals are failures, counted by status.
rc=0; "$sbctl" --addr "$tight" bench --requests 12 --request-rate inf --prompt-tokens 20 --max-tokens 6 \
  --max-retries 0 --json "$work/noretry.json" >/dev/null || rc=$?
[ "$rc" == 1 ] || fail "failures did not give exit 1 (rc $rc)"
check "$work/noretry.json" '
assert j["failed"] > 0 and j["failed_by_status"] == {"RESOURCE_EXHAUSTED": j["failed"]}, j
assert j["retries"] == 0 and j["succeeded"] + j["failed"] == 12, j
'

# The progress line appears on a terminal (script(1) gives the command one) and not in a pipe.
if command -v script >/dev/null; then
  script -qec "$sbctl --addr $main bench --duration 1.2s --concurrency 2 --prompt-tokens 8 --max-tokens 2" \
    "$work/tty.log" >/dev/null
  grep -aq $'\r\\[ *[0-9.]* s\\] [0-9]* done, 0 failed, 0 retries' "$work/tty.log" || fail "no progress line on a terminal"
fi
bench --duration 1.2s --concurrency 2 --prompt-tokens 8 --max-tokens 2 >/dev/null 2>"$work/pipe.err"
[ ! -s "$work/pipe.err" ] || fail "progress written to a pipe: $(cat -v "$work/pipe.err")"

# Workload errors exit 2 with a message.
expect_error() {
  local want=$1
  shift
  local rc=0
  "$sbctl" --addr "$main" bench "$@" >/dev/null 2>"$work/err.txt" || rc=$?
  if [ "$rc" != 2 ] || ! grep -q -- "$want" "$work/err.txt"; then fail "bench $*: rc $rc, $(cat "$work/err.txt")"; fi
}
expect_error "exceeds the model's context of 2048" --requests 1 --prompt-tokens 2040 --max-tokens 16
expect_error "needs token-id prompts" --requests 1 --shared-prefixes 2 --prefix-tokens 8
expect_error "is not N or LO:HI" --prompt-tokens 9:3
expect_error "request-rate inf needs --requests" --request-rate inf --duration 1s
expect_error "unknown option --bogus" --bogus 1

echo "sbctl bench: all checks passed"
