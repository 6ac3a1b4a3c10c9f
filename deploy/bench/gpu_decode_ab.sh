#!/usr/bin/env bash
# One build's decode step under two environments, A and B (e.g. A='SBSERVE_FUSED_KV_APPEND=0'
# B='X=1'): `sbmodel bench` of the 3B checkpoint (512-token prompts, 64 decode steps) per batch
# size, ROUNDS rounds with the order alternating (A first in odd rounds), then EXTRA runs given as
# "BATCH:ENV" words. Optionally GPU tests first (TESTS: binary names in .gpu/bin, run in full).
# Expects sbmodel (and the tests) in $PWD/.gpu/{bin,lib}; logs to $OUT.
# usage: A=... B=... deploy/bench/gpu_decode_ab.sh   env: BATCHES ("1 16 64"), ROUNDS ("1 2"), EXTRA, TESTS
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
BIN=$PWD/.gpu/bin  # not B: B names the second environment
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
[ -f /tmp/m3b/config.json ] || "$BIN"/sbmodel create --preset 3b --variant R1 --dtype bf16 /tmp/m3b > "$OUT/create.log" 2>&1 &
for t in ${TESTS:-}; do
  timeout 300 "$BIN/$t" > "$OUT/$t.log" 2>&1
  echo "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)|FAILED  \]' "$OUT/$t.log" | tr '\n' ' ')"
  grep -E 'Failure' -A6 "$OUT/$t.log" | head -14
done
wait
run() {  # batch env
  # shellcheck disable=SC2086
  echo "B=$1 $2: $(env $2 timeout 100 "$BIN"/sbmodel bench --model /tmp/m3b --batch "$1" --prompt-len 512 --gen 64 \
    2>/dev/null | grep -E 'decode' | tr '\n' ' ')"
}
for r in ${ROUNDS:-1 2}; do
  for b in ${BATCHES:-1 16 64}; do
    if [ $((r % 2)) = 1 ]; then run "$b" "${A:-X=0}"; run "$b" "${B:-X=1}"; else run "$b" "${B:-X=1}"; run "$b" "${A:-X=0}"; fi
  done
done
for e in ${EXTRA:-}; do run "${e%%:*}" "${e#*:}"; done
