//! tandem's own prepared statements on a session's connection ("Prepared Statements" in
//! the protocol docs): COM_STMT_PREPARE, COM_STMT_EXECUTE with typed binary parameters,
//! COM_STMT_CLOSE, the column types of a result and its binary rows; and the whole OK
//! packet, whose affected rows and last insert id AT needs.
//!
//! Owns the binary value layout. A value here is what undo calls an image: the binary
//! protocol's encoding without its length prefix (see `tandem_undo::mysql::types`).
//! Never does I/O.

use super::super::codes::{StatusFlags, command, reply};
use super::super::packet::put_message;
use super::super::reader::{Reader, Truncated};
use bytes::BytesMut;

/// `MYSQL_TYPE_*` codes whose binary values have a fixed width or a one-byte length.
mod ty {
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const BIT: u8 = 16;
}

/// How a binary value of a type is laid out.
enum Layout {
    Fixed(usize),
    /// A one-byte length, then that many bytes (dates and times).
    ShortLength,
    /// A length-encoded string.
    LengthEncoded,
    Nothing,
}

fn layout(type_byte: u8) -> Layout {
    match type_byte {
        ty::TINY => Layout::Fixed(1),
        ty::SHORT | ty::YEAR => Layout::Fixed(2),
        ty::LONG | ty::INT24 | ty::FLOAT => Layout::Fixed(4),
        ty::LONGLONG | ty::DOUBLE => Layout::Fixed(8),
        ty::DATE | ty::DATETIME | ty::TIMESTAMP | ty::TIME => Layout::ShortLength,
        ty::NULL => Layout::Nothing,
        _ => Layout::LengthEncoded,
    }
}

/// One parameter of tandem's COM_STMT_EXECUTE.
#[derive(Clone, Copy, Debug)]
pub struct Param<'a> {
    /// The two-byte parameter type: `MYSQL_TYPE_*`, with 0x8000 for UNSIGNED.
    pub type_code: u32,
    pub value: Option<&'a [u8]>,
}

/// A parameter whose value does not fit its fixed-width type (a corrupt image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadParam {
    pub index: usize,
}

/// Appends COM_STMT_PREPARE of `sql`.
pub fn put_prepare(out: &mut BytesMut, sql: &str) {
    let mut payload = Vec::with_capacity(1 + sql.len());
    payload.push(command::STMT_PREPARE);
    payload.extend_from_slice(sql.as_bytes());
    put_message(out, 0, &payload);
}

