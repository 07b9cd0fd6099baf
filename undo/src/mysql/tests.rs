//! The MySQL catalog's reading, and the capture of each kind of MySQL write, asserted on
//! the exact SQL tandem would run.

use super::types::{BLOB, CHARACTER, DATETIME, LONGLONG, NEWDECIMAL, STRING, UNSIGNED, VAR_STRING};
use super::*;
use crate::analyze::{Analysis, TableRef, Write, analyze};
use crate::dialect::Mysql;
use crate::error::Error;
use crate::image::{Capture, Collation, Column};

fn row(values: &[Option<&str>]) -> CatalogRow {
    values.iter().map(|v| v.map(str::to_owned)).collect()
}

fn count(n: u32) -> Vec<CatalogRow> {
    vec![row(&[Some(&n.to_string())])]
}

/// `shop.accounts`: id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, Email VARCHAR UNIQUE,
/// name CHAR, balance DECIMAL, seen TIMESTAMP, total (generated).
fn catalog() -> Catalog {
    Catalog {
        table: vec![row(&[
            Some("shop"),
            Some("accounts"),
            Some("InnoDB"),
            Some("BASE TABLE"),
        ])],
        columns: vec![
            row(&[
                Some("id"),
                Some("bigint"),
                Some("bigint(20) unsigned"),
                Some("auto_increment"),
                None,
                None,
            ]),
            row(&[
                Some("Email"),
                Some("varchar"),
                Some("varchar(80)"),
                Some(""),
                Some("utf8mb4"),
                Some("utf8mb4_general_ci"),
            ]),
            row(&[
                Some("name"),
                Some("char"),
                Some("char(10)"),
                Some(""),
                Some("latin1"),
                Some("latin1_bin"),
            ]),
            row(&[
                Some("balance"),
                Some("decimal"),
                Some("decimal(12,2)"),
                Some(""),
                None,
                None,
            ]),
            row(&[
                Some("seen"),
                Some("timestamp"),
                Some("timestamp(6)"),
                Some("DEFAULT_GENERATED on update CURRENT_TIMESTAMP(6)"),
                None,
                None,
            ]),
            row(&[
                Some("total"),
                Some("decimal"),
                Some("decimal(13,2)"),
                Some("STORED GENERATED"),
                None,
                None,
            ]),
        ],
        unique_keys: vec![
            row(&[Some("PRIMARY"), Some("id"), None]),
            row(&[Some("email_uq"), Some("Email"), None]),
        ],
        triggers: count(0),
        cascades: vec![],
    }
}

fn table() -> MysqlTable {
    MysqlTable::from_catalog(&TableRef::default(), &catalog()).unwrap()
}

#[test]
fn foreign_keys_that_act_are_read_with_the_tables_they_reach() {
    let mut c = catalog();
    c.cascades = vec![
        row(&[Some("1"), Some("0"), Some("id"), Some("orders\u{1}lines")]),
        row(&[Some("0"), Some("1"), Some("email"), Some("logins")]),
    ];
    let t = MysqlTable::from_catalog(&TableRef::default(), &c).unwrap();
    assert!(t.meta.has_cascades);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(t.meta.cascades.len(), 2);
    assert!(t.meta.cascades[0].on_delete && !t.meta.cascades[0].on_update);
    assert_eq!(t.meta.cascades[0].columns, names(&["id"]));
    assert_eq!(t.meta.cascades[0].reaches, names(&["orders", "lines"]));
    assert!(!t.meta.cascades[1].on_delete && t.meta.cascades[1].on_update);
    assert_eq!(t.meta.cascades[1].reaches, names(&["logins"]));
}

fn write(sql: &str) -> Write {
    match analyze(&Mysql, sql).unwrap().remove(0) {
        Analysis::Write(w) => w,
        other => panic!("{other:?}"),
    }
}

fn refusal(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Unsupported { what }) => what,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn capture(sql: &str, params: &[usize]) -> Capture {
    Capture {
        sql: sql.into(),
        params: params.to_vec(),
    }
}

