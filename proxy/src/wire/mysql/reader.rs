//! A bounds-checked cursor over a MySQL payload: little-endian integers, length-encoded
//! integers and strings, NUL-terminated strings.
//!
//! Every read returns `Err(Truncated)` instead of panicking, so that peer bytes can never
//! bring a task down.

/// A payload ended before a field it declares, or declared an impossible length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payload is shorter than its fields declare")
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

    pub fn u8(&mut self) -> Result<u8, Truncated> {
        let (&b, rest) = self.buf.split_first().ok_or(Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Truncated> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.buf.len() < n {
            return Err(Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A length-encoded integer ("Protocol::LengthEncodedInteger"). 0xFB (NULL in rows)
    /// and 0xFF are not integers.
    pub fn lenenc(&mut self) -> Result<u64, Truncated> {
        let first = self.u8()?;
        let width = match first {
            0..=0xfa => return Ok(u64::from(first)),
            0xfc => 2,
            0xfd => 3,
            0xfe => 8,
            _ => return Err(Truncated),
        };
        let b = self.bytes(width)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &byte| acc << 8 | u64::from(byte)))
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self) -> Result<&'a [u8], Truncated> {
        let len = usize::try_from(self.lenenc()?).map_err(|_| Truncated)?;
        self.bytes(len)
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], Truncated> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(Truncated)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string whose terminator may be missing at the end of the payload
    /// (some clients omit it after the last field).
    pub fn cstr_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = &self.buf[..end];
                self.buf = &self.buf[end + 1..];
                s
            }
            None => std::mem::take(&mut self.buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_is_checked() {
        let mut r = Reader::new(b"ab\0\x01\x02\xfc\x10\x27\xfe");
        assert_eq!(r.cstr().unwrap(), b"ab");
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert_eq!(r.lenenc().unwrap(), 10_000);
        assert_eq!(r.lenenc(), Err(Truncated));
        assert_eq!(Reader::new(b"\xff").lenenc(), Err(Truncated));
        assert_eq!(Reader::new(b"\x05abc").lenenc_bytes(), Err(Truncated));
        assert_eq!(Reader::new(b"x").u32(), Err(Truncated));
        assert_eq!(Reader::new(b"no nul").cstr(), Err(Truncated));
        assert_eq!(Reader::new(b"no nul").cstr_or_rest(), b"no nul");
        let mut eight = Reader::new(b"\xfe\x01\0\0\0\0\0\0\x01");
        assert_eq!(eight.lenenc().unwrap(), 1 | 1 << 56);
    }
}
