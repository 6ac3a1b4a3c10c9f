#!/usr/bin/env bash
# Sets up (Debian packages), builds and starts the main job: the sbserve gRPC server, on the
# checkpoint in $SBSERVE_MODEL if set, else on the embedded demo model; CUDA when a GPU is
# present, else the CPU backend. Extra arguments go to sbserve (see README.md, "Flags").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SBSERVE_BUILD_DIR:-$root/build}
bash "$root/deploy/setup.sh" "$build"
args=()
[ -n "${SBSERVE_MODEL:-}" ] && args+=(--model "$SBSERVE_MODEL")
if [ -x "$build/server/sbserve" ]; then
  exec "$build/server/sbserve" "${args[@]}" "$@"
fi
# Without the server binary: one generation on the demo model through the model tool.
model=${SBSERVE_MODEL:-$HOME/.cache/sbserve/demo-small-random}
[ -f "$model/config.json" ] || "$build/engine/sbmodel" create --preset small --variant R1 "$model"
exec "$build/engine/sbmodel" generate --model "$model" --prompt "Hello" --max-tokens 32 "$@"
