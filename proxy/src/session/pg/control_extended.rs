//! Control statements (`SELECT tandem_begin()` …) over the extended query protocol.
//!
//! At a sync point tandem answers the whole `[Parse] Bind [Describe] Execute Sync` batch
//! itself, as the backend would for a one-row, one-text-column query. The client's
//! statement is created on the backend as `SELECT NULL::text AS "<column>"` (same shape),
//! so that a later Describe of it, or a Close, works; binding it again is a control
//! statement again. A Parse alone is relayed with that same replacement SQL. A call's
//! parameter (`tandem_join($1)`) is read from the Bind, in text or binary format; the
//! stand-in takes it too, so that the backend describes it as it would the call.

use super::Relay;
use super::at_extended::{Extended, Shape, read_batch, rest_len};
use crate::control::{self, BadCall, Call, ParameterKind};
use crate::error::{Error, Result};
use crate::wire::pg::codes::{backend, frontend, target};
use crate::wire::pg::messages::extended::Parse;
use crate::wire::pg::messages::response::{Severity, TxStatus, put_error, put_ready_for_query};
use crate::wire::pg::messages::write::put_empty;
use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

/// The type of every control answer: text.
const TEXT_OID: u32 = 25;
const INT8_OID: u32 = 20;

impl Relay<'_> {
    /// A Parse or Bind whose statement is a control statement.
    pub(super) async fn intercept_control(
        &mut self,
        rest: &[u8],
        tag: u8,
        body: &[u8],
        parsed: std::result::Result<Call, BadCall>,
    ) -> Result<Extended> {
        // Earlier messages of a batch at the backend already: tandem cannot answer in
        // their place. A Parse is refused by `refusal_for_parse`; a Bind is refused here,
        // never run against the stand-in statement.
        if let Some(instead) = self.unless_at_sync_point(
            tag,
            "a control function in the middle of a pipelined batch (send it alone)",
        ) {
            return Ok(instead);
        }
        let max = self.ctx.config.max_message_bytes;
        let column = parsed.as_ref().map(Call::column).unwrap_or("xid");
        let parameters = parsed.as_ref().map(Call::parameters).unwrap_or_default();
        let batch = match read_batch(rest, max)? {
            Shape::Incomplete => return Ok(Extended::NeedMore),
            Shape::PrepareOnly | Shape::Flushed if tag == frontend::PARSE => {
                return Ok(Extended::ReplaceParse(stand_in_parse(
                    body,
                    column,
                    &parameters,
                )));
            }
            // The client waits for replies before its Sync: tandem cannot answer in
            // order there.
            Shape::Flushed => {
                let e = Error::Unsupported {
                    what: "a control function followed by Flush before its Sync (send it with Sync)",
                };
                return Ok(Extended::RefuseBind(super::tracked::Refusal {
                    sqlstate: e.sqlstate().code(),
                    message: e.to_string(),
                }));
            }
            Shape::Run(batch) => batch,
            Shape::PrepareOnly | Shape::Other(_) => {
                let e = Error::Unsupported {
                    what: "a control function batched with other messages (send it alone)",
                };
                return self.answer_directly(rest_len(rest, max)?, e).await;
            }
        };
        let consumed = batch.len;
        // The client's Parse comes first, as without tandem: one the backend refuses (a
        // name in use) fails the batch before the call runs.
        let mut out = BytesMut::new();
        if let Some(frame) = batch.parse_frame {
            let stand_in = stand_in_parse(&frame[5..], column, &parameters);
            if let Some((code, message)) = self.create_statement(&stand_in, &frame[5..]).await? {
                let status = match self.phase.tx_status() {
                    // The Parse error failed the block on the backend too.
                    Some(TxStatus::InTransaction) => TxStatus::Failed,
                    status => status.unwrap_or(TxStatus::Idle),
                };
                self.phase = super::Phase::Ready(status);
                put_error(&mut out, Severity::Error, &code, &message);
                self.put_batch_end(&mut out, status).await?;
                return self.answered(&out, consumed).await;
            }
            put_empty(&mut out, backend::PARSE_COMPLETE);
        }
        // The statement's declared parameter types, as the backend has them.
        let declared = match &batch.parse {
            Some(parse) => parse.param_types.clone(),
            None => self
                .tracked
                .statement_for_bind(batch.bind.statement)
                .map(|s| s.param_types.clone())
                .unwrap_or_default(),
        };
        let parameter_types = parameter_types(&declared, &parameters);
        let format = batch.bind.result_formats.first().copied().unwrap_or(0);
        // What the Describe answers: a statement's parameters and columns (text), a
        // portal's columns in the Bind's format.
        let put_description = |out: &mut BytesMut| match batch.describe {
            Some((target::STATEMENT, _)) => {
                out.put_u8(backend::PARAMETER_DESCRIPTION);
                out.put_i32(6 + 4 * parameter_types.len() as i32);
                out.put_u16(parameter_types.len() as u16);
                for &oid in &parameter_types {
                    out.put_u32(oid);
                }
                put_row_description(out, column, 0);
            }
            Some(_) => put_row_description(out, column, format),
            None => {}
        };
        if batch.describe_before_bind {
            put_description(&mut out);
        }
        let bound = parsed.and_then(|call| {
            let values = bound_values(&call, &batch.bind, &parameter_types)?;
            call.bind(&values)
        });
        let answer = match bound {
            _ if self.phase.tx_status() == Some(TxStatus::Failed) => Err(Error::Unsupported {
                what: "a control function in a failed transaction block (ROLLBACK first)",
            }),
            // As the backend answers it: a protocol violation, not a bad argument.
            _ if batch.bind.params.len() != parameter_types.len() => Err(Error::MalformedCommand {
                what: "Bind: it supplies another number of parameters than its statement takes",
            }),
            Err(BadCall(message)) => Err(Error::BadControlCall(message)),
            Ok(control) => {
                let local = crate::binding::LocalTransaction {
                    open: self.phase.tx_status() == Some(TxStatus::InTransaction),
                    has_branch: !self.branch.is_empty() || self.xa != super::xa::XaBranch::None,
                    fresh: self.block_untouched,
                };
                self.binding.carry_out(&self.ctx.lock, local, control).await
            }
        };
        let value = match answer {
            Ok(value) => value,
            Err(e) => {
                // The statement was created (ParseComplete); the call fails.
                self.write_client(&out);
                return self.answer_directly(consumed, e).await;
            }
        };
        put_empty(&mut out, backend::BIND_COMPLETE);
        if !batch.describe_before_bind {
            put_description(&mut out);
        }
        put_answer_rows(&mut out, value.as_deref());
        let status = self.phase.tx_status().unwrap_or(TxStatus::Idle);
        self.put_batch_end(&mut out, status).await?;
        self.answered(&out, consumed).await
    }
}