/// The SELECT list every capture of `accounts` reads.
const COLUMNS: &str = "`id`, CAST(`email` AS BINARY), IFNULL(CAST(TRIM(TRAILING ' ' FROM `name`) AS BINARY), LEFT(CAST(`name` AS BINARY), 0)), `balance`, TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP(`seen`) * 1000000 AS SIGNED) MICROSECOND, `total`";

#[test]
fn the_catalog_builds_the_table() {
    let t = table();
    assert_eq!(
        t.meta.table,
        TableRef {
            schema: Some("shop".into()),
            name: "accounts".into()
        }
    );
    let column = |name: &str, type_oid: u32, generated: bool| Column {
        name: name.into(),
        type_oid,
        generated,
        sql_type: String::new(),
        collation: None,
        ..Default::default()
    };
    let collated = |name: &str, type_oid: u32, charset: &str, collation: &str| Column {
        collation: Some(Collation {
            charset: charset.into(),
            name: collation.into(),
        }),
        ..column(name, type_oid, false)
    };
    assert_eq!(
        t.meta.columns,
        vec![
            column("id", LONGLONG | UNSIGNED, false),
            collated(
                "email",
                VAR_STRING | CHARACTER,
                "utf8mb4",
                "utf8mb4_general_ci"
            ),
            collated("name", STRING | CHARACTER, "latin1", "latin1_bin"),
            column("balance", NEWDECIMAL, false),
            Column {
                set_on_update: true,
                ..column("seen", types::TIMESTAMP, false)
            },
            column("total", NEWDECIMAL, true),
        ]
    );
    assert_eq!(t.meta.pk, vec![0]);
    assert_eq!(t.unique_keys, vec![vec![1]]);
    assert_eq!(t.auto_increment, Some(0));
    assert_eq!(t.refusal, None);
    assert!(!t.meta.has_triggers && !t.meta.has_cascades);
}

#[test]
fn tables_tandem_cannot_capture_still_build_with_their_reason() {
    let mut c = catalog();
    c.table[0][2] = Some("MyISAM".into());
    c.columns[3] = row(&[
        Some("addr"),
        Some("inet6"),
        Some("inet6"),
        Some(""),
        None,
        None,
    ]);
    c.unique_keys
        .push(row(&[Some("name_prefix"), Some("name"), Some("4")]));
    c.triggers = count(2);
    let t = MysqlTable::from_catalog(&TableRef::default(), &c).unwrap();
    assert_eq!(t.meta.columns[3].type_oid, BLOB);
    assert!(t.meta.has_triggers);
    assert_eq!(
        refusal(t.check_capturable(&write("DELETE FROM accounts WHERE id = 1"))),
        "a write to table accounts, where its engine is MyISAM, not InnoDB; column addr has type inet6; its unique key name_prefix has a prefix or expression part,"
    );
}

#[test]
fn catalog_rows_of_the_wrong_shape_are_errors() {
    let mut c = catalog();
    c.table.clear();
    assert!(matches!(
        MysqlTable::from_catalog(&TableRef::default(), &c),
        Err(Error::Catalog { .. })
    ));
    let mut c = catalog();
    c.triggers = vec![];
    assert!(matches!(
        MysqlTable::from_catalog(&TableRef::default(), &c),
        Err(Error::Catalog { .. })
    ));
    let mut c = catalog();
    c.unique_keys[1][1] = Some("nope".into());
    assert!(matches!(
        MysqlTable::from_catalog(&TableRef::default(), &c),
        Err(Error::Catalog { .. })
    ));
}

#[test]
fn catalog_queries_take_the_schema_then_the_table() {
    assert_eq!(
        catalog::COLUMNS,
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, EXTRA, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"
    );
    assert_eq!(
        catalog::UNIQUE_KEYS,
        "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME = 'PRIMARY' DESC, INDEX_NAME, SEQ_IN_INDEX"
    );
    assert_eq!(
        catalog::TRIGGERS,
        "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = COALESCE(?, DATABASE()) AND EVENT_OBJECT_TABLE = ?"
    );
    assert!(
        catalog::CASCADES.contains("WHERE parent_schema = COALESCE(?, DATABASE()) AND parent = ?)")
    );
    assert_eq!(catalog::CASCADES.matches('?').count(), 2);
    assert_eq!(
        catalog::TABLE,
        "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?"
    );
}