/// Appends COM_STMT_EXECUTE of statement `id` with `params`, bound anew, no cursor.
pub fn put_execute(out: &mut BytesMut, id: u32, params: &[Param<'_>]) -> Result<(), BadParam> {
    let mut payload = vec![command::STMT_EXECUTE];
    payload.extend_from_slice(&id.to_le_bytes());
    payload.push(0); // CURSOR_TYPE_NO_CURSOR
    payload.extend_from_slice(&1u32.to_le_bytes()); // iteration count
    if !params.is_empty() {
        let mut nulls = vec![0u8; params.len().div_ceil(8)];
        for (i, p) in params.iter().enumerate() {
            if p.value.is_none() {
                nulls[i / 8] |= 1 << (i % 8);
            }
        }
        payload.extend_from_slice(&nulls);
        payload.push(1); // new-params-bound
        for p in params {
            let (type_byte, flags) = wire_type(p.type_code);
            payload.push(type_byte);
            payload.push(flags);
        }
        for (index, p) in params.iter().enumerate() {
            let Some(value) = p.value else { continue };
            if (p.type_code & 0xff) as u8 == ty::BIT {
                payload.extend_from_slice(&bit_value(value).ok_or(BadParam { index })?);
                continue;
            }
            match layout(wire_type(p.type_code).0) {
                Layout::Fixed(width) if value.len() == width => payload.extend_from_slice(value),
                Layout::Fixed(_) => return Err(BadParam { index }),
                Layout::ShortLength => {
                    let len = u8::try_from(value.len()).map_err(|_| BadParam { index })?;
                    payload.push(len);
                    payload.extend_from_slice(value);
                }
                Layout::LengthEncoded | Layout::Nothing => put_lenenc_bytes(&mut payload, value),
            }
        }
    }
    put_message(out, 0, &payload);
    Ok(())
}

/// The type byte and flag byte a parameter is sent with. The server takes INT24, YEAR
/// and BIT parameters as strings, so they go as integers: INT24 and YEAR of their
/// binary width, BIT as the unsigned LONGLONG its bytes spell.
fn wire_type(type_code: u32) -> (u8, u8) {
    let flags = if type_code & 0x8000 != 0 { 0x80 } else { 0 };
    match (type_code & 0xff) as u8 {
        ty::INT24 => (ty::LONG, flags),
        ty::YEAR => (ty::SHORT, flags),
        ty::BIT => (ty::LONGLONG, 0x80),
        other => (other, flags),
    }
}

/// A BIT value (big-endian bytes, at most 8) as the little-endian u64 it spells.
pub fn bit_value(big_endian: &[u8]) -> Option<[u8; 8]> {
    if big_endian.len() > 8 {
        return None;
    }
    let n = big_endian
        .iter()
        .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
    Some(n.to_le_bytes())
}

/// Appends COM_STMT_CLOSE of statement `id` (the server sends no reply).
pub fn put_close(out: &mut BytesMut, id: u32) {
    let mut payload = vec![command::STMT_CLOSE];
    payload.extend_from_slice(&id.to_le_bytes());
    put_message(out, 0, &payload);
}

/// The `MYSQL_TYPE_*` of a column definition (Protocol::ColumnDefinition41), which
/// carries MariaDB's extended type information when the session negotiated
/// `MARIADB_CLIENT_EXTENDED_METADATA` (libmariadb does).
pub fn column_type(definition: &[u8], extended_metadata: bool) -> Option<u8> {
    let mut r = Reader::new(definition);
    for _ in 0..6 {
        // catalog, schema, table, org_table, name, org_name
        r.lenenc_bytes().ok()?;
    }
    if extended_metadata {
        r.lenenc_bytes().ok()?;
    }
    r.lenenc().ok()?; // length of the fixed fields, 0x0c
    r.u16().ok()?; // character set
    r.u32().ok()?; // column length
    r.u8().ok()
}

/// One binary result row: each value without its length prefix, None for NULL.
pub type BinaryRow = Vec<Option<Vec<u8>>>;

/// Decodes a binary result row ("Binary Protocol Resultset Row") whose columns have
/// `types`.
pub fn binary_row(payload: &[u8], types: &[u8]) -> Result<BinaryRow, Truncated> {
    let mut r = Reader::new(payload);
    if r.u8()? != reply::OK {
        return Err(Truncated);
    }
    // The NULL bitmap starts two bits in.
    let nulls = r.bytes((types.len() + 2).div_ceil(8))?;
    read_values(&mut r, nulls, 2, types.iter().copied())
}

/// Binary values of the given types, NULL where the bitmap (whose first `offset` bits
/// are not the values') says so.
fn read_values(
    r: &mut Reader<'_>,
    nulls: &[u8],
    offset: usize,
    types: impl ExactSizeIterator<Item = u8>,
) -> Result<BinaryRow, Truncated> {
    let mut values = Vec::with_capacity(types.len());
    for (i, type_byte) in types.enumerate() {
        let bit = i + offset;
        if nulls.get(bit / 8).ok_or(Truncated)? & (1 << (bit % 8)) != 0 {
            values.push(None);
            continue;
        }
        let value = match layout(type_byte) {
            Layout::Fixed(width) => r.bytes(width)?,
            Layout::ShortLength => {
                let len = usize::from(r.u8()?);
                r.bytes(len)?
            }
            Layout::LengthEncoded => r.lenenc_bytes()?,
            Layout::Nothing => &[],
        };
        values.push(Some(value.to_vec()));
    }
    Ok(values)
}

/// What tandem reads of a client's COM_STMT_EXECUTE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecuteHead {
    pub statement_id: u32,
    /// The parameter types (`type | flags << 8`) bound anew; None: the previous ones
    /// stay (the new-params-bound flag is 0, or the statement has no parameters).
    pub new_types: Option<Vec<u16>>,
}

/// Offset of the NULL bitmap in COM_STMT_EXECUTE: command, statement id, flags,
/// iteration count.
const EXECUTE_BITMAP_AT: usize = 1 + 4 + 1 + 4;

