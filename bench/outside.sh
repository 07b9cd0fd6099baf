#!/usr/bin/env bash
# What the check of writes outside global transactions costs: plain pgbench TPC-B
# (no global transaction) directly against PostgreSQL and through tandem, first while
# its tables hold no global locks (every write runs unchecked), then while an open
# global transaction holds a lock in each of the tables it writes (on extra rows
# TPC-B never touches), so that every UPDATE is checked: its rows locked by its own
# predicate and their keys asked of the lockserver. One run, alternating; prints the
# TPS figures and their ratios to direct.
#
#   bash bench/outside.sh
#   SECONDS_PER_RUN=5 ROUNDS=1 bash bench/outside.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PGHOST_DIRECT=${PGHOST_DIRECT:-127.0.0.1}
PGPORT_DIRECT=${PGPORT_DIRECT:-5432}
TANDEM_PORT=${TANDEM_PORT:-6733}
GRPC_PORT=${GRPC_PORT:-8291}
HTTP_PORT=${HTTP_PORT:-7291}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
DB=tandem_outside_bench
. bench/lib.sh
prepare_pgbench_database
# Rows TPC-B never picks (its ids start at 1), for the global transaction to hold.
psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" -c "
  INSERT INTO pgbench_branches VALUES (0, 0);
  INSERT INTO pgbench_tellers VALUES (0, 0, 0);
  INSERT INTO pgbench_accounts VALUES (0, 0, 0)"
start_tandem

run() { # host port -> tps
  pgbench -M simple -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -n -h "$1" -p "$2" "$DB" 2>&1 \
    | tee -a "$work/pgbench.log" | awk '/^tps/ {print $3}'
}

# A global transaction that holds a lock in each table TPC-B updates, kept open by a
# psql session that waits on its standard input.
hold() {
  mkfifo "$work/holder.in"
  psql -qAt -h 127.0.0.1 -p "$TANDEM_PORT" -d "$DB" <"$work/holder.in" >"$work/holder.out" 2>&1 &
  holder_pid=$!
  exec 3>"$work/holder.in"
  cat >&3 <<'SQL'
SELECT tandem_begin(3600000);
UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 0;
UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 0;
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 0;
SQL
  for _ in $(seq 100); do
    [[ $(curl -s "http://127.0.0.1:$HTTP_PORT/v1/locks" | grep -o '"key"' | wc -l) -ge 3 ]] && return
    sleep 0.1
  done
  echo "the holder's locks did not appear" >&2
  exit 1
}
release() {
  echo "SELECT tandem_rollback();" >&3
  exec 3>&-
  wait "$holder_pid" 2>/dev/null || true
  holder_pid=
}

echo "pgbench TPC-B (no global transaction), -M simple, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, scale $SCALE"
direct=0; free=0; held=0
for _ in $(seq "$ROUNDS"); do
  d=$(run "$PGHOST_DIRECT" "$PGPORT_DIRECT")
  f=$(run 127.0.0.1 "$TANDEM_PORT")
  hold
  h=$(run 127.0.0.1 "$TANDEM_PORT")
  release
  echo "  direct $d tps, through tandem with no global locks $f tps, with global locks in every table $h tps"
  direct=$(awk -v s="$direct" -v y="${d:-0}" 'BEGIN {print s + y}')
  free=$(awk -v s="$free" -v y="${f:-0}" 'BEGIN {print s + y}')
  held=$(awk -v s="$held" -v y="${h:-0}" 'BEGIN {print s + y}')
  # Let the tables be unannounced again (unannounce_after_ms, 10 s) before the next round.
  sleep 12
done
awk -v d="$direct" -v f="$free" -v h="$held" -v r="$ROUNDS" 'BEGIN {
  printf "direct %.0f tps, tandem (tables without global locks) %.0f tps (ratio %.3f), tandem (every write checked) %.0f tps (ratio %.3f)\n",
    d / r, f / r, (d > 0) ? f / d : 0, h / r, (d > 0) ? h / d : 0 }'
left=$(curl -s "http://127.0.0.1:$HTTP_PORT/v1/locks" | grep -o '"key"' | wc -l || true)
echo "global locks left after the run: $left"
