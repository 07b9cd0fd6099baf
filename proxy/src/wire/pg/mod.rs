//! PostgreSQL frontend/backend protocol 3.0: framing, message codes, SQLSTATEs and the
//! few messages tandem reads or writes itself.

pub mod codes;
pub mod frame;
pub mod messages;
pub mod reader;
pub mod sqlstate;

pub use frame::{Frame, FrameError, StartupFrame};

/// Random and mutated inputs against every decoder that reads peer bytes: none may
/// panic, whatever the bytes. (A coverage-guided fuzzer needs a nightly toolchain this
/// project does not assume; this runs on stable in every `cargo test`.)
#[cfg(test)]
mod robustness {
    use super::frame::{Frame, StartupFrame};
    use super::messages::extended::{Bind, Close, Parse};
    use super::messages::response::{
        AuthRequest, ErrorFields, TxStatus, decode_backend_key, decode_parameter_status,
    };
    use super::messages::simple::Query;
    use super::messages::startup::{CancelKey, StartupParams};

    fn decode_all(bytes: &[u8]) {
        let _ = Frame::peek(bytes, 1 << 20);
        let _ = Frame::header(bytes, 1 << 20);
        let _ = StartupFrame::peek(bytes);
        let _ = Parse::decode(bytes);
        if let Ok(bind) = Bind::decode(bytes) {
            for i in 0..bind.params.len() + 2 {
                let _ = bind.param_format(i);
            }
        }
        let _ = Close::decode(bytes);
        let _ = Query::decode(bytes);
        let _ = StartupParams::decode(bytes);
        let _ = CancelKey::decode(bytes);
        let _ = ErrorFields::decode(bytes);
        let _ = AuthRequest::decode(bytes);
        let _ = TxStatus::decode(bytes);
        let _ = decode_backend_key(bytes);
        let _ = decode_parameter_status(bytes);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    // Bias towards the bytes that steer decoders: NUL, small and max lengths.
                    match r % 8 {
                        0 => 0,
                        1 => 0xff,
                        2 => (r >> 8) as u8 % 4,
                        _ => (r >> 16) as u8,
                    }
                })
                .collect();
            decode_all(&bytes);
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_of_valid_messages_never_panics() {
        let mut bind = b"portal\0stmt\0".to_vec();
        bind.extend_from_slice(&[0, 2, 0, 0, 0, 1, 0, 2]);
        bind.extend_from_slice(&4i32.to_be_bytes());
        bind.extend_from_slice(b"abcd");
        bind.extend_from_slice(&(-1i32).to_be_bytes());
        bind.extend_from_slice(&[0, 1, 0, 1]);
        let samples: Vec<Vec<u8>> = vec![
            bind,
            b"name\0select $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19".to_vec(),
            b"user\0postgres\0database\0db\0\0".to_vec(),
            b"SFATAL\0C57P01\0Mbye\0\0".to_vec(),
            b"\0\0\0\x0aSCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0".to_vec(),
        ];
        for sample in samples {
            for cut in 0..=sample.len() {
                decode_all(&sample[..cut]);
            }
            for i in 0..sample.len() {
                for bit in 0..8 {
                    let mut flipped = sample.clone();
                    flipped[i] ^= 1 << bit;
                    decode_all(&flipped);
                }
            }
        }
    }
}
