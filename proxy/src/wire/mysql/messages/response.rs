//! Server replies tandem reads: OK, ERR, EOF, result-set terminators and the prepare-OK;
//! and the ERR packet tandem writes ("Generic Response Packets").
//!
//! Owns telling a terminator from a row. Never needs a whole row: every decision here
//! reads at most the first `CLASSIFY_BYTES` bytes of a payload.

use super::super::codes::{StatusFlags, reply};
use super::super::packet::{HEADER_LEN, Header, MAX_PAYLOAD, put_message, renumber};
use super::super::reader::Reader;
use bytes::BytesMut;

/// The most bytes of a payload that classifying a reply needs: an OK header, two
/// length-encoded integers of up to 9 bytes each, and the status word.
pub const CLASSIFY_BYTES: usize = 1 + 9 + 9 + 2;

/// The status flags of an OK packet (header 0x00, or 0xFE when it ends a result set
/// under CLIENT_DEPRECATE_EOF): header, affected rows, last insert id, status.
pub fn ok_status(payload: &[u8]) -> Option<StatusFlags> {
    let mut r = Reader::new(payload);
    r.u8().ok()?;
    r.lenenc().ok()?;
    r.lenenc().ok()?;
    Some(StatusFlags::from_bits_retain(r.u16().ok()?))
}

/// Where the status flags of an OK packet sit in its payload (see [`ok_status`]).
pub fn ok_status_offset(payload: &[u8]) -> Option<usize> {
    let mut r = Reader::new(payload);
    r.u8().ok()?;
    r.lenenc().ok()?;
    r.lenenc().ok()?;
    let at = payload.len() - r.remaining().len();
    (payload.len() >= at + 2).then_some(at)
}

/// Where the status flags of a classic EOF packet sit in its payload.
pub const EOF_STATUS_OFFSET: usize = 3;

/// The status flags of a classic EOF packet: 0xFE, warnings, status.
pub fn eof_status(payload: &[u8]) -> Option<StatusFlags> {
    let mut r = Reader::new(payload);
    r.u8().ok()?;
    r.u16().ok()?;
    Some(StatusFlags::from_bits_retain(r.u16().ok()?))
}

/// Whether a packet whose payload starts with `first` and is `payload_len` long ends a
/// run of rows or column definitions. A row can start with 0xFE only as the 8-byte
/// length prefix of a value of 16 MiB or more, so its first packet is a full
/// MAX_PAYLOAD one; a classic EOF is under 9 bytes ("Text Resultset", EOF_Packet).
pub fn is_terminator(first: u8, payload_len: usize, deprecate_eof: bool) -> bool {
    first == reply::EOF
        && if deprecate_eof {
            payload_len < MAX_PAYLOAD
        } else {
            payload_len < 9
        }
}

/// The status flags of a terminator packet.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Option<StatusFlags> {
    if deprecate_eof {
        ok_status(payload)
    } else {
        eof_status(payload)
    }
}

/// A result set read whole (the rows a write's RETURNING gives), held to be sent on
/// once tandem has ended the transaction it ran in: each packet's payload, in order,
/// the terminator last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldResultSet {
    pub payloads: Vec<Vec<u8>>,
    /// How many rows it holds.
    pub rows: u64,
    pub deprecate_eof: bool,
}

impl HeldResultSet {
    /// The terminator's status flags and warnings.
    pub fn terminator(&self) -> Option<(StatusFlags, u16)> {
        let last = self.payloads.last()?;
        let mut r = Reader::new(last);
        r.u8().ok()?;
        if self.deprecate_eof {
            r.lenenc().ok()?;
            r.lenenc().ok()?;
            let status = StatusFlags::from_bits_retain(r.u16().ok()?);
            Some((status, r.u16().ok()?))
        } else {
            let warnings = r.u16().ok()?;
            Some((StatusFlags::from_bits_retain(r.u16().ok()?), warnings))
        }
    }