impl Relay<'_> {
    /// Creates a statement of a batch tandem answers itself on the backend (`parse`: the
    /// Parse frame to send), so that it exists there as the client thinks, and tracks it
    /// as the client's Parse (`client_body`) described it.
    /// `Ok(Some((sqlstate, message)))`: the backend refused the Parse.
    pub(super) async fn create_statement(
        &mut self,
        parse: &[u8],
        client_body: &[u8],
    ) -> Result<Option<(String, String)>> {
        self.server
            .write_all(parse)
            .await
            .map_err(Error::UpstreamIo)?;
        self.server
            .write_all(&[frontend::SYNC, 0, 0, 0, 4])
            .await
            .map_err(Error::UpstreamIo)?;
        let created = self
            .read_exchange_replies(1)
            .await?
            .pop()
            .unwrap_or_default();
        if let Some(e) = created.error {
            return Ok(Some((e.code, e.message)));
        }
        self.tracked
            .record_statement(client_body, &parse[5..])
            .map_err(|_| Error::Malformed { what: "Parse" })?;
        Ok(None)
    }
}

/// Whether `sql` may be a control statement: the cheap test that runs on every Parse
/// and Bind.
pub(super) fn maybe_control(sql: &[u8]) -> Option<std::result::Result<Call, BadCall>> {
    control::parse_call(sql).transpose()
}

/// The type the server gives a parameter of `kind` that the client left unspecified.
fn inferred_type(kind: ParameterKind) -> u32 {
    match kind {
        ParameterKind::Integer => INT8_OID,
        ParameterKind::Text => TEXT_OID,
    }
}

/// The statement's parameter types as the backend describes them: those the client
/// declared, an unspecified one (0) as the server infers it for the call's parameter.
fn parameter_types(declared: &[u32], parameters: &[ParameterKind]) -> Vec<u32> {
    let mut types = declared.to_vec();
    if types.len() < parameters.len() {
        types.resize(parameters.len(), 0);
    }
    for (oid, &kind) in types.iter_mut().zip(parameters) {
        if *oid == 0 {
            *oid = inferred_type(kind);
        }
    }
    types
}

