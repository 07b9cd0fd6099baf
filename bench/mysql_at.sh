#!/usr/bin/env bash
# AT mode's cost on MySQL/MariaDB: a TPC-B-like sysbench transaction over sysbench's
# sbtest tables (START TRANSACTION, an UPDATE by primary key, a SELECT of the row it
# changed, two more UPDATEs by primary key on two other tables, COMMIT), run directly
# against MariaDB and through tandem's MySQL front end in AT mode as a global
# transaction (SELECT tandem_begin() before it, SELECT tandem_commit() after it), in
# one run, alternating direct/tandem round by round. Prints each TPS figure and
# tandem's ratio to direct, the errors sysbench retried, and the undo_log rows left.
# As AT's ceiling, the same statements also run through the proxy without a global
# transaction (SELECT 1 in place of tandem's calls). Text protocol (con:query), as
# sysbench's Lua API sends it. A statement that
# fails for good (or a tandem_commit() that does not answer Committed/AsyncCommitting)
# stops the run with sysbench's error; lock waits and deadlocks (1205, 1213, 1020) roll
# the transaction back (and the global one, through tandem), are printed and retried.
#
#   bash bench/mysql_at.sh                   # 20 s per run, 3 rounds, 8 threads
#   SECONDS_PER_RUN=5 ROUNDS=1 bash bench/mysql_at.sh
#   THREADS=16 LOCK_WAIT_MS=0 bash bench/mysql_at.sh
#   TANDEM_MODE=xa bash bench/mysql_at.sh    # the same transaction as an XA branch instead
set -euo pipefail
cd "$(dirname "$0")/.."

MYSQL_HOST=${MYSQL_HOST:-127.0.0.1}
MYSQL_PORT=${MYSQL_PORT:-3306}
MYSQL_USER=${MYSQL_USER:-root}
TANDEM_PORT=${TANDEM_PORT:-3517}
GRPC_PORT=${GRPC_PORT:-8291}
HTTP_PORT=${HTTP_PORT:-7291}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-8}
TABLES=${TABLES:-4}
TABLE_SIZE=${TABLE_SIZE:-100000}
TANDEM_MODE=${TANDEM_MODE:-at}
DB=tandem_mysql_at

command -v sysbench >/dev/null || {
  echo "installing sysbench" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sysbench >/dev/null
}
((TABLES >= 3)) || { echo "TABLES must be at least 3 (one UPDATE per table)" >&2; exit 1; }

. bench/lib.sh

