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

#[tokio::test]
async fn tokio_postgres_receives_notifications_while_idle() {
    use futures::StreamExt;
    let db = TestDb::create("notify_tp").await;
    let tandem = Tandem::start().await;
    let (client, mut connection) = tandem
        .config(&db.name)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx
                    .send((n.channel().to_owned(), n.payload().to_owned()))
                    .await;
            }
        }
    });
    client.batch_execute("LISTEN orders").await.unwrap();
    let direct = db.direct().await;
    direct
        .batch_execute("NOTIFY orders, 'order 17 paid'")
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("notification within 10 s")
        .expect("driver still running");
    assert_eq!(got, ("orders".to_owned(), "order 17 paid".to_owned()));
    drop(client);
    let _ = driver.await;
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
