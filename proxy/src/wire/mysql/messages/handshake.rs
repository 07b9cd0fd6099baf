//! The connection phase: the server's greeting (HandshakeV10), the client's SSLRequest
//! and HandshakeResponse41, AuthSwitchRequest, and COM_CHANGE_USER, which opens a new
//! authentication inside the command phase ("Connection Phase" in the protocol docs).
//!
//! Owns decoding and the in-place edits tandem makes (its own connection id, the
//! capabilities it can relay, CLIENT_SSL towards the backend). Edits change bytes at the
//! offsets decoding found, never the length, so everything else reaches the peer as the
//! other side wrote it.

use super::super::codes::{CapabilityFlags, MariadbCapabilities, PROTOCOL_VERSION};
use super::super::reader::{Reader, Truncated};

/// Length of an SSLRequest payload: a HandshakeResponse41 cut after its filler.
pub const SSL_REQUEST_LEN: usize = 32;

/// The server's greeting, with the offsets of the fields tandem rewrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: Vec<u8>,
    pub connection_id: u32,
    pub capabilities: CapabilityFlags,
    /// MariaDB's extended capabilities, present when the server does not set
    /// CLIENT_LONG_PASSWORD (MariaDB calls that bit CLIENT_MYSQL).
    pub mariadb_capabilities: Option<MariadbCapabilities>,
    /// The authentication nonce ("scramble"), both parts, without the trailing NUL.
    pub nonce: Vec<u8>,
    pub plugin: Vec<u8>,
    connection_id_at: usize,
    caps_low_at: usize,
    caps_high_at: usize,
    mariadb_caps_at: Option<usize>,
}

impl Greeting {
    pub fn decode(payload: &[u8]) -> Result<Greeting, Truncated> {
        let mut r = Reader::new(payload);
        if r.u8()? != PROTOCOL_VERSION {
            return Err(Truncated);
        }
        let server_version = r.cstr()?.to_vec();
        let connection_id_at = payload.len() - r.remaining().len();
        let connection_id = r.u32()?;
        let mut nonce = r.bytes(8)?.to_vec();
        r.u8()?;
        let caps_low_at = payload.len() - r.remaining().len();
        let low = r.u16()?;
        // A pre-4.1 greeting ends here; tandem relays PROTOCOL_41 only.
        let _charset = r.u8()?;
        let _status = r.u16()?;
        let caps_high_at = payload.len() - r.remaining().len();
        let high = r.u16()?;
        let capabilities =
            CapabilityFlags::from_bits_retain(u32::from(low) | u32::from(high) << 16);
        let data_len = usize::from(r.u8()?);
        r.bytes(6)?;
        let mariadb_caps_at = payload.len() - r.remaining().len();
        let ext = r.u32()?;
        let (mariadb_capabilities, mariadb_caps_at) =
            if capabilities.contains(CapabilityFlags::CLIENT_LONG_PASSWORD) {
                (None, None)
            } else {
                (
                    Some(MariadbCapabilities::from_bits_retain(ext)),
                    Some(mariadb_caps_at),
                )
            };
        if capabilities.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let part2 = data_len.saturating_sub(8).max(13);
            let bytes = r.bytes(part2.min(r.remaining().len()))?;
            nonce.extend_from_slice(bytes.strip_suffix(&[0]).unwrap_or(bytes));
        }
        let plugin = if capabilities.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
            r.cstr_or_rest().to_vec()
        } else {
            Vec::new()
        };
        Ok(Greeting {
            server_version,
            connection_id,
            capabilities,
            mariadb_capabilities,
            nonce,
            plugin,
            connection_id_at,
            caps_low_at,
            caps_high_at,
            mariadb_caps_at,
        })
    }

    /// Writes `connection_id` and the capabilities into `payload`, the bytes this
    /// greeting was decoded from.
    pub fn patch(
        &self,
        payload: &mut [u8],
        connection_id: u32,
        capabilities: CapabilityFlags,
        mariadb_capabilities: MariadbCapabilities,
    ) {
        put_u32(payload, self.connection_id_at, connection_id);
        let bits = capabilities.bits();
        put_u16(payload, self.caps_low_at, bits as u16);
        put_u16(payload, self.caps_high_at, (bits >> 16) as u16);
        if let Some(at) = self.mariadb_caps_at {
            put_u32(payload, at, mariadb_capabilities.bits());
        }
    }
}

/// The fixed head of HandshakeResponse41 (also all of an SSLRequest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub capabilities: CapabilityFlags,
    pub mariadb_capabilities: Option<MariadbCapabilities>,
}

