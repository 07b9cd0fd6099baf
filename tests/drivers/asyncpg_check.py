"""asyncpg through tandem: global transactions in AT and XA mode, and a write outside
any global transaction to a row one holds. asyncpg prepares every statement with
Parse, Describe and Flush, and runs it with Bind, Execute and Sync once the replies
are in; its executemany pipelines the Binds; a statement without arguments goes over
the simple protocol.

Usage: python3 asyncpg_check.py PROXY_DSN DIRECT_DSN
Exits non-zero with the failed assertion if anything differs.
"""

import asyncio
import sys

import asyncpg


async def rows(direct):
    return [tuple(r) for r in await direct.fetch("SELECT * FROM apg_accounts ORDER BY id")]


async def phase_two_done(direct):
    for _ in range(100):
        if await direct.fetchval("SELECT count(*) FROM undo_log") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("undo rows left after the global commit")


async def at_mode(c, direct):
    before = await rows(direct)
    xid = await c.fetchval("SELECT tandem_begin(30000)")
    assert xid, "an xid"
    # Autocommit writes, with arguments (extended protocol) and without (simple).
    await c.execute("UPDATE apg_accounts SET balance = balance - $1 WHERE id = $2", 5, 1)
    row = await c.fetchrow(
        "UPDATE apg_accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance", 5, 2)
    assert row["balance"] == 1005, row
    await c.execute("UPDATE apg_accounts SET note = 'simple' WHERE id = 3")
    async with c.transaction():
        await c.execute("UPDATE apg_accounts SET balance = 0 WHERE id = $1", 4)
        await c.executemany(
            "INSERT INTO apg_accounts (id, balance, note) VALUES ($1, $2, $3)",
            [(i, i, "many") for i in range(10, 20)])
        stmt = await c.prepare("UPDATE apg_accounts SET note = $1 WHERE id = $2")
        for i in range(10, 15):
            await stmt.fetch("prepared", i)
    await c.executemany(
        "UPDATE apg_accounts SET balance = balance + 1 WHERE id = $1", [(i,) for i in range(1, 6)])
    assert await direct.fetchval("SELECT count(*) FROM apg_accounts") == 15
    # COPY cannot be captured: refused, and the session goes on, whether its data and
    # CopyDone arrive with the COPY or after tandem has refused it.
    for count in [1, 20_000]:
        try:
            await c.copy_records_to_table(
                "apg_accounts", records=[(100 + i, 1, "copy " * 10) for i in range(count)])
            raise AssertionError("COPY into a table ran in a global transaction")
        except asyncpg.PostgresError as e:
            assert e.sqlstate == "0A000", e
        assert await c.fetchval("SELECT $1::int", count) == count
    assert await c.fetchval("SELECT 41 + $1::int", 1) == 42
    # prepare() leaves its Parse, Describe and Flush unsynced; a simple query follows.
    await c.prepare("SELECT balance FROM apg_accounts WHERE id = $1")
    status = await c.execute("SELECT tandem_rollback()")
    assert status == "SELECT 1", status
    assert await rows(direct) == before, "AT: rolled back exactly"
    assert await direct.fetchval("SELECT count(*) FROM undo_log") == 0

    await c.fetchval("SELECT tandem_begin(30000)")
    async with c.transaction():
        await c.executemany(
            "UPDATE apg_accounts SET balance = balance + $1 WHERE id = $2", [(7, 1), (8, 2)])
    assert await c.fetchval("SELECT tandem_commit()") == "Committed"
    await phase_two_done(direct)
    got = await direct.fetch("SELECT balance FROM apg_accounts WHERE id <= 2 ORDER BY id")
    assert [r[0] for r in got] == [1007, 1008], got