#[test]
fn the_before_image_takes_the_rows_the_write_takes() {
    let w = write(
        "UPDATE accounts SET balance = ? WHERE email LIKE ? ORDER BY balance DESC, ID LIMIT ?",
    );
    assert_eq!(
        table().before_image(&w).unwrap(),
        capture(
            "SELECT `accounts`.`id`, CAST(`accounts`.`email` AS BINARY), IFNULL(CAST(TRIM(TRAILING ' ' FROM `accounts`.`name`) AS BINARY), LEFT(CAST(`accounts`.`name` AS BINARY), 0)), `accounts`.`balance`, TIMESTAMP'1970-01-01 00:00:00' + INTERVAL CAST(UNIX_TIMESTAMP(`accounts`.`seen`) * 1000000 AS SIGNED) MICROSECOND, `accounts`.`total` FROM `accounts` WHERE email LIKE ? ORDER BY balance DESC, ID LIMIT ? FOR UPDATE",
            &[1, 2]
        )
    );
}

#[test]
fn a_multi_table_write_selects_its_table_through_the_join() {
    let mut t = table();
    t.meta.columns.truncate(2);
    let w = write("DELETE a FROM accounts a JOIN bans b ON b.email = a.email WHERE b.since < ?");
    assert_eq!(
        t.before_image(&w).unwrap(),
        capture(
            "SELECT `a`.`id`, CAST(`a`.`email` AS BINARY) FROM accounts a JOIN bans b ON b.email = a.email WHERE (b.since < ?) AND `a`.`id` IS NOT NULL LIMIT 18446744073709551615 FOR UPDATE",
            &[0]
        )
    );
    // An outer join's NULL rows of the written table are none of its rows.
    let w = write("UPDATE bans b LEFT JOIN accounts a ON a.email = b.email SET a.email = 'x'");
    assert_eq!(
        t.before_image(&w).unwrap(),
        capture(
            "SELECT `a`.`id`, CAST(`a`.`email` AS BINARY) FROM bans b LEFT JOIN accounts a ON a.email = b.email WHERE `a`.`id` IS NOT NULL LIMIT 18446744073709551615 FOR UPDATE",
            &[]
        )
    );
}

#[test]
fn after_images_are_read_by_key() {
    let mut t = table();
    t.meta.columns.truncate(2);
    t.meta.pk = vec![0, 1];
    assert_eq!(
        t.select_by_keys(2),
        "SELECT `id`, CAST(`email` AS BINARY) FROM `shop`.`accounts` WHERE (`id`, `email`) IN ((?, ?), (?, ?)) LIMIT 18446744073709551615"
    );
}

/// knex's `merge()` assigns every inserted column its inserted value, the primary key
/// too: `id = VALUES(id)` changes nothing where the key collided, when that is the only
/// unique key and a stored integer. With another unique key the collision may be on it,
/// and the assignment moves the row's key; a string key equal under its collation may
/// be stored as other bytes.
#[test]
fn an_upsert_that_assigns_the_key_its_inserted_value_is_captured_where_that_changes_nothing() {
    let merge = "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE `id` = values(`id`), email = VALUES(email)";
    let mut only_the_key = catalog();
    only_the_key.unique_keys.truncate(1);
    let t = MysqlTable::from_catalog(&TableRef::default(), &only_the_key).unwrap();
    assert!(t.check_capturable(&write(merge)).is_ok());
    assert!(
        t.check_capturable(&write(
            "INSERT INTO accounts (id) VALUES (1) ON DUPLICATE KEY UPDATE id = VALUE(id)"
        ))
        .is_ok()
    );
    for other in [
        "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = VALUES(balance)",
        "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = VALUES(id) + 1",
        "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = LAST_VALUE(id)",
        // Assigned again after: MySQL runs every assignment, in order.
        "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = VALUES(id), id = id + 100",
        "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = 2, id = VALUE(id)",
    ] {
        assert_eq!(
            refusal(t.check_capturable(&write(other))),
            "an update of primary-key column id",
            "{other}"
        );
    }
    // With the unique key on Email as well.
    assert_eq!(
        refusal(table().check_capturable(&write(merge))),
        "an update of primary-key column id"
    );
    let mut string_key = only_the_key.clone();
    string_key.columns[0] = row(&[
        Some("id"),
        Some("varchar"),
        Some("varchar(20)"),
        Some(""),
        None,
        Some("utf8mb4_general_ci"),
    ]);
    let t = MysqlTable::from_catalog(&TableRef::default(), &string_key).unwrap();
    assert_eq!(
        refusal(t.check_capturable(&write(merge))),
        "an update of primary-key column id"
    );
}

