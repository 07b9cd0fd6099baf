//! SSLRequest is answered: TLS to the client with a configured certificate, `N` without
//! one; GSSENCRequest is refused cleanly.

use std::sync::Arc;
use tandem_proxy::config::TlsConfig;
use tandem_tests::harness::{Tandem, TestDb};
use tandem_tests::raw_pg::{RawPg, startup_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

async fn answer(stream: &mut TcpStream, request: &[u8]) -> u8 {
    stream.write_all(request).await.unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.unwrap();
    byte[0]
}

#[tokio::test]
async fn tls_with_a_configured_certificate() {
    let db = TestDb::create("tls").await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("tandem-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tandem = Tandem::start_with(|c| {
        c.postgres[0].tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        })
    })
    .await;

    let mut tcp = TcpStream::connect(tandem.pg).await.unwrap();
    assert_eq!(answer(&mut tcp, &SSL_REQUEST).await, b'S');
    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let (client, connection) = tandem
        .config(&db.name)
        .connect_raw(tls, tokio_postgres::NoTls)
        .await
        .expect("startup over TLS");
    tokio::spawn(connection);
    let payload = "x".repeat(100_000);
    let echoed: String = client
        .query_one("SELECT $1::text", &[&payload])
        .await
        .unwrap()
        .get(0);
    assert_eq!(echoed, payload);
    drop(client);

    // Bytes sent in the clear behind SSLRequest are refused, not read as TLS payload.
    let mut tcp = TcpStream::connect(tandem.pg).await.unwrap();
    let mut stuffed = SSL_REQUEST.to_vec();
    stuffed.extend_from_slice(&startup_packet(&[("user", "postgres")]));
    tcp.write_all(&stuffed).await.unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;
    assert_eq!(rest.first(), Some(&b'S'));
    assert_eq!(rest.len(), 1, "nothing but the answer before the close");

    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_a_certificate_ssl_and_gss_are_refused_and_plain_text_continues() {
    let db = TestDb::create("notls").await;
    let tandem = Tandem::start().await;
    let mut client = RawPg::connect(tandem.pg).await;
    assert_eq!(answer(&mut client.stream, &GSSENC_REQUEST).await, b'N');
    assert_eq!(answer(&mut client.stream, &SSL_REQUEST).await, b'N');
    client
        .send(&startup_packet(&[
            ("user", "postgres"),
            ("database", &db.name),
        ]))
        .await;
    let msgs = client.recv_until(b'Z').await;
    assert!(msgs.iter().any(|m| m.tag == b'K'));
    client.query("SELECT 1").await;
    let msgs = client.recv_until(b'Z').await;
    assert!(msgs.iter().any(|m| m.tag == b'D'));
    drop(client);
    tandem.assert_no_sessions_left().await;
    tandem.shutdown().await;
}
