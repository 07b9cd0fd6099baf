//! Backend messages tandem reads (ReadyForQuery, ErrorResponse, BackendKeyData,
//! Authentication, ParameterStatus, CommandComplete) and the ones it writes itself,
//! encoded with pgwire's codec.

use super::super::codes::{auth, tx_status};
use super::super::reader::{Reader, Truncated};
use super::startup::CancelKey;
use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::{
    CommandComplete, ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};

/// The transaction status a ReadyForQuery reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    /// Decodes a ReadyForQuery body; an unknown status byte is a protocol error.
    pub fn decode(body: &[u8]) -> Option<Self> {
        match body {
            [tx_status::IDLE] => Some(TxStatus::Idle),
            [tx_status::IN_TRANSACTION] => Some(TxStatus::InTransaction),
            [tx_status::FAILED] => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => tx_status::IDLE,
            TxStatus::InTransaction => tx_status::IN_TRANSACTION,
            TxStatus::Failed => tx_status::FAILED,
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that tandem looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    /// The schema the error names ('s'), if any.
    pub schema: String,
    /// Where in the statement's text ('P', 1-based), if the error points there.
    pub position: String,
}

impl ErrorFields {
    pub fn decode(body: &[u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(body);
        let mut fields = ErrorFields::default();
        loop {
            let kind = r.u8()?;
            if kind == 0 {
                return Ok(fields);
            }
            let value = String::from_utf8_lossy(r.cstr()?).into_owned();
            match kind {
                // 'V' is the non-localised severity; prefer it over 'S'.
                b'V' => fields.severity = value,
                b'S' if fields.severity.is_empty() => fields.severity = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                b's' => fields.schema = value,
                b'P' => fields.position = value,
                _ => {}
            }
        }
    }

    /// FATAL and PANIC end the backend connection.
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

/// An Authentication request: its code, and for SASL the offered mechanisms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Sasl(Vec<String>),
    /// Every other request (cleartext, MD5, SASL continue/final, GSS...) is relayed as is.
    Other(i32),
}

impl AuthRequest {
    pub fn decode(body: &[u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(body);
        Ok(match r.i32()? {
            auth::OK => AuthRequest::Ok,
            auth::SASL => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break AuthRequest::Sasl(mechanisms);
                    }
                    mechanisms.push(String::from_utf8_lossy(m).into_owned());
                }
            }
            other => AuthRequest::Other(other),
        })
    }
}

/// A BackendKeyData body: the backend's pid and 4-byte cancel secret.
pub fn decode_backend_key(body: &[u8]) -> Result<CancelKey, Truncated> {
    let mut r = Reader::new(body);
    let pid = r.i32()?;
    // Protocol 3.2 allows secrets up to 256 bytes; PostgreSQL 15 speaks 3.0 and sends 4.
    let secret = r.i32()?;
    Ok(CancelKey { pid, secret })
}

/// A ParameterStatus body: name and value.
pub fn decode_parameter_status(body: &[u8]) -> Result<(String, String), Truncated> {
    let mut r = Reader::new(body);
    let name = String::from_utf8_lossy(r.cstr()?).into_owned();
    let value = String::from_utf8_lossy(r.cstr()?).into_owned();
    Ok((name, value))
}

/// A CommandComplete tag, e.g. `UPDATE 3`.
pub fn decode_command_tag(body: &[u8]) -> Result<&[u8], Truncated> {
    Reader::new(body).cstr()
}

/// Severity of a message that tandem writes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse written by tandem.
pub fn put_error(buf: &mut BytesMut, severity: Severity, sqlstate: &str, message: &str) {
    let sev = severity.as_str().to_owned();
    let msg = ErrorResponse::new(vec![
        (b'S', sev.clone()),
        (b'V', sev),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ]);
    encode_infallible(&msg, buf);
}

/// Appends a NoticeResponse written by tandem.
pub fn put_notice(buf: &mut BytesMut, sqlstate: &str, message: &str) {
    let msg = NoticeResponse::new(vec![
        (b'S', "NOTICE".to_owned()),
        (b'V', "NOTICE".to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ]);
    encode_infallible(&msg, buf);
}

/// Appends a CommandComplete with `tag` (`COMMIT`, `UPDATE 3`…).
pub fn put_command_complete(buf: &mut BytesMut, tag: &str) {
    encode_infallible(&CommandComplete::new(tag.to_owned()), buf);
}

/// Appends a ReadyForQuery.
pub fn put_ready_for_query(buf: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::Idle => TransactionStatus::Idle,
        TxStatus::InTransaction => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
    };
    encode_infallible(&ReadyForQuery::new(status), buf);
}

/// Appends the BackendKeyData that tandem hands to its client in place of the backend's.
pub fn put_backend_key(buf: &mut BytesMut, key: CancelKey) {
    let msg = BackendKeyData::new(key.pid, SecretKey::I32(key.secret));
    encode_infallible(&msg, buf);
}

/// Appends an AuthenticationSASL offering `mechanisms`.
pub fn put_sasl_mechanisms(buf: &mut BytesMut, mechanisms: Vec<String>) {
    encode_infallible(&Authentication::SASL(mechanisms), buf);
}

/// Appends the one-byte answer to SSLRequest or GSSENCRequest.
pub fn put_negotiation_answer(buf: &mut BytesMut, answer: u8) {
    buf.put_u8(answer);
}

/// pgwire's encoders fail only when a message exceeds its type's size cap; tandem's own
/// messages are short, so a failure would be a bug. Rather than panic on a client path,
/// it degrades to a minimal ErrorResponse that is always encodable.
fn encode_infallible<M: Message>(msg: &M, buf: &mut BytesMut) {
    let mark = buf.len();
    if msg.encode(buf).is_err() {
        buf.truncate(mark);
        let fallback = b"SERROR\0CXX000\0Mtandem could not encode a reply\0\0";
        buf.put_u8(b'E');
        buf.put_i32(4 + fallback.len() as i32);
        buf.put_slice(fallback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pg::Frame;

    #[test]
    fn written_error_reads_back() {
        let mut buf = BytesMut::new();
        put_error(
            &mut buf,
            Severity::Fatal,
            "57P01",
            "tandem is shutting down",
        );
        let frame = Frame::peek(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag, b'E');
        let fields = ErrorFields::decode(frame.body(&buf)).unwrap();
        assert_eq!(fields.code, "57P01");
        assert_eq!(fields.message, "tandem is shutting down");
        assert!(fields.is_fatal());
    }

    #[test]
    fn sasl_mechanisms_round_trip() {
        let mut buf = BytesMut::new();
        put_sasl_mechanisms(&mut buf, vec!["SCRAM-SHA-256".into()]);
        let frame = Frame::peek(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            AuthRequest::decode(frame.body(&buf)).unwrap(),
            AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()])
        );
    }

    #[test]
    fn backend_key_and_ready_round_trip() {
        let mut buf = BytesMut::new();
        let key = CancelKey { pid: 9, secret: 77 };
        put_backend_key(&mut buf, key);
        put_ready_for_query(&mut buf, TxStatus::InTransaction);
        let k = Frame::peek(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(decode_backend_key(k.body(&buf)).unwrap(), key);
        let rest = &buf[k.wire_len..];
        let z = Frame::peek(rest, 1 << 20).unwrap().unwrap();
        assert_eq!(
            TxStatus::decode(z.body(rest)),
            Some(TxStatus::InTransaction)
        );
    }
}
