//! Framing: where one message ends and the next begins.
//!
//! Owns the length checks. Never allocates for a frame before its declared length has
//! been checked against the cap, and never treats a partial frame as an error: a frame
//! that is not complete yet is `Ok(None)`.

use std::fmt;

/// The longest startup packet the backend accepts (`MAX_STARTUP_PACKET_LENGTH` in
/// PostgreSQL's `pqcomm.h`); tandem applies the same bound before it has a backend.
pub const MAX_STARTUP_BYTES: usize = 10_000;

/// A complete tagged message at the front of a buffer: its type byte and its total size
/// on the wire (type byte plus the length word plus the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub wire_len: usize,
}

impl Frame {
    /// The body of this frame, given the buffer it was peeked from.
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(5..self.wire_len).unwrap_or(&[])
    }

    /// Reads the header of the tagged frame at the front of `buf`, complete or not.
    ///
    /// Returns `Ok(None)` until the five header bytes are there. The declared length
    /// counts itself, so anything under 4 is malformed; anything over `max_bytes` is
    /// refused before a byte of its body is buffered.
    pub fn header(buf: &[u8], max_bytes: usize) -> Result<Option<Frame>, FrameError> {
        let Some(header) = buf.get(..5) else {
            return Ok(None);
        };
        let declared = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let tag = header[0];
        if declared < 4 {
            return Err(FrameError::BadLength { tag, declared });
        }
        let declared = declared as usize;
        if declared > max_bytes {
            return Err(FrameError::TooLarge {
                tag,
                declared,
                max: max_bytes,
            });
        }
        Ok(Some(Frame {
            tag,
            wire_len: declared + 1,
        }))
    }

    /// Whether all of this frame is in `buf`.
    pub fn is_complete(&self, buf: &[u8]) -> bool {
        buf.len() >= self.wire_len
    }

    /// Peeks the tagged frame at the front of `buf`, once it is complete.
    ///
    pub fn peek(buf: &[u8], max_bytes: usize) -> Result<Option<Frame>, FrameError> {
        Ok(Self::header(buf, max_bytes)?.filter(|frame| frame.is_complete(buf)))
    }
}

/// A complete untagged message (StartupMessage, SSLRequest, GSSENCRequest,
/// CancelRequest) at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartupFrame {
    /// The request code or protocol version: the first four bytes of the body.
    pub code: i32,
    pub wire_len: usize,
}

impl StartupFrame {
    /// The body after the code word.
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(8..self.wire_len).unwrap_or(&[])
    }

    /// Peeks the untagged startup-phase frame at the front of `buf`.
    pub fn peek(buf: &[u8]) -> Result<Option<StartupFrame>, FrameError> {
        let Some(header) = buf.get(..8) else {
            return Ok(None);
        };
        let declared = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if declared < 8 {
            return Err(FrameError::BadLength { tag: 0, declared });
        }
        let declared = declared as usize;
        if declared > MAX_STARTUP_BYTES {
            return Err(FrameError::TooLarge {
                tag: 0,
                declared,
                max: MAX_STARTUP_BYTES,
            });
        }
        let code = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        Ok((buf.len() >= declared).then_some(StartupFrame {
            code,
            wire_len: declared,
        }))
    }
}

/// A frame that cannot be a valid message, whatever bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    BadLength {
        tag: u8,
        declared: i32,
    },
    TooLarge {
        tag: u8,
        declared: usize,
        max: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadLength { tag, declared } => {
                write!(
                    f,
                    "invalid message length {declared} for message type {tag:#04x}"
                )
            }
            FrameError::TooLarge { tag, declared, max } => write!(
                f,
                "message of type {tag:#04x} declares {declared} bytes, over the limit of {max}"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn split_frame_is_incomplete_at_every_cut() {
        let whole = msg(b'Q', b"select 1\0");
        for cut in 0..whole.len() {
            assert_eq!(
                Frame::peek(&whole[..cut], 1 << 20),
                Ok(None),
                "cut at {cut}"
            );
        }
        let frame = Frame::peek(&whole, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag, b'Q');
        assert_eq!(frame.wire_len, whole.len());
        assert_eq!(frame.body(&whole), b"select 1\0");
    }

    #[test]
    fn pipelined_frames_are_peeked_one_by_one() {
        let mut buf = msg(b'P', b"\0select $1\0\0\0");
        buf.extend(msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"));
        buf.extend(msg(b'E', b"\0\0\0\0\0"));
        buf.extend(msg(b'S', b""));
        let mut at = 0;
        let mut tags = vec![];
        while let Some(f) = Frame::peek(&buf[at..], 1 << 20).unwrap() {
            tags.push(f.tag);
            at += f.wire_len;
        }
        assert_eq!(tags, b"PBES");
        assert_eq!(at, buf.len());
    }

    #[test]
    fn lengths_under_four_are_malformed() {
        for declared in [-1i32, 0, 3, i32::MIN] {
            let mut buf = vec![b'Q'];
            buf.extend_from_slice(&declared.to_be_bytes());
            assert!(matches!(
                Frame::peek(&buf, 1 << 20),
                Err(FrameError::BadLength { .. })
            ));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = vec![b'Q'];
        buf.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            Frame::peek(&buf, 1024),
            Err(FrameError::TooLarge {
                tag: b'Q',
                declared: i32::MAX as usize,
                max: 1024
            })
        );
    }

    #[test]
    fn startup_frame_bounds() {
        let mut ssl = 8i32.to_be_bytes().to_vec();
        ssl.extend_from_slice(&80_877_103i32.to_be_bytes());
        let f = StartupFrame::peek(&ssl).unwrap().unwrap();
        assert_eq!(f.code, 80_877_103);
        assert_eq!(StartupFrame::peek(&ssl[..7]), Ok(None));

        let mut huge = 1_000_000i32.to_be_bytes().to_vec();
        huge.extend_from_slice(&196_608i32.to_be_bytes());
        assert!(matches!(
            StartupFrame::peek(&huge),
            Err(FrameError::TooLarge { .. })
        ));
        let mut short = 4i32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0; 4]);
        assert!(matches!(
            StartupFrame::peek(&short),
            Err(FrameError::BadLength { .. })
        ));
    }
}
