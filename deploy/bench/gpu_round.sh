#!/usr/bin/env bash
# One device call for this round's changes, in priority order (what ran is in $OUT if the call is cut
# short): the GPU tests (sb_attn_test's decode and API cases, the engine and sampler tests), memcheck
# on small decode cases; the decode step A/B of the in-split combine (gpu_decode_ab.sh) with extra runs
# of the small-GEMM shape 4 and without graphs; the piecewise-graph A/B of small
# prefill steps (gpu_piecewise_ab.sh); the 16 x 512 prefill; sbserve at c = 1 and 64 with both new
# switches on, then off (the defaults).
# Expects the binaries of gpu_combine_in_split.sh in $PWD/.gpu/{bin,lib}; logs to $OUT.
set -u
OUT=${OUT:-/tmp}
export OUT LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
here=$(dirname "$0")
SB_ATTN_FILTER='SbAttnDecode.*:SbAttnFusedRows.*:SbAttnEarlyExit.*:SbAttnApi.*:SbAttnProblem.*' \
  SANITIZE_TOOLS=memcheck DECODE=0 SERVE=0 bash "$here/gpu_combine_in_split.sh"
A='SBSERVE_DECODE_COMBINE_IN_SPLIT=0' B='SBSERVE_DECODE_COMBINE_IN_SPLIT=1' \
  EXTRA='1:SBSERVE_SMALL_GEMM_VARIANT=4 1:SBSERVE_CUDA_GRAPHS=0 64:SBSERVE_CUDA_GRAPHS=0' \
  bash "$here/gpu_decode_ab.sh"
SHAPES='1x16 4x32 8x32 1x512' ROUNDS=1 REPS=20 bash "$here/gpu_piecewise_ab.sh"
echo "B=16 x 512: $(.gpu/bin/sbmodel bench --model /tmp/m3b --batch 16 --prompt-len 512 --gen 8 --prefill-reps 5 | grep -E '^prefill')"
A='SBSERVE_DECODE_COMBINE_IN_SPLIT=1 SBSERVE_PIECEWISE_GRAPHS=1' B='X=1' bash "$here/gpu_serve_ab.sh"
