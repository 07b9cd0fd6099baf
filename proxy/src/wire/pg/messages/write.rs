//! Writing messages field by field, for the messages tandem composes itself (its own
//! statements, and replies it gives in the backend's place).

use bytes::{BufMut, BytesMut};

/// A NUL-terminated string.
pub fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// A whole message: type byte, length, body.
pub fn put_msg(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

/// A message with an empty body (ParseComplete, BindComplete, NoData, Sync…).
pub fn put_empty(buf: &mut BytesMut, tag: u8) {
    put_msg(buf, tag, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let mut buf = BytesMut::new();
        let mut body = BytesMut::new();
        put_cstr(&mut body, b"s");
        put_msg(&mut buf, b'P', &body);
        put_empty(&mut buf, b'S');
        assert_eq!(&buf[..], b"P\0\0\0\x06s\0S\0\0\0\x04");
    }
}
