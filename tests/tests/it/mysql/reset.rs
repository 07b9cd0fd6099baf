//! COM_RESET_CONNECTION and COM_CHANGE_USER through tandem.

use mysql_async::ChangeUserOpts;
use mysql_async::prelude::*;
use tandem_tests::mysql::{self as my, MyTestDb};

#[tokio::test]
async fn reset_connection_and_change_user() {
    let db = MyTestDb::create("reset").await;
    let user = format!("tandem_cu_{:06x}", rand::random::<u32>() & 0xff_ffff);
    super::auth::create_user(&user, "pw2", &db.name).await;
    let tandem = my::start().await;
    let mut conn = my::connect(&tandem, &db.name).await;
    conn.query_drop("SET @v = 42").await.unwrap();
    conn.query_drop("CREATE TEMPORARY TABLE tmp (x INT)")
        .await
        .unwrap();
    conn.reset().await.unwrap();
    let v: Option<Option<i64>> = conn.query_first("SELECT @v").await.unwrap();
    assert_eq!(v, Some(None), "COM_RESET_CONNECTION cleared the session");
    assert!(conn.query_drop("SELECT * FROM tmp").await.is_err());

    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some(user.clone()))
            .with_pass(Some("pw2".to_owned()))
            .with_db_name(Some(db.name.clone())),
    )
    .await
    .unwrap();
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(who.unwrap().starts_with(&user));
    // Prepared statements work after the change.
    let n: Option<i64> = conn.exec_first("SELECT ? * 2", (21,)).await.unwrap();
    assert_eq!(n, Some(42));

    let wrong = conn
        .change_user(
            ChangeUserOpts::default()
                .with_user(Some(user.clone()))
                .with_pass(Some("nope".to_owned())),
        )
        .await;
    assert!(wrong.is_err(), "a wrong password fails the change of user");
    drop(conn);
    let mut admin = mysql_async::Conn::new(my::admin_opts()).await.unwrap();
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
