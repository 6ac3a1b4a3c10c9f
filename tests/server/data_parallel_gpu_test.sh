#!/usr/bin/env bash
# --devices 0,1 on a two-GPU host: one sbserve process runs an engine on each GPU. Checks that
# the process holds memory on both GPUs, that concurrent requests are served by both engines
# (GetServerInfo per engine and the per-engine metrics), that the unlabelled metrics are the sums
# of the per-engine series, and that greedy output equals the one-engine server's. Exits 77
# (CTest: skipped) with fewer than two GPUs.
# usage: data_parallel_gpu_test.sh SBSERVE SBCTL
set -u
sbserve=$1 sbctl=$2
n=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
if [ "${n:-0}" -lt 2 ]; then echo "SKIP: needs two GPUs (found ${n:-0})"; exit 77; fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export SBSERVE_CACHE_DIR=$work/cache
fail() { echo "FAIL: $*"; for f in "$work"/*.log; do echo "== $f"; tail -20 "$f"; done; exit 1; }

start() {  # name port args... -> pid in $pid
  local name=$1 port=$2; shift 2
  "$sbserve" --port "$port" --metrics-port $((port + 1)) --log-requests=false --kv-cache-mb 512 "$@" \
    > "$work/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 240); do
    "$sbctl" --addr "localhost:$port" health >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || fail "$name exited during start-up"
    sleep 0.5
  done
  fail "$name not ready"
}
metric() {  # page series -> value (empty when absent)
  awk -v s="$2" '$1 == s {print $2}' "$1"
}

start two 50581 --devices 0,1
two_pid=$pid
grep -q "2 engines on cuda:0, cuda:1" "$work/two.log" || fail "the log does not name both engines"

# Concurrent load: 32 requests at concurrency 16.
"$sbctl" --addr localhost:50581 bench --requests 32 --concurrency 16 --max-tokens 32 --prompt-words 64 \
  > "$work/bench.txt" 2>&1 || fail "bench against --devices 0,1"
"$sbctl" --addr localhost:50581 info > "$work/info.json" || fail "info"
python3 - "$work/info.json" <<'EOF' || fail "GetServerInfo per engine"
import json, sys
s = json.load(open(sys.argv[1]))["server"]
e = s.get("engines", [])
assert len(e) == 2, e
assert [x["device"] for x in e] == ["cuda:0", "cuda:1"], e
fin = [int(x.get("requests_finished", 0)) for x in e]
assert all(f > 0 for f in fin), f"an engine served nothing: {fin}"
assert sum(fin) == int(s.get("requests_finished", 0)), (fin, s)
assert sum(int(x.get("kv_blocks_total", 0)) for x in e) == int(s["kv_blocks_total"]), s
print("engines finished", fin)
EOF

curl -sf localhost:50582/metrics > "$work/metrics.txt" || fail "scrape"
for name in sbserve_generation_tokens_total sbserve_prompt_tokens_total sbserve_kv_cache_capacity_blocks; do
  per=${name/sbserve_/sbserve_engine_}
  total=$(metric "$work/metrics.txt" "$name")
  e0=$(metric "$work/metrics.txt" "$per{engine=\"0\",device=\"cuda:0\"}")
  e1=$(metric "$work/metrics.txt" "$per{engine=\"1\",device=\"cuda:1\"}")
  [ -n "$total" ] && [ -n "$e0" ] && [ -n "$e1" ] || fail "$name or its per-engine series missing"
  python3 -c "import sys; t,a,b=map(float,sys.argv[1:]); sys.exit(0 if t == a + b and a > 0 and b > 0 else 1)" \
    "$total" "$e0" "$e1" || fail "$name: total $total != $e0 + $e1 (or an engine at 0)"
done

# NVML gauges for both serving GPUs.
gpus=$(grep -c '^sbserve_gpu_memory_used_bytes{gpu=' "$work/metrics.txt")
[ "$gpus" -eq 2 ] || fail "sbserve_gpu_memory_used_bytes has $gpus series, expected one per GPU (2)"

# Both GPUs hold memory of this one process.
buses=$(nvidia-smi --query-compute-apps=pid,gpu_bus_id --format=csv,noheader | awk -F', ' -v p="$two_pid" '$1 == p {print $2}' | sort -u | wc -l)
[ "$buses" -eq 2 ] || fail "sbserve --devices 0,1 holds memory on $buses GPU(s), expected 2"

"$sbctl" --addr localhost:50581 generate "Once upon a time" --temperature 0 --max-tokens 32 > "$work/out_two.txt" 2>&1 \
  || fail "generate on --devices 0,1"
kill -TERM "$two_pid"; wait "$two_pid" || fail "exit status $? after SIGTERM (two engines)"
pids=()

start one 50591 --device 0
one_pid=$pid
"$sbctl" --addr localhost:50591 generate "Once upon a time" --temperature 0 --max-tokens 32 > "$work/out_one.txt" 2>&1 \
  || fail "generate on --device 0"
kill -TERM "$one_pid"; wait "$one_pid" || fail "exit status $? after SIGTERM (one engine)"
pids=()
if ! diff <(head -n -1 "$work/out_one.txt") <(head -n -1 "$work/out_two.txt") >/dev/null; then
  cat "$work/out_one.txt" "$work/out_two.txt"; fail "greedy output differs between one and two engines"
fi
echo "PASS: --devices 0,1 serves on both GPUs, totals are the sums of the engines, greedy output equals one engine's"
