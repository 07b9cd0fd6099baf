#!/usr/bin/env bash
# Lockserver load test over the real gRPC API (tandem-lockbench), for the embedded
# and the Redis store, then redis-benchmark on the same Redis for scale.
#
#   bench/lockserver.sh                 # defaults below
#   SECS=20 CONC=2048 BRANCHES=1 bench/lockserver.sh
#   LAT_SECS=0 bench/lockserver.sh    # skip the per-call latency runs
#   SERVER_BIN=/tmp/old/tandem-lockserver bench/lockserver.sh   # A/B: an older server
#                                     # under the same load generator
#
# Each lockbench transaction: begin, register BRANCHES branches of 10 fresh lock keys,
# commit (which releases the keys), plus the phase-2 clean-up the bench answers.
# The load generator runs on one thread by default (--threads), to leave the server
# as much of the machine as it can.
# The in-process line drives the embedded store directly (no gRPC), for its ceiling.
# Then per-call latency at 1 and 8 clients (embedded store, one connection): p50/p90/
# p99 of begin, register (10 keys) and commit, next to this disk's fdatasync latency
# (register and commit each wait for one fsync).
# Redis: TANDEM_TEST_REDIS_URL (default redis://127.0.0.1:6379); if nothing answers
# there, a throw-away redis-server is started on 127.0.0.1:6390.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-10}
CONC=${CONC:-1024}
CONNS=${CONNS:-4}
BRANCHES=${BRANCHES:-1}
LAT_SECS=${LAT_SECS:-5}
REDIS_URL=${TANDEM_TEST_REDIS_URL:-redis://127.0.0.1:6379}

cargo build --release -q -p tandem-lockserver --bins
BIN=target/release
SERVER_BIN=${SERVER_BIN:-$BIN/tandem-lockserver}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${own_redis:-}" ] && redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

redis_hostport() { local u=${1#redis://}; u=${u%%/*}; echo "$u"; }
hp=$(redis_hostport "$REDIS_URL")
RHOST=${hp%%:*}; RPORT=${hp##*:}
if ! redis-cli -h "$RHOST" -p "$RPORT" ping >/dev/null 2>&1; then
  redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
  own_redis=1; RHOST=127.0.0.1; RPORT=6390; REDIS_URL=redis://127.0.0.1:6390
  for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# start_lockserver NAME STORE_TOML -> sets GRPC
start_lockserver() {
  cat > "$work/$1.toml" <<TOML
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
$2
TOML
  RUST_LOG=warn "$SERVER_BIN" -c "$work/$1.toml" > "$work/$1.out" 2> "$work/$1.err" &
  pids+=($!)
  GRPC=""
  for _ in $(seq 100); do
    GRPC=$(sed -n 's/^grpc_listen=//p' "$work/$1.out")
    [ -n "$GRPC" ] && break
    sleep 0.1
  done
  [ -n "$GRPC" ] || { cat "$work/$1.err"; exit 1; }
}

stop_last() { local p=${pids[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'pids[-1]'; }

echo "== lockbench: $SECS s, $CONC transactions in flight over $CONNS connections, $BRANCHES branch(es) x 10 keys each, $(nproc) cores"
start_lockserver embedded "[store]
kind = \"embedded\"
path = \"$work/data\""
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
t0=$(cpu_ticks "${pids[-1]}")
"$BIN/tandem-lockbench" --endpoint "http://$GRPC" --seconds "$SECS" --concurrency "$CONC" --connections "$CONNS" --branches "$BRANCHES" --label "embedded store" | tee "$work/embedded.bench"
t1=$(cpu_ticks "${pids[-1]}")
# Server CPU per registration cycle (warm-up second included): a figure that other
# load on the machine disturbs less than the rate does.
awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v secs="$SECS" \
  '{ for (i = 1; i < NF; i++) if ($(i + 1) == "registrations/s") r = $i }
    END { if (r > 0) printf "embedded store: server CPU %.1f us per registration (incl. its begin, commit and phase-2 answer)\n", ticks / hz * 1e6 / (r * (secs + 1)) }' "$work/embedded.bench"
stop_last

if [ "$LAT_SECS" -gt 0 ]; then
  echo "== per-call latency, embedded store, one connection"
  start_lockserver latency "[store]
kind = \"embedded\"
path = \"$work/latency-data\""
  for c in 1 8; do
    "$BIN/tandem-lockbench" --endpoint "http://$GRPC" --seconds "$LAT_SECS" --concurrency "$c" --connections 1 --report-ops --label "embedded, $c client(s)" | grep -v 'registrations/s'
  done
  stop_last
  # fdatasync of a small append on the same disk, for scale (what one fsync costs now).
  python3 - "$work" <<'PY' || true
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
ts = []
for _ in range(300):
    os.write(fd, b"x" * 700)
    t = time.perf_counter(); os.fdatasync(fd); ts.append((time.perf_counter() - t) * 1e6)
    time.sleep(0.002)
ts.sort()
print(f"disk: fdatasync of a 700-byte append p50 {ts[len(ts) // 2] / 1000:.3f} ms p90 {ts[len(ts) * 9 // 10] / 1000:.3f} ms")
PY
fi

"$BIN/tandem-lockbench" --in-process "$work/inproc" --seconds "$SECS" --concurrency "$CONC" --branches "$BRANCHES" --label "embedded store"

start_lockserver redis "[store]
kind = \"redis\"
url = \"$REDIS_URL\"
prefix = \"tandem-bench:$$\""
"$BIN/tandem-lockbench" --endpoint "http://$GRPC" --seconds "$SECS" --concurrency "$CONC" --connections "$CONNS" --branches "$BRANCHES" --label "redis store"
stop_last
redis-cli -h "$RHOST" -p "$RPORT" --scan --pattern "tandem-bench:$$:*" | xargs -r -n 1000 redis-cli -h "$RHOST" -p "$RPORT" del >/dev/null

echo "== redis-benchmark (8 clients, same Redis) for scale"
only_totals() { tr '\r' '\n' | grep 'requests per second'; }
redis-benchmark -h "$RHOST" -p "$RPORT" -c 8 -n 200000 -q -t set,get | only_totals
# All-or-nothing lock of 10 keys and release, in one script (the Redis store's ceiling).
LUA='for i=1,10 do if redis.call("EXISTS",KEYS[i])==1 then return 0 end end for i=1,10 do redis.call("SET",KEYS[i],"x") end for i=1,10 do redis.call("DEL",KEYS[i]) end return 1'
redis-benchmark -h "$RHOST" -p "$RPORT" -c 8 -n 100000 -q eval "$LUA" 10 bk:1 bk:2 bk:3 bk:4 bk:5 bk:6 bk:7 bk:8 bk:9 bk:10 \
  | only_totals | sed 's/^.*bk:10: /EVAL 10-key lock+release: /'
