#!/usr/bin/env bash
# Idle cost: opens N idle client connections through tandem (each with its own backend
# connection, session mode) and reports the proxy's RSS growth per connection.
#
#   bash bench/idle.sh            # N=1000
#   N=500 bash bench/idle.sh
# PostgreSQL needs max_connections > N (tests/setup-services.sh sets 1200).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
PORT=${PORT:-6543}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release -q -p tandem-proxy
cat >"$work/tandem.toml" <<TOML
[admin]
listen = "127.0.0.1:0"
[[postgres]]
listen = "127.0.0.1:$PORT"
TOML
RUST_LOG=warn ./target/release/tandem proxy -c "$work/tandem.toml" >"$work/log" 2>&1 &
pid=$!
ulimit -n 65536 2>/dev/null || true
python3 - "$pid" "$PORT" "$N" <<'PY'
import sys, time, psycopg
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss_kib():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
for _ in range(50):
    try:
        psycopg.connect(dsn).close(); break
    except Exception:
        time.sleep(0.1)
# Warm up: one session, so that lazily built state (allocator arenas, TLS) is counted.
warm = psycopg.connect(dsn); warm.execute("select 1"); time.sleep(0.5)
before = rss_kib()
conns = []
for i in range(n):
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("select 1")
    conns.append(c)
time.sleep(1.0)
after = rss_kib()
per = (after - before) / n
print(f"idle connections: {n}; tandem RSS {before} KiB -> {after} KiB; {per:.1f} KiB per connection (target <= 100)")
for c in conns:
    c.close()
warm.close()
PY
