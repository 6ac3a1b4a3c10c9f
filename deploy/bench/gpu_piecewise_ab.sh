#!/usr/bin/env bash
# Piecewise graphs of steps with prefill chunks (SBSERVE_PIECEWISE_GRAPHS) against kernel-by-kernel
# launches: `sbmodel bench` of the 3B checkpoint, the prefill step (BATCH prompts of LEN tokens in one
# step) timed REPS times and its median printed, for each shape with the switch off then on, ROUNDS
# rounds in alternating order. Steps above 256 tokens run kernel by kernel either way (the control).
# Expects sbmodel in $PWD/.gpu/{bin,lib}; logs to $OUT.
# MIXED ("DECODESxCHUNK ...", none by default) adds steps of that many decodes plus one chunk
# (`sbmodel bench --mixed-chunk`), the steps serving runs while a short prompt arrives.
# usage: deploy/bench/gpu_piecewise_ab.sh   env: SHAPES ("BATCHxLEN ..."), MIXED, REPS (30), ROUNDS ("1 2")
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1
run() {  # shape env
  # shellcheck disable=SC2086
  echo "${1} $2: $(env $2 timeout 100 "$BIN"/sbmodel bench --model /tmp/m3b --batch "${1%x*}" --prompt-len "${1#*x}" \
    --gen 4 --prefill-reps "${REPS:-30}" 2>/dev/null | grep -E '^prefill' | tr '\n' ' ')"
}
mixed() {  # DECODESxCHUNK env: decodes at context 516 plus one CHUNK-token chunk, as serving mixes them
  # shellcheck disable=SC2086
  echo "mixed ${1} $2: $(env $2 timeout 100 "$BIN"/sbmodel bench --model /tmp/m3b --batch "${1%x*}" --prompt-len 512 \
    --gen 4 --mixed-chunk "${1#*x}" --prefill-reps "${REPS:-30}" 2>/dev/null | grep -E '^mixed' | tr '\n' ' ')"
}
for r in ${ROUNDS:-1 2}; do
  for shape in ${SHAPES-1x16 4x32 1x200 8x32 16x16 1x512}; do
    if [ $((r % 2)) = 1 ]; then run "$shape" SBSERVE_PIECEWISE_GRAPHS=0; run "$shape" SBSERVE_PIECEWISE_GRAPHS=1
    else run "$shape" SBSERVE_PIECEWISE_GRAPHS=1; run "$shape" SBSERVE_PIECEWISE_GRAPHS=0; fi
  done
  for shape in ${MIXED:-}; do
    if [ $((r % 2)) = 1 ]; then mixed "$shape" SBSERVE_PIECEWISE_GRAPHS=0; mixed "$shape" SBSERVE_PIECEWISE_GRAPHS=1
    else mixed "$shape" SBSERVE_PIECEWISE_GRAPHS=1; mixed "$shape" SBSERVE_PIECEWISE_GRAPHS=0; fi
  done
done
