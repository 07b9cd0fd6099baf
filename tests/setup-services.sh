#!/usr/bin/env bash
# Brings this machine's PostgreSQL, MariaDB and Redis to what the integration suite
# needs: installs what is missing (Debian packages), starts what is stopped, and sets
# the few server settings the tests rely on. Idempotent; needs root for installs.
set -euo pipefail

log() { echo "setup-services: $*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- packages ---------------------------------------------------------------------
missing=()
ls /etc/postgresql/*/main >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
[[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
command -v mariadb >/dev/null || missing+=(mariadb-client)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v python3 >/dev/null || missing+=(python3)
command -v openssl >/dev/null || missing+=(openssl)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The JDBC drivers of tandem's Java users (tests/drivers/*JdbcCheck.java).
command -v java >/dev/null || missing+=(default-jre-headless)
[[ -f /usr/share/java/postgresql.jar ]] || missing+=(libpostgresql-jdbc-java)
[[ -f /usr/share/java/mariadb-java-client.jar ]] || missing+=(libmariadb-java)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import pymysql' 2>/dev/null; then
  log "installing PyMySQL"
  python3 -m pip install -q pymysql 2>/dev/null \
    || python3 -m pip install -q --break-system-packages pymysql
fi
if ! python3 -c 'import psycopg' 2>/dev/null; then
  log "installing psycopg"
  python3 -m pip install -q 'psycopg[binary]' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'psycopg[binary]'
fi
if ! python3 -c 'import asyncpg' 2>/dev/null; then
  log "installing asyncpg"
  python3 -m pip install -q asyncpg 2>/dev/null \
    || python3 -m pip install -q --break-system-packages asyncpg
fi

# --- PostgreSQL --------------------------------------------------------------------
pg_version=$(ls /etc/postgresql | sort -V | tail -1)
pg_conf=/etc/postgresql/$pg_version/main
pg_start() { as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start; }
pg_restart() { as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main restart; }
pg_isready -q -h 127.0.0.1 -p 5432 || { log "starting PostgreSQL $pg_version"; pg_start; }
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
psql_local() { as_root runuser -u postgres -- psql -X -qAt "$@"; }

restart=false
hba=$pg_conf/pg_hba.conf
if ! grep -q '^# tandem tests' "$hba"; then
  log "adding the test roles' md5 and scram-sha-256 rules to pg_hba.conf"
  tmp=$(mktemp)
  {
    echo '# tandem tests (tests/setup-services.sh): password authentication through the proxy'
    echo 'host all tandem_md5 127.0.0.1/32 md5'
    echo 'host all tandem_scram 127.0.0.1/32 scram-sha-256'
    # The suite connects as postgres over TCP without a password.
    psql -X -qAt -h 127.0.0.1 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1 \
      || echo 'host all postgres 127.0.0.1/32 trust'
    echo '# end tandem tests'
    cat "$hba"
  } >"$tmp"
  as_root cp "$tmp" "$hba"
  rm -f "$tmp"
  psql_local -c 'select pg_reload_conf()' >/dev/null
fi
want_setting() { # name value: ALTER SYSTEM when it differs; restart-only settings flag a restart
  local current
  current=$(psql_local -c "show $1")
  if [[ $current != "$2" ]]; then
    log "setting $1 = $2 (was $current)"
    psql_local -c "alter system set $1 = '$2'" >/dev/null
    restart=true
  fi
}
# XA mode prepares transactions; the idle-connection benchmark opens 1000 sessions.
want_setting max_prepared_transactions 100
want_setting max_connections 1200
if $restart; then
  log "restarting PostgreSQL for the new settings"
  pg_restart
  for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi

# --- MariaDB -----------------------------------------------------------------------
if ! mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1; then
  log "starting MariaDB"
  as_root mkdir -p /run/mysqld && as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 100); do mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 && break; sleep 0.2; done
fi
if ! mariadb -h 127.0.0.1 -P 3306 -u root -e 'select 1' >/dev/null 2>&1; then
  # A fresh Debian install lets root in through the unix socket only.
  log "letting root connect over TCP without a password (test machine)"
  as_root mariadb -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
fi

# --- Redis -------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not reachable"; exit 1; }
mariadb-admin -h 127.0.0.1 -P 3306 -u root ping >/dev/null || { log "MariaDB is not reachable"; exit 1; }
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis is not reachable"; exit 1; }
log "PostgreSQL $pg_version, MariaDB and Redis are ready"
