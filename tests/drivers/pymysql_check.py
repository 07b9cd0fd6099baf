"""PyMySQL through tandem: text queries, server-side cursors (unbuffered results),
multi-statements, LOAD DATA LOCAL INFILE, binary values, transactions and ping.

Usage: python3 pymysql_check.py HOST PORT DATABASE
Exits non-zero with the failed assertion if anything differs.
"""

import os
import sys
import tempfile

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT


def main(host: str, port: int, database: str) -> None:
    conn = pymysql.connect(
        host=host,
        port=port,
        user="root",
        database=database,
        local_infile=True,
        client_flag=CLIENT.MULTI_STATEMENTS,
        autocommit=True,
    )
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE py (id INT PRIMARY KEY, note VARCHAR(64), blob_ LONGBLOB)")
        blob = bytes(range(256)) * 100
        cur.executemany(
            "INSERT INTO py VALUES (%s, %s, %s)",
            [(i, f"note ✓ {i}", blob if i == 7 else None) for i in range(500)],
        )
        cur.execute("SELECT COUNT(*), SUM(id) FROM py")
        assert cur.fetchone() == (500, sum(range(500)))
        cur.execute("SELECT blob_ FROM py WHERE id = 7")
        assert cur.fetchone()[0] == blob, "blob differs"

        # Multi-statements with several result sets.
        cur.execute("SELECT 1; SELECT 2, 3; UPDATE py SET note = 'x' WHERE id = 1")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2, 3),)
        assert cur.nextset()
        assert cur.rowcount == 1
        assert not cur.nextset()

        # LOAD DATA LOCAL INFILE.
        with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
            for i in range(1000, 3000):
                f.write(f"{i}\trow {i}\n")
            path = f.name
        try:
            cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE py (id, note)")
            assert cur.rowcount == 2000, cur.rowcount
        finally:
            os.unlink(path)
        cur.execute("SELECT note FROM py WHERE id = 2999")
        assert cur.fetchone() == ("row 2999",)

    # Transactions: rollback undoes.
    conn.autocommit(False)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM py WHERE id < 100")
        conn.rollback()
        cur.execute("SELECT COUNT(*) FROM py WHERE id < 100")
        assert cur.fetchone() == (100,)
    conn.autocommit(True)

    # An unbuffered (streaming) cursor read halfway, then the connection reused.
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("SELECT id FROM py ORDER BY id")
        first = [cur.fetchone()[0] for _ in range(10)]
        assert first == list(range(10))
    with conn.cursor() as cur:
        cur.execute("SELECT 'after streaming'")
        assert cur.fetchone() == ("after streaming",)

    conn.ping(reconnect=False)
    thread_id = conn.thread_id()
    assert thread_id >= 1 << 30, thread_id
    conn.close()
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
