//! The simple query protocol: Query.

use super::super::reader::{Reader, Truncated};

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
