# Shared by the benchmarks that run tandem with its lockserver (source it after setting
# PGHOST_DIRECT, PGPORT_DIRECT, TANDEM_PORT, GRPC_PORT, HTTP_PORT, SCALE and DB).
# Sets `work` (a temporary folder, removed on exit, with the logs) and, once started,
# `lock_pid` and `proxy_pid`.

export PGSSLMODE=disable PGUSER=${PGUSER:-postgres}
work=$(mktemp -d)
cleanup() {
  [[ -n "${holder_pid:-}" ]] && kill "$holder_pid" 2>/dev/null || true
  [[ -n "${proxy_pid:-}" ]] && kill "$proxy_pid" 2>/dev/null || true
  [[ -n "${lock_pid:-}" ]] && kill "$lock_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Builds tandem, creates $DB if needed, loads pgbench's tables at $SCALE and creates
# undo_log in it.
prepare_pgbench_database() {
  cargo build --release -q -p tandem-proxy
  psql -qAt -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "select 1 from pg_database where datname = '$DB'" | grep -q 1 \
    || psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "create database $DB"
  pgbench -q -i -s "$SCALE" -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" "$DB" >/dev/null 2>&1
  ./target/release/tandem migrate "postgres://$PGUSER@$PGHOST_DIRECT:$PGPORT_DIRECT/$DB?sslmode=disable" >/dev/null
}

# Starts an embedded-store lockserver and a proxy in front of PostgreSQL; waits until
# the proxy answers. Extra lines for the proxy's [lockserver] table: $1.
start_tandem() {
  cat >"$work/lockserver.toml" <<TOML
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
[store]
kind = "embedded"
path = "$work/lockserver"
TOML
  cat >"$work/proxy.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[lockserver]
endpoint = "http://127.0.0.1:$GRPC_PORT"
${1:-}
[[postgres]]
listen = "127.0.0.1:$TANDEM_PORT"
upstream = "$PGHOST_DIRECT:$PGPORT_DIRECT"
TOML
  RUST_LOG=warn ./target/release/tandem lockserver -c "$work/lockserver.toml" >"$work/lockserver.log" 2>&1 &
  lock_pid=$!
  RUST_LOG=warn TOKIO_WORKER_THREADS=${PROXY_THREADS:-2} ./target/release/tandem proxy -c "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 50); do
    if psql -qAt -h 127.0.0.1 -p "$TANDEM_PORT" -d "$DB" -c "select 1" >/dev/null 2>&1; then
      # A tandem left over from an earlier run may hold the ports and answer instead.
      kill -0 "$proxy_pid" 2>/dev/null && kill -0 "$lock_pid" 2>/dev/null && break
      echo "the proxy or lockserver this run started has exited (ports taken by another?):" >&2
      cat "$work/proxy.log" "$work/lockserver.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  # The lockserver answers too (it may still be starting): one empty global transaction.
  for _ in $(seq 50); do
    psql -qAt -h 127.0.0.1 -p "$TANDEM_PORT" -d "$DB" -c "SELECT tandem_begin()" -c "SELECT tandem_rollback()" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the proxy or the lockserver did not answer; see $work/proxy.log and $work/lockserver.log" >&2
  exit 1
}
