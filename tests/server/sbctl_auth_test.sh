#!/usr/bin/env bash
# sbctl against a real sbserve that wants an API key over TLS and mTLS: --api-key (and
# SBSERVE_API_KEY), --tls-ca, --tls-cert/--tls-key, for generate, info, health and bench; without
# them the calls fail with the server's status.
# usage: sbctl_auth_test.sh SBSERVE SBCTL
set -euo pipefail
sbserve=$1
sbctl=$2
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
cd "$work"
# A CA, a server leaf for localhost / 127.0.0.1, and a client leaf.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null
leaf() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf '%s\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
}
leaf server "subjectAltName=DNS:localhost,IP:127.0.0.1"
leaf client "extendedKeyUsage=clientAuth"
echo "sk-test tester" > keys.txt

start() {
  "$sbserve" --host 127.0.0.1 --port 0 --metrics-port -1 --cpu-threads 2 --log-requests false \
    --api-keys-file keys.txt --tls-cert server.pem --tls-key server.key "$@" >out 2>err &
  pid=$!
  for _ in $(seq 1 600); do grep -q "sbserve ready" out && break; sleep 0.05; done
  grep -q "sbserve ready" out || { echo "server did not become ready"; cat err; exit 1; }
  port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' out | head -n1)
  addr="localhost:$port"
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

start
# Key and CA: the call goes through.
"$sbctl" --addr "$addr" --tls-ca ca.pem --api-key sk-test generate "Once upon a time" --max-tokens 3 \
  --temperature 0 --ignore-eos >gen.txt 2>gen.err || fail "generate with key and CA: $(cat gen.err)"
grep -q "FINISH_REASON_LENGTH, [0-9]* prompt + 3 completion tokens" gen.err || fail "summary: $(cat gen.err)"
# The key from the environment, and the other commands.
SBSERVE_API_KEY=sk-test "$sbctl" --addr "$addr" --tls-ca ca.pem info | python3 -c '
import json, sys
assert json.load(sys.stdin)["server"]["ready"] is True'
"$sbctl" --addr "$addr" --tls-ca ca.pem --api-key sk-test health | grep -q 'ready (sbserve.v1.SbServe): SERVING' \
  || fail "health over TLS"
"$sbctl" --addr "$addr" --tls-ca ca.pem --api-key sk-test bench --requests 3 --concurrency 2 --prompt-tokens 4 \
  --max-tokens 2 --no-progress --json >bench.json || fail "bench with key"
python3 -c 'import json,sys; j=json.load(open("bench.json")); assert j["succeeded"] == 3 and j["failed"] == 0, j'
# No key: UNAUTHENTICATED; a wrong one too; no TLS: no connection.
if "$sbctl" --addr "$addr" --tls-ca ca.pem generate "x" --max-tokens 1 >/dev/null 2>nokey.err; then fail "no key accepted"; fi
grep -qi "unauthenticated\|API key" nokey.err || fail "no-key error: $(cat nokey.err)"
if "$sbctl" --addr "$addr" --tls-ca ca.pem --api-key sk-wrong generate "x" --max-tokens 1 >/dev/null 2>wrong.err; then
  fail "wrong key accepted"
fi
if "$sbctl" --addr "$addr" --timeout 5s --api-key sk-test generate "x" --max-tokens 1 >/dev/null 2>plain.err; then
  fail "plaintext call to a TLS server succeeded"
fi
stop

# mTLS: the client certificate is required and presented.
start --tls-client-ca ca.pem
if "$sbctl" --addr "$addr" --timeout 5s --tls-ca ca.pem --api-key sk-test generate "x" --max-tokens 1 >/dev/null 2>nocert.err; then
  fail "mTLS server took a call without a client certificate"
fi
"$sbctl" --addr "$addr" --tls-ca ca.pem --tls-cert client.pem --tls-key client.key --api-key sk-test \
  generate "x" --max-tokens 1 --ignore-eos >/dev/null 2>mtls.err || fail "mTLS call: $(cat mtls.err)"
if "$sbctl" --addr "$addr" --tls-cert client.pem generate x 2>half.err; then fail "--tls-cert without --tls-key"; fi
grep -q "go together" half.err || fail "half client cert: $(cat half.err)"
stop
echo "sbctl auth: OK"
