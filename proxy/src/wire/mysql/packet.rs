//! Framing: a 3-byte little-endian payload length and a 1-byte sequence id before every
//! payload. A payload of exactly 0xFFFFFF bytes is continued by the next packet, so one
//! logical message may span many packets ("MySQL Packets" in the protocol docs).
//!
//! Owns the length and sequence checks. Never allocates for a packet before its length
//! has been checked, and never treats a partial packet as an error: an incomplete header
//! is `None`. Invariant: a logical message is accepted only while its running total stays
//! within the cap the caller passes (`max_message_bytes`).

use bytes::{BufMut, BytesMut};
use std::fmt;

/// Bytes before each payload.
pub const HEADER_LEN: usize = 4;
/// A payload this long is continued by the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// The header of the packet at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub payload_len: usize,
    pub seq: u8,
}

impl Header {
    /// Reads the header at the front of `buf`, `None` until its four bytes are there.
    pub fn peek(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        Some(Header {
            payload_len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
            seq: h[3],
        })
    }

    /// Header plus payload.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Whether the logical message goes on in the next packet.
    pub fn is_continued(&self) -> bool {
        self.payload_len == MAX_PAYLOAD
    }

    /// The payload of this packet, given the buffer it was peeked from; whatever part of
    /// it has arrived.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let end = self.wire_len().min(buf.len());
        buf.get(HEADER_LEN..end).unwrap_or(&[])
    }
}

/// Sums the packets of one logical message and refuses it past the cap, so that a peer
/// cannot make tandem buffer (or relay) an unbounded message.
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageSize {
    so_far: usize,
}

impl MessageSize {
    /// Counts `header`'s packet; returns whether it is the first of its message.
    pub fn on_packet(&mut self, header: Header, max: usize) -> Result<bool, PacketError> {
        let first = self.so_far == 0;
        let total = self.so_far.saturating_add(header.payload_len);
        if total > max {
            return Err(PacketError::TooLarge {
                declared: total,
                max,
            });
        }
        // A continued packet keeps the message open; the message ends with the first
        // packet shorter than MAX_PAYLOAD (possibly empty).
        self.so_far = if header.is_continued() {
            total.max(1)
        } else {
            0
        };
        Ok(first)
    }

    /// Whether a message is partway through its packets.
    pub fn in_message(&self) -> bool {
        self.so_far != 0
    }
}

/// Writes `payload` as one logical message starting at sequence id `seq`, split into
/// packets where it reaches MAX_PAYLOAD. Returns the next sequence id.
pub fn put_message(out: &mut BytesMut, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let take = rest.len().min(MAX_PAYLOAD);
        out.reserve(HEADER_LEN + take);
        out.put_uint_le(take as u64, 3);
        out.put_u8(seq);
        out.put_slice(&rest[..take]);
        seq = seq.wrapping_add(1);
        rest = &rest[take..];
        // A payload that is an exact multiple of MAX_PAYLOAD ends with an empty packet.
        if take < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// Rewrites the sequence id of the packet at the front of `packet`.
pub fn set_seq(packet: &mut [u8], seq: u8) {
    if let Some(byte) = packet.get_mut(3) {
        *byte = seq;
    }
}

/// Rewrites the sequence ids of the whole packets in `packets` to run from `first`;
/// returns the id after the last.
pub fn renumber(packets: &mut [u8], first: u8) -> u8 {
    let mut seq = first;
    let mut pos = 0;
    while let Some(header) = packets.get(pos..).and_then(Header::peek) {
        set_seq(&mut packets[pos..], seq);
        seq = seq.wrapping_add(1);
        pos += header.wire_len();
    }
    seq
}

/// A packet that cannot be accepted, whatever bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// The message's packets add up to more than the cap.
    TooLarge { declared: usize, max: usize },
    /// A sequence id other than the one the exchange is at.
    OutOfOrder { expected: u8, got: u8 },
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PacketError::TooLarge { declared, max } => write!(
                f,
                "packet of {declared} bytes is over the limit of {max} (max_message_bytes)"
            ),
            PacketError::OutOfOrder { expected, got } => write!(
                f,
                "got packets out of order (sequence id {got}, expected {expected})"
            ),
        }
    }
}

