#!/usr/bin/env bash
# The whole test suite: prepares the local services, then runs every unit and
# integration test against the real PostgreSQL, MariaDB and Redis.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh -- pg::copy     # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup-services.sh

export TANDEM_TEST_PG_URL=${TANDEM_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TANDEM_TEST_MYSQL_URL=${TANDEM_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
export TANDEM_TEST_REDIS_URL=${TANDEM_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export TANDEM_TEST_PG_SOCKET=${TANDEM_TEST_PG_SOCKET:-/var/run/postgresql/.s.PGSQL.5432}
pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
export TANDEM_TEST_PG_RESTART=${TANDEM_TEST_PG_RESTART:-"pg_ctlcluster --skip-systemctl-redirect $pg_version main restart"}

cargo test --workspace --locked "$@"
