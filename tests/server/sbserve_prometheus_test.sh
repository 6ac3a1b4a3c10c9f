#!/usr/bin/env bash
# The real sbserve's /metrics after real traffic: `promtool check metrics` accepts it, and a real
# Prometheus server scrapes it (target up, our counters visible through its query API).
# usage: sbserve_prometheus_test.sh SBSERVE SBCTL
set -euo pipefail
sbserve=$1
sbctl=$2
# Exit 77 when the tools are missing: CTest reports that as skipped (SKIP_RETURN_CODE), not passed.
command -v promtool >/dev/null && command -v prometheus >/dev/null || {
  echo "SKIP: promtool/prometheus not installed (Debian package prometheus)"; exit 77; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$sbserve" --host 127.0.0.1 --port 0 --metrics-host 127.0.0.1 --metrics-port 0 --cpu-threads 2 \
  --log-requests false >"$work/out" 2>"$work/err" &
pids+=($!)
for _ in $(seq 1 600); do grep -q "sbserve ready" "$work/out" && break; sleep 0.05; done
grep -q "sbserve ready" "$work/out" || { cat "$work/err"; fail "server did not become ready"; }
port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/out" | head -n1)
mport=$(sed -n 's/.*metrics: http:\/\/[^:]*:\([0-9]*\)\/metrics.*/\1/p' "$work/out" | head -n1)
[ -n "$port" ] && [ -n "$mport" ] || { cat "$work/out"; fail "ports not in the banner"; }

# Traffic: two completions and one refused request, so counters and histograms have samples.
"$sbctl" --addr "127.0.0.1:$port" generate "Once upon a time" --max-tokens 8 --ignore-eos >/dev/null 2>&1
"$sbctl" --addr "127.0.0.1:$port" generate "Hello" --max-tokens 5 --temperature 0.8 --seed 3 --ignore-eos >/dev/null 2>&1
if "$sbctl" --addr "127.0.0.1:$port" generate "x" --top-p 7 >/dev/null 2>&1; then fail "top_p 7 accepted"; fi

fetch() { /usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
fetch "http://127.0.0.1:$mport/metrics" >"$work/metrics.txt"
promtool check metrics <"$work/metrics.txt" || fail "promtool rejected /metrics"
grep -q '^sbserve_generation_tokens_total 13$' "$work/metrics.txt" || fail "generation counter: $(grep generation_tokens "$work/metrics.txt")"
grep -q '^sbserve_request_rejected_total{reason="invalid_argument"} 1$' "$work/metrics.txt" || fail "reject counter"
echo "promtool check metrics: ok ($(grep -c '^sbserve_' "$work/metrics.txt") samples)"

pport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<CFG
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sbserve
    static_configs:
      - targets: ["127.0.0.1:$mport"]
CFG
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$pport" >"$work/prom.log" 2>&1 &
pids+=($!)
query() { fetch "http://127.0.0.1:$pport/api/v1/query?query=$1" 2>/dev/null || true; }
ok=""
for _ in $(seq 1 60); do
  if query 'up%7Bjob%3D%22sbserve%22%7D' | grep -q '"value":\[[0-9.]*,"1"\]'; then ok=1; break; fi
  sleep 0.5
done
[ -n "$ok" ] || { tail -20 "$work/prom.log"; fail "Prometheus never saw the target up"; }
query 'sbserve_generation_tokens_total' | grep -q '"value":\[[0-9.]*,"13"\]' || fail "Prometheus query of our counter"
echo "Prometheus scraped sbserve: up=1, sbserve_generation_tokens_total=13"
