#!/usr/bin/env bash
# Issue 9's targets at the default flags, in one device call: sbmodel bench decode at B = 1, 16, 64
# (512-token prompts, 64 generated) with the 16 x 512 prefill row, then sbserve at c = 1 and c = 64
# (gpu_serve_ab.sh, one side, 512-token prompts, 128 output tokens), then the serving load again with
# --max-batch-tokens 4096 and 8192 (MAX_BATCH_TOKENS_SWEEP). 3B bf16 checkpoint generated on
# the machine. Expects the CUDA build's sbmodel, sbserve and sbctl in $PWD/.gpu/{bin,lib}; logs to $OUT.
set -u
OUT=${OUT:-/tmp}
export OUT LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
here=$(dirname "$0")
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
for b in 1 16 64; do
  echo "B=$b: $("$BIN"/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 --prefill-reps 5 | grep -E 'prefill|decode' | tr '\n' ' ')"
done
SIDES=A A='X=1' bash "$here/gpu_serve_ab.sh"
# The prefill budget per step against c = 64's TTFT (arrivals come in bursts in the closed loop):
# the same load with larger steps.
for mbt in ${MAX_BATCH_TOKENS_SWEEP-4096 8192}; do
  echo "== --max-batch-tokens $mbt"
  SIDES=A A='X=1' SERVE_FLAGS="--max-batch-tokens $mbt" bash "$here/gpu_serve_ab.sh"
done
