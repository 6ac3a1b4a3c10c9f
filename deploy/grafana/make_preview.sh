#!/usr/bin/env bash
# Regenerates deploy/grafana/preview.svg: runs the live dashboard test (real sbserve on the demo
# model, real Prometheus, mixed load) and renders its Prometheus data with render_preview.py.
# usage: deploy/grafana/make_preview.sh [BUILD_DIR]   (needs sbserve and sbctl built there)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
dump=$(mktemp)
trap 'rm -f "$dump"' EXIT
SBSERVE_CACHE_DIR=${SBSERVE_CACHE_DIR:-$build/test-cache} /usr/bin/python3 \
  "$root/tests/server/metrics/dashboard_live_test.py" "$build/server/sbserve" "$build/client/sbctl" "$root" \
  --dump "$dump"
/usr/bin/python3 "$root/deploy/grafana/render_preview.py" "$dump" "$root/deploy/grafana/preview.svg"
echo "wrote $root/deploy/grafana/preview.svg"