#[test]
fn writes_mysql_cannot_undo_exactly_are_refused() {
    let t = table();
    assert_eq!(
        refusal(t.check_capturable(&write("UPDATE accounts SET ID = 2 WHERE id = 1"))),
        "an update of primary-key column id"
    );
    assert_eq!(
        refusal(t.check_capturable(&write(
            "INSERT INTO accounts (id, email) VALUES (1, 'a') ON DUPLICATE KEY UPDATE id = id + 100"
        ))),
        "an update of primary-key column id"
    );
    assert_eq!(
        refusal(t.check_capturable(&write("DELETE FROM accounts ORDER BY balance LIMIT 1"))),
        "UPDATE or DELETE … LIMIT whose ORDER BY does not name every primary-key column (which rows it takes would not be certain)"
    );
    assert!(
        t.check_capturable(&write(
            "DELETE FROM accounts ORDER BY balance, accounts.id LIMIT 1"
        ))
        .is_ok()
    );
    assert_eq!(
        refusal(t.check_capturable(&write("UPDATE accounts SET nope = 1"))),
        "a write to column nope, which tandem does not find in table accounts,"
    );
    let mut cascading = table();
    cascading.meta.has_cascades = true;
    for sql in [
        "REPLACE INTO accounts (id) VALUES (1)",
        // Its rollback's DELETE would cascade to rows added since.
        "INSERT INTO accounts (id) VALUES (1)",
    ] {
        assert_eq!(
            refusal(cascading.check_capturable(&write(sql))),
            "a write to table accounts, which foreign keys reference with cascading actions,"
        );
    }
    let mut keyed_by_time = table();
    keyed_by_time.meta.pk = vec![4];
    assert_eq!(
        refusal(keyed_by_time.check_capturable(&write("DELETE FROM accounts"))),
        "a write to table accounts, whose primary-key column seen has a type rows cannot be looked up by,"
    );
}

#[test]
fn an_insert_that_gives_its_keys_reads_them_back() {
    let plan = table()
        .insert_plan(&write(
            "INSERT INTO accounts (email, id) VALUES (?, ?), ('b', -7)",
        ))
        .unwrap();
    // The same rows before, unlocked: those the keys compare equal to already.
    let by_key = capture(
        &format!(
            "SELECT {COLUMNS} FROM `shop`.`accounts` WHERE (`id`) IN ((?), (-7)) LIMIT 18446744073709551615"
        ),
        &[1],
    );
    assert_eq!(plan.before, Some(by_key.clone()));
    assert_eq!(plan.after, Some(by_key));
    assert_eq!(plan.generated, 0);
}

