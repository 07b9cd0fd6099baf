//! A bounds-checked cursor over a message body.
//!
//! Every read returns `Err(Truncated)` instead of panicking, so that peer bytes can never
//! bring a task down. (pgwire's `decode_body` implementations index and `get_*` without
//! checks, which is why tandem decodes the few client messages it reads with this.)

/// A body ended before a field it declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("message body is shorter than its fields declare")
    }
}

impl std::error::Error for Truncated {}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        let (&b, rest) = self.buf.split_first().ok_or(Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    /// A count: the protocol's Int16 counts (parameters, formats, columns) run to
    /// 65535, read unsigned as PostgreSQL reads them.
    pub fn count(&mut self) -> Result<usize, Truncated> {
        let bytes = self.bytes(2)?;
        Ok(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])))
    }

    pub fn i16(&mut self) -> Result<i16, Truncated> {
        let bytes = self.bytes(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Truncated> {
        let bytes = self.bytes(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.buf.len() < n {
            return Err(Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, without its terminator, as raw bytes (the protocol does
    /// not promise UTF-8: it is in the client encoding).
    pub fn cstr(&mut self) -> Result<&'a [u8], Truncated> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(Truncated)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_is_checked() {
        let mut r = Reader::new(b"ab\0\x00\x01");
        assert_eq!(r.cstr().unwrap(), b"ab");
        assert_eq!(r.i16().unwrap(), 1);
        assert_eq!(r.u8(), Err(Truncated));
        assert_eq!(r.i32(), Err(Truncated));
        assert_eq!(Reader::new(b"no terminator").cstr(), Err(Truncated));
        assert_eq!(Reader::new(b"x").bytes(2), Err(Truncated));
    }

    #[test]
    fn counts_run_to_65535() {
        assert_eq!(Reader::new(&[0x9c, 0x40]).count(), Ok(40_000));
        assert_eq!(Reader::new(&[0xff, 0xff]).count(), Ok(65_535));
    }
}
