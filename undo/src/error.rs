//! `undo::Error`: a statement undo cannot parse, or cannot invert exactly.

/// Why a statement cannot run under AT mode, or an undo record cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The statement did not parse in this dialect.
    #[error("cannot parse the statement ({dialect}): {message} at: {excerpt}")]
    Parse {
        /// The dialect it was parsed as.
        dialect: &'static str,
        /// The start of the statement.
        excerpt: String,
        /// The parser's message.
        message: String,
    },
    /// The statement cannot be captured exactly, so it is refused.
    #[error("{what} cannot run inside a global transaction: tandem cannot capture it exactly")]
    Unsupported {
        /// What was refused.
        what: String,
    },
    /// A locking read whose rows cannot be checked against the global locks, so it is
    /// refused.
    #[error(
        "{what} cannot run inside a global transaction: tandem cannot check the rows it locks against the global locks"
    )]
    Unchecked {
        /// What was refused.
        what: String,
    },
    /// Catalog query results that do not have the shape their query gives.
    #[error("table metadata does not fit its query: {what}")]
    Catalog {
        /// What is wrong with it.
        what: String,
    },
    /// An undo record that does not decode.
    #[error("undo record is corrupt: {what}")]
    Corrupt {
        /// What is wrong with it.
        what: String,
    },
}

impl Error {
    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    pub(crate) fn unchecked(what: impl Into<String>) -> Self {
        Error::Unchecked { what: what.into() }
    }
}
