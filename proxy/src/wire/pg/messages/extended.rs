//! The extended query protocol: Parse, Bind and Close, the three messages that create or
//! destroy server-side objects that tandem tracks. Decoding borrows from the frame.

use super::super::codes::target;
use super::super::reader::{Reader, Truncated};

/// Parse: creates a prepared statement (the unnamed one when `name` is empty).
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub sql: &'a [u8],
    pub param_types: Vec<u32>,
}

impl<'a> Parse<'a> {
    /// Only the SQL of a Parse body, without decoding (or allocating for) its parameter
    /// types: what the relay needs on every Parse.
    pub fn sql_of(body: &'a [u8]) -> Result<&'a [u8], Truncated> {
        let mut r = Reader::new(body);
        r.cstr()?;
        r.cstr()
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(body);
        let name = r.cstr()?;
        let sql = r.cstr()?;
        let count = r.count()?;
        let mut param_types = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            param_types.push(r.i32()? as u32);
        }
        Ok(Parse {
            name,
            sql,
            param_types,
        })
    }
}

/// Parameter format codes (0 text, 1 binary) as the protocol allows them: none (all
/// text), one (for all), or one per parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

/// Bind: creates a portal from a prepared statement and parameter values.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

impl<'a> Bind<'a> {
    /// The statement name alone, without decoding the parameters.
    pub fn statement_of(body: &'a [u8]) -> Result<&'a [u8], Truncated> {
        let mut r = Reader::new(body);
        r.cstr()?;
        r.cstr()
    }

    pub fn decode(body: &'a [u8]) -> Result<Self, Truncated> {
        let mut r = Reader::new(body);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        let param_formats = read_i16s(&mut r)?;
        let count = r.count()?;
        let mut params = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let len = r.i32()?;
            params.push(match usize::try_from(len) {
                Ok(len) => Some(r.bytes(len)?),
                // -1 is NULL; the protocol defines no other negative length.
                Err(_) => None,
            });
        }
        let result_formats = read_i16s(&mut r)?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    /// Only the statement name of a Bind body, without decoding (or allocating for) its
    /// parameters: what the relay needs on every Bind.
    pub fn statement_name(body: &'a [u8]) -> Result<&'a [u8], Truncated> {
        let mut r = Reader::new(body);
        r.cstr()?;
        r.cstr()
    }

    /// The format of parameter `index`, by the protocol's rule for 0, 1 or n codes.
    pub fn param_format(&self, index: usize) -> Format {
        let code = match self.param_formats.len() {
            0 => 0,
            1 => self.param_formats[0],
            _ => self.param_formats.get(index).copied().unwrap_or(0),
        };
        if code == 1 {
            Format::Binary
        } else {
            Format::Text
        }
    }
}

fn read_i16s(r: &mut Reader<'_>) -> Result<Vec<i16>, Truncated> {
    let count = r.count()?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        out.push(r.i16()?);
    }
    Ok(out)
}

/// What a Close or Describe names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

/// Close: destroys a prepared statement or a portal.
#[derive(Debug, PartialEq, Eq)]
pub struct Close<'a> {
    pub target: Target,
    pub name: &'a [u8],
}

impl<'a> Close<'a> {
    /// Returns `Ok(None)` for a target byte other than `S` or `P`; the server answers
    /// that with its own error, so tandem relays it and tracks nothing.
    pub fn decode(body: &'a [u8]) -> Result<Option<Self>, Truncated> {
        let mut r = Reader::new(body);
        let target = match r.u8()? {
            target::STATEMENT => Target::Statement,
            target::PORTAL => Target::Portal,
            _ => return Ok(None),
        };
        Ok(Some(Close {
            target,
            name: r.cstr()?,
        }))
    }
}

/// What an extended-protocol message (`tag`, `body`) is, if its body does not decode:
/// PostgreSQL answers such a message with an error (08P01) and skips to the Sync,
/// the session going on. Trailing bytes are left to the server, which refuses them
/// itself.
pub fn malformed(tag: u8, body: &[u8]) -> Option<&'static str> {
    use super::super::codes::frontend;
    let mut r = Reader::new(body);
    let target_and_name = |r: &mut Reader<'_>| {
        matches!(r.u8(), Ok(target::STATEMENT | target::PORTAL)) && r.cstr().is_ok()
    };
    let (what, decodes) = match tag {
        frontend::PARSE => ("Parse message", Parse::decode(body).is_ok()),
        frontend::BIND => ("Bind message", Bind::decode(body).is_ok()),
        frontend::CLOSE => ("Close message", target_and_name(&mut r)),
        frontend::DESCRIBE => ("Describe message", target_and_name(&mut r)),
        frontend::EXECUTE => ("Execute message", r.cstr().is_ok() && r.i32().is_ok()),
        _ => return None,
    };
    (!decodes).then_some(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::pg::codes::frontend;

    #[test]
    fn malformed_extended_messages_are_named() {
        assert_eq!(malformed(frontend::PARSE, b"s\0select 1\0\0\0"), None);
        assert_eq!(
            malformed(frontend::PARSE, b"s\0select 1\0"),
            Some("Parse message")
        );
        assert_eq!(malformed(frontend::BIND, b"\0\0"), Some("Bind message"));
        assert_eq!(malformed(frontend::CLOSE, b"Ss\0"), None);
        assert_eq!(malformed(frontend::CLOSE, b"Xs\0"), Some("Close message"));
        assert_eq!(
            malformed(frontend::DESCRIBE, b"P"),
            Some("Describe message")
        );
        assert_eq!(malformed(frontend::EXECUTE, b"\0\0\0\0\0"), None);
        assert_eq!(
            malformed(frontend::EXECUTE, b"\0\0"),
            Some("Execute message")
        );
        assert_eq!(malformed(frontend::SYNC, b"junk"), None);
    }

    #[test]
    fn parse_decodes_name_sql_and_types() {
        let p = Parse::decode(b"s1\0select $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.sql, b"select $1");
        assert_eq!(p.param_types, vec![23]);
        assert_eq!(
            Parse::sql_of(b"s1\0select $1\0\0\x01\0\0\0\x17"),
            Ok(&b"select $1"[..])
        );
        assert_eq!(
            Parse::decode(b"s1\0select $1\0\0\x02\0\0\0\x17"),
            Err(Truncated)
        );
    }

    #[test]
    fn bind_decodes_nulls_formats_and_values() {
        let mut body = b"p\0s1\0".to_vec();
        body.extend_from_slice(&1i16.to_be_bytes()); // one format code for all
        body.extend_from_slice(&1i16.to_be_bytes()); // binary
        body.extend_from_slice(&2i16.to_be_bytes()); // two params
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&7i32.to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        let b = Bind::decode(&body).unwrap();
        assert_eq!(b.portal, b"p");
        assert_eq!(b.statement, b"s1");
        assert_eq!(b.params, vec![Some(&7i32.to_be_bytes()[..]), None]);
        assert_eq!(b.param_format(1), Format::Binary);
        for cut in 0..body.len() {
            assert!(Bind::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn bind_with_lying_lengths_is_truncated_not_a_panic() {
        let mut body = b"\0\0".to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(Bind::decode(&body), Err(Truncated));
    }

    #[test]
    fn close_targets() {
        let c = Close::decode(b"Sname\0").unwrap().unwrap();
        assert_eq!((c.target, c.name), (Target::Statement, &b"name"[..]));
        assert_eq!(Close::decode(b"Xname\0"), Ok(None));
        assert_eq!(Close::decode(b""), Err(Truncated));
    }
}
