#!/usr/bin/env bash
# --device N on a multi-GPU host: sbserve on device 1 serves correctly (greedy output equal to the
# same server on device 0) and its process holds memory on GPU 1 only. Exits 77 (CTest: skipped)
# with fewer than two GPUs.
# usage: device_test.sh SBSERVE SBCTL
set -u
sbserve=$1 sbctl=$2
n=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
if [ "${n:-0}" -lt 2 ]; then echo "SKIP: needs two GPUs (found ${n:-0})"; exit 77; fi
work=$(mktemp -d); trap 'pkill -P $$ sbserve 2>/dev/null; rm -rf "$work"' EXIT
export SBSERVE_CACHE_DIR=$work/cache
run_on() {  # device port -> greedy output on stdout, after checking where the process lives
  local dev=$1 port=$2
  "$sbserve" --device "$dev" --port "$port" --metrics-port $((port + 1)) --log-requests=false > "$work/server$dev.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do "$sbctl" --addr "localhost:$port" health >/dev/null 2>&1 && break; sleep 0.5; done
  "$sbctl" --addr "localhost:$port" generate "Once upon a time" --temperature 0 --max-tokens 32 > "$work/out$dev.txt" 2>&1 || {
    echo "FAIL: generate on device $dev"; cat "$work/out$dev.txt" "$work/server$dev.log"; exit 1; }
  grep -q FINISH_REASON_LENGTH "$work/out$dev.txt" || { echo "FAIL: device $dev"; cat "$work/out$dev.txt"; exit 1; }
  grep -q "cuda backend" "$work/server$dev.log" || { echo "FAIL: device $dev did not use the CUDA backend"; cat "$work/server$dev.log"; exit 1; }
  # The GPUs (by bus id) on which this process holds memory.
  local buses
  buses=$(nvidia-smi --query-compute-apps=pid,gpu_bus_id --format=csv,noheader | awk -F', ' -v p="$pid" '$1 == p {print $2}' | sort -u)
  local want
  want=$(nvidia-smi --query-gpu=index,pci.bus_id --format=csv,noheader | awk -F', ' -v d="$dev" '$1 == d {print $2}')
  echo "device $dev (bus $want): process $pid on [$(echo $buses)]" >&2
  if [ "$buses" != "$want" ]; then echo "FAIL: sbserve --device $dev holds memory on [$buses], expected only $want"; exit 1; fi
  kill -TERM "$pid"; wait "$pid" || { echo "FAIL: exit status $? after SIGTERM"; exit 1; }
}
run_on 1 50561 || exit 1
run_on 0 50571 || exit 1
if ! diff <(head -n -1 "$work/out0.txt") <(head -n -1 "$work/out1.txt") >/dev/null; then
  echo "FAIL: device 0 and device 1 disagree"; cat "$work/out0.txt" "$work/out1.txt"; exit 1
fi
echo "PASS: device 1 serves the same greedy text as device 0 and leaves device 0 untouched"
