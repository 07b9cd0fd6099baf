#!/usr/bin/env bash
# AT and XA mode's cost: pgbench TPC-B directly against PostgreSQL, and the same
# transaction as a tandem global transaction through the proxy (SELECT tandem_begin()
# \gset, the TPC-B statements, SELECT tandem_commit()), once in AT mode and once in XA
# mode (SELECT tandem_mode('xa')), in one run, alternating; as AT's ceiling, the
# same statements relayed by the proxy without a global transaction; and, as what AT
# costs PostgreSQL alone, the statements tandem's AT mode sends for this transaction
# run directly against PostgreSQL by pgbench, with no proxy and no lockserver. Prints
# the TPS figures and their ratios to direct. pgbench_history gets a primary key, which
# AT needs (for all).
#
#   bash bench/at.sh
#   SECONDS_PER_RUN=5 ROUNDS=1 bash bench/at.sh
#   LOCK_WAIT_MS=0 bash bench/at.sh     # fail fast on global lock conflicts (pgbench retries)
set -euo pipefail
cd "$(dirname "$0")/.."
PGHOST_DIRECT=${PGHOST_DIRECT:-127.0.0.1}
PGPORT_DIRECT=${PGPORT_DIRECT:-5432}
TANDEM_PORT=${TANDEM_PORT:-6633}
GRPC_PORT=${GRPC_PORT:-8191}
HTTP_PORT=${HTTP_PORT:-7191}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
DB=tandem_at_bench
. bench/lib.sh
prepare_pgbench_database
psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY"
start_tandem "lock_wait_ms = ${LOCK_WAIT_MS:-5000}"

# A lock conflict at the local COMMIT is retryable (40001); the retry starts by leaving
# the failed global transaction, which its timeout then rolls back.
cat >"$work/at.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
SELECT tandem_leave();
SELECT tandem_begin() \gset
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SELECT tandem_commit();
SQL

sed 's/^SELECT tandem_begin() \\gset$/SELECT tandem_mode('"'"'xa'"'"');\nSELECT tandem_begin() \\gset/' "$work/at.sql" >"$work/xa.sql"
# AT's ceiling on this machine: the same statements through the proxy with no global
# transaction (each tandem_* call becomes SELECT 1, relayed to PostgreSQL), so only the
# relay and the script's three extra round trips cost anything.
sed -e 's/^SELECT tandem_[a-z]*().*$/SELECT 1;/' "$work/at.sql" >"$work/shape.sql"

# What AT costs PostgreSQL alone: the statements tandem sends for this transaction (see
# session/pg/at.rs; the PostgreSQL log with log_statement = 'all' shows them), sent by
# pgbench straight to PostgreSQL in the same round trips and over the same simple
# protocol as the direct run: `\;` joins a before image and its write, and the undo
# row and the COMMIT, into one message, as tandem sends each pair in one flight. The
# undo row carries a record as long as tandem's for this transaction (1,457 bytes,
# read from undo_log). Rows are deleted in batches every 20 ms, as tandem's cleanup
# does. Only the lockserver and the proxy are missing.
undo_record=$(head -c 1457 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
cat >"$work/floor.sql" <<SQL
\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
\\set branch random(1, 9000000000000000000)
BEGIN;
SELECT aid, bid, abalance, filler, aid FROM pgbench_accounts WHERE aid = :aid FOR UPDATE OF pgbench_accounts \\;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid RETURNING pg_catalog.format('%s', record_send(pgbench_accounts.*)) AS tandem_image, pg_catalog.format('%s', pgbench_accounts.aid) AS tandem_pk_0, pg_catalog.format('%s', 'pgbench_accounts'::pg_catalog.regclass::pg_catalog.oid) AS tandem_table;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT tid, bid, tbalance, filler, tid FROM pgbench_tellers WHERE tid = :tid FOR UPDATE OF pgbench_tellers \\;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid RETURNING pg_catalog.format('%s', record_send(pgbench_tellers.*)) AS tandem_image, pg_catalog.format('%s', pgbench_tellers.tid) AS tandem_pk_0, pg_catalog.format('%s', 'pgbench_tellers'::pg_catalog.regclass::pg_catalog.oid) AS tandem_table;
SELECT bid, bbalance, filler, bid FROM pgbench_branches WHERE bid = :bid FOR UPDATE OF pgbench_branches \\;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid RETURNING pg_catalog.format('%s', record_send(pgbench_branches.*)) AS tandem_image, pg_catalog.format('%s', pgbench_branches.bid) AS tandem_pk_0, pg_catalog.format('%s', 'pgbench_branches'::pg_catalog.regclass::pg_catalog.oid) AS tandem_table;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP) RETURNING pg_catalog.format('%s', record_send(pgbench_history.*)) AS tandem_image, pg_catalog.format('%s', pgbench_history.hid) AS tandem_pk_0, pg_catalog.format('%s', 'pgbench_history'::pg_catalog.regclass::pg_catalog.oid) AS tandem_table;
INSERT INTO undo_log (id, branch_id, xid, context, rollback_info, log_status) VALUES (-:branch, :branch, 'floor-' || :client_id, 'tandem', '\\\\x$undo_record', 0) \\;
COMMIT;
SQL
# tandem's cleanup, for the floor run: one connection deleting the finished rows every
# 20 ms, in its own transaction with synchronous_commit off, as cleanup.rs does.
floor_cleanup() { # seconds
  local i
  for i in $(seq $(($1 * 50))); do
    echo "BEGIN; SET LOCAL synchronous_commit TO off; DELETE FROM undo_log WHERE context = 'tandem' AND xid LIKE 'floor-%'; COMMIT; SELECT pg_sleep(0.02);"
  done | psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" >/dev/null 2>&1
}

