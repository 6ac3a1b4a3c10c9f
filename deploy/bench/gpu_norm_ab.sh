#!/usr/bin/env bash
# The register-resident norm kernel (SBSERVE_NORM_KERNEL=v2, the default) against the three-pass one (v1), same binary,
# alternating, on `sbmodel bench` of the 3B checkpoint (512-token prompts, 64 decode steps).
set -u
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || $B/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b >/dev/null || exit 1
for round in ${ROUNDS:-1 2}; do
  for b in ${BATCHES:-1 16 64}; do
    for k in v1 v2; do
      echo "round $round B=$b norm $k: $(SBSERVE_NORM_KERNEL=$k $B/sbmodel bench --model /tmp/m3b --batch $b --prompt-len 512 --gen 64 | grep -E 'prefill|decode' | tr '\n' ' ')"
    done
  done
done
