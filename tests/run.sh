#!/usr/bin/env bash
# Sets up (Debian packages), builds and runs the whole test suite. GPU tests carry the label "gpu"
# and report themselves skipped when no CUDA device is present.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SBSERVE_BUILD_DIR:-$root/build}
bash "$root/deploy/setup.sh" "$build"

cd "$build"
status=0
ctest --output-on-failure -j "$(nproc)" --timeout 900 || status=$?

# The checkpoint loader once more under AddressSanitizer + UBSan (corrupt files must never crash).
asan=${build}-asan
SBSERVE_CMAKE_ARGS="-DSBSERVE_ASAN=ON -DSBSERVE_CUDA=OFF" cmake -S "$root" -B "$asan" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSBSERVE_ASAN=ON -DSBSERVE_CUDA=OFF >/dev/null
cmake --build "$asan" --target checkpoint_test -j "$(nproc)"
echo "== checkpoint_test under AddressSanitizer"
"$asan/tests/engine/checkpoint_test" --gtest_brief=1 || status=$?
exit $status