    /// Gives the terminator the status flags `status`: those of the statement that
    /// ended the write's transaction. The EOF after the column definitions (without
    /// CLIENT_DEPRECATE_EOF) takes its IN_TRANS flag: a transaction tandem opened
    /// around an autocommit write is none of the client's.
    pub fn set_status(&mut self, status: StatusFlags) {
        let deprecate_eof = self.deprecate_eof;
        let columns = self.payloads.first().and_then(|head| column_count(head));
        if !deprecate_eof
            && let Some(eof) = columns.and_then(|n| self.payloads.get_mut(1 + n as usize))
            && eof.first() == Some(&crate::wire::mysql::codes::reply::EOF)
            && let Some(was) = eof_status(eof)
        {
            let in_trans = StatusFlags::SERVER_STATUS_IN_TRANS;
            let now = (was - in_trans) | (status & in_trans);
            eof[EOF_STATUS_OFFSET..EOF_STATUS_OFFSET + 2]
                .copy_from_slice(&now.bits().to_le_bytes());
        }
        let Some(last) = self.payloads.last_mut() else {
            return;
        };
        let at = if deprecate_eof {
            ok_status_offset(last)
        } else {
            (last.len() >= EOF_STATUS_OFFSET + 2).then_some(EOF_STATUS_OFFSET)
        };
        if let Some(at) = at {
            last[at..at + 2].copy_from_slice(&status.bits().to_le_bytes());
        }
    }

    /// Appends every packet, numbered from `seq` on as the server numbered them.
    pub fn put(&self, out: &mut BytesMut, seq: u8) {
        let mut seq = seq;
        for payload in &self.payloads {
            seq = put_message(out, seq, payload);
        }
    }
}

/// One statement's whole reply (an OK, an ERR or a result set, numbered from 1 as
/// the reply to a command of its own), made a part of a multi-statement query's reply:
/// numbered on from `seq`, and, when `more` statements follow, flagged
/// SERVER_MORE_RESULTS_EXISTS where the server flags it (the OK, or both EOFs of a
/// result set, or its terminator under CLIENT_DEPRECATE_EOF). Returns the sequence id
/// after it, and whether it was an ERR: the server runs nothing after a failed
/// statement, so that ends the reply.
pub fn continue_multi_result(
    reply: &mut [u8],
    seq: u8,
    more: bool,
    deprecate_eof: bool,
) -> (u8, bool) {
    let next = renumber(reply, seq);
    let mut offsets = Vec::new();
    let mut pos = 0;
    while let Some(header) = reply.get(pos..).and_then(Header::peek) {
        offsets.push((pos + HEADER_LEN, header.payload_len));
        pos += header.wire_len();
    }
    let first = offsets.first().and_then(|&(at, _)| reply.get(at)).copied();
    if first == Some(reply::ERR) {
        return (next, true);
    }
    if !more {
        return (next, false);
    }
    let status_at = |payload: &[u8], ok_form: bool| {
        if ok_form {
            ok_status_offset(payload)
        } else {
            (payload.len() >= EOF_STATUS_OFFSET + 2).then_some(EOF_STATUS_OFFSET)
        }
    };
    let mut flagged = Vec::new();
    match (first, offsets.as_slice()) {
        (Some(reply::OK), [(at, len)]) => flagged.push((*at, *len, true)),
        (Some(_), [(head, head_len), ..]) => {
            let columns = column_count(&reply[*head..*head + *head_len]).unwrap_or(0);
            if !deprecate_eof
                && let Some(&(at, len)) = usize::try_from(columns)
                    .ok()
                    .and_then(|n| offsets.get(1 + n))
            {
                flagged.push((at, len, false));
            }
            if let Some(&(at, len)) = offsets.last() {
                flagged.push((at, len, deprecate_eof));
            }
        }
        _ => {}
    }
    for (at, len, ok_form) in flagged {
        let end = (at + len).min(reply.len());
        let payload = &mut reply[at..end];
        if let Some(offset) = status_at(payload, ok_form) {
            let status = StatusFlags::from_bits_retain(u16::from_le_bytes([
                payload[offset],
                payload[offset + 1],
            ])) | StatusFlags::SERVER_MORE_RESULTS_EXISTS;
            payload[offset..offset + 2].copy_from_slice(&status.bits().to_le_bytes());
        }
    }
    (next, false)
}

