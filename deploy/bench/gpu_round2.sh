#!/usr/bin/env bash
# Second device call of the round: the engine tests with the piecewise graphs on by default
# (cuda_backend_test, cuda_engine_test) and the device sampler test (its logit-bias cases are new
# and have not run on a GPU), sbserve with short prompts (PROMPT_TOKENS, 96) with the
# piecewise graphs off then on (gpu_serve_ab.sh: at c = 64 most steps carry a prefill chunk of at most
# 256 tokens), mixed steps of decodes plus one short chunk with the piecewise graphs off and on
# (gpu_piecewise_ab.sh MIXED), then the whole sb_attn_test. Binaries as for gpu_round.sh; logs to $OUT.
set -u
OUT=${OUT:-/tmp}
export OUT LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
here=$(dirname "$0")
TESTS='cuda_backend_test cuda_engine_test device_sampler_test' SANITIZE=0 DECODE=0 SERVE=0 bash "$here/gpu_combine_in_split.sh"
PROMPT_TOKENS=${PROMPT_TOKENS:-96} A='SBSERVE_PIECEWISE_GRAPHS=0' B='SBSERVE_PIECEWISE_GRAPHS=1' bash "$here/gpu_serve_ab.sh"
SHAPES= MIXED='16x32 16x200 64x96' ROUNDS=1 REPS=20 bash "$here/gpu_piecewise_ab.sh"
TESTS=sb_attn_test SANITIZE=0 DECODE=0 SERVE=0 bash "$here/gpu_combine_in_split.sh"
