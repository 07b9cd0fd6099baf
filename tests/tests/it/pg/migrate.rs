//! `tandem migrate` creates undo_log in Seata's shape, and applying it again is harmless;
//! an undo_log of another shape fails it, with what is wrong.

use tandem_tests::harness::TestDb;

#[tokio::test]
async fn migrate_creates_undo_log_in_seatas_shape_idempotently() {
    let db = TestDb::create("migrate").await;
    let upstream = tandem_tests::env::pg_upstream();
    let url = format!("postgres://postgres@{upstream}/{}?sslmode=disable", db.name);
    for _ in 0..2 {
        let applied = tandem_proxy::migrate::apply(&url).await.expect("migrate");
        assert_eq!(applied.migrations, vec!["0001_undo_log"]);
        assert_eq!(applied.schema, "schema public");
    }
    let client = db.direct().await;
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_name = 'undo_log' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "branch_id",
            "xid",
            "context",
            "rollback_info",
            "log_status",
            "log_created",
            "log_modified"
        ]
    );
    assert_eq!(columns[4].1, "bytea");
    // Unique (xid, branch_id): a second row for the same branch is refused.
    client
        .execute(
            "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status) VALUES (1, 'x', 'c', '\\x00', 0)",
            &[],
        )
        .await
        .unwrap();
    let err = client
        .execute(
            "INSERT INTO undo_log (branch_id, xid, context, rollback_info, log_status) VALUES (1, 'x', 'c', '\\x01', 1)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );

    let err = tandem_proxy::migrate::apply("redis://127.0.0.1:6379")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not a postgres:// or mysql:// URL")
    );
}

/// An undo_log made by hand without the unique (xid, branch_id), on which a rollback
/// racing a late phase-1 commit relies, or with a rollback_info too small for a whole
/// undo record (MySQL's BLOB, which a non-strict session truncates), fails the
/// migration, naming where it is and what it lacks. Several migrations of one
/// PostgreSQL database at once all succeed; a URL without a database is refused.
#[tokio::test]
async fn migrate_refuses_an_undo_log_of_another_shape() {
    use mysql_async::prelude::Queryable;
    let db = TestDb::create("migrate_shape").await;
    let upstream = tandem_tests::env::pg_upstream();
    let url = format!("postgres://postgres@{upstream}/{}?sslmode=disable", db.name);
    let client = db.direct().await;
    client
        .batch_execute(
            "CREATE TABLE undo_log (id bigserial PRIMARY KEY, branch_id bigint NOT NULL,
               xid varchar(128) NOT NULL, context varchar(128) NOT NULL, rollback_info bytea NOT NULL,
               log_status integer NOT NULL, log_created timestamptz NOT NULL DEFAULT now(),
               log_modified timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    let err = tandem_proxy::migrate::apply(&url).await.unwrap_err();
    assert!(
        err.to_string().contains(
            "the undo_log in schema public is not of tandem's shape: it has no unique key on exactly (xid, branch_id)"
        ),
        "{err}"
    );
    // A database that does not exist is named as the server names it.
    let missing = format!(
        "postgres://postgres@{upstream}/{}_missing?sslmode=disable",
        db.name
    );
    let err = tandem_proxy::migrate::apply(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains("_missing\" does not exist"),
        "{err}"
    );
    client.batch_execute("DROP TABLE undo_log").await.unwrap();
    // One further along the search_path is the one used: no second one is made ahead
    // of it, in a schema named after the role.
    tandem_proxy::migrate::apply(&url).await.expect("migrate");
    client
        .batch_execute("CREATE SCHEMA postgres")
        .await
        .unwrap();
    let applied = tandem_proxy::migrate::apply(&url).await.expect("migrate");
    assert_eq!(applied.schema, "schema public");
    let shadow: Option<String> = client
        .query_one("SELECT to_regclass('postgres.undo_log')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shadow, None, "no second undo_log");
    client
        .batch_execute("DROP SCHEMA postgres; DROP TABLE undo_log")
        .await
        .unwrap();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { tandem_proxy::migrate::apply(&url).await })
        })
        .collect();
    for run in runs {
        run.await
            .unwrap()
            .expect("concurrent migrations all succeed");
    }
    let err = tandem_proxy::migrate::apply(&format!("postgres://postgres:pw@{upstream}"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no database named"), "{err}");
    assert!(!err.to_string().contains("pw"), "{err}");

    let my = tandem_tests::mysql::MyTestDb::create("migrate_shape").await;
    let mut direct = my.direct().await;
    direct
        .query_drop(
            "CREATE TABLE undo_log (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
               branch_id BIGINT NOT NULL, xid VARCHAR(128) NOT NULL, context VARCHAR(128) NOT NULL,
               rollback_info BLOB NOT NULL, log_status INT NOT NULL,
               log_created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
               log_modified DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
               UNIQUE KEY ux_undo_log (xid, branch_id))",
        )
        .await
        .unwrap();
    let admin = tandem_tests::mysql::admin_opts();
    let password = admin.pass().map(|p| format!(":{p}")).unwrap_or_default();
    let my_url = format!(
        "mysql://{}{password}@{}/{}",
        admin.user().unwrap_or("root"),
        tandem_tests::mysql::upstream(),
        my.name
    );
    let err = tandem_proxy::migrate::apply(&my_url).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("its column rollback_info is blob, not longblob"),
        "{err}"
    );
    direct.query_drop("DROP TABLE undo_log").await.unwrap();
    let applied = tandem_proxy::migrate::apply(&my_url)
        .await
        .expect("migrate");
    assert_eq!(applied.schema, format!("database {}", my.name));
    // The undo row must commit and roll back with its write, and (xid, branch_id) be
    // unique whole, not by a prefix of xid.
    direct
        .query_drop("ALTER TABLE undo_log ENGINE=MyISAM")
        .await
        .unwrap();
    let err = tandem_proxy::migrate::apply(&my_url).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("undo_log uses engine MyISAM, which has no transactions"),
        "{err}"
    );
    direct
        .query_drop(
            "ALTER TABLE undo_log ENGINE=InnoDB, DROP KEY ux_undo_log, ADD UNIQUE KEY ux_prefix (xid(8), branch_id)",
        )
        .await
        .unwrap();
    let err = tandem_proxy::migrate::apply(&my_url).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no unique key on exactly (xid, branch_id)"),
        "{err}"
    );
}