/// COM_STMT_PREPARE's OK: the statement id and how many definitions follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
}

impl PrepareOk {
    pub fn decode(payload: &[u8]) -> Option<PrepareOk> {
        let mut r = Reader::new(payload);
        if r.u8().ok()? != reply::OK {
            return None;
        }
        Some(PrepareOk {
            statement_id: r.u32().ok()?,
            columns: r.u16().ok()?,
            params: r.u16().ok()?,
        })
    }
}

/// The first length-encoded integer of a payload: a result set's column count.
pub fn column_count(payload: &[u8]) -> Option<u64> {
    Reader::new(payload).lenenc().ok()
}

/// An ERR packet's code, SQLSTATE (when the 4.1 marker is there) and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrPacket<'a> {
    pub code: u16,
    pub sqlstate: Option<&'a [u8]>,
    pub message: &'a [u8],
}

impl<'a> ErrPacket<'a> {
    pub fn decode(payload: &'a [u8]) -> Option<ErrPacket<'a>> {
        let mut r = Reader::new(payload);
        if r.u8().ok()? != reply::ERR {
            return None;
        }
        let code = r.u16().ok()?;
        let rest = r.remaining();
        if let Some(after_marker) = rest.strip_prefix(b"#") {
            let (state, message) = after_marker.split_at_checked(5)?;
            return Some(ErrPacket {
                code,
                sqlstate: Some(state),
                message,
            });
        }
        Some(ErrPacket {
            code,
            sqlstate: None,
            message: rest,
        })
    }
}

/// Appends an ERR packet in place of the server's greeting: before the client has said
/// it speaks protocol 4.1, an ERR carries no SQLSTATE marker (the server's own
/// pre-handshake errors, such as 1040, have none either).
pub fn put_err_before_greeting(out: &mut BytesMut, code: u16, message: &str) {
    let mut payload = Vec::with_capacity(3 + message.len());
    payload.push(reply::ERR);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    put_message(out, 0, &payload);
}

/// Appends an ERR packet with sequence id `seq` (4.1 form, with the SQLSTATE marker).
pub fn put_err(out: &mut BytesMut, seq: u8, code: u16, sqlstate: &[u8; 5], message: &str) {
    let mut payload = Vec::with_capacity(9 + message.len());
    payload.push(reply::ERR);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(sqlstate);
    payload.extend_from_slice(message.as_bytes());
    put_message(out, seq, &payload);
}

/// The status a packet of tandem's own carries: `status` without
/// SERVER_SESSION_STATE_CHANGED, whose session-state data such a packet never has (a
/// client reading the flag reads that data, past the packet's end).
fn own_status(status: StatusFlags) -> StatusFlags {
    status - StatusFlags::SERVER_SESSION_STATE_CHANGED
}

/// Appends an OK packet with sequence id `seq` and no rows affected.
pub fn put_ok(out: &mut BytesMut, seq: u8, status: StatusFlags) {
    let mut payload = vec![reply::OK, 0, 0];
    payload.extend_from_slice(&own_status(status).bits().to_le_bytes());
    payload.extend_from_slice(&0u16.to_le_bytes());
    put_message(out, seq, &payload);
}

/// Appends a result set of one text column and one row (tandem's answer to a control
/// statement), as the reply to a command: column count, column definition, EOF (unless
/// CLIENT_DEPRECATE_EOF), the row, and the terminator carrying `status`.
pub fn put_single_value(
    out: &mut BytesMut,
    deprecate_eof: bool,
    extended_metadata: bool,
    column: &str,
    value: Option<&str>,
    status: StatusFlags,
) {
    let status = own_status(status);
    let mut seq = 1;
    let mut next = |out: &mut BytesMut, payload: &[u8]| {
        put_message(out, seq, payload);
        seq = seq.wrapping_add(1);
    };
    next(out, &[1]);
    let mut def = Vec::with_capacity(32 + 2 * column.len());
    for s in ["def", "", "", "", column, column] {
        super::statement::put_lenenc_bytes(&mut def, s.as_bytes());
    }
    if extended_metadata {
        // MariaDB's extended type information: none.
        super::statement::put_lenenc_bytes(&mut def, b"");
    }
    def.push(0x0c);
    def.extend_from_slice(&UTF8MB4_GENERAL_CI.to_le_bytes());
    def.extend_from_slice(&(1024u32).to_le_bytes());
    def.push(MYSQL_TYPE_VAR_STRING);
    def.extend_from_slice(&0u16.to_le_bytes());
    def.push(0);
    def.extend_from_slice(&[0, 0]);
    next(out, &def);
    let eof = |status: StatusFlags| {
        let mut p = vec![reply::EOF, 0, 0];
        p.extend_from_slice(&status.bits().to_le_bytes());
        p
    };
    if !deprecate_eof {
        next(out, &eof(status));
    }
    let mut row = Vec::new();
    match value {
        Some(v) => super::statement::put_lenenc_bytes(&mut row, v.as_bytes()),
        None => row.push(0xfb),
    }
    next(out, &row);
    if deprecate_eof {
        let mut ok = vec![reply::EOF, 0, 0];
        ok.extend_from_slice(&status.bits().to_le_bytes());
        ok.extend_from_slice(&0u16.to_le_bytes());
        next(out, &ok);
    } else {
        next(out, &eof(status));
    }
}

const UTF8MB4_GENERAL_CI: u16 = 45;
const MYSQL_TYPE_VAR_STRING: u8 = 0xfd;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::mysql::packet::Header;

