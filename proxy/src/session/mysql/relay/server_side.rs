//! The backend's side of the relay: reply packets, classified by their first bytes and
//! forwarded in runs; and the server half of COM_CHANGE_USER.
//!
//! Never writes to the backend except the change-user exchange's packets.

use super::{Relay, skip_streaming};
use crate::error::{Error, Result};
use crate::session::mysql::auth::AuthOutcome;
use crate::session::mysql::phase::{Progress, ServerPacket, Unexpected};
use crate::wire::mysql::Header;
use crate::wire::mysql::codes::{StatusFlags, reply};
use crate::wire::mysql::messages::response::{self, CLASSIFY_BYTES};
use crate::wire::mysql::packet::HEADER_LEN;
use bytes::Buf;

impl Relay<'_> {
    /// Relays every server packet that has arrived far enough to be classified.
    pub(super) async fn relay_from_server(&mut self) -> Result<()> {
        if self.change_user.is_some() {
            return self.change_user_from_server().await;
        }
        let mut buf = std::mem::take(&mut self.from_server);
        let result = self.classify_server_packets(&mut buf);
        let pos = match result {
            Ok(pos) => pos,
            Err(e) => {
                self.from_server = buf;
                return Err(e);
            }
        };
        let written = self.write_client(&buf[..pos]).await;
        self.from_server = buf;
        self.from_server.advance(pos);
        if self.exchange.at_sync_point() {
            // Every write let through unchecked is over.
            self.unchecked.release();
        }
        written
    }

    /// Walks the packets at the front of `buf`, keeping the exchange in step; returns
    /// how many bytes can be forwarded now.
    fn classify_server_packets(&mut self, buf: &mut [u8]) -> Result<usize> {
        let max = self.ctx.config.max_message_bytes;
        let mut pos = skip_streaming(&mut self.server_streaming, buf.len());
        while self.server_streaming == 0 {
            let Some(header) = Header::peek(&buf[pos..]) else {
                break;
            };
            let arrived = buf.len() - pos;
            let starts_message = !self.server_message.in_message();
            let need = if starts_message {
                header.payload_len.min(CLASSIFY_BYTES)
            } else {
                0
            };
            if arrived < HEADER_LEN + need {
                break;
            }
            let prefix = &buf[pos + HEADER_LEN..pos + HEADER_LEN + need];
            if starts_message && self.exchange.at_sync_point() {
                // Nothing is due. The one packet a server sends unasked is the ERR that
                // says why it is closing the connection (shutdown, KILL, a timeout).
                if prefix.first() != Some(&reply::ERR) {
                    return Err(Error::UpstreamProtocol("a packet while no reply was due"));
                }
                self.backend_said_fatal = true;
            } else {
                self.exchange
                    .on_server_seq(header.seq)
                    .map_err(unexpected)?;
                if starts_message
                    && matches!(
                        self.exchange.phase,
                        crate::session::mysql::Phase::Busy {
                            reply: crate::session::mysql::Reply::First(
                                crate::session::mysql::Expect::Prepare
                            ),
                            ..
                        }
                    )
                    && let Some(mut prepared) = self.pending_prepares.pop_front()
                    && prefix.first() == Some(&reply::OK)
                    && let Some(ok) =
                        crate::wire::mysql::messages::response::PrepareOk::decode(prefix)
                {
                    prepared.params = ok.params;
                    self.prepared.insert(ok.statement_id, prepared);
                }
                if starts_message && closes_after(prefix) {
                    self.backend_said_fatal = true;
                }
                if starts_message {
                    let packet = ServerPacket {
                        prefix,
                        payload_len: header.payload_len,
                    };
                    if self.exchange.on_server_packet(packet).map_err(unexpected)?
                        == Progress::InfileRequested
                    {
                        self.client_seq = self.exchange.infile_seq();
                    }
                    if !self.owned.is_empty() {
                        let prefix_at = pos + HEADER_LEN;
                        self.not_in_transaction_beside_held_branch(
                            &mut buf[prefix_at..prefix_at + need],
                        );
                    }
                }
            }
            self.server_message
                .on_packet(header, max)
                .map_err(|_| Error::UpstreamProtocol("a reply over max_message_bytes"))?;
            self.last_seq = header.seq;
            if arrived >= header.wire_len() {
                pos += header.wire_len();
            } else {
                self.server_streaming = header.wire_len() - arrived;
                pos = buf.len();
            }
        }
        Ok(pos)
    }

    /// MariaDB reports IN_TRANS while the connection holds a prepared XA branch, but
    /// the client's transaction ended with the COMMIT that prepared it: the flag comes
    /// off the reply that ended with `prefix` (and off the status kept), or the client
    /// and tandem would take the session for inside a transaction (`tandem_rollback()`
    /// refused with 1568 after a pool's COM_PING).
    fn not_in_transaction_beside_held_branch(&mut self, prefix: &mut [u8]) {
        let in_trans = StatusFlags::SERVER_STATUS_IN_TRANS;
        let Some(read) = self.exchange.status_read.filter(|s| s.contains(in_trans)) else {
            return;
        };
        self.exchange.clear_status(in_trans);
        let at = response::ok_status_offset(prefix)
            .filter(|_| response::ok_status(prefix) == Some(read))
            .or_else(|| {
                (response::eof_status(prefix) == Some(read)).then_some(response::EOF_STATUS_OFFSET)
            });
        if let Some(at) = at {
            let cleared = read - in_trans;
            prefix[at..at + 2].copy_from_slice(&cleared.bits().to_le_bytes());
        }
    }

    /// COM_CHANGE_USER's exchange, server half: whole packets through the auth relay.
    async fn change_user_from_server(&mut self) -> Result<()> {
        while let Some(header) = Header::peek(&self.from_server) {
            if header.payload_len > super::super::handshake::MAX_HANDSHAKE_PACKET {
                return Err(Error::UpstreamProtocol(
                    "an oversized authentication packet",
                ));
            }
            if self.from_server.len() < header.wire_len() {
                break;
            }
            let packet = self.from_server.split_to(header.wire_len());
            let Some(exchange) = self.change_user.as_mut() else {
                break;
            };
            let outcome = exchange.on_server_packet(
                header.seq,
                &packet[HEADER_LEN..],
                &mut self.to_client,
                &mut self.to_server,
            )?;
            self.last_seq = header.seq;
            match outcome {
                AuthOutcome::Continue => {}
                AuthOutcome::Authenticated(status) => {
                    self.change_user = None;
                    self.exchange.on_authenticated(status);
                }
                AuthOutcome::Refused => {
                    // The server keeps the connection with no user authenticated, or
                    // closes it; either way the next command gets the server's verdict.
                    self.change_user = None;
                    let status = self.exchange.status().unwrap_or_default();
                    self.exchange.on_authenticated(status);
                }
            }
        }
        self.flush_staged().await?;
        if self.change_user.is_none() && !self.from_server.is_empty() {
            // Anything after the final OK or ERR is unsolicited; classify it as such.
            return Box::pin(self.relay_from_server()).await;
        }
        Ok(())
    }
}

fn unexpected(e: Unexpected) -> Error {
    Error::UpstreamProtocol(e.0)
}

/// An ERR packet's payload for one of the server's network errors, after which it
/// closes the connection: a packet over max_allowed_packet (1153), one out of order
/// (1156), one it could not uncompress (1157), a read or write that failed or timed
/// out (1158–1161). Not any SQLSTATE of class 08: `SIGNAL SQLSTATE '08000'` and an
/// unknown command (1047, 08S01) leave the connection open.
fn closes_after(payload: &[u8]) -> bool {
    const NETWORK_ERRORS: [u16; 7] = [1153, 1156, 1157, 1158, 1159, 1160, 1161];
    match payload {
        [reply::ERR, low, high, ..] => NETWORK_ERRORS.contains(&u16::from_le_bytes([*low, *high])),
        _ => false,
    }
}
