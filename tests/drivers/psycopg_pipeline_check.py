"""psycopg 3's pipelines through tandem, inside and outside global transactions.
executemany(returning=True) and `with conn.pipeline()` send each statement's Bind,
Describe and Execute, then a Flush, and read the replies before they send the Sync.

Usage: python3 psycopg_pipeline_check.py PROXY_DSN DIRECT_DSN
Exits non-zero with the failed assertion if anything differs.
"""

import sys
import time

import psycopg


def rows(direct):
    return direct.execute("SELECT id, v, n FROM pipe_items ORDER BY id").fetchall()


def phase_two_done(direct):
    for _ in range(100):
        if direct.execute("SELECT count(*) FROM undo_log").fetchone()[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("undo rows left after the global decision")


def returned_ids(cur):
    ids = []
    while True:
        ids.extend(r[0] for r in cur.fetchall())
        if not cur.nextset():
            return ids


def global_transaction(proxy_dsn, direct, autocommit):
    before = rows(direct)
    with psycopg.connect(proxy_dsn, autocommit=autocommit) as c:
        c.execute("SELECT tandem_begin(30000)")
        if not autocommit:
            c.commit()
        cur = c.cursor()
        cur.executemany(
            "INSERT INTO pipe_items (v, n) VALUES (%s, %s) RETURNING id",
            [("a", 1), ("b", 2), ("c", 3)],
            returning=True,
        )
        ids = returned_ids(cur)
        assert len(ids) == 3 and len(set(ids)) == 3, ids
        cur.executemany(
            "UPDATE pipe_items SET v = %s, n = n + 1 WHERE id = %s RETURNING n",
            [("x", 1), ("y", 2)],
            returning=True,
        )
        assert returned_ids(cur) == [11, 21]
        with c.pipeline():
            c.execute("UPDATE pipe_items SET v = 'p' WHERE id = 3")
            c.execute("DELETE FROM pipe_items WHERE id = %s", (ids[0],))
        if not autocommit:
            c.commit()
        during = rows(direct)
        assert during != before, "the writes ran"
        # A failed statement mid-pipeline: the implicit transaction (or the block)
        # ends rolled back, as directly.
        try:
            cur.executemany(
                "INSERT INTO pipe_items (id, v, n) VALUES (%s, %s, %s) RETURNING id",
                [(100, "d", 0), (1, "dup", 0), (101, "e", 0)],
                returning=True,
            )
            raise AssertionError("a duplicate key was inserted")
        except psycopg.errors.UniqueViolation:
            pass
        if not autocommit:
            c.rollback()
        assert rows(direct) == during
        assert c.execute("SELECT tandem_rollback()").fetchone()[0] == "Rollbacked"
        if not autocommit:
            c.commit()
    phase_two_done(direct)
    after = rows(direct)
    assert after == before, (before, after)


def outside_a_global_transaction(proxy_dsn, direct, autocommit):
    """Writes to a table that holds global locks are checked row by row; a pipeline
    outside a block stays one implicit transaction."""
    before = rows(direct)
    with psycopg.connect(proxy_dsn, autocommit=True) as holder, \
            psycopg.connect(proxy_dsn, autocommit=autocommit) as c:
        holder.execute("SELECT tandem_begin(30000)")
        holder.execute("UPDATE pipe_items SET n = 0 WHERE id = 1")
        cur = c.cursor()
        cur.executemany(
            "UPDATE pipe_items SET n = n + %s WHERE id = %s RETURNING n",
            [(1, 2), (1, 3)],
            returning=True,
        )
        assert returned_ids(cur) == [before[1][2] + 1, before[2][2] + 1]
        if not autocommit:
            c.commit()
        try:
            cur.executemany(
                "UPDATE pipe_items SET n = n + %s WHERE id = %s RETURNING n",
                [(1, 2), (1, 1)],
                returning=True,
            )
            raise AssertionError("a write to a held row ran")
        except psycopg.errors.LockNotAvailable:
            pass
        if not autocommit:
            c.rollback()
        assert holder.execute("SELECT tandem_rollback()").fetchone()[0] == "Rollbacked"
    phase_two_done(direct)
    after = rows(direct)
    # The first pipeline ran; of the second, nothing (the held row's write failed it).
    expected = [before[0], (2, before[1][1], before[1][2] + 1), (3, before[2][1], before[2][2] + 1)]
    assert after[:3] == expected, (before, after)


def reads_ahead_of_writes(proxy_dsn, direct, autocommit, in_global):
    """A pipeline whose write follows a read, with one Sync at its end: the write is
    captured (in a global transaction) or checked (outside one, while the table holds
    global locks), and the pipeline stays one transaction."""
    before = rows(direct)
    with psycopg.connect(proxy_dsn, autocommit=True) as holder, \
            psycopg.connect(proxy_dsn, autocommit=autocommit) as c:
        holder.execute("SELECT tandem_begin(30000)")
        holder.execute("UPDATE pipe_items SET n = 0 WHERE id = 1")
        if in_global:
            c.execute("SELECT tandem_begin(30000)")
            if not autocommit:
                c.commit()
        with c.pipeline():
            read = c.execute("SELECT n FROM pipe_items WHERE id = 3")
            c.execute("UPDATE pipe_items SET n = n + 5 WHERE id = 2")
            c.execute("UPDATE pipe_items SET n = n + 7 WHERE id = 3")
        assert read.fetchall() == [(before[2][2],)]
        if not autocommit:
            c.commit()
        changed = [(2, before[1][1], before[1][2] + 5), (3, before[2][1], before[2][2] + 7)]
        assert rows(direct)[1:3] == changed, rows(direct)
        # In a global transaction with autocommit on, a write to the held row would
        # fail at the pipeline's Sync, where its branch takes its locks, as a deferred
        # constraint fails there directly: psycopg then leaves the connection
        # unusable, against PostgreSQL itself too.
        if not (in_global and autocommit):
            a_write_to_a_held_row_fails_its_pipeline(c, direct, changed, autocommit)
        if in_global:
            status = c.execute("SELECT tandem_rollback()").fetchone()[0]
            assert status == "Rollbacked", status
            if not autocommit:
                c.commit()
        assert holder.execute("SELECT tandem_rollback()").fetchone()[0] == "Rollbacked"
    phase_two_done(direct)
    after = rows(direct)
    expected = before if in_global else [before[0]] + changed + before[3:]
    assert after == expected, (before, after)
    if not in_global:
        # Back as it was, for the next round.
        direct.execute("UPDATE pipe_items SET n = n - 5 WHERE id = 2")
        direct.execute("UPDATE pipe_items SET n = n - 7 WHERE id = 3")


def a_write_to_a_held_row_fails_its_pipeline(c, direct, changed, autocommit):
    """Behind a read and a write: the pipeline (or its block, at COMMIT) fails as one
    transaction, the first write undone with it."""
    try:
        with c.pipeline():
            c.execute("SELECT n FROM pipe_items WHERE id = 2")
            c.execute("UPDATE pipe_items SET n = n + 1 WHERE id = 2")
            c.execute("UPDATE pipe_items SET n = n + 1 WHERE id = 1")
        if not autocommit:
            c.commit()
        raise AssertionError("a write to a held row ran")
    except (psycopg.errors.LockNotAvailable, psycopg.errors.SerializationFailure):
        if not autocommit:
            c.rollback()
    assert rows(direct)[1:3] == changed, rows(direct)


def main(proxy_dsn, direct_dsn):
    with psycopg.connect(direct_dsn, autocommit=True) as direct:
        direct.execute("DROP TABLE IF EXISTS pipe_items")
        direct.execute("CREATE TABLE pipe_items (id serial PRIMARY KEY, v text, n int)")
        direct.execute(
            "INSERT INTO pipe_items (v, n) VALUES ('one', 10), ('two', 20), ('three', 30)")
        for autocommit in (False, True):
            global_transaction(proxy_dsn, direct, autocommit)
        for autocommit in (False, True):
            outside_a_global_transaction(proxy_dsn, direct, autocommit)
        for in_global in (True, False):
            for autocommit in (False, True):
                reads_ahead_of_writes(proxy_dsn, direct, autocommit, in_global)
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