#[test]
fn an_insert_that_leaves_its_keys_to_auto_increment_counts_them() {
    let plan = table()
        .insert_plan(&write("INSERT INTO accounts (email) VALUES ('a'), ('b'); "))
        .unwrap();
    assert_eq!(
        plan,
        InsertPlan {
            before: None,
            after: None,
            generated: 2
        }
    );
    let t = table();
    assert_eq!(
        t.insert_plan(&write(
            "INSERT INTO accounts VALUES (NULL, 'a', 'n', 1, NULL, DEFAULT)"
        ))
        .unwrap()
        .generated,
        1
    );
    assert_eq!(
        refusal(t.insert_plan(&write(
            "INSERT INTO accounts (id, email) VALUES (NULL, 'a'), (5, 'b')"
        ))),
        "a multi-row INSERT that gives some AUTO_INCREMENT keys and leaves others to the server"
    );
    assert_eq!(
        refusal(t.insert_plan(&write(
            "INSERT IGNORE INTO accounts (email) VALUES ('a'), ('b')"
        ))),
        "a multi-row INSERT IGNORE, … ON DUPLICATE KEY UPDATE or REPLACE that leaves the AUTO_INCREMENT key to the server (which rows it inserts is not known)"
    );
    // One row: the rows it may collide with on a unique key are read first.
    let plan = t
        .insert_plan(&write(
            "INSERT INTO accounts (email) VALUES ('a') ON DUPLICATE KEY UPDATE balance = 1",
        ))
        .unwrap();
    assert_eq!(plan.generated, 1);
    assert_eq!(plan.after, None);
    assert_eq!(
        plan.before.unwrap().sql,
        format!(
            "SELECT {COLUMNS} FROM `shop`.`accounts` WHERE (`email`) IN (('a')) LIMIT 18446744073709551615 FOR UPDATE"
        )
    );
    assert_eq!(
        refusal(t.insert_plan(&write("INSERT INTO accounts (id) VALUES ('0')"))),
        "0 for AUTO_INCREMENT column id (what it means depends on sql_mode NO_AUTO_VALUE_ON_ZERO)"
    );
    assert_eq!(
        refusal(t.insert_plan(&write("INSERT INTO accounts (id) VALUES (UUID_SHORT())"))),
        "a value of primary-key column id computed by an expression (tandem would have to evaluate it again)"
    );
}

#[test]
fn an_upsert_locks_every_row_it_may_collide_with() {
    let mut t = table();
    t.meta.columns.truncate(3);
    t.meta.columns[2].type_oid = DATETIME;
    let w = write(
        "INSERT INTO accounts (id, email, name) VALUES (?, ?, ?), (2, NULL, 'x') ON DUPLICATE KEY UPDATE name = VALUES(name)",
    );
    assert_eq!(
        refusal(t.insert_plan(&w)),
        "an upsert or REPLACE whose value of unique-key column email is not a literal or a parameter"
    );
    let w = write("REPLACE INTO accounts (id, email, name) VALUES (?, ?, ?), (2, 'b', 'x')");
    let select = "SELECT `id`, CAST(`email` AS BINARY), `name` FROM `shop`.`accounts` WHERE";
    assert_eq!(
        t.insert_plan(&w).unwrap(),
        InsertPlan {
            before: Some(capture(
                &format!(
                    "{select} (`id`) IN ((?), (2)) OR (`email`) IN ((?), ('b')) LIMIT 18446744073709551615 FOR UPDATE"
                ),
                &[0, 1]
            )),
            after: Some(capture(
                &format!("{select} (`id`) IN ((?), (2)) LIMIT 18446744073709551615"),
                &[0]
            )),
            generated: 0,
        }
    );
    // An upsert reads every row it may have collided with again after it.
    let w = write(
        "INSERT INTO accounts (id, email, name) VALUES (?, ?, ?), (2, 'b', 'x') ON DUPLICATE KEY UPDATE name = VALUES(name)",
    );
    let collisions = format!("{select} (`id`) IN ((?), (2)) OR (`email`) IN ((?), ('b'))");
    assert_eq!(
        t.insert_plan(&w).unwrap(),
        InsertPlan {
            before: Some(capture(
                &format!("{collisions} LIMIT 18446744073709551615 FOR UPDATE"),
                &[0, 1]
            )),
            after: Some(capture(
                &format!("{collisions} LIMIT 18446744073709551615 FOR UPDATE"),
                &[0, 1]
            )),
            generated: 0,
        }
    );
    let w = write("INSERT IGNORE INTO accounts (id, email) VALUES (1, UPPER(?))");
    assert_eq!(
        t.insert_plan(&w).unwrap().before,
        Some(capture(
            &format!("{select} (`id`) IN ((1)) LIMIT 18446744073709551615 FOR UPDATE"),
            &[]
        ))
    );
}

