# Sourced by the benchmark scripts: starts `$bin serve` (a real server, SQLite in a temporary
# folder, one CPU worker) on a free loopback port with the models of $1, stops it on exit, and
# sets `base` to its URL once /healthz answers. Extra variables for the server come in $SERVE_ENV.
start_server() {
  local models_dir=$1
  work=$(mktemp -d)
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env ${SERVE_ENV:-} "$bin" serve --bind "127.0.0.1:$port" --data-dir "$work" --models-dir "$models_dir" \
    --workers 1 >"$work/server.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
  base="http://127.0.0.1:$port"
  until curl -fs "$base/healthz" >/dev/null; do sleep 0.2; done
}
