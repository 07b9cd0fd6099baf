"""psycopg 3 through tandem: COPY both ways, LISTEN/NOTIFY, cancel, binary results,
a 10 MB value, and prepared statements reused across transactions.

Usage: python3 psycopg_check.py PROXY_DSN DIRECT_DSN
Exits non-zero with the failed assertion if anything differs.
"""

import os
import sys
import threading
import time

import psycopg


def main(proxy_dsn: str, direct_dsn: str) -> None:
    with psycopg.connect(proxy_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS py_items")
        conn.execute("CREATE TABLE py_items (id int PRIMARY KEY, note text, blob bytea)")

        # COPY FROM STDIN, then COPY TO STDOUT.
        rows = [(i, f"note\t{i} ✓", bytes([i % 256]) * (i % 7)) for i in range(20_000)]
        with conn.cursor() as cur:
            with cur.copy("COPY py_items (id, note, blob) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            copied = []
            with cur.copy("COPY (SELECT id, note, blob FROM py_items ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "bytea"])
                for row in copy.rows():
                    copied.append(row)
        assert copied == rows, "COPY OUT differs from COPY IN"

        # Binary results.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, blob, 1.5::float8, 'x'::text FROM py_items WHERE id = 13")
            row = cur.fetchone()
            assert row == (13, bytes([13]) * 6, 1.5, "x"), row

        # A 10 MB value both ways.
        big = os.urandom(10 * 1024 * 1024 + 17)
        conn.execute("INSERT INTO py_items VALUES (-1, 'big', %s)", (big,))
        back = conn.execute("SELECT blob FROM py_items WHERE id = -1").fetchone()[0]
        assert bytes(back) == big, "10 MB value differs"

    # Prepared statements reused across transactions.
    with psycopg.connect(proxy_dsn) as conn:
        for round_ in range(10):
            with conn.transaction():
                for i in range(5):
                    conn.execute(
                        "UPDATE py_items SET note = %s WHERE id = %s",
                        (f"round {round_}", i),
                        prepare=True,
                    )
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        assert prepared >= 1, "no server-side prepared statement was used"
        notes = conn.execute("SELECT DISTINCT note FROM py_items WHERE id BETWEEN 0 AND 4").fetchall()
        assert notes == [("round 9",)], notes

    # LISTEN/NOTIFY: the listener is idle while the notification is sent.
    with psycopg.connect(proxy_dsn, autocommit=True) as listener, psycopg.connect(
        direct_dsn, autocommit=True
    ) as notifier:
        listener.execute("LISTEN py_channel")
        notifier.execute("NOTIFY py_channel, 'hello from psycopg'")
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert got == ["hello from psycopg"], got

    # Cancel a running pg_sleep.
    with psycopg.connect(proxy_dsn) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            raise AssertionError("pg_sleep was not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        assert time.monotonic() - started < 15
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)

    print("psycopg: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
