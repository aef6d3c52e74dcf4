#!/usr/bin/env bash
# Schema-driven fuzzing of the served API: starts a real server (SQLite, the shipped default model)
# on a free loopback port, runs schemathesis from openapi.yaml against it, and fails on any 5xx or
# response that does not conform to the spec.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/entrovid-target}
VENV=${ENTROVID_TOOLS_VENV:-/var/tmp/entrovid-tools-venv}
BIN="$CARGO_TARGET_DIR/debug/entrovid"
[ -x "$BIN" ] || cargo build --bin entrovid

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve --bind "127.0.0.1:$port" --data-dir "$work/data" --models-dir models --workers 1 \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

status=0
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.yaml" \
  --url "http://127.0.0.1:$port" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-time "${ENTROVID_FUZZ_SECONDS:-120}" --workers 1 --request-timeout 10 \
  --suppress-health-check all || status=$?
if [ $status -ne 0 ]; then
  echo "--- server log (last 50 lines) ---"; tail -n 50 "$work/server.log"
fi
exit $status