/// Offset of MariaDB's extended capabilities in the filler of HandshakeResponse41.
const RESPONSE_MARIADB_CAPS_AT: usize = 28;

impl ResponseHead {
    pub fn decode(payload: &[u8]) -> Result<ResponseHead, Truncated> {
        let mut r = Reader::new(payload);
        let capabilities = CapabilityFlags::from_bits_retain(r.u32()?);
        r.bytes(RESPONSE_MARIADB_CAPS_AT - 4)?;
        let ext = r.u32()?;
        Ok(ResponseHead {
            capabilities,
            mariadb_capabilities: (!capabilities.contains(CapabilityFlags::CLIENT_LONG_PASSWORD))
                .then(|| MariadbCapabilities::from_bits_retain(ext)),
        })
    }

    /// Whether this is an SSLRequest: the head alone, asking for TLS.
    pub fn is_ssl_request(&self, payload_len: usize) -> bool {
        payload_len == SSL_REQUEST_LEN && self.capabilities.contains(CapabilityFlags::CLIENT_SSL)
    }

    /// Writes the capabilities into the response `payload`.
    pub fn patch(
        payload: &mut [u8],
        capabilities: CapabilityFlags,
        mariadb_capabilities: Option<MariadbCapabilities>,
    ) {
        put_u32(payload, 0, capabilities.bits());
        if let Some(ext) = mariadb_capabilities {
            put_u32(payload, RESPONSE_MARIADB_CAPS_AT, ext.bits());
        }
    }
}

/// What tandem reads from a HandshakeResponse41 beyond its head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub head: ResponseHead,
    pub user: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub plugin: Option<Vec<u8>>,
}

impl HandshakeResponse {
    pub fn decode(payload: &[u8]) -> Result<HandshakeResponse, Truncated> {
        let head = ResponseHead::decode(payload)?;
        let caps = head.capabilities;
        let mut r = Reader::new(payload.get(SSL_REQUEST_LEN..).ok_or(Truncated)?);
        let user = r.cstr()?.to_vec();
        let auth_response =
            if caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA) {
                r.lenenc_bytes()?
            } else if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
                let len = usize::from(r.u8()?);
                r.bytes(len)?
            } else {
                r.cstr()?
            }
            .to_vec();
        let database = caps
            .contains(CapabilityFlags::CLIENT_CONNECT_WITH_DB)
            .then(|| r.cstr_or_rest().to_vec());
        let plugin = caps
            .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
            .then(|| r.cstr_or_rest().to_vec());
        Ok(HandshakeResponse {
            head,
            user,
            auth_response,
            database,
            plugin,
        })
    }
}

/// AuthSwitchRequest: the server names another plugin and gives it fresh data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSwitch {
    pub plugin: Vec<u8>,
    /// The new nonce, without its trailing NUL.
    pub data: Vec<u8>,
}

impl AuthSwitch {
    /// Decodes a payload that starts with 0xFE; `None` for the old, pluginless form.
    pub fn decode(payload: &[u8]) -> Option<AuthSwitch> {
        let mut r = Reader::new(payload.get(1..)?);
        let plugin = r.cstr().ok()?.to_vec();
        let rest = r.remaining();
        Some(AuthSwitch {
            plugin,
            data: rest.strip_suffix(&[0]).unwrap_or(rest).to_vec(),
        })
    }
}

/// What tandem reads from COM_CHANGE_USER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeUser {
    pub user: Vec<u8>,
    pub plugin: Option<Vec<u8>>,
}

impl ChangeUser {
    pub fn decode(payload: &[u8], caps: CapabilityFlags) -> Result<ChangeUser, Truncated> {
        let mut r = Reader::new(payload.get(1..).ok_or(Truncated)?);
        let user = r.cstr()?.to_vec();
        if caps.contains(CapabilityFlags::CLIENT_SECURE_CONNECTION) {
            let len = usize::from(r.u8()?);
            r.bytes(len)?;
        } else {
            r.cstr()?;
        }
        let _database = r.cstr_or_rest();
        let plugin =
            if r.remaining().len() >= 2 && caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH) {
                r.u16()?;
                Some(r.cstr_or_rest().to_vec())
            } else {
                None
            };
        Ok(ChangeUser { user, plugin })
    }
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    if let Some(dst) = buf.get_mut(at..at + 2) {
        dst.copy_from_slice(&value.to_le_bytes());
    }
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    if let Some(dst) = buf.get_mut(at..at + 4) {
        dst.copy_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