/// The Bind's parameter values as text (None for NULL): text format as sent; binary
/// format read by the parameter's type (text types as their bytes, integers as
/// numbers).
fn bound_values(
    call: &Call,
    bind: &crate::wire::pg::messages::extended::Bind<'_>,
    types: &[u32],
) -> std::result::Result<Vec<Option<String>>, BadCall> {
    let function = call.function();
    let bad = |what: String| BadCall(format!("tandem_{function}: {what}"));
    let format_of = |i: usize| match bind.param_formats.as_slice() {
        [] => 0,
        [one] => *one,
        formats => formats.get(i).copied().unwrap_or(0),
    };
    let mut values = Vec::with_capacity(bind.params.len());
    for (i, (value, &oid)) in bind.params.iter().zip(types).enumerate() {
        let Some(bytes) = value else {
            values.push(None);
            continue;
        };
        let text = match (format_of(i), oid, bytes.len()) {
            // text, varchar, bpchar, name, unknown: the same bytes in either format.
            (0, ..) | (1, 25 | 1043 | 1042 | 19 | 705, _) => std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| bad(format!("parameter ${} is not UTF-8", i + 1)))?,
            (1, 20, 8) => i64::from_be_bytes(bytes[..8].try_into().unwrap_or_default()).to_string(),
            (1, 23, 4) => i32::from_be_bytes(bytes[..4].try_into().unwrap_or_default()).to_string(),
            (1, 21, 2) => i16::from_be_bytes(bytes[..2].try_into().unwrap_or_default()).to_string(),
            (format, oid, _) => {
                return Err(bad(format!(
                    "parameter ${} (type OID {oid}, format {format}) cannot be read: send it as text",
                    i + 1
                )));
            }
        };
        values.push(Some(text));
    }
    Ok(values)
}

/// The client's Parse with its SQL replaced by a statement of the control answer's
/// shape: one text column named as the answer is, taking the call's parameter (cast as
/// the call reads it) and keeping the parameter types the client declared.
fn stand_in_parse(original: &[u8], column: &str, parameters: &[ParameterKind]) -> BytesMut {
    let parse = Parse::decode(original).ok();
    let name = parse.as_ref().map_or(&b""[..], |p| p.name);
    let declared = parse.as_ref().map_or(&[][..], |p| p.param_types.as_slice());
    let sql = match parameters.first() {
        None => format!("SELECT NULL::text AS \"{column}\""),
        Some(kind) => {
            let cast = match kind {
                ParameterKind::Integer => "bigint",
                ParameterKind::Text => "text",
            };
            format!(
                "SELECT NULL::text AS \"{column}\" FROM (SELECT $1::{cast}) AS tandem_parameter"
            )
        }
    };
    let mut out = BytesMut::new();
    out.put_u8(frontend::PARSE);
    out.put_i32((4 + name.len() + 1 + sql.len() + 1 + 2 + 4 * declared.len()) as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.put_u16(declared.len() as u16);
    for &oid in declared {
        out.put_u32(oid);
    }
    out
}

/// The DataRow and CommandComplete of a control answer. A text value is the same bytes
/// in text and in binary format.
fn put_answer_rows(out: &mut BytesMut, value: Option<&str>) {
    out.put_u8(backend::DATA_ROW);
    let len = value.map_or(0, str::len);
    out.put_i32((4 + 2 + 4 + len) as i32);
    out.put_i16(1);
    match value {
        Some(v) => {
            out.put_i32(v.len() as i32);
            out.put_slice(v.as_bytes());
        }
        None => out.put_i32(-1),
    }
    out.put_u8(backend::COMMAND_COMPLETE);
    out.put_i32(4 + 9);
    out.put_slice(b"SELECT 1\0");
}

/// The whole answer to a control statement sent as a simple Query, as the backend would
/// give it for `SELECT <value>::text AS "<column>"`.
pub(super) fn put_simple_answer(
    out: &mut BytesMut,
    column: &str,
    value: Option<&str>,
    status: TxStatus,
) {
    put_row_description(out, column, 0);
    put_answer_rows(out, value);
    put_ready_for_query(out, status);
}

fn put_row_description(out: &mut BytesMut, column: &str, format: i16) {
    out.put_u8(backend::ROW_DESCRIPTION);
    out.put_i32((4 + 2 + column.len() + 1 + 18) as i32);
    out.put_i16(1);
    out.put_slice(column.as_bytes());
    out.put_u8(0);
    out.put_u32(0); // table OID
    out.put_i16(0); // column number
    out.put_u32(TEXT_OID);
    out.put_i16(-1); // typlen: variable
    out.put_i32(-1); // typmod
    out.put_i16(format);
}

/// The error and ReadyForQuery that end a refused batch.
pub(super) fn put_refusal(out: &mut BytesMut, e: &Error, status: TxStatus) {
    put_error(out, Severity::Error, e.sqlstate().code(), &e.to_string());
    put_ready_for_query(out, status);
}