    #[test]
    fn a_held_result_set_takes_the_status_of_the_statement_that_ended_its_transaction() {
        let in_transaction = StatusFlags::SERVER_STATUS_IN_TRANS;
        let autocommit = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        // A classic EOF (0xFE, warnings 2, status), and an OK as terminator (0xFE,
        // affected rows, insert id, status, warnings 3).
        let classic = vec![0xfe, 2, 0, in_transaction.bits() as u8, 0];
        let mut as_ok = vec![0xfe, 0, 0];
        as_ok.extend_from_slice(&in_transaction.bits().to_le_bytes());
        as_ok.extend_from_slice(&[3, 0]);
        for (terminator, deprecate_eof, warnings) in [(classic, false, 2), (as_ok, true, 3)] {
            let mut held = HeldResultSet {
                payloads: vec![vec![1], b"column".to_vec(), vec![1, b'7'], terminator],
                rows: 1,
                deprecate_eof,
            };
            assert_eq!(held.terminator(), Some((in_transaction, warnings)));
            held.set_status(autocommit);
            assert_eq!(held.terminator(), Some((autocommit, warnings)));
            let mut out = BytesMut::new();
            held.put(&mut out, 1);
            let sequence: Vec<u8> = std::iter::successors(Some(&out[..]), |rest| {
                let len = Header::peek(rest)?.wire_len();
                Some(&rest[len..]).filter(|r| !r.is_empty())
            })
            .map(|packet| packet[3])
            .collect();
            assert_eq!(sequence, [1, 2, 3, 4]);
        }
    }

    /// The seq ids and status flags of each packet of `out`.
    fn packets(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        std::iter::successors(Some(out), |rest| {
            let len = Header::peek(rest)?.wire_len();
            Some(&rest[len..]).filter(|r| !r.is_empty())
        })
        .filter_map(|packet| {
            let header = Header::peek(packet)?;
            Some((header.seq, packet[HEADER_LEN..header.wire_len()].to_vec()))
        })
        .collect()
    }