postgres_pids() { pgrep -x postgres | tr '\n' ' '; }
# Every PostgreSQL process, including backends that exited (reaped by the postmaster,
# whose children's time is in its cutime and cstime).
postgres_ticks() {
  local live postmaster
  live=$(cpu_ticks $(postgres_pids))
  postmaster=$(pgrep -x -o postgres)
  echo $((live + $(awk '{print $16 + $17}' "/proc/$postmaster/stat")))
}

run() { # target -> tps; appends "target component ms-per-transaction" lines to cpu.log
  local out pg_before proxy_before lock_before bench_before tps pgbench_pid
  # Every run starts from tables without dead rows, as pgbench's own vacuum gives the
  # built-in scripts, whatever autovacuum does (some machines run PostgreSQL with it
  # off, and then undo_log, written and deleted by every AT transaction, bloats run
  # after run: 190,000 dead rows slowed each later run by half and more).
  psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" \
    -c "VACUUM pgbench_branches, pgbench_tellers, pgbench_history, undo_log" >/dev/null
  pg_before=$(postgres_ticks)
  proxy_before=$(cpu_ticks "$proxy_pid")
  lock_before=$(cpu_ticks "$lock_pid")
  if [[ $1 == direct ]]; then
    pgbench -M simple -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -n -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" "$DB" >"$work/run.out" 2>&1 &
  elif [[ $1 == floor ]]; then
    floor_cleanup "$SECONDS_PER_RUN" &
    pgbench -M simple -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -n -s "$SCALE" \
      -f "$work/floor.sql" -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" "$DB" >"$work/run.out" 2>&1 &
  else
    pgbench -M simple -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -n --max-tries=20 -s "$SCALE" ${PGBENCH_EXTRA:-} \
      -f "$work/$1.sql" -h 127.0.0.1 -p "$TANDEM_PORT" "$DB" >"$work/run.out" 2>&1 &
  fi
  pgbench_pid=$!
  # pgbench's own CPU, read just before it exits (it is gone afterwards).
  local bench_ticks=0 t
  while kill -0 "$pgbench_pid" 2>/dev/null; do
    t=$(cpu_ticks "$pgbench_pid"); [[ $t -gt 0 ]] && bench_ticks=$t
    sleep 0.2
  done
  wait "$pgbench_pid" || true
  if [[ $1 == floor ]]; then
    wait # for floor_cleanup, then the rows committed after its last pass
    psql -q -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" -c "DELETE FROM undo_log WHERE xid LIKE 'floor-%'" >/dev/null
  fi
  out=$(cat "$work/run.out")
  echo "$out" >>"$work/pgbench.log"
  tps=$(echo "$out" | awk '/^tps/ {print $3}')
  local txns
  txns=$(echo "$out" | awk '/^number of transactions actually processed/ {print $NF}' | cut -d/ -f1)
  if [[ -n "$txns" && "$txns" -gt 0 ]]; then
    awk -v t="$1" -v n="$txns" -v hz="$HZ" \
      -v pg=$(( $(postgres_ticks) - pg_before )) \
      -v px=$(( $(cpu_ticks "$proxy_pid") - proxy_before )) \
      -v ls=$(( $(cpu_ticks "$lock_pid") - lock_before )) \
      -v pb="$bench_ticks" 'BEGIN {
        printf "%s postgres %.3f\n%s proxy %.3f\n%s lockserver %.3f\n%s pgbench %.3f\n",
          t, pg * 1000 / hz / n, t, px * 1000 / hz / n, t, ls * 1000 / hz / n, t, pb * 1000 / hz / n }' >>"$work/cpu.log"
  fi
  echo "$tps"
}

