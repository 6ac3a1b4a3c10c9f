#!/usr/bin/env bash
# Sets up (Debian packages), builds and runs the whole test suite. GPU tests carry the label "gpu"
# and report themselves skipped when no CUDA device is present.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SBSERVE_BUILD_DIR:-$root/build}
jobs=${SBSERVE_JOBS:-$(nproc)}
bash "$root/deploy/setup.sh" "$build"

status=0

# The parsers of untrusted input once more under AddressSanitizer + UBSan: corrupt checkpoints,
# tokenizer files and text must never crash.
asan=${build}-asan
cmake -S "$root" -B "$asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSBSERVE_ASAN=ON -DSBSERVE_CUDA=OFF >/dev/null
cmake --build "$asan" --target checkpoint_test tokenizer_test tokenizer_fuzz_replay chaos_test -j "$jobs"
echo "== under AddressSanitizer + UBSan: checkpoint_test, tokenizer_test, tokenizer_fuzz_replay, chaos_test (short)"
"$asan/tests/engine/checkpoint_test" --gtest_brief=1 || status=$?
"$asan/tests/tokenizer/tokenizer_test" --gtest_brief=1 || status=$?
"$asan/tests/tokenizer/tokenizer_fuzz_replay" "$root/tests/data/tokenizer/fuzz_corpus" --iterations=5000 || status=$?
# Chat templates: the Jinja lexer, parser and evaluator over hostile templates and messages.
cmake --build "$asan" --target chat_template_test -j "$jobs"
"$asan/tests/server/openai/chat_template_test" --gtest_brief=1 || status=$?
# The chaos mix (cancel, deadline, abort, duplicate, malformed at concurrency) in a short form.
SBSERVE_CHAOS_OPS=80 SBSERVE_CHAOS_THREADS=12 SBSERVE_CACHE_DIR="$asan/test-cache" \
  "$asan/tests/server/chaos_test" --gtest_brief=1 || status=$?
# The OpenAI door: its request parsers on random bodies, and the HTTP chaos mix.
cmake --build "$asan" --target protocol_property_test http_chaos_test -j "$jobs"
echo "== under AddressSanitizer + UBSan: protocol_property_test, http_chaos_test"
"$asan/tests/server/openai/protocol_property_test" --gtest_brief=1 || status=$?
SBSERVE_CACHE_DIR="$asan/test-cache" "$asan/tests/server/openai/http_chaos_test" --gtest_brief=1 || status=$?

# ThreadSanitizer on the engine: the engine thread, submitters, aborts and the sampling pool
# (engine_test), the scheduler and stop matcher. The server tests are left out on purpose:
# Debian's gRPC, protobuf and abseil are not built with TSan, and their lock-free hand-offs
# between threads are invisible to it, which reports races in gRPC's own completion queues
# that are not ours (rebuilding gRPC with -fsanitize=thread would be needed).
tsan=${build}-tsan
cmake -S "$root" -B "$tsan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSBSERVE_TSAN=ON -DSBSERVE_CUDA=OFF >/dev/null
cmake --build "$tsan" --target engine_test scheduler_test stop_matcher_test prefix_cache_test engine_pool_test -j "$jobs"
echo "== under ThreadSanitizer: engine_test, scheduler_test, stop_matcher_test, prefix_cache_test, engine_pool_test"
for t in engine_test scheduler_test stop_matcher_test prefix_cache_test engine_pool_test; do
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" "$tsan/tests/server/$t" --gtest_brief=1 || status=$?
done

# libFuzzer, briefly, on the two parsers of untrusted input: safetensors headers and tokenizer.json/text.
if command -v clang++ >/dev/null; then
  fuzz=${build}-fuzz
  CC=clang CXX=clang++ cmake -S "$root" -B "$fuzz" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSBSERVE_FUZZ=ON -DSBSERVE_CUDA=OFF >/dev/null
  cmake --build "$fuzz" --target safetensors_fuzz tokenizer_fuzz -j "$jobs"
  echo "== libFuzzer runs"
  "$fuzz/tests/engine/safetensors_fuzz" -max_total_time=20 -seed=1 -timeout=10 -rss_limit_mb=2048 \
    "$(mktemp -d)" "$root/tests/data/safetensors_seed" 2>&1 | tail -2 || status=$?
  "$fuzz/tests/tokenizer/tokenizer_fuzz" -max_total_time=20 -seed=1 -timeout=10 -rss_limit_mb=2048 \
    "$(mktemp -d)" "$root/tests/data/tokenizer/fuzz_corpus" 2>&1 | tail -2 || status=$?
fi
# The main suite last, so its summary closes the output. The container image test (label "image",
# tests/deploy/image_test.sh: buildah build of the Dockerfile and a run of the image) is opt-in:
# SBSERVE_IMAGE_TEST=1 tests/run.sh; without it CTest lists it as skipped.
image_test=off; [ "${SBSERVE_IMAGE_TEST:-0}" = 1 ] && image_test=on
echo "== ctest (all labels; gpu tests skip without a device; image test $image_test)"
(cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 900) || status=$?
exit $status
