//! NotificationResponse and NoticeResponse reach the client, also while it is idle.

use tandem_tests::expect_msg;
use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::raw_pg::RawPg;

#[tokio::test]
async fn notifications_reach_an_idle_listener() {
    let db = TestDb::create("notify").await;
    let tandem = Tandem::start().await;
    let mut listener = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    listener.query("LISTEN tandem_channel").await;
    listener.recv_until(b'Z').await;

    // The listener sends nothing more: the notification must arrive on its own.
    let direct = db.direct().await;
    for i in 0..3 {
        direct
            .batch_execute(&format!("NOTIFY tandem_channel, 'payload {i} ✓'"))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let msg = expect_msg!(listener, b'A');
        // Body: the notifying backend's pid (4 bytes), then channel and payload as C strings.
        let strings: Vec<String> = msg.body[4..]
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        assert_eq!(strings[0], "tandem_channel");
        assert_eq!(strings[1], format!("payload {i} ✓"));
    }
}

#[tokio::test]
async fn notices_are_relayed_in_order_with_the_result() {
    let db = TestDb::create("notice").await;
    let tandem = Tandem::start().await;
    let mut client = RawPg::startup(tandem.pg, "postgres", &db.name).await;
    client
        .query("DO $$ BEGIN RAISE NOTICE 'first'; RAISE WARNING 'second'; END $$")
        .await;
    let msgs = client.recv_until(b'Z').await;
    let notices: Vec<String> = msgs
        .iter()
        .filter(|m| m.tag == b'N')
        .filter_map(|m| m.field(b'M'))
        .collect();
    assert_eq!(notices, vec!["first".to_owned(), "second".to_owned()]);
    assert!(msgs.iter().any(|m| m.tag == b'C'));
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