#[test]
fn a_locking_read_locks_the_keys_it_reads() {
    let read = match analyze(
        &Mysql,
        "SELECT * FROM accounts a WHERE a.email = ? LOCK IN SHARE MODE",
    )
    .unwrap()
    .remove(0)
    {
        Analysis::LockingRead(Some(read)) => read,
        other => panic!("{other:?}"),
    };
    let mut t = table();
    t.meta.pk = vec![0, 1];
    assert_eq!(
        t.meta.locked_keys(&Mysql, &read).unwrap(),
        capture(
            "SELECT `a`.`id`, CAST(`a`.`email` AS BINARY) FROM `accounts` AS `a` WHERE a.email = ? LIMIT 18446744073709551615 LOCK IN SHARE MODE",
            &[0]
        )
    );
}

#[test]
fn literals_keep_their_escapes_in_what_tandem_sends_back() {
    let w =
        write(r"DELETE FROM accounts WHERE email <> 'a\\b' AND name <> 'it\'s' AND name <> 'o''k'");
    let sel = w.selection.clone().unwrap();
    assert_eq!(
        sel,
        r"email <> 'a\\b' AND name <> 'it\'s' AND name <> 'o''k'"
    );
}

#[test]
fn rows_chosen_by_a_random_function_or_a_variable_are_refused() {
    let t = table();
    for sql in [
        "UPDATE accounts SET balance = 0 WHERE RAND() < 0.5",
        "DELETE FROM accounts WHERE id = 1 OR (@n := @n + 1) < 3",
        "UPDATE accounts SET balance = 0 WHERE id > 0 ORDER BY rand(), id LIMIT 1",
        "DELETE FROM accounts WHERE id = NEXTVAL(s)",
        "UPDATE accounts SET balance = 0 WHERE `rand` () < 0.5",
        "UPDATE accounts SET balance = 0 WHERE name = 'it\\'s' AND RAND /* a */ () < 0.5",
        "DELETE FROM accounts WHERE id = `UUID_SHORT`() % 2",
        "DELETE FROM accounts WHERE id = ROW_COUNT()",
        // sql_mode ORACLE's sequence reads.
        "DELETE FROM accounts WHERE id < sq.nextval ORDER BY id DESC LIMIT 1",
        "UPDATE accounts SET balance = 0 WHERE id < `sq` . NEXTVAL",
    ] {
        let refused = t.before_image(&write(sql)).unwrap_err().to_string();
        assert!(
            refused.contains("differs from one evaluation"),
            "{sql}: {refused}"
        );
    }
    assert!(
        t.before_image(&write("UPDATE accounts SET balance = RAND() WHERE id = 1"))
            .is_ok()
    );
    assert!(
        t.before_image(&write(
            "UPDATE accounts SET balance = 0 WHERE name = 'RAND()' OR operand(id) = 1"
        ))
        .is_ok()
    );
}

#[test]
fn rows_a_limit_chooses_by_the_clock_are_refused() {
    let t = table();
    for sql in [
        "UPDATE accounts SET balance = 0 WHERE id <= MOD(UNIX_TIMESTAMP(SYSDATE(6)), 4) ORDER BY id DESC LIMIT 1",
        "DELETE FROM accounts WHERE name <= NOW(6) ORDER BY id LIMIT 1",
        "DELETE FROM accounts WHERE name <= CURRENT_TIMESTAMP ORDER BY id LIMIT 1",
        "UPDATE accounts SET balance = 0 WHERE id > 0 ORDER BY id, now() LIMIT 2",
    ] {
        let refused = t.before_image(&write(sql)).unwrap_err().to_string();
        assert!(refused.contains("chosen by the time"), "{sql}: {refused}");
    }
    // Without a LIMIT, a write that takes more rows than it read is caught; the value
    // it writes is read back after.
    for sql in [
        "DELETE FROM accounts WHERE name <= NOW()",
        "UPDATE accounts SET name = NOW() WHERE id > 0 ORDER BY id LIMIT 1",
    ] {
        assert!(t.before_image(&write(sql)).is_ok(), "{sql}");
    }
}

