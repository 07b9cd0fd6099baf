//! The simple query protocol: Query.

use super::super::codes::frontend;
use super::super::reader::{Reader, Truncated};
use bytes::{BufMut, BytesMut};

/// A Query message: one string that may hold several statements.
#[derive(Debug, PartialEq, Eq)]
pub struct Query<'a> {
    pub sql: &'a [u8],
}

impl<'a> Query<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self, Truncated> {
        Ok(Query {
            sql: Reader::new(body).cstr()?,
        })
    }
}

/// Appends a Query message carrying `sql`, as tandem sends its own statements.
pub fn put_query(buf: &mut BytesMut, sql: &str) {
    buf.put_u8(frontend::QUERY);
    buf.put_i32((sql.len() + 5) as i32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pg::Frame;

    #[test]
    fn written_query_reads_back() {
        let mut buf = BytesMut::new();
        put_query(&mut buf, "SELECT 'x'");
        let frame = Frame::peek(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.wire_len, buf.len());
        assert_eq!(Query::decode(frame.body(&buf)).unwrap().sql, b"SELECT 'x'");
    }
}
