#!/usr/bin/env bash
# Runs pgbench directly against PostgreSQL, through tandem, and through Debian's PgBouncer
# (session mode) for reference, in one run, and prints each TPS figure and its ratio to
# direct. Workloads: select-only (-S) and TPC-B, each in -M simple, extended, prepared.
# Runs alternate target by target so that drift hits every target alike.
#
#   bash bench/pgbench.sh                  # 10 s per run, 2 rounds
#   SECONDS_PER_RUN=5 ROUNDS=1 bash bench/pgbench.sh
#   UPSTREAM=/var/run/postgresql/.s.PGSQL.5432 bash bench/pgbench.sh   # tandem -> PG over a unix socket
set -euo pipefail
cd "$(dirname "$0")/.."

PGHOST_DIRECT=${PGHOST_DIRECT:-127.0.0.1}
PGPORT_DIRECT=${PGPORT_DIRECT:-5432}
TANDEM_PORT=${TANDEM_PORT:-6533}
BOUNCER_PORT=${BOUNCER_PORT:-6534}
UPSTREAM=${UPSTREAM:-$PGHOST_DIRECT:$PGPORT_DIRECT}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
WORKLOADS=${WORKLOADS:-"select-only tpcb"}
MODES=${MODES:-"simple extended prepared"}
DB=tandem_bench
export PGSSLMODE=disable PGUSER=${PGUSER:-postgres}

work=$(mktemp -d)
cleanup() {
  [[ -n "${tandem_pid:-}" ]] && kill "$tandem_pid" 2>/dev/null || true
  [[ -f "$work/pgbouncer.pid" ]] && kill "$(cat "$work/pgbouncer.pid")" 2>/dev/null || true
  [[ -n "${bouncer_pid:-}" ]] && kill "$bouncer_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p tandem-proxy
psql -qAt -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "select 1 from pg_database where datname = '$DB'" | grep -q 1 \
  || psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d postgres -c "create database $DB"
pgbench -q -i -s "$SCALE" -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" "$DB" >/dev/null 2>&1

cat >"$work/tandem.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[[postgres]]
listen = "127.0.0.1:$TANDEM_PORT"
upstream = "$UPSTREAM"
TOML
RUST_LOG=warn ./target/release/tandem proxy -c "$work/tandem.toml" >"$work/tandem.log" 2>&1 &
tandem_pid=$!

targets="direct tandem"
if command -v pgbouncer >/dev/null; then
  cat >"$work/pgbouncer.ini" <<INI
[databases]
$DB = host=$PGHOST_DIRECT port=$PGPORT_DIRECT dbname=$DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
INI
  echo "\"$PGUSER\" \"\"" >"$work/userlist.txt"
  chmod 777 "$work"; chmod 644 "$work"/*
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
  else
    pgbouncer "$work/pgbouncer.ini" >/dev/null 2>&1 &
  fi
  bouncer_pid=$!
  targets="direct tandem pgbouncer"
  echo "PgBouncer: $(pgbouncer --version | head -1)"
fi

port_of() {
  case $1 in
    direct) echo "$PGPORT_DIRECT" ;;
    tandem) echo "$TANDEM_PORT" ;;
    pgbouncer) echo "$BOUNCER_PORT" ;;
  esac
}
host_of() { [[ $1 == direct ]] && echo "$PGHOST_DIRECT" || echo 127.0.0.1; }

for t in $targets; do
  for _ in $(seq 50); do
    psql -qAt -h "$(host_of "$t")" -p "$(port_of "$t")" -d "$DB" -c "select 1" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "pgbench: $CLIENTS clients, $THREADS threads, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, scale $SCALE; tandem upstream $UPSTREAM"
printf '%-12s %-9s' workload mode
for t in $targets; do printf ' %12s' "$t"; done
for t in $targets; do [[ $t != direct ]] && printf ' %16s' "$t/direct"; done
echo

for workload in $WORKLOADS; do
  flag=""; [[ $workload == select-only ]] && flag="-S"
  for mode in $MODES; do
    declare -A sum=()
    for _ in $(seq "$ROUNDS"); do
      for t in $targets; do
        tps=$(pgbench $flag -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -n \
          -h "$(host_of "$t")" -p "$(port_of "$t")" "$DB" 2>&1 | awk '/^tps/ {print $3}')
        sum[$t]=$(awk -v a="${sum[$t]:-0}" -v b="${tps:-0}" 'BEGIN {print a + b}')
      done
    done
    printf '%-12s %-9s' "$workload" "$mode"
    for t in $targets; do printf ' %12.0f' "$(awk -v s="${sum[$t]}" -v r="$ROUNDS" 'BEGIN {print s / r}')"; done
    for t in $targets; do
      [[ $t == direct ]] && continue
      printf ' %16.3f' "$(awk -v a="${sum[$t]}" -v b="${sum[direct]}" 'BEGIN {print (b > 0) ? a / b : 0}')"
    done
    echo
    unset sum
  done
done