#[test]
fn keys_a_collation_compares_are_weighed_without_trailing_spaces() {
    let mut c = catalog();
    // A key of the case-insensitive e-mail and the binary-collated name.
    c.unique_keys = vec![
        row(&[Some("PRIMARY"), Some("Email"), None]),
        row(&[Some("PRIMARY"), Some("name"), None]),
    ];
    let t = MysqlTable::from_catalog(&TableRef::default(), &c).unwrap();
    let collations: Vec<_> = t.meta.key_collations().into_iter().flatten().collect();
    assert_eq!(
        collations
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["utf8mb4_general_ci", "latin1_bin"]
    );
    let general = "WEIGHT_STRING(TRIM(TRAILING CHAR(32 USING utf8mb4) FROM CONVERT(? USING utf8mb4)) COLLATE utf8mb4_general_ci)";
    let sql = types::weights_sql(&collations, 3);
    assert!(
        sql.starts_with(
            "SELECT WEIGHT_STRING(CHAR(32 USING utf8mb4) COLLATE utf8mb4_general_ci), \
             WEIGHT_STRING(CONCAT(CHAR(97 USING utf8mb4), CHAR(32 USING utf8mb4)) COLLATE utf8mb4_general_ci), \
             WEIGHT_STRING(CHAR(97 USING utf8mb4) COLLATE utf8mb4_general_ci), \
             WEIGHT_STRING(CHAR(32 USING latin1) COLLATE latin1_bin)"
        ),
        "{sql}"
    );
    assert!(
        sql.ends_with(&format!(
            "{general}, WEIGHT_STRING(TRIM(TRAILING CHAR(32 USING latin1) FROM CONVERT(? USING latin1)) COLLATE latin1_bin), {general}"
        )),
        "{sql}"
    );
    assert_eq!(
        table().meta.key_collations(),
        [None],
        "an integer key is not"
    );
    // Names go into SQL as they are: anything but a name is a catalog error.
    let mut c = catalog();
    c.columns[1][5] = Some("x) OR (1".into());
    assert!(matches!(
        MysqlTable::from_catalog(&TableRef::default(), &c),
        Err(Error::Catalog { .. })
    ));
}

#[test]
fn trailing_space_weights_go_where_a_collation_appends_them() {
    // utf8mb4_unicode_ci (MariaDB): ' ' 0209, 'a' 0E33, 'a ' 0E33 0209.
    let pad = types::pad_weight(&[0x02, 0x09], &[0x0e, 0x33, 0x02, 0x09], &[0x0e, 0x33]);
    assert_eq!(pad.as_deref(), Some(&[0x02, 0x09][..]));
    // 'a' + NO-BREAK SPACE weighs 0E33 0209 there: the same key as 'a'.
    assert_eq!(
        types::lock_key_part(vec![0x0e, 0x33, 0x02, 0x09, 0x02, 0x09], pad.as_deref()),
        [0x0e, 0x33]
    );
    // utf8mb4_uca1400_as_cs: levels one after the other, so a space is not appended.
    let interleaved = types::pad_weight(
        &[0x02, 0x09, 0x00, 0x20, 0x00, 0x02],
        &[
            0x20, 0x75, 0x02, 0x09, 0x00, 0x20, 0x00, 0x20, 0x00, 0x02, 0x00, 0x02,
        ],
        &[0x20, 0x75, 0x00, 0x20, 0x00, 0x02],
    );
    assert_eq!(interleaved, None);
    assert_eq!(types::lock_key_part(vec![1, 2, 9], None), [1, 2, 9]);
}