async def uncached(proxy, direct):
    """asyncpg without a statement cache (statement_cache_size=0, as behind PgBouncer)
    sends every statement's Parse again with its Bind, behind the Parse, Describe and
    Flush that prepared it."""
    c = await asyncpg.connect(proxy, ssl=False, statement_cache_size=0)
    before = await rows(direct)
    assert await c.fetchval("SELECT tandem_begin(30000)"), "an xid"
    await c.execute("UPDATE apg_accounts SET balance = balance - $1 WHERE id = $2", 5, 1)
    assert await c.fetchval("SELECT tandem_status()") == "Begin"
    # Outside the global transaction, while it holds row 1: a write to another row of
    # the table is checked, and runs.
    plain = await asyncpg.connect(proxy, ssl=False, statement_cache_size=0)
    await plain.execute("UPDATE apg_accounts SET note = $1 WHERE id = $2", "plain", 2)
    assert await direct.fetchval("SELECT note FROM apg_accounts WHERE id = 2") == "plain"
    await plain.execute("UPDATE apg_accounts SET note = $1 WHERE id = $2", "n2", 2)
    await plain.close()
    assert await c.fetchval("SELECT tandem_rollback()") == "Rollbacked"
    assert await rows(direct) == before, "uncached: rolled back exactly"
    await c.close()


async def xa_mode(c, direct):
    assert await c.fetchval("SELECT tandem_mode('xa')") == "xa"
    for decision in ["rollback", "commit"]:
        before = await rows(direct)
        await c.fetchval("SELECT tandem_begin(30000)")
        async with c.transaction():
            await c.execute("UPDATE apg_accounts SET balance = balance - $1 WHERE id = $2", 1, 3)
            await c.execute("UPDATE apg_accounts SET note = $1 WHERE id = $2", "xa", 3)
        await c.execute("UPDATE apg_accounts SET balance = balance + $1 WHERE id = $2", 1, 4)
        assert await rows(direct) == before, "XA: nothing visible before the decision"
        status = await c.fetchval(f"SELECT tandem_{decision}()")
        assert status == ("Committed" if decision == "commit" else "Rollbacked"), status
        for _ in range(100):
            if await direct.fetchval("SELECT count(*) FROM pg_prepared_xacts") == 0:
                break
            await asyncio.sleep(0.05)
        after = await rows(direct)
        if decision == "rollback":
            assert after == before, "XA: rolled back exactly"
        else:
            assert after[2][1] == before[2][1] - 1 and after[2][2] == "xa", after
            assert after[3][1] == before[3][1] + 1, after
    assert await c.fetchval("SELECT tandem_mode('at')") == "at"


async def outside(c, holder, direct):
    await holder.fetchval("SELECT tandem_begin(30000)")
    await holder.execute("UPDATE apg_accounts SET balance = balance + $1 WHERE id = $2", 100, 5)
    held = await direct.fetchval("SELECT balance FROM apg_accounts WHERE id = 5")
    try:
        await c.execute("UPDATE apg_accounts SET balance = $1 WHERE id = $2", 0, 5)
        raise AssertionError("an outside write overwrote a held row")
    except asyncpg.PostgresError as e:
        assert e.sqlstate == "55P03", e
    await c.execute("UPDATE apg_accounts SET note = $1 WHERE id = $2", "free", 1)
    assert await direct.fetchval("SELECT balance FROM apg_accounts WHERE id = 5") == held
    assert await holder.fetchval("SELECT tandem_rollback()") == "Rollbacked"
    assert await direct.fetchval("SELECT balance FROM apg_accounts WHERE id = 5") == held - 100
    assert await direct.fetchval("SELECT note FROM apg_accounts WHERE id = 1") == "free"


async def main(proxy, direct_dsn):
    direct = await asyncpg.connect(direct_dsn)
    await direct.execute(
        "DROP TABLE IF EXISTS apg_accounts;"
        "CREATE TABLE apg_accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);"
        "INSERT INTO apg_accounts SELECT g, 1000, 'n' || g FROM generate_series(1, 5) g")
    c = await asyncpg.connect(proxy, ssl=False)
    holder = await asyncpg.connect(proxy, ssl=False)
    await uncached(proxy, direct)
    await at_mode(c, direct)
    await xa_mode(c, direct)
    await outside(c, holder, direct)
    await c.close()
    await holder.close()
    await direct.close()
    print("all checks passed")


asyncio.run(main(sys.argv[1], sys.argv[2]))
