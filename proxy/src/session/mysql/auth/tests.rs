//! The caching_sha2_password exchanges, against packets laid out as MySQL 8 sends them
//! (MySQL 8 is not on the test machine). The RSA key pair is made with the `openssl`
//! command, which also decrypts what tandem sent, so the test checks the exact bytes a
//! MySQL 8 server would decrypt.

use super::*;
use crate::wire::mysql::packet::Header;
use std::process::Command;

const NONCE: &[u8; 20] = b"0123456789abcdefghij";
const OK: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00";

/// Splits the packets written into `buf` into (seq, payload) pairs.
fn packets(buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = vec![];
    let mut at = 0;
    while let Some(h) = Header::peek(&buf[at..]) {
        out.push((h.seq, h.payload(&buf[at..]).to_vec()));
        at += h.wire_len();
    }
    assert_eq!(at, buf.len());
    out
}

fn caching_sha2(tls_client: bool) -> AuthExchange {
    AuthExchange::new(
        2,
        1,
        caching_sha2::PLUGIN.to_vec(),
        NONCE.to_vec(),
        tls_client,
    )
}

struct KeyPair {
    dir: std::path::PathBuf,
}

impl KeyPair {
    fn generate() -> KeyPair {
        let dir = std::env::temp_dir().join(format!("tandem-rsa-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("key.pem"))
            .arg("2048")
            .output()
            .expect("the openssl command is installed");
        assert!(status.status.success(), "{status:?}");
        let status = Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("pub.pem"))
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        KeyPair { dir }
    }

    fn public_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("pub.pem")).unwrap()
    }

    /// RSA-OAEP (SHA-1, as MySQL's server uses) decryption with the private key.
    fn decrypt(&self, data: &[u8]) -> Vec<u8> {
        std::fs::write(self.dir.join("enc.bin"), data).unwrap();
        let out = Command::new("openssl")
            .args([
                "pkeyutl",
                "-decrypt",
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-inkey",
            ])
            .arg(self.dir.join("key.pem"))
            .arg("-in")
            .arg(self.dir.join("enc.bin"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn full_authentication_over_client_tls_encrypts_the_clear_password() {
    let keys = KeyPair::generate();
    let mut x = caching_sha2(true);
    let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());

    // The client's HandshakeResponse came after its SSLRequest (seq 2); the server sees
    // it as seq 1.
    x.on_client_packet(2, b"response", &mut to_server).unwrap();
    assert_eq!(packets(&to_server), [(1, b"response".to_vec())]);
    to_server.clear();

    // The server has no cached hash: perform_full_authentication.
    let outcome = x
        .on_server_packet(2, b"\x01\x04", &mut to_client, &mut to_server)
        .unwrap();
    assert_eq!(outcome, AuthOutcome::Continue);
    assert_eq!(packets(&to_client), [(3, b"\x01\x04".to_vec())]);
    to_client.clear();

    // Over TLS the client sends its password in clear; tandem asks for the key instead.
    x.on_client_packet(4, b"s3cret\0", &mut to_server).unwrap();
    assert_eq!(packets(&to_server), [(3, vec![0x02])]);
    to_server.clear();

    let mut key_packet = vec![0x01];
    key_packet.extend(keys.public_pem());
    let outcome = x
        .on_server_packet(4, &key_packet, &mut to_client, &mut to_server)
        .unwrap();
    assert_eq!(outcome, AuthOutcome::Continue);
    assert!(to_client.is_empty(), "the key is tandem's business only");
    let sent = packets(&to_server);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 5);
    assert_eq!(sent[0].1.len(), 256, "one RSA-2048 block");
    let mixed = keys.decrypt(&sent[0].1);
    let password: Vec<u8> = mixed
        .iter()
        .zip(NONCE.iter().cycle())
        .map(|(m, n)| m ^ n)
        .collect();
    assert_eq!(password, b"s3cret\0");

    let outcome = x
        .on_server_packet(6, OK, &mut to_client, &mut to_server)
        .unwrap();
    assert!(matches!(outcome, AuthOutcome::Authenticated(s) if s.bits() == 2));
    assert_eq!(packets(&to_client), [(5, OK.to_vec())]);
}

#[test]
fn plain_clients_do_their_own_rsa_exchange_through_tandem() {
    let mut x = caching_sha2(false);
    let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
    x.on_client_packet(2, b"response", &mut to_server).unwrap();
    x.on_server_packet(2, b"\x01\x04", &mut to_client, &mut to_server)
        .unwrap();
    x.on_client_packet(4, b"\x02", &mut to_server).unwrap();
    x.on_server_packet(
        4,
        b"\x01-----BEGIN PUBLIC KEY-----",
        &mut to_client,
        &mut to_server,
    )
    .unwrap();
    x.on_client_packet(6, &[9; 256], &mut to_server).unwrap();
    let outcome = x
        .on_server_packet(6, OK, &mut to_client, &mut to_server)
        .unwrap();
    assert!(matches!(outcome, AuthOutcome::Authenticated(_)));
    let server_side: Vec<u8> = packets(&to_server).iter().map(|(s, _)| *s).collect();
    let client_side: Vec<u8> = packets(&to_client).iter().map(|(s, _)| *s).collect();
    assert_eq!(server_side, [1, 3, 5]);
    assert_eq!(client_side, [3, 5, 7]);
    assert_eq!(packets(&to_server)[2].1, [9; 256]);
}

#[test]
fn fast_auth_success_and_auth_switch_pass_through() {
    let mut x = AuthExchange::new(1, 1, b"mysql_native_password".to_vec(), vec![1; 20], true);
    let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
    x.on_client_packet(1, b"response", &mut to_server).unwrap();
    // The server switches to caching_sha2_password with a new nonce.
    let mut switch = b"\xfecaching_sha2_password\0".to_vec();
    switch.extend_from_slice(NONCE);
    switch.push(0);
    x.on_server_packet(2, &switch, &mut to_client, &mut to_server)
        .unwrap();
    x.on_client_packet(3, &[5; 32], &mut to_server).unwrap();
    x.on_server_packet(4, b"\x01\x03", &mut to_client, &mut to_server)
        .unwrap();
    let outcome = x
        .on_server_packet(5, OK, &mut to_client, &mut to_server)
        .unwrap();
    assert!(matches!(outcome, AuthOutcome::Authenticated(_)));
    assert_eq!(x.plugin, caching_sha2::PLUGIN);
    assert_eq!(x.nonce, NONCE);
    assert_eq!(packets(&to_client).len(), 3);
}

#[test]
fn wrong_sequence_ids_and_refusals() {
    let mut x = caching_sha2(false);
    let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
    assert!(matches!(
        x.on_client_packet(5, b"response", &mut to_server),
        Err(Error::MysqlPacket(PacketError::OutOfOrder {
            expected: 2,
            got: 5
        }))
    ));
    let mut x = caching_sha2(false);
    x.on_client_packet(2, b"response", &mut to_server).unwrap();
    assert!(
        x.on_server_packet(9, OK, &mut to_client, &mut to_server)
            .is_err()
    );
    let mut x = caching_sha2(false);
    x.on_client_packet(2, b"response", &mut to_server).unwrap();
    let err = b"\xff\x15\x04#28000Access denied for user";
    assert_eq!(
        x.on_server_packet(2, err, &mut to_client, &mut to_server)
            .unwrap(),
        AuthOutcome::Refused
    );
}

#[test]
fn a_bad_public_key_is_an_error_not_a_panic() {
    let mut x = caching_sha2(true);
    let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
    x.on_client_packet(2, b"response", &mut to_server).unwrap();
    x.on_server_packet(2, b"\x01\x04", &mut to_client, &mut to_server)
        .unwrap();
    x.on_client_packet(4, b"pw\0", &mut to_server).unwrap();
    assert!(
        x.on_server_packet(4, b"\x01not a key", &mut to_client, &mut to_server)
            .is_err()
    );
}
