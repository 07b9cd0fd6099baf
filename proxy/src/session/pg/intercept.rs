//! What tandem acts on in a client's simple Query before relaying it: its control
//! statements (`SELECT tandem_begin()` …) and connection-pool resets.
//!
//! Owns that decision and the reply query. Never writes to a socket itself: the relay
//! loop sends what it returns. Invariant: a control statement is carried out only at a
//! sync point, so it takes effect after every request the client sent before it.

use super::Relay;
use super::control_extended::{put_refusal, put_simple_answer};
use super::tracked::Refusal;
use crate::control::{self, BadCall, quote_literal};
use crate::error::{Error, Result};
use crate::wire::pg::messages::extended::Parse;
use crate::wire::pg::messages::response::{ErrorFields, Severity, TxStatus, put_error};
use crate::wire::pg::messages::simple::{Query, put_query};
use bytes::BytesMut;

impl Relay<'_> {
    /// A Parse that must not reach the backend as written: a control statement in the
    /// middle of a pipelined batch, or, inside a global transaction, the client's own
    /// two-phase commit or (AT mode) a statement tandem cannot analyse. Writes and
    /// COMMIT are prepared freely and captured, or prepare the branch, when bound (see
    /// at_extended, xa).
    pub(super) fn refusal_for_parse(&self, body: &[u8]) -> Option<Refusal> {
        // Runs on every Parse: the SQL alone, without decoding parameter types.
        let sql = Parse::sql_of(body).ok()?;
        let refuse = |e: Error| {
            Some(Refusal {
                sqlstate: e.sqlstate().code(),
                message: e.to_string(),
            })
        };
        if body.first() == Some(&OWN_NAME_MARK) {
            return refuse(Error::Unsupported {
                what: "a statement name starting with \\x01 (tandem's own statements are named so)",
            });
        }
        if !matches!(control::parse(sql), Ok(None)) {
            // Not at a sync point inside an unsynced batch: tandem cannot answer it in order.
            return refuse(Error::Unsupported {
                what: "a control function in the middle of a pipelined batch (send it alone)",
            });
        }
        self.binding.xid()?;
        if super::xa::is_two_phase_statement(sql) {
            return refuse(Error::Unsupported {
                what: super::xa::TWO_PHASE_REFUSED,
            });
        }
        let sql = String::from_utf8_lossy(sql);
        match self.ctx.analyses.analyze(&sql) {
            // XA mode captures nothing, so it needs no analysis of what it relays.
            Err(_) if self.branch_mode() == crate::binding::Mode::Xa => None,
            // The server judges what tandem cannot parse: what it rejects fails as it
            // would directly (a syntax error, 42601); what it prepares is refused when
            // bound (at_extended.rs).
            Err(tandem_undo::Error::Parse { .. }) => None,
            Err(e) => refuse(Error::Undo(e)),
            // Either mode commits a branch over the extended protocol at the COMMIT's
            // Bind (at_extended.rs, xa.rs).
            Ok(_) => None,
        }
    }

    /// Looks at a simple Query for what tandem itself must act on: control statements
    /// and pool resets.
    pub(super) async fn intercept_query(&mut self, body: &[u8]) -> Result<Intercepted> {
        let Ok(query) = Query::decode(body) else {
            // Malformed: on_client_message reports it.
            return Ok(Intercepted::Relay);
        };
        self.note_set_config(query.sql);
        if is_pool_reset(query.sql) {
            self.on_pool_reset_sent();
            return Ok(Intercepted::Relay);
        }
        if (self.binding.xid().is_some() || self.binding.mode().is_some())
            && tandem_undo::resets_session(&String::from_utf8_lossy(query.sql))
        {
            // A pool's reset among other statements: they go through as bound ones do,
            // and the binding ends with the transaction the reset runs in.
            self.on_pool_reset_sent();
        }
        if let Some(xid) = control::xid_hint(query.sql) {
            if !self.phase.at_sync_point() {
                return Ok(Intercepted::WaitForSyncPoint);
            }
            let open = self.block_holds_work();
            if let Err(e) = self
                .binding
                .bind_from_hint(&self.ctx.lock, &xid, open)
                .await
            {
                let mut replacement = BytesMut::new();
                put_query(
                    &mut replacement,
                    &error_sql(e.sqlstate().code(), &e.to_string()),
                );
                return Ok(Intercepted::Replace(replacement));
            }
        }
        let control = match control::parse(query.sql) {
            Ok(None) if self.binding.xid().is_some() => {
                if (query.sql.contains(&b'\\') || !query.sql.is_ascii())
                    && !self.phase.at_sync_point()
                {
                    // The settings it is read under (standard_conforming_strings,
                    // client_encoding) may be changing in what is in flight.
                    return Ok(Intercepted::WaitForSyncPoint);
                }
                if let Some(e) = self.text_misread(query.sql) {
                    return Ok(self.refuse(e));
                }
                if super::xa::is_two_phase_statement(query.sql) {
                    return Ok(self.refuse(Error::Unsupported {
                        what: super::xa::TWO_PHASE_REFUSED,
                    }));
                }
                let sql = query.sql.to_vec();
                if self.branch_mode() == crate::binding::Mode::Xa {
                    return self.intercept_xa(&String::from_utf8_lossy(&sql)).await;
                }
                return self.intercept_at(&sql).await;
            }
            Ok(None) => return self.guard_query(query.sql, false).await,
            Ok(Some(control)) => Ok(control),
            Err(BadCall(message)) => Err(Error::BadControlCall(message)),
        };
        if !self.phase.at_sync_point() {
            return Ok(Intercepted::WaitForSyncPoint);
        }
        let status = self.phase.tx_status().unwrap_or(TxStatus::Idle);
        let answer = match control {
            // In a failed transaction block nothing may run, and nothing is done.
            _ if status == TxStatus::Failed => Err(Error::InFailedTransaction),
            Ok(control) => {
                let column = control.column();
                let local = crate::binding::LocalTransaction {
                    open: status == TxStatus::InTransaction,
                    has_branch: !self.branch.is_empty() || self.xa != super::xa::XaBranch::None,
                    fresh: self.block_untouched,
                };
                self.binding
                    .carry_out(&self.ctx.lock, local, control)
                    .await
                    .map(|value| (value, column))
            }
            Err(e) => Err(e),
        };
        // Answered by tandem itself, at a sync point, so in its place among the replies;
        // the backend never sees the statement.
        let mut out = BytesMut::new();
        match answer {
            Ok((value, column)) => put_simple_answer(&mut out, column, value.as_deref(), status),
            Err(e) => {
                tracing::debug!(parent: self.binding.span(), error = %e, "control statement refused");
                put_refusal(&mut out, &e, status);
            }
        }
        Ok(Intercepted::Answer(out))
    }
}