    #[test]
    fn a_statements_reply_continues_a_multi_statement_reply_as_the_server_numbers_and_flags_it() {
        let more = StatusFlags::SERVER_MORE_RESULTS_EXISTS;
        let in_transaction = StatusFlags::SERVER_STATUS_IN_TRANS;
        let mut ok = BytesMut::new();
        put_ok(&mut ok, 1, in_transaction);
        let (next, failed) = continue_multi_result(&mut ok, 4, true, false);
        assert_eq!((next, failed), (5, false));
        let [(seq, payload)] = &packets(&ok)[..] else {
            panic!("one packet");
        };
        assert_eq!(*seq, 4);
        assert_eq!(ok_status(payload), Some(in_transaction | more));
        // The last statement's OK is left as it is.
        let mut last = BytesMut::new();
        put_ok(&mut last, 1, in_transaction);
        assert_eq!(
            continue_multi_result(&mut last, 2, false, false),
            (3, false)
        );
        assert_eq!(ok_status(&packets(&last)[0].1), Some(in_transaction));
        // A result set: both classic EOFs carry the flag; under DEPRECATE_EOF its
        // terminator does.
        for deprecate_eof in [false, true] {
            let mut payloads = vec![vec![1], b"column".to_vec()];
            if !deprecate_eof {
                payloads.push(vec![0xfe, 0, 0, in_transaction.bits() as u8, 0]);
            }
            payloads.push(vec![1, b'7']);
            payloads.push(if deprecate_eof {
                vec![0xfe, 0, 0, in_transaction.bits() as u8, 0, 0, 0]
            } else {
                vec![0xfe, 0, 0, in_transaction.bits() as u8, 0]
            });
            let held = HeldResultSet {
                payloads,
                rows: 1,
                deprecate_eof,
            };
            let mut out = BytesMut::new();
            held.put(&mut out, 1);
            let count = held.payloads.len() as u8;
            assert_eq!(
                continue_multi_result(&mut out, 2, true, deprecate_eof),
                (2 + count, false)
            );
            let sent = packets(&out);
            assert_eq!(
                sent.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
                (2..2 + count).collect::<Vec<_>>()
            );
            let statuses: Vec<Option<StatusFlags>> = sent
                .iter()
                .map(|(_, p)| {
                    (p[0] == 0xfe)
                        .then(|| terminator_status(p, deprecate_eof))
                        .flatten()
                })
                .collect();
            let flagged = in_transaction | more;
            if deprecate_eof {
                assert_eq!(statuses, [None, None, None, Some(flagged)]);
            } else {
                assert_eq!(statuses, [None, None, Some(flagged), None, Some(flagged)]);
            }
        }
        // An ERR ends the reply, flagged or not.
        let mut err = BytesMut::new();
        put_err(&mut err, 1, 1146, b"42S02", "no such table");
        assert_eq!(continue_multi_result(&mut err, 3, true, false), (4, true));
        assert_eq!(packets(&err)[0].0, 3);
    }

    #[test]
    fn the_eof_after_the_column_definitions_takes_the_in_trans_flag_of_the_end() {
        let in_transaction = StatusFlags::SERVER_STATUS_IN_TRANS;
        let autocommit = StatusFlags::SERVER_STATUS_AUTOCOMMIT;
        let eof = |status: StatusFlags| {
            let mut eof = vec![0xfe, 0, 0];
            eof.extend_from_slice(&status.bits().to_le_bytes());
            eof
        };
        let mut held = HeldResultSet {
            payloads: vec![
                vec![1],
                b"column".to_vec(),
                eof(autocommit | in_transaction),
                vec![1, b'7'],
                eof(autocommit | in_transaction),
            ],
            rows: 1,
            deprecate_eof: false,
        };
        held.set_status(autocommit);
        assert_eq!(eof_status(&held.payloads[2]), Some(autocommit));
        assert_eq!(held.terminator(), Some((autocommit, 0)));
    }