/// Decodes the head of a COM_STMT_EXECUTE whose statement has `params` parameters
/// (only the first bytes of the payload are needed).
pub fn execute_head(payload: &[u8], params: u16) -> Result<ExecuteHead, Truncated> {
    let mut r = Reader::new(payload);
    r.u8()?;
    let statement_id = r.u32()?;
    if params == 0 {
        return Ok(ExecuteHead {
            statement_id,
            new_types: None,
        });
    }
    r.bytes(1 + 4 + usize::from(params).div_ceil(8))?;
    let new_types = if r.u8()? == 1 {
        Some(
            (0..params)
                .map(|_| r.u16())
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    Ok(ExecuteHead {
        statement_id,
        new_types,
    })
}

/// The parameter values of a whole COM_STMT_EXECUTE, given the types in force (those
/// it binds, or the previous ones): each as an image, None for NULL.
pub fn execute_values(payload: &[u8], types: &[u16]) -> Result<BinaryRow, Truncated> {
    let nulls_len = types.len().div_ceil(8);
    let nulls = payload
        .get(EXECUTE_BITMAP_AT..EXECUTE_BITMAP_AT + nulls_len)
        .ok_or(Truncated)?;
    let mut r = Reader::new(
        payload
            .get(EXECUTE_BITMAP_AT + nulls_len..)
            .ok_or(Truncated)?,
    );
    if r.u8()? == 1 {
        r.bytes(2 * types.len())?;
    }
    // The low byte of a parameter type is the column type.
    read_values(&mut r, nulls, 0, types.iter().map(|&t| t as u8))
}

/// An OK packet, whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: StatusFlags,
    pub warnings: u16,
    /// The human-readable info (`Rows matched: 1  Changed: 1  Warnings: 0`), and any
    /// session-state data after it, as sent.
    pub rest: Vec<u8>,
}

impl OkPacket {
    /// Takes the transaction status of tandem's statement that ended the write's
    /// transaction (COMMIT, RELEASE SAVEPOINT…), keeping whether session-state data
    /// follows as this packet's own `rest` says: the flag without its data (or data
    /// without the flag) is a malformed packet to the client.
    pub fn take_status_of(&mut self, end: StatusFlags) {
        let tracked = StatusFlags::SERVER_SESSION_STATE_CHANGED;
        self.status = (end - tracked) | (self.status & tracked);
    }

    pub fn decode(payload: &[u8]) -> Option<OkPacket> {
        let mut r = Reader::new(payload);
        if r.u8().ok()? != reply::OK {
            return None;
        }
        Some(OkPacket {
            affected_rows: r.lenenc().ok()?,
            last_insert_id: r.lenenc().ok()?,
            status: StatusFlags::from_bits_retain(r.u16().ok()?),
            warnings: r.u16().ok()?,
            rest: r.remaining().to_vec(),
        })
    }

    /// What ROW_COUNT() answers after the statement this OK ends: its affected rows.
    pub fn row_count(&self) -> i64 {
        i64::try_from(self.affected_rows).unwrap_or(i64::MAX)
    }

    /// How many rows an UPDATE's WHERE matched, from its info (the affected rows count
    /// only those it changed, unless the client asked for found rows).
    pub fn rows_matched(&self) -> Option<u64> {
        let info = Reader::new(&self.rest).lenenc_bytes().ok()?;
        let info = std::str::from_utf8(info).ok()?;
        let rest = info.strip_prefix("Rows matched: ")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Appends this OK with sequence id `seq`.
    pub fn put(&self, out: &mut BytesMut, seq: u8) {
        let mut payload = vec![reply::OK];
        put_lenenc_int(&mut payload, self.affected_rows);
        put_lenenc_int(&mut payload, self.last_insert_id);
        payload.extend_from_slice(&self.status.bits().to_le_bytes());
        payload.extend_from_slice(&self.warnings.to_le_bytes());
        payload.extend_from_slice(&self.rest);
        put_message(out, seq, &payload);
    }
}

pub(super) fn put_lenenc_int(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0xfa => out.push(n as u8),
        0xfb..=0xffff => {
            out.push(0xfc);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            out.push(0xfd);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xfe);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

pub(super) fn put_lenenc_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_lenenc_int(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_taken_from_commit_keeps_the_writes_session_state_flag() {
        let tracked = StatusFlags::SERVER_SESSION_STATE_CHANGED;
        let in_trans = StatusFlags::SERVER_STATUS_IN_TRANS;
        let autocommit = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let mut ok = OkPacket {
            affected_rows: 1,
            last_insert_id: 0,
            status: in_trans | autocommit,
            warnings: 0,
            rest: Vec::new(),
        };
        // COMMIT's GTID data is not in this packet's rest: neither is its flag.
        ok.take_status_of(autocommit | tracked);
        assert_eq!(ok.status, autocommit);
        ok.status = in_trans | autocommit | tracked;
        ok.take_status_of(autocommit);
        assert_eq!(ok.status, autocommit | tracked);
    }

    #[test]
    fn execute_lays_out_each_parameter_by_its_type() {
        let mut out = BytesMut::new();
        let params = [
            Param {
                type_code: 8 | 0x8000,
                value: Some(&[1, 0, 0, 0, 0, 0, 0, 0]),
            },
            Param {
                type_code: 252,
                value: None,
            },
            Param {
                type_code: 12,
                value: Some(&[0xe8, 0x07, 1, 2]),
            },
            Param {
                type_code: 9,
                value: Some(&[7, 0, 0, 0]),
            },
            Param {
                type_code: 252,
                value: Some(b"ab"),
            },
            Param {
                type_code: 16 | 0x8000,
                value: Some(&[0x01, 0x02]),
            },
        ];
        put_execute(&mut out, 5, &params).unwrap();
        let payload = &out[4..];
        assert_eq!(
            payload,
            [
                &[command::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0][..],
                &[0b0000_0010, 1],
                &[8, 0x80, 252, 0, 12, 0, 3, 0, 252, 0, 8, 0x80],
                &[1, 0, 0, 0, 0, 0, 0, 0],
                &[4, 0xe8, 0x07, 1, 2],
                &[7, 0, 0, 0],
                &[2, b'a', b'b'],
                &[0x02, 0x01, 0, 0, 0, 0, 0, 0],
            ]
            .concat()
        );
        let short = [Param {
            type_code: 3,
            value: Some(&[1]),
        }];
        assert_eq!(
            put_execute(&mut BytesMut::new(), 1, &short),
            Err(BadParam { index: 0 })
        );
    }

    #[test]
    fn binary_rows_split_by_column_type_and_null_bitmap() {
        // Columns: LONG, VAR_STRING (NULL), DATETIME, DOUBLE.
        let types = [3, 253, 12, 5];
        let mut payload = vec![0x00, 0b0000_1000];
        payload.extend_from_slice(&[42, 0, 0, 0]);
        payload.extend_from_slice(&[7, 0xe8, 0x07, 12, 31, 23, 59, 58]);
        payload.extend_from_slice(&(-0.0f64).to_le_bytes());
        let row = binary_row(&payload, &types).unwrap();
        assert_eq!(
            row,
            vec![
                Some(vec![42, 0, 0, 0]),
                None,
                Some(vec![0xe8, 0x07, 12, 31, 23, 59, 58]),
                Some((-0.0f64).to_le_bytes().to_vec()),
            ]
        );
        assert_eq!(binary_row(&payload[..8], &types), Err(Truncated));
    }

    #[test]
    fn a_clients_execute_gives_its_types_and_values() {
        let params = [
            Param {
                type_code: 8 | 0x8000,
                value: Some(&7u64.to_le_bytes()),
            },
            Param {
                type_code: 253,
                value: None,
            },
            Param {
                type_code: 253,
                value: Some(b"x y"),
            },
        ];
        let mut out = BytesMut::new();
        put_execute(&mut out, 9, &params).unwrap();
        let payload = &out[4..];
        let head = execute_head(payload, 3).unwrap();
        assert_eq!(head.statement_id, 9);
        let types = head.new_types.unwrap();
        assert_eq!(types, [0x8008, 253, 253]);
        assert_eq!(
            execute_values(payload, &types).unwrap(),
            vec![
                Some(7u64.to_le_bytes().to_vec()),
                None,
                Some(b"x y".to_vec())
            ]
        );
        // Without new types, the previous ones apply.
        let mut again = payload.to_vec();
        let flag_at = EXECUTE_BITMAP_AT + 1;
        again[flag_at] = 0;
        again.drain(flag_at + 1..flag_at + 7);
        assert_eq!(execute_head(&again, 3).unwrap().new_types, None);
        assert_eq!(
            execute_values(&again, &types).unwrap()[2],
            Some(b"x y".to_vec())
        );
        assert_eq!(execute_values(&payload[..12], &types), Err(Truncated));
    }

    #[test]
    fn ok_packets_round_trip_and_tell_matched_rows() {
        let info = b"Rows matched: 12  Changed: 3  Warnings: 0";
        let mut rest = vec![info.len() as u8];
        rest.extend_from_slice(info);
        let ok = OkPacket {
            affected_rows: 3,
            last_insert_id: 70_000,
            status: StatusFlags::SERVER_STATUS_IN_TRANS,
            warnings: 0,
            rest,
        };
        let mut out = BytesMut::new();
        ok.put(&mut out, 1);
        assert_eq!(out[3], 1);
        let back = OkPacket::decode(&out[4..]).unwrap();
        assert_eq!(back, ok);
        assert_eq!(back.rows_matched(), Some(12));
    }

    #[test]
    fn column_definitions_give_their_type() {
        let mut def = Vec::new();
        for s in [&b"def"[..], b"db", b"t", b"t", b"c", b"c"] {
            put_lenenc_bytes(&mut def, s);
        }
        let fixed = [0x0c, 63, 0, 11, 0, 0, 0, 246, 0, 0, 2, 0, 0];
        let mut extended = def.clone();
        def.extend_from_slice(&fixed);
        assert_eq!(column_type(&def, false), Some(246));
        // MariaDB's extended type information comes before the fixed fields.
        put_lenenc_bytes(&mut extended, b"\x00\x04json");
        extended.extend_from_slice(&fixed);
        assert_eq!(column_type(&extended, true), Some(246));
        assert_ne!(column_type(&extended, false), Some(246));
    }
}
