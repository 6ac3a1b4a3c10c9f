#!/usr/bin/env bash
# Data-parallel serving load run (issue 17): the same load on one GPU (--device 0) and on two
# (--devices 0,1): sbctl bench at concurrency 64 and 128, 512-token prompts, 128 output tokens, with
# the server's default sizing flags (each engine sizes its own KV cache from its GPU).
# Target: at c=128, two GPUs give >= 1.9x the one-GPU output tok/s with TTFT p50 no worse.
#
# Expects the CUDA build's sbserve, sbctl and sbmodel (with their libraries, as packed by the GPU
# machine's pack.sh) in $PWD/.gpu/{bin,lib}, and $OUT as the folder for logs and results.
# Writes $OUT/dp_{1,2}gpu_c{64,128}.json (sbctl bench --json), their server logs and metrics, and
# prints a summary table. PROMPT_TOKENS (default 512) sets the exact prompt length in token ids.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
TOKENS=${PROMPT_TOKENS:-512}
n=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
if [ "${n:-0}" -lt 2 ]; then echo "needs two GPUs (found ${n:-0})"; exit 1; fi
[ -d /tmp/m3b ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1

run() {  # label devices-flag...
  local label=$1; shift
  setsid $B/sbserve --model /tmp/m3b --port 50051 --metrics-port 8080 --log-requests=false "$@" \
    > "$OUT/dp_${label}_server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 180); do $B/sbctl health >/dev/null 2>&1 && break; sleep 1; done
  $B/sbctl health >/dev/null 2>&1 || { echo "$label: server not ready"; tail -20 "$OUT/dp_${label}_server.log"; kill -TERM $pid; return 1; }
  # Warm-up: CUDA graphs and allocator pools on every engine.
  $B/sbctl bench --requests 64 --concurrency 32 --max-tokens 16 --prompt-tokens "$TOKENS" > /dev/null
  for c in 64 128; do
    $B/sbctl bench --requests $((c * 4)) --concurrency $c --max-tokens 128 --prompt-tokens "$TOKENS" --json \
      > "$OUT/dp_${label}_c${c}.json"
    echo "== $label c=$c: $(cat "$OUT/dp_${label}_c${c}.json")"
  done
  curl -s localhost:8080/metrics > "$OUT/dp_${label}_metrics.txt"
  $B/sbctl info > "$OUT/dp_${label}_info.json"
  kill -TERM $pid
  wait $pid
}

run 1gpu --device 0 || exit 1
run 2gpu --devices 0,1 || exit 1

python3 - "$OUT" <<'EOF'
import json, sys, re
out = sys.argv[1]
def mean_prompt(label):
    page = open(f"{out}/dp_{label}_metrics.txt").read()
    s = re.search(r"^sbserve_request_prompt_tokens_sum (\S+)", page, re.M)
    c = re.search(r"^sbserve_request_prompt_tokens_count (\S+)", page, re.M)
    return float(s.group(1)) / max(1.0, float(c.group(1))) if s and c else float("nan")
print(f"mean prompt tokens: 1 GPU {mean_prompt('1gpu'):.0f}, 2 GPUs {mean_prompt('2gpu'):.0f}")
print("| c | GPUs | output tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | failed |")
print("|---|---|---|---|---|---|---|---|")
for c in (64, 128):
    base = None
    for label, gpus in (("1gpu", 1), ("2gpu", 2)):
        j = json.load(open(f"{out}/dp_{label}_c{c}.json"))
        tps = j["output_tokens_per_s"]
        ratio = "" if base is None else f" ({tps / base:.2f}x)"
        base = base or tps
        print(f"| {c} | {gpus} | {tps:.0f}{ratio} | {j['requests_per_s']:.2f} | {j['ttft_ms']['p50']:.0f} | "
              f"{j['ttft_ms']['p99']:.0f} | {j['itl_ms']['p50']:.1f} | {j['failed']} |")
for label in ("2gpu",):
    info = json.load(open(f"{out}/dp_{label}_info.json"))["server"]
    print("2-GPU engines:", [(e["device"], e.get("requests_finished", "0")) for e in info.get("engines", [])])
EOF
