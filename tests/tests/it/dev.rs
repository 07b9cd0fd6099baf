//! `tandem dev`: an embedded lockserver plus the proxies, in one process, one signal.

use tandem_proxy::config::Config;
use tandem_proxy::dev::{self, LockserverListeners};
use tandem_proxy::server::Listeners;
use tandem_tests::harness::{TestDb, connect, http_get};

#[tokio::test]
async fn dev_serves_the_proxy_and_the_lockserver_and_stops_both() {
    let db = TestDb::create("dev").await;
    let mut config = Config::default();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.postgres[0].listen = "127.0.0.1:0".parse().unwrap();
    config.postgres[0].upstream = tandem_tests::env::pg_upstream();
    config.mysql[0].listen = "127.0.0.1:0".parse().unwrap();
    config.mysql[0].upstream = tandem_tests::mysql::upstream();
    let store = std::env::temp_dir().join(format!("tandem-dev-{:08x}", rand::random::<u32>()));
    let lock_config = tandem_lockserver::Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        store: tandem_lockserver::config::StoreConfig::Embedded {
            path: store.clone(),
            compact_bytes: 64 << 20,
        },
        ..Default::default()
    };
    let listeners = Listeners::bind(&config).await.unwrap();
    let lock_listeners = LockserverListeners::bind(&lock_config).await.unwrap();
    let pg = listeners.postgres_addrs()[0];
    let my = listeners.mysql_addrs()[0];
    let http = lock_listeners.http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(dev::run(
        listeners,
        config,
        lock_listeners,
        lock_config,
        async {
            let _ = stopped.await;
        },
    ));

    let mut client_config = tokio_postgres::Config::new();
    client_config
        .host(pg.ip().to_string())
        .port(pg.port())
        .user("postgres")
        .dbname(&db.name);
    let client = connect(client_config).await;
    let v: String = client
        .query_one("SELECT 'dev'::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "dev");
    let listing = http_get(http, "/v1/transactions").await;
    assert!(
        listing.starts_with("HTTP/1.0 200") || listing.starts_with("HTTP/1.1 200"),
        "{listing}"
    );
    assert!(listing.contains("\"transactions\""), "{listing}");
    drop(client);

    let mut my_conn = mysql_async::Conn::new(tandem_tests::mysql::opts_at(my, None))
        .await
        .expect("connect through the dev MySQL front end");
    let v: Option<String> =
        mysql_async::prelude::Queryable::query_first(&mut my_conn, "SELECT 'dev'")
            .await
            .unwrap();
    assert_eq!(v.as_deref(), Some("dev"));
    my_conn.disconnect().await.unwrap();

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), running)
        .await
        .expect("dev stopped in time")
        .unwrap()
        .expect("dev ended cleanly");
    assert!(tokio::net::TcpStream::connect(pg).await.is_err());
    assert!(tokio::net::TcpStream::connect(my).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
    let _ = std::fs::remove_dir_all(store);
}