sql() { mariadb -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" -N "$@"; }

cargo build --release -q -p tandem-proxy
sql -e "CREATE DATABASE IF NOT EXISTS $DB"
common=(--mysql-user="$MYSQL_USER" --mysql-db="$DB" --tables="$TABLES" --table-size="$TABLE_SIZE")
if ! sql -e "SELECT COUNT(*) FROM $DB.sbtest$TABLES" 2>/dev/null | grep -qx "$TABLE_SIZE"; then
  sysbench oltp_common "${common[@]}" --mysql-host="$MYSQL_HOST" --mysql-port="$MYSQL_PORT" cleanup >/dev/null 2>&1 || true
  sysbench oltp_common "${common[@]}" --mysql-host="$MYSQL_HOST" --mysql-port="$MYSQL_PORT" prepare >/dev/null
fi
./target/release/tandem migrate "mysql://$MYSQL_USER@$MYSQL_HOST:$MYSQL_PORT/$DB" >/dev/null
# Undo rows of an earlier, interrupted run would blur the check at the end.
stale=$(sql -e "SELECT COUNT(*) FROM $DB.undo_log")
[[ "$stale" == 0 ]] || echo "note: undo_log holds $stale rows from earlier runs" >&2

tandem_sql() { mariadb -h 127.0.0.1 -P "$TANDEM_PORT" -u "$MYSQL_USER" --skip-ssl -N "$@"; }
# `launch_tandem`'s probe through tandem's MySQL front end.
mysql_probe() { # plain|global
  if [[ $1 == plain ]]; then
    tandem_sql -e "select 1"
  else
    tandem_sql -e "SELECT tandem_begin(); SELECT tandem_rollback()" "$DB"
  fi
}
launch_tandem "lock_wait_ms = ${LOCK_WAIT_MS:-5000}
[[mysql]]
listen = \"127.0.0.1:$TANDEM_PORT\"
upstream = \"$MYSQL_HOST:$MYSQL_PORT\"
mode = \"$TANDEM_MODE\"
[mysql.service]
user = \"$MYSQL_USER\"
password = \"${MYSQL_PASSWORD:-}\"" mysql_probe

# The transaction, as text-protocol statements. --tandem=on wraps it in a global
# transaction. An ignorable error (sysbench's --mysql-ignore-errors, by default 1213,
# 1020, 1205) restarts the event: the hook rolls back first, locally and globally.
cat >"$work/mysql_at.lua" <<'LUA'
sysbench.cmdline.options = {
  tables = {"Number of sbtest tables", 4},
  table_size = {"Rows per sbtest table", 100000},
  tandem = {"Run each transaction as a tandem global transaction", false},
  shape = {"Send SELECT 1 where tandem's calls would be (AT's ceiling through the proxy)", false},
}

local con, bound, retried

function thread_init()
  con = sysbench.sql.driver():connect()
  bound = false
  retried = 0
end

function thread_done()
  if retried > 0 then
    io.stderr:write(string.format("mysql_at: thread retried %d transactions\n", retried))
  end
  con:disconnect()
end

sysbench.hooks.before_restart_event = function(err)
  retried = retried + 1
  io.stderr:write(string.format("mysql_at: retrying after error %s (%s) %s on: %s\n",
    tostring(err.sql_errno), tostring(err.sql_state), tostring(err.sql_errmsg), tostring(err.query)))
  -- The error may have ended the local transaction already; a ROLLBACK that fails is
  -- reported (the driver logs it too) and tried once more, then the retry goes on.
  for _ = 1, 2 do
    local ok, e = pcall(con.query, con, "ROLLBACK")
    if ok then break end
    io.stderr:write(string.format("mysql_at: ROLLBACK after the error failed: %s\n",
      type(e) == "table" and tostring(e.sql_errmsg) or tostring(e)))
  end
  if bound then
    bound = false
    local status = con:query_row("SELECT tandem_rollback()")
    io.stderr:write(string.format("mysql_at: tandem_rollback() -> %s\n", tostring(status)))
  end
end

function event()
  local tables, size = sysbench.opt.tables, sysbench.opt.table_size
  local t1 = sysbench.rand.uniform(1, tables)
  local t2 = t1 % tables + 1
  local t3 = t2 % tables + 1
  local aid = sysbench.rand.uniform(1, size)
  local tid = sysbench.rand.uniform(1, size)
  local bid = sysbench.rand.uniform(1, size)
  local delta = sysbench.rand.uniform(1, 10001) - 5001
  if sysbench.opt.tandem then
    local xid = con:query_row("SELECT tandem_begin()")
    if xid == nil or xid == "" then
      error("SELECT tandem_begin() returned no xid")
    end
    bound = true
  elseif sysbench.opt.shape then
    con:query_row("SELECT 1")
  end
  con:query("START TRANSACTION")
  con:query(string.format("UPDATE sbtest%d SET k = k + %d WHERE id = %d", t1, delta, aid))
  con:query_row(string.format("SELECT k FROM sbtest%d WHERE id = %d", t1, aid))
  con:query(string.format("UPDATE sbtest%d SET k = k + %d WHERE id = %d", t2, delta, tid))
  con:query(string.format("UPDATE sbtest%d SET k = k + %d WHERE id = %d", t3, delta, bid))
  con:query("COMMIT")
  if sysbench.opt.tandem then
    local status = con:query_row("SELECT tandem_commit()")
    bound = false
    if status ~= "Committed" and status ~= "AsyncCommitting" then
      error("SELECT tandem_commit() returned " .. tostring(status))
    end
  elseif sysbench.opt.shape then
    con:query_row("SELECT 1")
  end
end
LUA

server_pid=$(pgrep -x mariadbd || pgrep -x mysqld || true)

failed=0
run() { # direct|tandem -> sets tps; the output goes to $work/$1.out and $work/sysbench.log
  local host=$MYSQL_HOST port=$MYSQL_PORT flag=off shape=off status=0 bench_pid bench_ticks=0 t
  [[ $1 == tandem ]] && { host=127.0.0.1; port=$TANDEM_PORT; flag=on; }
  [[ $1 == shape ]] && { host=127.0.0.1; port=$TANDEM_PORT; shape=on; }
  local server_before proxy_before lock_before
  server_before=$(cpu_ticks $server_pid); proxy_before=$(cpu_ticks "$proxy_pid"); lock_before=$(cpu_ticks "$lock_pid")
  sysbench "$work/mysql_at.lua" "${common[@]}" --mysql-host="$host" --mysql-port="$port" \
    --tandem="$flag" --shape="$shape" --threads="$THREADS" --time="$SECONDS_PER_RUN" --report-interval=0 run \
    >"$work/$1.out" 2>&1 &
  bench_pid=$!
  # sysbench's own CPU, read just before it exits.
  while kill -0 "$bench_pid" 2>/dev/null; do
    t=$(cpu_ticks "$bench_pid"); [[ $t -gt 0 ]] && bench_ticks=$t
    sleep 0.2
  done
  wait "$bench_pid" || status=$?
  local txns
  txns=$(awk '/transactions:/ {print $2}' "$work/$1.out")
  if [[ -n "$txns" && "$txns" -gt 0 ]]; then
    awk -v t="$1" -v n="$txns" -v hz="$HZ" \
      -v db=$(( $(cpu_ticks $server_pid) - server_before )) \
      -v px=$(( $(cpu_ticks "$proxy_pid") - proxy_before )) \
      -v ls=$(( $(cpu_ticks "$lock_pid") - lock_before )) \
      -v sb="$bench_ticks" 'BEGIN {
        printf "%s server %.3f\n%s proxy %.3f\n%s lockserver %.3f\n%s sysbench %.3f\n",
          t, db * 1000 / hz / n, t, px * 1000 / hz / n, t, ls * 1000 / hz / n, t, sb * 1000 / hz / n }' >>"$work/cpu.log"
  fi
  { echo "=== $1 (exit $status)"; cat "$work/$1.out"; } >>"$work/sysbench.log"
  if [[ $status != 0 ]] || grep -q "function failed" "$work/$1.out"; then
    failed=1
    echo "sysbench failed against $1 (exit $status):" >&2
    grep -E "FATAL|error|returned" "$work/$1.out" | sort | uniq -c | head -20 >&2
  fi
  tps=$(awk '/transactions:/ {gsub(/\(/, "", $3); print $3}' "$work/$1.out")
}

