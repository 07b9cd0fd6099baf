//! TLS between the client and tandem: offered only with a certificate, a password user
//! over it, and the SSLRequest refusals.

use mysql_async::SslOpts;
use mysql_async::prelude::*;
use tandem_proxy::config::TlsConfig;
use tandem_tests::mysql::{self as my, MyTestDb, RawMy, err_code, packet};

const CLIENT_SSL: u32 = 0x0800;

fn greeting_capabilities(greeting: &[u8]) -> u32 {
    let version_end = greeting.iter().position(|&b| b == 0).unwrap();
    let at = version_end + 1 + 4 + 8 + 1;
    let low = u16::from_le_bytes([greeting[at], greeting[at + 1]]);
    let high = u16::from_le_bytes([greeting[at + 5], greeting[at + 6]]);
    u32::from(low) | u32::from(high) << 16
}

/// An SSLRequest: the 32-byte head of a HandshakeResponse41 with CLIENT_SSL.
fn ssl_request() -> Vec<u8> {
    let caps: u32 = 0x0200 | 0x8000 | 0x0008_0000 | CLIENT_SSL;
    let mut p = caps.to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 23]);
    packet(1, &p)
}

#[tokio::test]
async fn tls_with_a_configured_certificate() {
    let db = MyTestDb::create("tls").await;
    let user = format!("tandem_tls_{:06x}", rand::random::<u32>() & 0xff_ffff);
    super::auth::create_user(&user, "over-tls", &db.name).await;
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = std::env::temp_dir().join(format!("tandem-mytls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tandem = my::start_with(|c| {
        c.mysql[0].tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        })
    })
    .await;

    let mut raw = RawMy::connect(my::addr(&tandem)).await;
    let (_, greeting) = raw.recv().await.unwrap();
    assert_ne!(greeting_capabilities(&greeting) & CLIENT_SSL, 0);
    // Behind an SSLRequest the client speaks TLS at once (MySQL answers nothing to
    // it), so what follows goes to the TLS handshake: a command sent in the clear
    // there fails the handshake and the connection closes, with nothing read as SQL.
    let mut stuffed = ssl_request();
    stuffed.extend_from_slice(&packet(2, b"\x03SELECT 1"));
    raw.send(&stuffed).await;
    let packets = raw.recv_to_close().await;
    assert!(
        packets.iter().all(|(_, p)| err_code(p).is_none()),
        "no MySQL packet in the clear after SSLRequest: {packets:?}"
    );

    let ssl = SslOpts::default()
        .with_root_certs(vec![cert.clone().into()])
        .with_danger_skip_domain_validation(true);
    let opts = my::opts(&tandem, &db.name)
        .user(Some(user.clone()))
        .pass(Some("over-tls".to_owned()))
        .ssl_opts(Some(ssl));
    let mut conn = mysql_async::Conn::new(opts).await.expect("TLS connection");
    let payload = "y".repeat(200_000);
    let echoed: Option<String> = conn
        .exec_first("SELECT ?", (payload.as_str(),))
        .await
        .unwrap();
    assert_eq!(echoed.as_deref(), Some(payload.as_str()));
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").await.unwrap();
    assert!(who.unwrap().starts_with(&user));
    conn.disconnect().await.unwrap();

    let wrong = my::opts(&tandem, &db.name)
        .user(Some(user.clone()))
        .pass(Some("nope".to_owned()))
        .ssl_opts(Some(
            SslOpts::default()
                .with_root_certs(vec![cert.clone().into()])
                .with_danger_skip_domain_validation(true),
        ));
    let err = mysql_async::Conn::new(wrong).await.unwrap_err();
    assert!(
        matches!(err, mysql_async::Error::Server(ref e) if e.code == 1045),
        "{err}"
    );
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_a_certificate_tls_is_not_offered_and_an_ssl_request_is_refused() {
    let tandem = my::start().await;
    let mut raw = RawMy::connect(my::addr(&tandem)).await;
    let (_, greeting) = raw.recv().await.unwrap();
    assert_eq!(greeting_capabilities(&greeting) & CLIENT_SSL, 0);
    raw.send(&ssl_request()).await;
    let packets = raw.recv_to_close().await;
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(packets[0].0, 2);
    assert_eq!(err_code(&packets[0].1), Some(1235));
    my::assert_no_sessions_left(&tandem).await;
    tandem.shutdown().await;
}
