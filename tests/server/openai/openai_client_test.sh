#!/usr/bin/env bash
# The official `openai` npm client (pinned) against the real sbserve binary with the demo model
# and tests/server/openai/chat_template.jinja: see openai_client_test.mjs for what is checked.
#   openai_client_test.sh SBSERVE NPM_DIR
# Exit 77 (CTest: skipped) when node/npm are missing or the registry cannot be reached.
set -uo pipefail
sbserve=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
package=openai@4.95.0
marker="$dest/.installed"

command -v node >/dev/null && command -v npm >/dev/null || { echo "SKIP: node/npm not installed"; exit 77; }
if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$package" ]; then
  mkdir -p "$dest"
  [ -f "$dest/package.json" ] || echo '{"name":"sbserve-openai-tests","private":true}' > "$dest/package.json"
  ok=0
  # Three attempts of at most 150 s and the pauses leave the test itself time within its CTest
  # TIMEOUT (600 s).
  for attempt in 1 2 3; do
    if timeout 150 npm install --prefix "$dest" --no-audit --no-fund --no-save --loglevel=error "$package"; then
      ok=1
      break
    fi
    sleep $((attempt * 3))
  done
  [ "$ok" = 1 ] || { echo "SKIP: npm install $package failed (registry unreachable?)"; exit 77; }
  echo "$package" > "$marker"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$sbserve" --host 127.0.0.1 --port 0 --metrics-port -1 --http-host 127.0.0.1 --http-port 0 --cpu-threads 2 \
  --kv-cache-mb 64 --log-requests false --chat-template "$here/chat_template.jinja" > "$work/out" 2> "$work/err" &
server_pid=$!
for _ in $(seq 1 600); do
  grep -q "sbserve ready" "$work/out" && break
  kill -0 "$server_pid" 2>/dev/null || { echo "sbserve exited:"; cat "$work/out" "$work/err"; exit 1; }
  sleep 0.1
done
grep -q "sbserve ready" "$work/out" || { echo "sbserve not ready:"; cat "$work/out" "$work/err"; exit 1; }
port=$(sed -n 's|.*OpenAI API: http://localhost:\([0-9]*\)/v1.*|\1|p' "$work/out" | head -1)
[ -n "$port" ] || { echo "no HTTP API port in the banner:"; cat "$work/out"; exit 1; }

NODE_PATH="$dest/node_modules" node "$here/openai_client_test.mjs" "http://127.0.0.1:$port" "$dest/node_modules/openai/index.mjs"
rc=$?
[ "$rc" = 0 ] || { echo "--- sbserve stderr ---"; tail -30 "$work/err"; }
exit "$rc"