echo "sysbench $(sysbench --version | awk '{print $2}'), TPC-B-like transaction (3 UPDATEs + 1 SELECT by primary key, text protocol), tandem in $TANDEM_MODE mode: $THREADS threads, ${SECONDS_PER_RUN}s per run, $ROUNDS rounds, $TABLES tables x $TABLE_SIZE rows"
direct=0; tandem=0; shape=0
shown() { if [[ -n "$1" ]]; then echo "$1 tps"; else echo "$2"; fi; }
ignored() { awk '/ignored errors:/ {print $3}' "$work/$1.out" 2>/dev/null; }
for r in $(seq "$ROUNDS"); do
  run direct; d=$tps; t=; t_shown="not run"; c=
  if [[ $failed == 0 ]]; then run tandem; t=$tps; t_shown=$(shown "$t" failed); fi
  if [[ $failed == 0 ]]; then sleep_until_unannounced; run shape; c=$tps; fi
  printf '  round %d: direct %s, tandem %s, relayed without a global transaction %s (errors sysbench ignored and retried: direct %s, tandem %s)\n' "$r" \
    "$(shown "$d" failed)" "$t_shown" "$(shown "$c" "not run")" "$(ignored direct)" "$(ignored tandem)"
  [[ $failed == 0 ]] || break
  direct=$(awk -v s="$direct" -v y="${d:-0}" 'BEGIN {print s + y}')
  tandem=$(awk -v s="$tandem" -v y="${t:-0}" 'BEGIN {print s + y}')
  shape=$(awk -v s="$shape" -v y="${c:-0}" 'BEGIN {print s + y}')
done
if [[ $failed == 0 ]]; then
  printf '%-10s %12s %12s %14s %12s %14s\n' workload direct tandem tandem/direct ceiling ceiling/direct
  printf '%-10s %12.1f %12.1f %14.3f %12.1f %14.3f\n' tpcb-like \
    "$(awk -v s="$direct" -v r="$ROUNDS" 'BEGIN {print s / r}')" \
    "$(awk -v s="$tandem" -v r="$ROUNDS" 'BEGIN {print s / r}')" \
    "$(awk -v a="$tandem" -v b="$direct" 'BEGIN {print (b > 0) ? a / b : 0}')" \
    "$(awk -v s="$shape" -v r="$ROUNDS" 'BEGIN {print s / r}')" \
    "$(awk -v a="$shape" -v b="$direct" 'BEGIN {print (b > 0) ? a / b : 0}')"
  echo "(ceiling: the same statements through the proxy, SELECT 1 in place of tandem's calls, no global transaction)"
fi
echo "CPU per transaction (ms, user + system, mean over the rounds; server = the whole database server):"
awk '{ sum[$1 " " $2] += $3; n[$1 " " $2]++ } END { for (k in sum) printf "  %-20s %.3f\n", k, sum[k] / n[k] }' "$work/cpu.log" 2>/dev/null | sort
grep -hE "^mysql_at: (retrying|ROLLBACK|tandem_rollback)|^FATAL: mysql_drv_query" "$work/sysbench.log" \
  | sed -e 's/ on: .*//' -e "s/ for query .*//" | sort | uniq -c | sort -rn | head -10 || true
echo "undo rows left right after the run (phase-2 cleanup is asynchronous): $(sql -e "SELECT COUNT(*) FROM $DB.undo_log WHERE log_status = 0")"
sleep 2
echo "undo rows left 2 s later: $(sql -e "SELECT COUNT(*) FROM $DB.undo_log WHERE log_status = 0")"
[[ $TANDEM_MODE == xa ]] && echo "tandem's prepared XA branches left: $(sql -e "XA RECOVER" | grep -c "tandem:" || true)"
if grep -qE "ERROR|WARN" "$work/proxy.log" "$work/lockserver.log"; then
  echo "proxy/lockserver warnings:"
  grep -hE "ERROR|WARN" "$work/proxy.log" "$work/lockserver.log" | sed 's/\x1b\[[0-9;]*m//g' | head -10
fi
exit "$failed"
