#!/usr/bin/env bash
# Installs what sbserve needs from Debian's packages (when missing) and builds the tree.
# usage: deploy/setup.sh [BUILD_DIR]   (environment: SBSERVE_CMAKE_ARGS, SBSERVE_JOBS)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}

packages=(build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev libicu-dev libcpp-httplib-dev prometheus yamllint python3-yaml python3-numpy nodejs npm
  clang libclang-rt-14-dev buildah debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # node and npm may already be present outside dpkg (e.g. a node installed by hand); skip them then.
  if command -v node >/dev/null && command -v npm >/dev/null; then
    filtered=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
    missing=("${filtered[@]}")
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=${SBSERVE_JOBS:-$(nproc)}
# shellcheck disable=SC2086
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${SBSERVE_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$jobs"
