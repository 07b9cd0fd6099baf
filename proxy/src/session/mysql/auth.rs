//! The authentication exchange, relayed: from the client's HandshakeResponse (or
//! COM_CHANGE_USER) to the server's OK or ERR ("Connection Phase", "Authentication
//! Method Switch", "caching_sha2_password" in the protocol docs).
//!
//! Owns the two sequence-id counters of the exchange and the one translation tandem
//! makes: a client that speaks TLS to tandem sends its password in clear when
//! caching_sha2_password asks for full authentication, but the backend link is plain
//! TCP, where the server refuses a clear password. tandem then asks the server for its
//! RSA public key and sends the password encrypted, as a client on an insecure link
//! would. Never does I/O (the session feeds it whole packets and sends what it writes).
//! Invariant: every packet written carries the next sequence id of its side, so inserted
//! or withheld packets never show to either peer.

use crate::error::{Error, Result};
use crate::wire::mysql::PacketError;
use crate::wire::mysql::codes::{StatusFlags, caching_sha2, reply};
use crate::wire::mysql::messages::handshake::AuthSwitch;
use crate::wire::mysql::messages::response::ok_status;
use crate::wire::mysql::packet::put_message;
use bytes::BytesMut;

/// Where the exchange is.
#[derive(Debug)]
enum AuthState {
    /// Packets pass through as they come.
    Relaying,
    /// caching_sha2_password asked for full authentication; the client (on TLS) will send
    /// its password in clear.
    FullAuthRequested,
    /// tandem asked the server for its public key and holds the client's clear password
    /// (NUL-terminated) until the key arrives.
    AwaitingPublicKey { password: Vec<u8> },
}

/// How an exchange ended, once it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Continue,
    /// The server's OK, with its status flags.
    Authenticated(StatusFlags),
    /// The server's ERR (relayed to the client).
    Refused,
}

#[derive(Debug)]
pub struct AuthExchange {
    /// The sequence id of the client's next packet, and of tandem's next to the client.
    client_seq: u8,
    /// The same on the server side.
    server_seq: u8,
    plugin: Vec<u8>,
    nonce: Vec<u8>,
    /// The client is on TLS and the backend link is not secure: clear passwords are
    /// encrypted for the server.
    encrypt_clear_passwords: bool,
    state: AuthState,
}

impl AuthExchange {
    /// An exchange whose next client packet has `client_seq` and whose next packet to
    /// the server gets `server_seq`, for `plugin` with `nonce`.
    pub fn new(
        client_seq: u8,
        server_seq: u8,
        plugin: Vec<u8>,
        nonce: Vec<u8>,
        encrypt_clear_passwords: bool,
    ) -> Self {
        AuthExchange {
            client_seq,
            server_seq,
            plugin,
            nonce,
            encrypt_clear_passwords,
            state: AuthState::Relaying,
        }
    }

    /// The plugin the client named (in its HandshakeResponse or COM_CHANGE_USER).
    pub fn set_client_plugin(&mut self, plugin: &[u8]) {
        if !plugin.is_empty() {
            plugin.clone_into(&mut self.plugin);
        }
    }

    /// A whole packet from the client.
    pub fn on_client_packet(
        &mut self,
        seq: u8,
        payload: &[u8],
        to_server: &mut BytesMut,
    ) -> Result<()> {
        if seq != self.client_seq {
            return Err(Error::MysqlPacket(PacketError::OutOfOrder {
                expected: self.client_seq,
                got: seq,
            }));
        }
        self.client_seq = self.client_seq.wrapping_add(1);
        if matches!(self.state, AuthState::FullAuthRequested)
            && payload != [caching_sha2::REQUEST_PUBLIC_KEY]
        {
            let mut password = payload.to_vec();
            if password.last() != Some(&0) {
                password.push(0);
            }
            self.state = AuthState::AwaitingPublicKey { password };
            self.send_to_server(&[caching_sha2::REQUEST_PUBLIC_KEY], to_server);
            return Ok(());
        }
        self.state = AuthState::Relaying;
        self.send_to_server(payload, to_server);
        Ok(())
    }

    /// A whole packet from the server.
    pub fn on_server_packet(
        &mut self,
        seq: u8,
        payload: &[u8],
        to_client: &mut BytesMut,
        to_server: &mut BytesMut,
    ) -> Result<AuthOutcome> {
        if seq != self.server_seq {
            return Err(Error::UpstreamProtocol(
                "authentication packet out of order",
            ));
        }
        self.server_seq = self.server_seq.wrapping_add(1);
        let first = payload.first().copied();
        if let AuthState::AwaitingPublicKey { password } = &self.state
            && first == Some(reply::MORE_DATA)
        {
            let key = payload.get(1..).unwrap_or(&[]);
            let encrypted = encrypt_password(password, &self.nonce, key)?;
            self.state = AuthState::Relaying;
            self.send_to_server(&encrypted, to_server);
            return Ok(AuthOutcome::Continue);
        }
        self.state = AuthState::Relaying;
        let outcome = match first {
            Some(reply::OK) => AuthOutcome::Authenticated(
                ok_status(payload).ok_or(Error::UpstreamProtocol("a malformed OK packet"))?,
            ),
            Some(reply::ERR) => AuthOutcome::Refused,
            Some(reply::EOF) => {
                if let Some(switch) = AuthSwitch::decode(payload) {
                    self.plugin = switch.plugin;
                    self.nonce = switch.data;
                }
                AuthOutcome::Continue
            }
            Some(reply::MORE_DATA) => {
                if self.encrypt_clear_passwords
                    && self.plugin == caching_sha2::PLUGIN
                    && payload == [reply::MORE_DATA, caching_sha2::PERFORM_FULL_AUTHENTICATION]
                {
                    self.state = AuthState::FullAuthRequested;
                }
                AuthOutcome::Continue
            }
            _ => AuthOutcome::Continue,
        };
        self.client_seq = put_message(to_client, self.client_seq, payload);
        Ok(outcome)
    }

    fn send_to_server(&mut self, payload: &[u8], to_server: &mut BytesMut) {
        self.server_seq = put_message(to_server, self.server_seq, payload);
    }
}

/// The password as caching_sha2_password expects it over an insecure link: XORed with
/// the nonce (repeated), then RSA-OAEP encrypted with the server's public key.
fn encrypt_password(password: &[u8], nonce: &[u8], pem: &[u8]) -> Result<Vec<u8>> {
    if nonce.is_empty() {
        return Err(Error::UpstreamProtocol("no authentication nonce"));
    }
    let mixed: Vec<u8> = password
        .iter()
        .zip(nonce.iter().cycle())
        .map(|(p, n)| p ^ n)
        .collect();
    mysql_common::crypto::encrypt(&mixed, pem)
        .map_err(|_| Error::UpstreamProtocol("an unusable RSA public key"))
}

#[cfg(test)]
mod tests;