impl std::error::Error for PacketError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_message(&mut out, seq, payload);
        out.to_vec()
    }

    #[test]
    fn split_packet_is_incomplete_at_every_cut() {
        let whole = packet(0, b"\x03select 1");
        for cut in 0..HEADER_LEN {
            assert_eq!(Header::peek(&whole[..cut]), None);
        }
        let h = Header::peek(&whole).unwrap();
        assert_eq!(h.payload_len, 9);
        assert_eq!(h.seq, 0);
        assert_eq!(h.wire_len(), whole.len());
        assert_eq!(h.payload(&whole[..6]), b"\x03s");
        assert_eq!(h.payload(&whole), b"\x03select 1");
    }

    #[test]
    fn pipelined_packets_are_peeked_one_by_one() {
        let mut buf = packet(0, b"\x0e");
        buf.extend(packet(0, b"\x03select 1"));
        buf.extend(packet(0, b"\x01"));
        let mut at = 0;
        let mut commands = vec![];
        while let Some(h) = Header::peek(&buf[at..]) {
            commands.push(h.payload(&buf[at..])[0]);
            at += h.wire_len();
        }
        assert_eq!(commands, [0x0e, 0x03, 0x01]);
        assert_eq!(at, buf.len());
    }

    #[test]
    fn long_messages_split_at_max_payload_and_end_with_a_short_packet() {
        let payload = vec![7u8; MAX_PAYLOAD];
        let mut out = BytesMut::new();
        assert_eq!(put_message(&mut out, 5, &payload), 7);
        let first = Header::peek(&out).unwrap();
        assert!(first.is_continued());
        assert_eq!(first.seq, 5);
        let second = Header::peek(&out[first.wire_len()..]).unwrap();
        assert_eq!((second.payload_len, second.seq), (0, 6));
    }

    #[test]
    fn message_size_is_summed_over_continuations_and_capped() {
        let mut size = MessageSize::default();
        let big = Header {
            payload_len: MAX_PAYLOAD,
            seq: 0,
        };
        assert_eq!(size.on_packet(big, 40 << 20), Ok(true));
        assert!(size.in_message());
        assert_eq!(size.on_packet(big, 40 << 20), Ok(false));
        assert_eq!(
            size.on_packet(big, 40 << 20),
            Err(PacketError::TooLarge {
                declared: 3 * MAX_PAYLOAD,
                max: 40 << 20
            })
        );
        let mut size = MessageSize::default();
        let small = Header {
            payload_len: 10,
            seq: 0,
        };
        assert_eq!(size.on_packet(small, 100), Ok(true));
        assert!(!size.in_message());
        assert_eq!(size.on_packet(small, 100), Ok(true));
        assert!(matches!(
            size.on_packet(
                Header {
                    payload_len: 101,
                    seq: 0
                },
                100
            ),
            Err(PacketError::TooLarge { .. })
        ));
    }

    #[test]
    fn renumber_runs_the_ids_on_from_the_first() {
        let mut out = BytesMut::new();
        put_message(&mut out, 1, b"ab");
        put_message(&mut out, 2, b"");
        put_message(&mut out, 7, b"c");
        assert_eq!(renumber(&mut out, 4), 7);
        let ids: Vec<u8> = [0, 6, 10].iter().map(|&at| out[at + 3]).collect();
        assert_eq!(ids, [4, 5, 6]);
        assert_eq!(&out[4..6], b"ab");
        assert_eq!(&out[14..], b"c");
        assert_eq!(renumber(&mut [], 9), 9);
    }

    #[test]
    fn set_seq_rewrites_only_the_sequence_byte() {
        let mut p = packet(1, b"abc");
        set_seq(&mut p, 9);
        assert_eq!(Header::peek(&p).unwrap().seq, 9);
        assert_eq!(&p[4..], b"abc");
        set_seq(&mut [0u8; 2], 1);
    }
}