    #[test]
    fn ok_and_eof_status_flags() {
        // OK: 0 affected, insert id 300 (0xFC-prefixed), in transaction + autocommit.
        let ok = b"\x00\x00\xfc\x2c\x01\x03\x00\x00\x00";
        let status = ok_status(ok).unwrap();
        assert!(status.contains(StatusFlags::SERVER_STATUS_IN_TRANS));
        assert!(status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT));
        let eof = b"\xfe\x00\x00\x0a\x00";
        let status = eof_status(eof).unwrap();
        assert!(status.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS));
        assert_eq!(ok_status(b"\x00\xfc"), None);
        assert_eq!(eof_status(b"\xfe\x00"), None);
        assert_eq!(ok_status_offset(ok), Some(5));
        assert_eq!(&eof[EOF_STATUS_OFFSET..], b"\x0a\x00");
        assert_eq!(
            ok_status_offset(b"\x00\x00\xfc\x2c\x01\x03"),
            None,
            "cut short"
        );
    }

    #[test]
    fn terminators_and_rows_are_told_apart() {
        assert!(is_terminator(0xfe, 5, false));
        assert!(!is_terminator(0xfe, 9, false));
        assert!(is_terminator(0xfe, 7, true));
        assert!(is_terminator(0xfe, 200, true));
        assert!(!is_terminator(0xfe, MAX_PAYLOAD, true));
        assert!(!is_terminator(0x03, 4, true));
    }

    #[test]
    fn prepare_ok_and_column_count() {
        let p = PrepareOk::decode(b"\x00\x07\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00").unwrap();
        assert_eq!(
            p,
            PrepareOk {
                statement_id: 7,
                columns: 2,
                params: 1
            }
        );
        assert_eq!(PrepareOk::decode(b"\x00\x07"), None);
        assert_eq!(column_count(b"\x03"), Some(3));
        assert_eq!(column_count(b""), None);
    }

    /// tandem's own packets carry no session-state data, so never the flag that
    /// announces it, whatever status the server last reported.
    #[test]
    fn tandems_own_ok_and_result_end_never_announce_session_state() {
        let tracked = StatusFlags::SERVER_SESSION_STATE_CHANGED;
        let status = StatusFlags::SERVER_STATUS_AUTOCOMMIT | tracked;
        let mut ok = BytesMut::new();
        put_ok(&mut ok, 1, status);
        let h = Header::peek(&ok).unwrap();
        assert_eq!(
            ok_status(h.payload(&ok)),
            Some(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
        );
        for deprecate_eof in [false, true] {
            let mut out = BytesMut::new();
            put_single_value(&mut out, deprecate_eof, false, "c", Some("v"), status);
            let mut rest = &out[..];
            while let Some(h) = Header::peek(rest) {
                let payload = h.payload(rest);
                if payload[0] == reply::EOF {
                    // An EOF's status, and an OK-style terminator's with no rows
                    // affected and no insert id, are at the same offset.
                    assert_eq!(
                        eof_status(payload),
                        Some(StatusFlags::SERVER_STATUS_AUTOCOMMIT)
                    );
                }
                rest = &rest[h.wire_len()..];
            }
        }
    }

    #[test]
    fn err_packets_round_trip() {
        let mut out = BytesMut::new();
        put_err(&mut out, 3, 1156, b"08S01", "Got packets out of order");
        let h = Header::peek(&out).unwrap();
        assert_eq!(h.seq, 3);
        let e = ErrPacket::decode(h.payload(&out)).unwrap();
        assert_eq!(e.code, 1156);
        assert_eq!(e.sqlstate, Some(&b"08S01"[..]));
        assert_eq!(e.message, b"Got packets out of order");
        let old = ErrPacket::decode(b"\xff\x15\x04Access denied").unwrap();
        assert_eq!((old.code, old.sqlstate), (1045, None));
        assert_eq!(ErrPacket::decode(b"\xff\x15\x04#08S"), None);
    }
}
