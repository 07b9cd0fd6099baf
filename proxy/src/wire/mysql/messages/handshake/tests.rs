use super::*;

/// The greeting payload MariaDB 10.11.19 sent on this machine (recorded with a raw
/// socket), without its 4-byte packet header.
pub(crate) const MARIADB_GREETING: &[u8] = b"\n5.5.5-10.11.19-MariaDB-0+deb12u1\x00\t\x00\x00\x00&5z(SIWX\x00\xfe\xf7-\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x007F;6<hyI=8@u\x00mysql_native_password\x00";

/// A MySQL 8.0 greeting as the protocol docs lay it out (HandshakeV10 with
/// caching_sha2_password as the default plugin); MySQL 8 is not on this machine.
pub(crate) fn mysql8_greeting(nonce: &[u8; 20]) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(b"8.0.36\0");
    p.extend_from_slice(&12u32.to_le_bytes());
    p.extend_from_slice(&nonce[..8]);
    p.push(0);
    let caps: u32 = 0xdfff_ffff;
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(255);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&nonce[8..]);
    p.push(0);
    p.extend_from_slice(b"caching_sha2_password\0");
    p
}

#[test]
fn mariadb_greeting_decodes() {
    let g = Greeting::decode(MARIADB_GREETING).unwrap();
    assert_eq!(g.server_version, b"5.5.5-10.11.19-MariaDB-0+deb12u1");
    assert_eq!(g.connection_id, 9);
    assert_eq!(g.nonce, b"&5z(SIWX7F;6<hyI=8@u");
    assert_eq!(g.plugin, b"mysql_native_password");
    assert!(
        !g.capabilities
            .contains(CapabilityFlags::CLIENT_LONG_PASSWORD)
    );
    assert!(
        g.capabilities
            .contains(CapabilityFlags::CLIENT_DEPRECATE_EOF)
    );
    assert_eq!(g.mariadb_capabilities.map(|c| c.bits()), Some(0x1d));
}

#[test]
fn patching_changes_only_the_patched_fields() {
    let g = Greeting::decode(MARIADB_GREETING).unwrap();
    let mut bytes = MARIADB_GREETING.to_vec();
    let caps = g.capabilities - CapabilityFlags::CLIENT_SSL;
    g.patch(
        &mut bytes,
        1 << 30,
        caps,
        MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA,
    );
    let p = Greeting::decode(&bytes).unwrap();
    assert_eq!(p.connection_id, 1 << 30);
    assert_eq!(p.capabilities, caps);
    assert_eq!(p.mariadb_capabilities.map(|c| c.bits()), Some(0x08));
    assert_eq!((p.nonce, p.plugin), (g.nonce, g.plugin));
    assert_eq!(bytes.len(), MARIADB_GREETING.len());
}

#[test]
fn mysql8_greeting_decodes_without_mariadb_capabilities() {
    let nonce = *b"abcdefghijklmnopqrst";
    let g = Greeting::decode(&mysql8_greeting(&nonce)).unwrap();
    assert_eq!(g.nonce, nonce);
    assert_eq!(g.plugin, b"caching_sha2_password");
    assert_eq!(g.mariadb_capabilities, None);
}

#[test]
fn truncated_greetings_are_errors_at_every_cut() {
    for cut in 0..60 {
        assert!(
            Greeting::decode(&MARIADB_GREETING[..cut]).is_err(),
            "cut {cut}"
        );
    }
    assert!(Greeting::decode(b"\x09old").is_err());
}

fn response(caps: CapabilityFlags, user: &[u8], auth: &[u8], db: &[u8], plugin: &[u8]) -> Vec<u8> {
    let mut p = caps.bits().to_le_bytes().to_vec();
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(45);
    p.extend_from_slice(&[0; 19]);
    p.extend_from_slice(&0x08u32.to_le_bytes());
    p.extend_from_slice(user);
    p.push(0);
    p.push(auth.len() as u8);
    p.extend_from_slice(auth);
    p.extend_from_slice(db);
    p.push(0);
    p.extend_from_slice(plugin);
    p.push(0);
    p
}

#[test]
fn handshake_response_decodes_and_patches() {
    let caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_CONNECT_WITH_DB
        | CapabilityFlags::CLIENT_SSL;
    let mut bytes = response(caps, b"app", &[7; 20], b"shop", b"mysql_native_password");
    let r = HandshakeResponse::decode(&bytes).unwrap();
    assert_eq!(r.user, b"app");
    assert_eq!(r.auth_response, [7; 20]);
    assert_eq!(r.database.as_deref(), Some(&b"shop"[..]));
    assert_eq!(r.plugin.as_deref(), Some(&b"mysql_native_password"[..]));
    assert_eq!(r.head.mariadb_capabilities.map(|c| c.bits()), Some(0x08));
    assert!(!r.head.is_ssl_request(bytes.len()));
    assert!(r.head.is_ssl_request(SSL_REQUEST_LEN));

    ResponseHead::patch(
        &mut bytes,
        caps - CapabilityFlags::CLIENT_SSL,
        Some(MariadbCapabilities::empty()),
    );
    let p = HandshakeResponse::decode(&bytes).unwrap();
    assert!(!p.head.capabilities.contains(CapabilityFlags::CLIENT_SSL));
    assert_eq!(p.head.mariadb_capabilities.map(|c| c.bits()), Some(0));
    assert_eq!(p.user, b"app");
    for cut in 0..40 {
        assert!(
            HandshakeResponse::decode(&bytes[..cut]).is_err(),
            "cut {cut}"
        );
    }
}

#[test]
fn auth_switch_and_change_user_decode() {
    let s = AuthSwitch::decode(b"\xfecaching_sha2_password\0abcdefghijklmnopqrst\0").unwrap();
    assert_eq!(s.plugin, b"caching_sha2_password");
    assert_eq!(s.data, b"abcdefghijklmnopqrst");
    assert_eq!(AuthSwitch::decode(b"\xfe"), None);

    let caps = CapabilityFlags::CLIENT_SECURE_CONNECTION | CapabilityFlags::CLIENT_PLUGIN_AUTH;
    let mut p = vec![0x11];
    p.extend_from_slice(b"bob\0\x02xy");
    p.extend_from_slice(b"db\0\x21\x00mysql_native_password\0");
    let c = ChangeUser::decode(&p, caps).unwrap();
    assert_eq!(c.user, b"bob");
    assert_eq!(c.plugin.as_deref(), Some(&b"mysql_native_password"[..]));
    assert!(ChangeUser::decode(b"\x11bob", caps).is_err());
}
