//! `tandem migrate` creates undo_log in Seata's shape, and applying it again is harmless.

use tandem_tests::harness::TestDb;

#[tokio::test]
async fn migrate_creates_undo_log_in_seatas_shape_idempotently() {
    let db = TestDb::create("migrate").await;
    let upstream = tandem_tests::env::pg_upstream();
    let url = format!("postgres://postgres@{upstream}/{}?sslmode=disable", db.name);
    for _ in 0..2 {
        let applied = tandem_proxy::migrate::apply(&url).await.expect("migrate");
        assert_eq!(applied, vec!["0001_undo_log"]);
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
