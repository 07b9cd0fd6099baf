//! A byte-level PostgreSQL client for tests that must send what no driver would:
//! malformed messages, oversized lengths, half a message.
//!
//! Owns nothing but its socket; decodes only tags, error fields and ParameterStatus.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long `recv` waits for a message before failing the test.
pub const RECV_DEADLINE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

impl Msg {
    /// Error or notice fields by their one-byte code.
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if kind == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    pub fn sqlstate(&self) -> Option<String> {
        self.field(b'C')
    }

    /// The NUL-separated strings of the body.
    pub fn strings(&self) -> Vec<String> {
        self.body
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}

pub struct RawPg {
    pub stream: TcpStream,
    buf: BytesMut,
    /// ParameterStatus pairs seen so far.
    pub params: Vec<(String, String)>,
    /// The BackendKeyData received at startup.
    pub key: Option<(i32, i32)>,
}

/// Receives a message and asserts its tag; on an ErrorResponse prints the server's error.
#[macro_export]
macro_rules! expect_msg {
    ($client:expr, $tag:expr) => {{
        let msg = $client
            .recv()
            .await
            .expect("connection closed while expecting a message");
        if msg.tag != $tag {
            panic!(
                "expected message {:?}, got {:?} (error: {:?} {:?})",
                $tag as char,
                msg.tag as char,
                msg.sqlstate(),
                msg.field(b'M')
            );
        }
        msg
    }};
}

impl RawPg {
    pub async fn connect(addr: SocketAddr) -> RawPg {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawPg {
            stream,
            buf: BytesMut::with_capacity(8192),
            params: Vec::new(),
            key: None,
        }
    }

    /// Connects and completes a trust-authenticated startup.
    pub async fn startup(addr: SocketAddr, user: &str, database: &str) -> RawPg {
        let mut client = RawPg::connect(addr).await;
        client
            .send(&startup_packet(&[("user", user), ("database", database)]))
            .await;
        loop {
            let msg = client.recv().await.expect("closed during startup");
            match msg.tag {
                b'R' | b'N' => {}
                b'S' => {
                    let s = msg.strings();
                    client.params.push((s[0].clone(), s[1].clone()));
                }
                b'K' => {
                    let mut b = &msg.body[..];
                    client.key = Some((b.get_i32(), b.get_i32()));
                }
                b'Z' => return client,
                b'E' => panic!("startup failed: {:?} {:?}", msg.sqlstate(), msg.field(b'M')),
                other => panic!("unexpected {:?} during startup", other as char),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub async fn send_msg(&mut self, tag: u8, body: &[u8]) {
        self.send(&frame(tag, body)).await;
    }

    pub async fn query(&mut self, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send_msg(b'Q', &body).await;
    }

    /// Sends `sql` as a simple Query and receives its replies, ReadyForQuery included.
    pub async fn simple(&mut self, sql: &str) -> Vec<Msg> {
        self.query(sql).await;
        self.recv_until(b'Z').await
    }

    /// Sends each of `statements` as a simple Query in turn; each must succeed.
    pub async fn run_each(&mut self, statements: &[&str]) {
        for sql in statements {
            let replies = self.simple(sql).await;
            assert!(replies.iter().all(|m| m.tag != b'E'), "{sql}: {replies:?}");
        }
    }

    /// The next message, or None once the server closed the connection.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let tag = self.buf[0];
                    let mut whole = self.buf.split_to(total);
                    whole.advance(5);
                    return Some(Msg {
                        tag,
                        body: whole.freeze(),
                    });
                }
            }
            let read = tokio::time::timeout(RECV_DEADLINE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("timed out waiting for a message");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Receives until a message with `tag`, returning all messages including it.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let msg = self
                .recv()
                .await
                .expect("closed before the expected message");
            let done = msg.tag == tag;
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Reads until the server closes the connection; returns what came before.
    pub async fn recv_to_close(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(msg) = self.recv().await {
            out.push(msg);
        }
        out
    }
}

/// A tagged frame.
/// The tags of `replies`, as characters: what a test compares the shape of an answer by.
pub fn reply_tags(replies: &[Msg]) -> Vec<char> {
    replies.iter().map(|m| m.tag as char).collect()
}

pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
    out.to_vec()
}

/// A protocol 3.0 StartupMessage.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(196_608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out.to_vec()
}
