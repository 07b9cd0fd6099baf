//! StartupMessage, CancelRequest and the SSL/GSS negotiation answers.

use super::super::codes;
use super::super::reader::{Reader, Truncated};
use bytes::{BufMut, BytesMut};

/// The parameters of a StartupMessage (`user`, `database`, `options`, GUCs...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub pairs: Vec<(String, String)>,
}

impl StartupParams {
    /// Decodes the payload after the protocol version: NUL-terminated name/value pairs,
    /// ended by an empty name.
    pub fn decode(payload: &[u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(payload);
        let mut pairs = Vec::new();
        loop {
            let name = r.cstr()?;
            if name.is_empty() {
                return Ok(StartupParams { pairs });
            }
            let value = r.cstr()?;
            pairs.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The database the client asked for; PostgreSQL defaults it to the user name.
    pub fn database(&self) -> Option<&str> {
        self.get("database").or_else(|| self.get("user"))
    }
}

/// A CancelRequest: the key of the backend whose running query should be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
}

impl CancelKey {
    /// Decodes the payload after the request code. Protocol 3.2 allows longer secrets;
    /// tandem hands out 4-byte ones (it speaks 3.0 to clients), so only those can match.
    pub fn decode(payload: &[u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(payload);
        let pid = r.i32()?;
        let secret = r.i32()?;
        Ok(CancelKey { pid, secret })
    }

    /// Encodes the untagged CancelRequest packet that carries this key.
    pub fn encode_request(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_i32(16);
        buf.put_i32(codes::startup::CANCEL_REQUEST);
        buf.put_i32(self.pid);
        buf.put_i32(self.secret);
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_params_decode_and_default_database() {
        let params = StartupParams::decode(b"user\0alice\0application_name\0x\0\0").unwrap();
        assert_eq!(params.get("user"), Some("alice"));
        assert_eq!(params.database(), Some("alice"));
        let params = StartupParams::decode(b"user\0a\0database\0db\0\0").unwrap();
        assert_eq!(params.database(), Some("db"));
        assert_eq!(StartupParams::decode(b"user\0alice"), Err(Truncated));
    }

    #[test]
    fn cancel_key_round_trips() {
        let key = CancelKey {
            pid: 42,
            secret: -7,
        };
        let packet = key.encode_request();
        assert_eq!(packet.len(), 16);
        assert_eq!(CancelKey::decode(&packet[8..]), Ok(key));
        assert_eq!(CancelKey::decode(&packet[8..12]), Err(Truncated));
    }
}