/// What tandem does with a client's simple Query.
pub(super) enum Intercepted {
    Relay,
    /// Hold it (and what follows) until the backend reaches a sync point.
    WaitForSyncPoint,
    /// Send this instead.
    Replace(BytesMut),
    /// Answer the client with this; the statement goes nowhere.
    Answer(BytesMut),
    /// Send this instead, and read nothing more from the client until its reply is over
    /// (tandem acts on that reply at its ReadyForQuery).
    ReplaceAndHold(BytesMut),
    /// tandem sent the statement's replacement itself (pipelined behind statements of
    /// its own); read nothing more from the client until its reply is over.
    SentAndHold,
}

/// The statement that makes the backend report a refused control statement with its
/// SQLSTATE, in order with every other reply. Its error names the schema
/// [`REFUSAL_SCHEMA`], by which the relay knows it for tandem's and sends it on without
/// the PL/pgSQL context the DO block adds (`own_refusal`).
pub(super) fn error_sql(sqlstate: &str, message: &str) -> String {
    let message = message.replace("$tandem$", "");
    format!(
        "DO $tandem$ BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = {}, SCHEMA = chr(1) || 'tandem'; END $tandem$",
        quote_literal(&message)
    )
}

/// The schema the errors of `error_sql` name: no client's error names it (a control
/// character first).
pub(super) const REFUSAL_SCHEMA: &str = "\u{1}tandem";

/// An error of tandem's `error_sql`, as the client gets it: its code and message alone,
/// as if tandem had answered it itself (not the DO block's context, nor where in the
/// server's source RAISE is).
pub(super) fn own_refusal(fields: &ErrorFields) -> Option<BytesMut> {
    if fields.schema != REFUSAL_SCHEMA {
        return None;
    }
    let mut out = BytesMut::new();
    put_error(&mut out, Severity::Error, &fields.code, &fields.message);
    Some(out)
}

/// The database's "function tandem_xid() does not exist" for one of tandem's control
/// functions called inside another statement, which tandem relays as it is: said so
/// plainly, still as 42883, for a reader who would take it for tandem not being there.
pub(super) fn control_call_misplaced(fields: &ErrorFields) -> Option<BytesMut> {
    if fields.code != "42883" {
        return None;
    }
    let function = fields
        .message
        .strip_prefix("function tandem_")?
        .split('(')
        .next()?;
    if !crate::control::CONTROL_FUNCTIONS.contains(&function) {
        return None;
    }
    let arguments = match function {
        "xid" | "commit" | "rollback" | "leave" => "",
        _ => "…",
    };
    let message = format!(
        "{}: tandem answers tandem_{function}() only as a statement of its own (SELECT tandem_{function}({arguments})), not inside another statement or beside others",
        fields.message
    );
    let mut out = BytesMut::new();
    put_error(&mut out, Severity::Error, &fields.code, &message);
    Some(out)
}

/// `DISCARD ALL` and `RESET ALL`: what connection pools send when they hand a
/// connection to someone else.
pub(super) fn is_pool_reset(sql: &[u8]) -> bool {
    // Runs on every simple Query: decide without allocating.
    let Ok(text) = std::str::from_utf8(sql) else {
        return false;
    };
    let mut words = text.trim().trim_end_matches(';').split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(a), Some(b), None) => {
            (a.eq_ignore_ascii_case("DISCARD") || a.eq_ignore_ascii_case("RESET"))
                && b.eq_ignore_ascii_case("ALL")
        }
        _ => false,
    }
}

