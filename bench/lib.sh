# Shared by the benchmarks that run tandem with its lockserver (source it from the
# project root after setting TANDEM_PORT, GRPC_PORT and HTTP_PORT; the PostgreSQL
# helpers also need PGHOST_DIRECT, PGPORT_DIRECT, SCALE and DB).
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

# CPU time (user + system, in clock ticks) used so far by the processes given; a
# process that is gone counts 0.
cpu_ticks() { # pid... -> ticks
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)

# Starts an embedded-store lockserver and a proxy, then waits until the proxy answers
# and the lockserver behind it does too. $1: the proxy configuration after its
# [lockserver] endpoint (more [lockserver] keys, then the front end's tables).
# $2: a probe function; `$2 plain` runs a trivial statement through the proxy, `$2
# global` an empty global transaction.
launch_tandem() {
  # A table stays announced (and writes to it outside a global transaction checked)
  # until it has held no global lock for unannounce_after_ms; 1 s instead of the
  # default 10 s lets a run that follows an AT run measure the unchecked relay after
  # `sleep_until_unannounced`.
  cat >"$work/lockserver.toml" <<TOML
grpc_listen = "127.0.0.1:$GRPC_PORT"
http_listen = "127.0.0.1:$HTTP_PORT"
unannounce_after_ms = 1000
[store]
kind = "embedded"
path = "$work/lockserver"
TOML
  cat >"$work/proxy.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[lockserver]
endpoint = "http://127.0.0.1:$GRPC_PORT"
$1
TOML
  # LOCK_THREADS: the lockserver's runtime threads (default: one per core).
  env RUST_LOG=warn ${LOCK_THREADS:+TOKIO_WORKER_THREADS=$LOCK_THREADS} ./target/release/tandem lockserver -c "$work/lockserver.toml" >"$work/lockserver.log" 2>&1 &
  lock_pid=$!
  # PROXY_THREADS overrides the proxy's default (half the cores, at least one).
  env RUST_LOG=warn ${PROXY_THREADS:+TOKIO_WORKER_THREADS=$PROXY_THREADS} ./target/release/tandem proxy -c "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
  proxy_pid=$!
  local probe=$2 _
  for _ in $(seq 50); do
    if "$probe" plain >/dev/null 2>&1; then
      # A tandem left over from an earlier run may hold the ports and answer instead.
      kill -0 "$proxy_pid" 2>/dev/null && kill -0 "$lock_pid" 2>/dev/null && break
      echo "the proxy or lockserver this run started has exited (ports taken by another?):" >&2
      cat "$work/proxy.log" "$work/lockserver.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  # The lockserver may still be starting (it zero-fills its log's first 4 MiB).
  for _ in $(seq 50); do
    "$probe" global >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "the proxy or the lockserver did not answer; their logs:" >&2
  cat "$work/proxy.log" "$work/lockserver.log" >&2
  exit 1
}

# Waits until the tables an AT run wrote are unannounced again (see launch_tandem), so
# that the next run's writes outside a global transaction go unchecked.
sleep_until_unannounced() { sleep 2.5; }

# Builds tandem, creates $DB if needed, loads pgbench's tables at $SCALE and creates
# undo_log in it.
prepare_pgbench_database() {
  cargo build --release -q -p tandem-proxy
  psql -qAt -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "select 1 from pg_database where datname = '$DB'" | grep -q 1 \
    || psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "create database $DB"
  pgbench -q -i -s "$SCALE" -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" "$DB" >/dev/null 2>&1
  ./target/release/tandem migrate "postgres://$PGUSER@$PGHOST_DIRECT:$PGPORT_DIRECT/$DB?sslmode=disable" >/dev/null
}

# `launch_tandem`'s probe through tandem's PostgreSQL front end.
postgres_probe() { # plain|global
  if [[ $1 == plain ]]; then
    psql -qAt -h 127.0.0.1 -p "$TANDEM_PORT" -d "$DB" -c "select 1"
  else
    psql -qAt -h 127.0.0.1 -p "$TANDEM_PORT" -d "$DB" -c "SELECT tandem_begin()" -c "SELECT tandem_rollback()"
  fi
}

# Starts tandem in front of PostgreSQL and waits until it serves global transactions.
# Extra lines for the proxy's [lockserver] table: $1.
start_tandem() {
  launch_tandem "${1:-}
[[postgres]]
listen = \"127.0.0.1:$TANDEM_PORT\"
upstream = \"$PGHOST_DIRECT:$PGPORT_DIRECT\"" postgres_probe
}
