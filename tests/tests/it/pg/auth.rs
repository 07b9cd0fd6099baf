//! Authentication passes through: tandem never needs the user's password.
//!
//! `tests/run.sh` adds pg_hba.conf lines that make `tandem_md5` use md5 and
//! `tandem_scram` use scram-sha-256 over TCP; the test creates those roles.

use tandem_tests::harness::{Tandem, TestDb, connect};
use tokio_postgres::error::SqlState;

async fn ensure_role(admin: &tokio_postgres::Client, role: &str, encryption: &str, password: &str) {
    admin
        .batch_execute(&format!(
            "SET password_encryption = '{encryption}';
             DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} LOGIN;
               END IF;
             END $$;
             ALTER ROLE {role} PASSWORD '{password}';"
        ))
        .await
        .unwrap();
}

async fn hba_method(admin: &tokio_postgres::Client, role: &str) -> Option<String> {
    admin
        .query_opt(
            "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND $1 = ANY(user_name) LIMIT 1",
            &[&role],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn md5_and_scram_pass_through_and_wrong_passwords_fail() {
    let db = TestDb::create("auth").await;
    let admin = db.direct().await;
    for (role, method) in [("tandem_md5", "md5"), ("tandem_scram", "scram-sha-256")] {
        assert_eq!(
            hba_method(&admin, role).await.as_deref(),
            Some(method),
            "pg_hba.conf needs `host all {role} 127.0.0.1/32 {method}` before the trust lines: \
             run `bash tests/run.sh`, which sets it up"
        );
    }
    ensure_role(&admin, "tandem_md5", "md5", "md5 secret").await;
    ensure_role(&admin, "tandem_scram", "scram-sha-256", "scram sécret").await;
    admin
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO tandem_md5, tandem_scram",
            db.name
        ))
        .await
        .unwrap();

    let tandem = Tandem::start().await;
    for (role, password) in [
        ("tandem_md5", "md5 secret"),
        ("tandem_scram", "scram sécret"),
    ] {
        let mut config = tandem.config(&db.name);
        config.user(role).password(password);
        let client = connect(config.clone()).await;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, role);

        config.password("wrong");
        let err = config
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong password is refused");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{role}: {err}"
        );
    }
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}

/// While a client authenticates, only a password (or SASL) message of at most 65,535
/// bytes may come, as PostgreSQL allows: anything else is refused on its header, before
/// tandem reads (and holds in memory) a body the client has not even sent yet.
#[tokio::test]
async fn an_authenticating_client_is_refused_on_a_messages_header_past_postgres_bounds() {
    use tandem_tests::raw_pg::{RawPg, startup_packet};
    let db = TestDb::create("auth_bounds").await;
    let admin = db.direct().await;
    ensure_role(&admin, "tandem_md5", "md5", "md5 secret").await;
    admin
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE {} TO tandem_md5",
            db.name
        ))
        .await
        .unwrap();
    let tandem = Tandem::start().await;
    for (tag, declared, sqlstate) in [
        (b'p', 300i32 << 20, "54000"),
        (b'p', 65_540, "54000"),
        // The bound counts the length word: 65,536 is one byte over it.
        (b'p', 65_536, "54000"),
        (b'Q', 1_000, "08P01"),
        (b'y', 400 << 20, "08P01"),
    ] {
        let mut raw = RawPg::connect(tandem.pg).await;
        raw.send(&startup_packet(&[
            ("user", "tandem_md5"),
            ("database", &db.name),
        ]))
        .await;
        let asked = raw.recv().await.expect("an authentication request");
        assert_eq!(asked.tag, b'R', "{asked:?}");
        let mut header = vec![tag];
        header.extend_from_slice(&declared.to_be_bytes());
        header.extend_from_slice(b"the rest never comes");
        raw.send(&header).await;
        let replies = raw.recv_to_close().await;
        let fatal = replies.iter().find(|m| m.tag == b'E');
        assert_eq!(
            fatal.and_then(|m| m.sqlstate()).as_deref(),
            Some(sqlstate),
            "{} of {declared} bytes: {replies:?}",
            tag as char
        );
    }
    // Past authentication, a type that does not exist is refused on its header too.
    let mut raw = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    raw.send(&[b'y', 0x18, 0, 0, 0, b'x']).await;
    let replies = raw.recv_to_close().await;
    let fatal = replies.iter().find(|m| m.tag == b'E');
    assert_eq!(
        fatal.and_then(|m| m.sqlstate()).as_deref(),
        Some("08P01"),
        "{replies:?}"
    );
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