/// The first byte of the names of tandem's own statements and portals, which no
/// client's may start with.
pub(super) const OWN_NAME_MARK: u8 = 0x01;

/// Whether a client's Bind, Describe, Execute or Close names one of tandem's own
/// statements or portals (Parse of such a name is refused in `refusal_for_parse`).
pub(super) fn names_tandems_own(tag: u8, body: &[u8]) -> bool {
    use crate::wire::pg::codes::frontend;
    let starts_own = |name: &[u8]| name.first() == Some(&OWN_NAME_MARK);
    match tag {
        frontend::BIND => {
            let mut names = body.splitn(3, |&b| b == 0);
            let portal = names.next().unwrap_or_default();
            let statement = names.next().unwrap_or_default();
            starts_own(portal) || starts_own(statement)
        }
        frontend::EXECUTE => starts_own(body),
        frontend::DESCRIBE | frontend::CLOSE => starts_own(body.get(1..).unwrap_or_default()),
        _ => false,
    }
}

/// A Parse with the client's statement name whose SQL fails at parse time; its
/// ErrorResponse is replaced by tandem's own (see `Tracked::take_refusal`).
pub(super) fn put_failing_parse(buf: &mut BytesMut, original: &[u8]) {
    use bytes::BufMut;
    let name = Parse::decode(original).map(|p| p.name).unwrap_or(b"");
    let sql: &[u8] = b"tandem refused this statement";
    buf.put_u8(crate::wire::pg::codes::frontend::PARSE);
    buf.put_i32((4 + name.len() + 1 + sql.len() + 1 + 2) as i32);
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(sql);
    buf.put_u8(0);
    buf.put_i16(0);
}

/// A Bind of the client's portal to a statement that does not exist; its ErrorResponse
/// is replaced by tandem's own.
pub(super) fn put_failing_bind(buf: &mut BytesMut, original: &[u8]) {
    let portal = crate::wire::pg::messages::extended::Bind::decode(original)
        .map(|b| b.portal)
        .unwrap_or(b"");
    put_failing_bind_of(buf, portal);
}

/// A Bind of `portal` to a statement that does not exist (see `put_failing_bind`).
pub(super) fn put_failing_bind_of(buf: &mut BytesMut, portal: &[u8]) {
    use bytes::BufMut;
    // Named as tandem names its own (exchange.rs's `STATEMENT`), so no client's Parse
    // made it; and with two parameter format codes for no parameter, the server
    // refuses it even where a client's SQL-level PREPARE did.
    let statement: &[u8] = b"\x01tandem refused this statement";
    buf.put_u8(crate::wire::pg::codes::frontend::BIND);
    buf.put_i32((4 + portal.len() + 1 + statement.len() + 1 + 2 + 4 + 2 + 2) as i32);
    buf.put_slice(portal);
    buf.put_u8(0);
    buf.put_slice(statement);
    buf.put_u8(0);
    buf.put_u16(2);
    buf.put_i16(0);
    buf.put_i16(0);
    buf.put_u16(0);
    buf.put_u16(0);
}

#[cfg(test)]
mod tests {
    use super::{is_pool_reset, names_tandems_own};
    use crate::wire::pg::codes::frontend;

    #[test]
    fn own_names_in_bind_describe_execute_and_close() {
        for (tag, body) in [
            (frontend::BIND, &b"\0\x01tandem_write\0\0\0\0\0\0\0"[..]),
            (frontend::BIND, b"\x01tandem_portal\0s1\0\0\0\0\0\0\0"),
            (frontend::EXECUTE, b"\x01tandem_portal\0\0\0\0\0"),
            (frontend::DESCRIBE, b"S\x01tandem_stmt\0"),
            (frontend::CLOSE, b"P\x01tandem_portal\0"),
        ] {
            assert!(names_tandems_own(tag, body), "{body:?}");
        }
        for (tag, body) in [
            (frontend::BIND, &b"\0s1\0\0\0\0\0\0\0"[..]),
            (frontend::BIND, b"\0\0\0\0\0\0\0\0"),
            (frontend::EXECUTE, b"\0\0\0\0\x01"),
            (frontend::DESCRIBE, b"S\0"),
            (frontend::CLOSE, b""),
            (frontend::PARSE, b"\x01x\0SELECT 1\0\0\0"),
        ] {
            assert!(!names_tandems_own(tag, body), "{body:?}");
        }
    }

    #[test]
    fn pool_resets() {
        for sql in ["DISCARD ALL", "reset all;", "  Discard\tAll ; "] {
            assert!(is_pool_reset(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "DISCARD PLANS",
            "RESET ALL; SELECT 1",
            "SELECT 'DISCARD ALL'",
            "RESET",
        ] {
            assert!(!is_pool_reset(sql.as_bytes()), "{sql}");
        }
    }
}