echo "pgbench TPC-B, -M simple, $CLIENTS clients, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, scale $SCALE"
direct=0; at=0; xa=0; shape=0; floor=0
for _ in $(seq "$ROUNDS"); do
  d=$(run direct); a=$(run at); x=$(run xa); sleep_until_unannounced; c=$(run shape); f=$(run floor)
  echo "  direct $d tps, tandem AT $a tps, tandem XA $x tps, same statements relayed without a global transaction $c tps, AT's statements sent directly $f tps"
  direct=$(awk -v s="$direct" -v y="${d:-0}" 'BEGIN {print s + y}')
  at=$(awk -v s="$at" -v y="${a:-0}" 'BEGIN {print s + y}')
  xa=$(awk -v s="$xa" -v y="${x:-0}" 'BEGIN {print s + y}')
  shape=$(awk -v s="$shape" -v y="${c:-0}" 'BEGIN {print s + y}')
  floor=$(awk -v s="$floor" -v y="${f:-0}" 'BEGIN {print s + y}')
done
awk -v d="$direct" -v a="$at" -v x="$xa" -v c="$shape" -v f="$floor" -v r="$ROUNDS" 'BEGIN {
  printf "direct %.0f tps, tandem AT %.0f tps (ratio %.3f), tandem XA %.0f tps (ratio %.3f)\n",
    d / r, a / r, (d > 0) ? a / d : 0, x / r, (d > 0) ? x / d : 0
  printf "ceiling: the AT script relayed without a global transaction %.0f tps (ratio %.3f); AT reaches %.3f of it\n",
    c / r, (d > 0) ? c / d : 0, (c > 0) ? a / c : 0
  printf "what AT costs PostgreSQL alone: its statements sent directly, no proxy, no lockserver %.0f tps (ratio %.3f)\n",
    f / r, (d > 0) ? f / d : 0 }'
grep -h -E "number of (failed|retried)|aborted" "$work/pgbench.log" | sort | uniq -c | head -5 || true
echo "CPU per transaction (ms, user + system, mean over the rounds; postgres = every backend, side connections included):"
awk '{ sum[$1 " " $2] += $3; n[$1 " " $2]++ } END { for (k in sum) printf "  %-22s %.3f\n", k, sum[k] / n[k] }' "$work/cpu.log" | sort
[[ -n "${PGBENCH_EXTRA:-}" ]] && awk '/^transaction type/ {print "--- " $0} /^tps/ {print} /^ +[0-9.]+ +[0-9]+/ {print}' "$work/pgbench.log"
left=$(psql -qAt -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" -c "select count(*) from undo_log where log_status = 0")
echo "undo rows left right after the run (cleanup is asynchronous): $left"
prepared=$(psql -qAt -h "$PGHOST_DIRECT" -p "$PGPORT_DIRECT" -d "$DB" -c "select count(*) from pg_prepared_xacts where database = current_database()")
echo "prepared transactions left right after the run (phase 2 is asynchronous): $prepared"
