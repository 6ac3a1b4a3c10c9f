#!/usr/bin/env bash
# What each stage of a decode step (and of the prefill before it) costs: `sbmodel bench` of the 3B
# checkpoint (512-token prompts, 64 decode steps) with SBSERVE_ABLATE leaving one stage out at a
# time (measurement only: the tokens are wrong), then the GEMMs alone and nothing but the draw.
# The full step runs first and last; a stage's cost is the full step minus the step without it.
# Expects sbmodel in $PWD/.gpu/{bin,lib} (../shared/gpu/pack.sh .gpu build/engine/sbmodel); logs to $OUT.
# usage: deploy/bench/gpu_decode_ablate.sh   env: BATCHES ("1 16 64")
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 || exit 1
for b in ${BATCHES:-1 16 64}; do
  for a in none norm kv_append attn c_attn proj c_fc fc_proj head embed none norm,kv_append,attn,embed \
           norm,kv_append,attn,embed,c_attn,proj,c_fc,fc_proj,head; do
    echo "B=$b ablate=$a: $(SBSERVE_ABLATE=${a/none/} timeout 100 "$BIN"/sbmodel bench --model /tmp/m3b --batch "$b" \
      --prompt-len 512 --gen 64 2>/dev/null | grep -E 'prefill|decode' | tr '\n' ' ')"
  done
done
