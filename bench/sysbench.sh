#!/usr/bin/env bash
# Runs sysbench's oltp_read_only and oltp_read_write directly against MariaDB/MySQL and
# through tandem's MySQL front end, in one run, alternating target by target so that
# drift hits both alike, and prints each TPS figure and tandem's ratio to direct.
# Server-side prepared statements are on (--db-ps-mode=auto, sysbench's default).
#
#   bash bench/sysbench.sh                   # 20 s per run, 3 rounds, 8 threads
#   SECONDS_PER_RUN=5 ROUNDS=1 bash bench/sysbench.sh
#   UPSTREAM=/run/mysqld/mysqld.sock bash bench/sysbench.sh   # tandem -> server over a unix socket
set -euo pipefail
cd "$(dirname "$0")/.."

MYSQL_HOST=${MYSQL_HOST:-127.0.0.1}
MYSQL_PORT=${MYSQL_PORT:-3306}
MYSQL_USER=${MYSQL_USER:-root}
TANDEM_PORT=${TANDEM_PORT:-3417}
UPSTREAM=${UPSTREAM:-$MYSQL_HOST:$MYSQL_PORT}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-8}
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-100000}
WORKLOADS=${WORKLOADS:-"oltp_read_only oltp_read_write"}
DB=tandem_sysbench

command -v sysbench >/dev/null || {
  echo "installing sysbench" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysbench >/dev/null
}

work=$(mktemp -d)
cleanup() {
  [[ -n "${tandem_pid:-}" ]] && kill "$tandem_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p tandem-proxy
mariadb -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" -e "CREATE DATABASE IF NOT EXISTS $DB"
common=(--mysql-user="$MYSQL_USER" --mysql-db="$DB" --tables="$TABLES" --table-size="$TABLE_SIZE" --db-ps-mode=auto)
if ! mariadb -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" -N -e "SELECT COUNT(*) FROM $DB.sbtest$TABLES" 2>/dev/null | grep -qx "$TABLE_SIZE"; then
  sysbench oltp_read_write "${common[@]}" --mysql-host="$MYSQL_HOST" --mysql-port="$MYSQL_PORT" cleanup >/dev/null 2>&1 || true
  sysbench oltp_read_write "${common[@]}" --mysql-host="$MYSQL_HOST" --mysql-port="$MYSQL_PORT" prepare >/dev/null
fi

cat >"$work/tandem.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[[mysql]]
listen = "127.0.0.1:$TANDEM_PORT"
upstream = "$UPSTREAM"
TOML
RUST_LOG=warn ./target/release/tandem proxy -c "$work/tandem.toml" >"$work/tandem.log" 2>&1 &
tandem_pid=$!
for _ in $(seq 50); do
  mariadb -h 127.0.0.1 -P "$TANDEM_PORT" -u "$MYSQL_USER" --skip-ssl -e "select 1" >/dev/null 2>&1 && break
  sleep 0.1
done

port_of() { [[ $1 == direct ]] && echo "$MYSQL_PORT" || echo "$TANDEM_PORT"; }
host_of() { [[ $1 == direct ]] && echo "$MYSQL_HOST" || echo 127.0.0.1; }

echo "sysbench $(sysbench --version | awk '{print $2}'): $THREADS threads, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, $TABLES tables x $TABLE_SIZE rows, --db-ps-mode=auto; tandem upstream $UPSTREAM"
printf '%-16s %12s %12s %14s\n' workload direct tandem tandem/direct
for workload in $WORKLOADS; do
  declare -A sum=()
  for _ in $(seq "$ROUNDS"); do
    for t in direct tandem; do
      tps=$(sysbench "$workload" "${common[@]}" --mysql-host="$(host_of "$t")" --mysql-port="$(port_of "$t")" \
        --threads="$THREADS" --time="$SECONDS_PER_RUN" --report-interval=0 run 2>&1 \
        | awk '/transactions:/ {gsub(/\(/, "", $3); print $3}')
      sum[$t]=$(awk -v a="${sum[$t]:-0}" -v b="${tps:-0}" 'BEGIN {print a + b}')
    done
  done
  printf '%-16s %12.1f %12.1f %14.3f\n' "$workload" \
    "$(awk -v s="${sum[direct]}" -v r="$ROUNDS" 'BEGIN {print s / r}')" \
    "$(awk -v s="${sum[tandem]}" -v r="$ROUNDS" 'BEGIN {print s / r}')" \
    "$(awk -v a="${sum[tandem]}" -v b="${sum[direct]}" 'BEGIN {print (b > 0) ? a / b : 0}')"
  unset sum
done
