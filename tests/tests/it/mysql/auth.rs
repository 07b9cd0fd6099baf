//! Authentication passes through: mysql_native_password with a password, the wrong
//! password answered 1045 by the server, an unknown database, and too many clients.

use mysql_async::prelude::*;
use tandem_tests::harness::eventually;
use tandem_tests::mysql::{self as my, MyTestDb, admin_opts};

/// Creates (again) a user with a password on the test server.
pub async fn create_user(user: &str, password: &str, db: &str) {
    let mut admin = mysql_async::Conn::new(admin_opts()).await.unwrap();
    admin
        .query_drop(format!(
            "DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost', '{user}'@'127.0.0.1'"
        ))
        .await
        .unwrap();
    for host in ["%", "localhost", "127.0.0.1"] {
        admin
            .query_drop(format!(
                "CREATE USER '{user}'@'{host}' IDENTIFIED VIA mysql_native_password USING PASSWORD('{password}')"
            ))
            .await
            .unwrap();
        admin
            .query_drop(format!("GRANT ALL ON {db}.* TO '{user}'@'{host}'"))
            .await
            .unwrap();
    }
    admin.disconnect().await.unwrap();
}

#[tokio::test]
async fn native_password_right_and_wrong() {
    let db = MyTestDb::create("auth").await;
    let user = format!("tandem_pw_{:06x}", rand::random::<u32>() & 0xff_ffff);
    create_user(&user, "s3cret!", &db.name).await;
    let tandem = my::start().await;

    let opts = my::opts(&tandem, &db.name)
        .user(Some(user.clone()))
        .pass(Some("s3cret!".to_owned()));
    let mut conn = mysql_async::Conn::new(opts).await.expect("right password");
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(who.unwrap().starts_with(&user));
    conn.disconnect().await.unwrap();

    let opts = my::opts(&tandem, &db.name)
        .user(Some(user.clone()))
        .pass(Some("wrong".to_owned()));
    let err = mysql_async::Conn::new(opts).await.unwrap_err();
    match err {
        mysql_async::Error::Server(e) => {
            assert_eq!(e.code, 1045, "{e}");
            assert_eq!(e.state, "28000");
        }
        other => panic!("expected error 1045, got {other}"),
    }

    let opts = my::opts(&tandem, "no_such_database_here");
    let err = mysql_async::Conn::new(opts).await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1049),
        "{err}"
    );
    // Counted once the refusal is written: it can trail the client's error.
    eventually("both refusals are counted", || async {
        tandem.metric("tandem_mysql_auth_refused_total").await == 2.0
    })
    .await;

    let mut admin = mysql_async::Conn::new(admin_opts()).await.unwrap();
    admin
        .query_drop(format!(
            "DROP USER IF EXISTS '{user}'@'%', '{user}'@'localhost', '{user}'@'127.0.0.1'"
        ))
        .await
        .unwrap();
    admin.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}

#[tokio::test]
async fn clients_over_the_limit_get_error_1040() {
    let db = MyTestDb::create("limit").await;
    let tandem = my::start_with(|c| c.mysql[0].max_client_connections = 1).await;
    let mut first = my::connect(&tandem, &db.name).await;
    let err = mysql_async::Conn::new(my::opts(&tandem, &db.name))
        .await
        .unwrap_err();
    match err {
        // Sent before the greeting, the ERR has no SQLSTATE (the client has not said
        // it speaks protocol 4.1 yet), as the server's own 1040 has none.
        mysql_async::Error::Server(e) => {
            assert_eq!(e.code, 1040, "{e}");
            assert!(e.message.contains("too many client connections"), "{e}");
        }
        other => panic!("expected error 1040, got {other}"),
    }
    let one: Option<i32> = first.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    first.disconnect().await.unwrap();
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}
