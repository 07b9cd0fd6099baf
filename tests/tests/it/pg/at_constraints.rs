//! AT mode on PostgreSQL against what a table's constraints and columns allow a restore
//! to do: a rollback puts every row back byte for byte and ends, or the write it could
//! not undo is refused up front (0A000) and changes nothing.

use super::at_mode::{one, prepare, rollback_begun, rolled_back, undo_rows};
use std::time::Duration;
use tandem_tests::harness::Tandem;
use tandem_tests::harness::eventually_within;
use tandem_tests::lockserver::{Kind, TestLockserver};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// Every row of `table` as text, in the order of its first column.
async fn rows(client: &Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Creates the tables (`setup`, run directly), runs `writes` in a global transaction
/// through tandem, rolls it back, and checks that `table` is as before, byte for byte,
/// and that nothing of the branch is left.
async fn rolls_back_exactly(label: &str, setup: &str, table: &str, writes: &str) {
    let db = prepare(label).await;
    let direct = db.direct().await;
    direct.batch_execute(setup).await.unwrap();
    let before = rows(&direct, table).await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    a.batch_execute(writes).await.unwrap();
    assert_ne!(
        rows(&direct, table).await,
        before,
        "{writes}: the writes ran"
    );
    rolled_back(&a).await;
    assert_eq!(rows(&direct, table).await, before, "{writes}");
    assert_eq!(undo_rows(&direct).await, 0);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// An UPDATE may set a GENERATED ALWAYS AS IDENTITY column to DEFAULT only: the restore
/// leaves it alone (it assigned every column, and was refused for ever).
#[tokio::test]
async fn a_table_with_an_identity_always_column_rolls_back() {
    rolls_back_exactly(
        "at_identity",
        "CREATE TABLE tickets (id int PRIMARY KEY, seq int GENERATED ALWAYS AS IDENTITY, state text);
         INSERT INTO tickets (id, state) VALUES (1, 'new'), (2, 'new'), (3, 'new');",
        "tickets",
        "UPDATE tickets SET state = 'paid' WHERE id = 1;
         DELETE FROM tickets WHERE id = 2;
         INSERT INTO tickets (id, state) VALUES (4, 'new');",
    )
    .await;
}

/// Two rows swap places under a DEFERRABLE unique key in one UPDATE, which the key
/// checks at the statement's end: restored row by row, each would meet the other.
#[tokio::test]
async fn a_swap_under_a_deferrable_unique_key_rolls_back() {
    rolls_back_exactly(
        "at_deferrable_swap",
        "CREATE TABLE slots (id int PRIMARY KEY, pos int UNIQUE DEFERRABLE INITIALLY IMMEDIATE);
         INSERT INTO slots VALUES (1, 1), (2, 2);",
        "slots",
        "UPDATE slots SET pos = 3 - pos",
    )
    .await;
}

/// Two rows swap a value under a unique key that is checked at once (NOT DEFERRABLE),
/// through a third value, as a reordering does: restored one at a time, each would meet
/// the other in any order. They are put back together (deleted, then inserted again),
/// while rows of another table still refer to them; identity and generated columns
/// come back as they were.
#[tokio::test]
async fn rows_that_swapped_a_unique_value_roll_back_together() {
    rolls_back_exactly(
        "at_unique_swap",
        "CREATE TABLE slots (id int PRIMARY KEY, pos int NOT NULL UNIQUE, note text,
             seq int GENERATED ALWAYS AS IDENTITY, twice int GENERATED ALWAYS AS (pos * 2) STORED);
         INSERT INTO slots (id, pos, note) VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c');
         CREATE TABLE items (id int PRIMARY KEY, slot int NOT NULL REFERENCES slots (id));
         INSERT INTO items VALUES (10, 1), (11, 2);",
        "slots",
        "BEGIN;
         UPDATE slots SET pos = 0 WHERE id = 1;
         UPDATE slots SET pos = 1, note = 'b!' WHERE id = 2;
         UPDATE slots SET pos = 2 WHERE id = 1;
         COMMIT;",
    )
    .await;
}

/// 700 rows rotate a unique value among themselves, so that every row's restore
/// meets another's: put back together, their images need more parameters than one
/// statement carries (a Bind holds at most 65,535), and the rollback retried for ever.
#[tokio::test]
async fn many_rows_that_rotated_a_unique_value_roll_back_together() {
    let db = prepare("at_unique_ring").await;
    let direct = db.direct().await;
    let payload: Vec<String> = (1..=100).map(|i| format!("c{i} text")).collect();
    let filled: Vec<String> = (1..=100).map(|i| format!("md5((g * {i})::text)")).collect();
    direct
        .batch_execute(&format!(
            "CREATE TABLE ring (id int PRIMARY KEY, pos int NOT NULL UNIQUE, {});
             INSERT INTO ring SELECT g, g, {} FROM generate_series(1, 700) g;",
            payload.join(", "),
            filled.join(", ")
        ))
        .await
        .unwrap();
    let before = rows(&direct, "ring").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute(
        "UPDATE ring SET pos = pos + 700;
         UPDATE ring SET pos = CASE WHEN pos = 1400 THEN 1 ELSE pos - 699 END;",
    )
    .await
    .unwrap();
    assert_ne!(rows(&direct, "ring").await, before, "the rotation ran");
    rollback_begun(&a).await;
    eventually_within("the ring rolled back", Duration::from_secs(120), || async {
        undo_rows(&direct).await == 0
    })
    .await;
    assert_eq!(rows(&direct, "ring").await, before);
    let (_, locks) = lockserver.get("/v1/locks").await;
    assert_eq!(locks["locks"].as_array().map(Vec::len), Some(0), "{locks}");
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// 400 rows each move into the next one's unique value: restored one at a time, each
/// row waits for the one before it. (In the plan's order a pass restored one row, and
/// the rollback took as many passes as rows: minutes.)
#[tokio::test]
async fn rows_shifted_along_a_unique_value_roll_back_in_few_passes() {
    let db = prepare("at_unique_shift").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE line (id int PRIMARY KEY, pos int NOT NULL UNIQUE, v text);
             INSERT INTO line SELECT g, g, 'v' || g FROM generate_series(1, 400) g;",
        )
        .await
        .unwrap();
    let before = rows(&direct, "line").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(60000)").await.unwrap();
    a.batch_execute(
        "UPDATE line SET pos = pos + 100000;
         UPDATE line SET pos = pos - 99999;",
    )
    .await
    .unwrap();
    rollback_begun(&a).await;
    eventually_within("the line rolled back", Duration::from_secs(30), || async {
        undo_rows(&direct).await == 0
    })
    .await;
    assert_eq!(rows(&direct, "line").await, before);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Swaps `pos` between slots 1 and 2 in a global transaction (`setup` makes the
/// tables: `slots` with a NOT DEFERRABLE unique `pos`, `uses` referring to it), runs
/// `change` directly, and rolls back: the rollback must keep retrying with `slots` and
/// `uses` untouched, and end, restoring them, once `change_back` has run.
async fn not_put_back_together_after(label: &str, setup: &str, change: &str, change_back: &str) {
    let db = prepare(label).await;
    let direct = db.direct().await;
    direct.batch_execute(setup).await.unwrap();
    let before = (rows(&direct, "slots").await, rows(&direct, "uses").await);
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    let xid = one(&a, "SELECT tandem_begin(60000)")
        .await
        .unwrap()
        .unwrap();
    a.batch_execute(
        "BEGIN; UPDATE slots SET pos = 0 WHERE id = 1; UPDATE slots SET pos = 1 WHERE id = 2;
         UPDATE slots SET pos = 2 WHERE id = 1; COMMIT;",
    )
    .await
    .unwrap();
    let swapped = rows(&direct, "slots").await;
    direct.batch_execute(change).await.unwrap();
    assert_eq!(
        one(&a, "SELECT tandem_rollback()")
            .await
            .unwrap()
            .as_deref(),
        Some("RollbackRetrying"),
        "{change}"
    );
    assert_eq!(rows(&direct, "uses").await, before.1, "{change}");
    assert_eq!(rows(&direct, "slots").await, swapped, "{change}");
    direct.batch_execute(change_back).await.unwrap();
    tandem_tests::harness::eventually("the rollback ends", || async {
        let (_, txn) = lockserver.get(&format!("/v1/transactions/{xid}")).await;
        txn["status"] == "Rollbacked"
    })
    .await;
    assert_eq!(
        (rows(&direct, "slots").await, rows(&direct, "uses").await),
        before,
        "{change}"
    );
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Rows that swapped a unique value are put back together only while their table (and
/// each partition of it) is as the branch captured it: a foreign key given ON DELETE
/// CASCADE since (DDL after the branch wrote), to the table or to the partition that
/// holds the rows, would delete the rows that refer to them, and a rule added since
/// would send the inserted rows elsewhere.
#[tokio::test]
async fn rows_are_not_put_back_together_through_what_was_added_since() {
    let plain = "CREATE TABLE slots (id int PRIMARY KEY, pos int NOT NULL UNIQUE);
                 INSERT INTO slots VALUES (1, 1), (2, 2);
                 CREATE TABLE uses (id int PRIMARY KEY, slot int NOT NULL CONSTRAINT uses_slot REFERENCES slots (id));
                 INSERT INTO uses VALUES (10, 1), (11, 2);";
    not_put_back_together_after(
        "at_swap_cascade",
        plain,
        "ALTER TABLE uses DROP CONSTRAINT uses_slot,
           ADD CONSTRAINT uses_slot FOREIGN KEY (slot) REFERENCES slots (id) ON DELETE CASCADE",
        "ALTER TABLE uses DROP CONSTRAINT uses_slot,
           ADD CONSTRAINT uses_slot FOREIGN KEY (slot) REFERENCES slots (id)",
    )
    .await;
    not_put_back_together_after(
        "at_swap_rule",
        plain,
        "CREATE TABLE elsewhere (id int, pos int);
         CREATE RULE diverted AS ON INSERT TO slots DO INSTEAD INSERT INTO elsewhere VALUES (NEW.*) RETURNING elsewhere.*",
        "DROP RULE diverted ON slots",
    )
    .await;
    not_put_back_together_after(
        "at_swap_partition_cascade",
        "CREATE TABLE slots (k int, id int, pos int NOT NULL, PRIMARY KEY (k, id), UNIQUE (k, pos))
           PARTITION BY LIST (k);
         CREATE TABLE slots_1 PARTITION OF slots FOR VALUES IN (1);
         INSERT INTO slots VALUES (1, 1, 1), (1, 2, 2);
         CREATE TABLE uses (id int PRIMARY KEY, k int NOT NULL, slot int NOT NULL);
         INSERT INTO uses VALUES (10, 1, 1), (11, 1, 2);",
        "ALTER TABLE uses ADD CONSTRAINT uses_slot FOREIGN KEY (k, slot) REFERENCES slots_1 (k, id) ON DELETE CASCADE",
        "ALTER TABLE uses DROP CONSTRAINT uses_slot",
    )
    .await;
}

/// An array stored with a null bitmap but no NULL left (a slice of `'{1,NULL}'`, or
/// `a[2] = 6` on `'{5,NULL}'`) is written by two branches of one global transaction
/// (two autocommit writes). The later branch's restore puts it back without the bitmap,
/// so its binary form no longer says "has nulls": the earlier branch's check must still
/// see the value it left, not a dirty write. (It stopped the rollback: RollbackFailed.)
#[tokio::test]
async fn an_array_put_back_without_its_null_bitmap_is_the_same_array() {
    let db = prepare("at_array_bitmap").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE arrays (id int PRIMARY KEY, a int[], b text);
             INSERT INTO arrays VALUES (1, '{1,NULL}', 'x'), (2, '{5,NULL}', 'y');
             UPDATE arrays SET a[2] = 6 WHERE id = 2;",
        )
        .await
        .unwrap();
    let before = rows(&direct, "arrays").await;
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for write in [
        "UPDATE arrays SET a = a[1:1] WHERE id = 1",
        "UPDATE arrays SET a = '{9}' WHERE id = 1",
        "UPDATE arrays SET b = 'z' WHERE id = 2",
        "UPDATE arrays SET a = '{7}' WHERE id = 2",
    ] {
        a.batch_execute(write).await.unwrap();
    }
    rolled_back(&a).await;
    assert_eq!(rows(&direct, "arrays").await, before);
    assert_eq!(undo_rows(&direct).await, 0);
    tandem.shutdown().await;
    lockserver.stop().await;
}

/// Two rows that refer to each other, both deleted: put back one at a time, each would
/// refer to a row not there yet. Inserted in one statement, whose end the foreign key
/// is checked at, they are.
#[tokio::test]
async fn rows_that_refer_to_each_other_roll_back_together() {
    rolls_back_exactly(
        "at_reference_cycle",
        "CREATE TABLE people (id int PRIMARY KEY, partner int REFERENCES people (id));
         INSERT INTO people VALUES (1, NULL), (2, 1), (3, NULL);
         UPDATE people SET partner = 2 WHERE id = 1;",
        "people",
        "BEGIN;
         UPDATE people SET partner = NULL WHERE id = 1;
         DELETE FROM people WHERE id = 2;
         DELETE FROM people WHERE id = 1;
         COMMIT;",
    )
    .await;
}

/// One branch writes rows of a partitioned table through its partitions' names and
/// through its own, in any order, with a partition whose columns (attached after it was
/// created on its own) are in another order than the table's: each row keeps one pair
/// of images, in the column order of the table it was first captured through, which
/// the rollback restores it through. (Rows of two partitions were kept as one table's,
/// and the rollback looked for one of them in the other partition: RollbackFailed.)
#[tokio::test]
async fn rows_written_through_partitions_and_their_table_roll_back() {
    rolls_back_exactly(
        "at_partition_names",
        "CREATE TABLE parts (id int PRIMARY KEY, a text, b numeric) PARTITION BY RANGE (id);
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (1) TO (100);
         CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (100) TO (200);
         CREATE TABLE parts_3 (b numeric, a text, id int PRIMARY KEY);
         ALTER TABLE parts ATTACH PARTITION parts_3 FOR VALUES FROM (200) TO (300);
         INSERT INTO parts VALUES (1, 'one', 1), (150, 'mid', 2), (250, 'orig', 3), (260, 'gone', 4);",
        "parts",
        "BEGIN;
         UPDATE parts_1 SET a = 'x' WHERE id = 1;
         UPDATE parts_2 SET a = 'y' WHERE id = 150;
         UPDATE parts_3 SET a = 'leaf', b = 9 WHERE id = 250;
         UPDATE parts SET a = 'root' WHERE id = 250;
         UPDATE parts_3 SET a = 'leaf again', b = 7 WHERE id = 250;
         DELETE FROM parts WHERE id = 260;
         INSERT INTO parts_3 (id, a, b) VALUES (260, 'back', 5);
         UPDATE parts SET a = 'z' WHERE id = 1;
         COMMIT;",
    )
    .await;
}

/// An exclusion constraint refuses a restore in the plan's order as a unique key does:
/// the row is put off and restored once the other has moved back.
#[tokio::test]
async fn rows_an_exclusion_constraint_keeps_apart_roll_back_in_a_workable_order() {
    rolls_back_exactly(
        "at_exclusion_order",
        "CREATE TABLE bookings (id int PRIMARY KEY, during int4range,
             EXCLUDE USING gist (during WITH &&));
         INSERT INTO bookings VALUES (1, '[10,15)'), (2, '[20,25)');",
        "bookings",
        "BEGIN;
         UPDATE bookings SET during = '[50,55)' WHERE id = 1;
         UPDATE bookings SET during = '[60,65)' WHERE id = 2;
         UPDATE bookings SET during = '[20,25)' WHERE id = 1;
         COMMIT;",
    )
    .await;
}

#[tokio::test]
async fn writes_a_restore_could_not_undo_are_refused_and_change_nothing() {
    let db = prepare("at_constraint_refusals").await;
    let direct = db.direct().await;
    direct
        .batch_execute(
            "CREATE TYPE pair AS (a int, b text);
             CREATE TABLE pairs (k pair PRIMARY KEY, v int);
             INSERT INTO pairs VALUES ('(1,x)', 0);
             CREATE TABLE tickets (id int PRIMARY KEY, seq int GENERATED ALWAYS AS IDENTITY, state text);
             INSERT INTO tickets (id, state) VALUES (1, 'new');
             CREATE TABLE checked (id int PRIMARY KEY, v int);
             INSERT INTO checked VALUES (1, -1), (2, 5);
             ALTER TABLE checked ADD CONSTRAINT positive CHECK (v > 0) NOT VALID;
             CREATE DOMAIN posint AS int;
             CREATE TABLE typed (id int PRIMARY KEY, d posint[]);
             INSERT INTO typed VALUES (1, '{-5}');
             ALTER DOMAIN posint ADD CONSTRAINT posint_positive CHECK (VALUE > 0) NOT VALID;",
        )
        .await
        .unwrap();
    let tables = ["pairs", "tickets", "checked", "typed"];
    let mut before = Vec::new();
    for table in tables {
        before.push(rows(&direct, table).await);
    }
    let lockserver = TestLockserver::start(Kind::Embedded).await;
    let tandem = Tandem::start_for(&lockserver).await;
    let a = tandem.connect(&db.name).await;
    one(&a, "SELECT tandem_begin(30000)").await.unwrap();
    for sql in [
        // A field of the key column: the key changes.
        "UPDATE pairs SET k.a = 9",
        // A new identity value no UPDATE could write back.
        "UPDATE tickets SET seq = DEFAULT WHERE id = 1",
        // Row 1 breaks the constraint: put back, it would be refused.
        "DELETE FROM checked WHERE id = 1",
        "UPDATE checked SET v = 7",
        // So would it under a domain's, in an array.
        "UPDATE typed SET d = '{5}' WHERE id = 1",
    ] {
        let err = a.simple_query(sql).await.expect_err(sql);
        assert_eq!(
            err.code(),
            Some(&SqlState::FEATURE_NOT_SUPPORTED),
            "{sql}: {err:?}"
        );
    }
    // A plain INSERT is undone by a DELETE, which no CHECK refuses.
    a.batch_execute("INSERT INTO checked VALUES (3, 3)")
        .await
        .unwrap();
    rolled_back(&a).await;
    for (table, before) in tables.into_iter().zip(before) {
        assert_eq!(rows(&direct, table).await, before, "{table}");
    }
    tandem.shutdown().await;
    lockserver.stop().await;
}
