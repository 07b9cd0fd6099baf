//! The opening of a MySQL connection: the server's greeting (with tandem's connection
//! id and the capabilities it can relay), TLS when the client asks for it, the
//! HandshakeResponse, and the authentication exchange up to the server's OK or ERR.
//!
//! Owns the connection phase's I/O; `auth::AuthExchange` decides what each packet
//! becomes. Invariant: TLS starts only when the client has sent nothing after its
//! SSLRequest (bytes sent in the clear must not be read as if they came through TLS),
//! and the backend never sees CLIENT_SSL: the backend link is tandem's own.

use super::MysqlFrontendContext;
use super::auth::{AuthExchange, AuthOutcome};
use crate::error::{Error, Result};
use crate::tls::ClientStream;
use crate::upstream::{self, ServerStream};
use crate::wire::mysql::codes::{
    CapabilityFlags, StatusFlags, relayed_capabilities, relayed_mariadb_capabilities, reply,
};
use crate::wire::mysql::messages::handshake::{Greeting, HandshakeResponse, ResponseHead};
use crate::wire::mysql::packet::HEADER_LEN;
use crate::wire::mysql::{Header, PacketError};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest packet accepted before authentication ends. A HandshakeResponse with
/// connection attributes stays under 64 KiB (the servers' own bound on attributes); a
/// larger one is answered with error 1153 and the connection closed.
pub const MAX_HANDSHAKE_PACKET: usize = 1 << 20;

/// An authenticated session, ready for the command phase.
pub struct Opened {
    pub client: ClientStream,
    pub server: ServerStream,
    /// What either side sent after the server's OK.
    pub from_client: BytesMut,
    pub from_server: BytesMut,
    /// Capabilities both the client and the server have (as far as tandem relays them).
    pub capabilities: CapabilityFlags,
    pub status: StatusFlags,
    pub thread_id: u32,
    pub user: String,
    pub database: String,
    pub client_tls: bool,
    /// MariaDB's extended column metadata was negotiated (column definitions carry it).
    pub extended_metadata: bool,
    /// The server is MariaDB 10.2 or later (its greeting carries MariaDB's capability
    /// flags), which executes statement id 0xFFFFFFFF as the one last prepared.
    pub executes_last_prepared: bool,
    /// The nonce of the greeting, which COM_CHANGE_USER reuses.
    pub nonce: Vec<u8>,
}

/// How a connection's opening ended.
pub enum Opening {
    Session(Box<Opened>),
    /// The server refused the handshake; its ERR reached the client.
    Refused,
    /// The client went away before authenticating.
    Closed,
}

/// Whether the link to `upstream` counts as secure for clear passwords: a unix socket.
pub fn upstream_is_secure(upstream: &str) -> bool {
    upstream.starts_with('/')
}

pub async fn open(
    ctx: &MysqlFrontendContext,
    socket: TcpStream,
    connection_id: u32,
) -> Result<Opening> {
    let mut client = ClientStream::Plain(socket);
    let mut server = match upstream::connect(&ctx.upstream, ctx.config.connect_timeout()).await {
        Ok(server) => server,
        Err(e) => return Err(refuse(&mut client, 0, e).await),
    };
    let mut from_server = BytesMut::with_capacity(256);
    let greeting = tokio::time::timeout(
        ctx.config.connect_timeout(),
        read_packet(&mut server, &mut from_server),
    )
    .await
    .map_err(|_| Error::UpstreamConnectTimeout {
        addr: ctx.upstream.to_string(),
    })
    .and_then(|read| read.map_err(upstream_error)?.ok_or(Error::UpstreamClosed));
    let header = match greeting {
        Ok(header) => header,
        Err(e) => return Err(refuse(&mut client, 0, e).await),
    };
    let mut greeting_packet = from_server.split_to(header.wire_len());
    if greeting_packet.get(HEADER_LEN) == Some(&reply::ERR) {
        // The server refuses before greeting (too many connections, host blocked): its
        // own words are the best answer.
        let _ = client.write_all(&greeting_packet).await;
        return Ok(Opening::Refused);
    }
    let greeting = match Greeting::decode(&greeting_packet[HEADER_LEN..]) {
        Ok(g) if g.capabilities.contains(CapabilityFlags::CLIENT_PROTOCOL_41) => g,
        _ => {
            let e = Error::UpstreamProtocol("a malformed or pre-4.1 greeting");
            return Err(refuse(&mut client, 0, e).await);
        }
    };
    let mut offered = greeting.capabilities & relayed_capabilities();
    if ctx.tls.is_some() {
        offered |= CapabilityFlags::CLIENT_SSL;
    }
    let offered_mariadb = greeting
        .mariadb_capabilities
        .map(|c| c & relayed_mariadb_capabilities())
        .unwrap_or_default();
    greeting.patch(
        &mut greeting_packet[HEADER_LEN..],
        connection_id,
        offered,
        offered_mariadb,
    );
    client
        .write_all(&greeting_packet)
        .await
        .map_err(Error::ClientIo)?;
    let hello = tokio::time::timeout(ctx.config.handshake_timeout(), client_hello(ctx, client));
    let Ok(hello) = hello.await else {
        // As the server does past its connect_timeout: closed, with no answer (the
        // client's connection is dropped with the unfinished read).
        tracing::debug!("no HandshakeResponse in time: closed");
        return Ok(Opening::Closed);
    };
    let (client, from_client, header) = match hello {
        Ok(Some(hello)) => hello,
        Ok(None) => return Ok(Opening::Closed),
        Err((mut client, seq, e)) => return Err(refuse(&mut client, seq, e).await),
    };
    let client_tls = matches!(client, ClientStream::Tls(_));
    let mut opening = Handshake {
        ctx,
        client,
        server,
        from_client,
        from_server,
        client_tls,
        user: String::new(),
        database: String::new(),
        extended_metadata: false,
        plugin: Vec::new(),
    };
    match opening.answer(header, &greeting, offered) {
        Ok((capabilities, response, seq)) => {
            opening
                .authenticate(greeting, capabilities, response, seq)
                .await
        }
        Err((seq, e)) => Err(refuse(&mut opening.client, seq, e).await),
    }
}

/// An error before authentication, with the sequence id the client's ERR must carry.
type Refusal = (u8, Error);

/// Reads the client's first packet; on an SSLRequest, switches to TLS and reads the
/// HandshakeResponse that follows inside it. Returns the stream, its buffer (the
/// response at its front) and the response's header.
async fn client_hello(
    ctx: &MysqlFrontendContext,
    mut client: ClientStream,
) -> std::result::Result<Option<(ClientStream, BytesMut, Header)>, (ClientStream, u8, Error)> {
    let mut buf = BytesMut::with_capacity(512);
    let header = match read_first_packet(&mut client, &mut buf).await {
        Ok(Some(header)) => header,
        Ok(None) => return Ok(None),
        Err((seq, e)) => return Err((client, seq, e)),
    };
    let is_ssl_request = ResponseHead::decode(header_payload(&buf, header))
        .is_ok_and(|head| head.is_ssl_request(header.payload_len));
    if !is_ssl_request {
        return Ok(Some((client, buf, header)));
    }
    let Some(acceptor) = &ctx.tls else {
        let e = Error::Unsupported {
            what: "TLS (no certificate is configured)",
        };
        return Err((client, 2, e));
    };
    buf.advance(header.wire_len());
    if let Some(&byte) = buf.first() {
        let e = Error::UnexpectedMessage {
            tag: byte,
            context: "sent in the clear after SSLRequest",
        };
        return Err((client, 2, e));
    }
    let ClientStream::Plain(tcp) = client else {
        return Err((
            client,
            2,
            Error::UnexpectedMessage {
                tag: 0,
                context: "SSLRequest inside TLS",
            },
        ));
    };
    let mut client = match acceptor.accept(tcp).await {
        Ok(tls) => ClientStream::Tls(Box::new(tls)),
        // The handshake failed part-way: nothing readable can be sent any more.
        Err(e) => return Ok(fail_silently(Error::TlsHandshake(e))),
    };
    match read_client(&mut client, &mut buf, 2).await {
        Ok(Some(header)) => Ok(Some((client, buf, header))),
        Ok(None) => Ok(None),
        Err((seq, e)) => Err((client, seq, e)),
    }
}

/// A TLS handshake that failed leaves no channel to report on; the failure is logged
/// and the connection treated as closed by the client.
fn fail_silently<T>(e: Error) -> Option<T> {
    tracing::debug!(error = %e, "client TLS handshake failed");
    None
}

/// The client's first packet (sequence id 1), read to its last byte and no further:
/// after an SSLRequest a client starts TLS at once (MySQL answers nothing to it), and
/// the bytes that follow belong to the TLS handshake, not to this buffer.
async fn read_first_packet(
    client: &mut ClientStream,
    buf: &mut BytesMut,
) -> std::result::Result<Option<Header>, Refusal> {
    let mut head = [0u8; HEADER_LEN];
    match client.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err((2, Error::ClientIo(e))),
    }
    buf.extend_from_slice(&head);
    let header = match whole_packet(buf) {
        Ok(Some(header)) => return check_seq(header, 1).map(Some),
        Ok(None) => Header::peek(buf).ok_or((
            2,
            Error::Malformed {
                what: "packet header",
            },
        ))?,
        Err(e) => return Err((2, e)),
    };
    let start = buf.len();
    buf.resize(header.wire_len(), 0);
    match client.read_exact(&mut buf[start..]).await {
        Ok(_) => check_seq(header, 1).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err((2, Error::ClientIo(e))),
    }
}

fn check_seq(header: Header, seq: u8) -> std::result::Result<Header, Refusal> {
    if header.seq != seq {
        return Err((
            seq.wrapping_add(1),
            PacketError::OutOfOrder {
                expected: seq,
                got: header.seq,
            }
            .into(),
        ));
    }
    Ok(header)
}

/// Reads one whole packet from the client, which must carry `seq`.
async fn read_client(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    seq: u8,
) -> std::result::Result<Option<Header>, Refusal> {
    let header = read_packet(client, buf)
        .await
        .map_err(|e| (seq.wrapping_add(1), client_error(e)))?;
    match header {
        Some(h) if h.seq != seq => Err((
            seq.wrapping_add(1),
            PacketError::OutOfOrder {
                expected: seq,
                got: h.seq,
            }
            .into(),
        )),
        other => Ok(other),
    }
}

struct Handshake<'a> {
    ctx: &'a MysqlFrontendContext,
    client: ClientStream,
    server: ServerStream,
    from_client: BytesMut,
    from_server: BytesMut,
    client_tls: bool,
    user: String,
    database: String,
    extended_metadata: bool,
    /// The plugin the client's response is for (empty: the greeting's).
    plugin: Vec<u8>,
}

impl Handshake<'_> {
    /// Checks the client's HandshakeResponse and makes it fit the backend link.
    /// Returns the negotiated capabilities, the response packet to forward and its
    /// sequence id.
    fn answer(
        &mut self,
        header: Header,
        greeting: &Greeting,
        offered: CapabilityFlags,
    ) -> std::result::Result<(CapabilityFlags, BytesMut, u8), Refusal> {
        let seq = header.seq;
        let refuse_seq = seq.wrapping_add(1);
        let mut packet = self.from_client.split_to(header.wire_len());
        let payload = &mut packet[HEADER_LEN..];
        let response = HandshakeResponse::decode(payload).map_err(|_| {
            let e = Error::Malformed {
                what: "HandshakeResponse",
            };
            (refuse_seq, e)
        })?;
        let asked = response.head.capabilities;
        if !asked.contains(CapabilityFlags::CLIENT_PROTOCOL_41) {
            let e = Error::Unsupported {
                what: "a client older than protocol 4.1",
            };
            return Err((refuse_seq, e));
        }
        if asked.intersects(
            CapabilityFlags::CLIENT_COMPRESS | CapabilityFlags::CLIENT_ZSTD_COMPRESSION_ALGORITHM,
        ) {
            let e = Error::Unsupported {
                what: "protocol compression",
            };
            return Err((refuse_seq, e));
        }
        let relayed = (asked & offered) - CapabilityFlags::CLIENT_SSL;
        let mariadb = response.head.mariadb_capabilities.map(|c| {
            c & greeting.mariadb_capabilities.unwrap_or_default() & relayed_mariadb_capabilities()
        });
        ResponseHead::patch(payload, relayed, mariadb);
        self.extended_metadata = mariadb.is_some_and(|c| {
            c.contains(
                crate::wire::mysql::codes::MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA,
            )
        });
        self.user = String::from_utf8_lossy(&response.user).into_owned();
        self.database = response
            .database
            .as_deref()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        self.plugin = response.plugin.unwrap_or_default();
        Ok((relayed & greeting.capabilities, packet, seq))
    }
}

impl Handshake<'_> {
    /// Relays the authentication exchange from the client's response to the server's
    /// OK or ERR.
    async fn authenticate(
        mut self,
        greeting: Greeting,
        capabilities: CapabilityFlags,
        response: BytesMut,
        seq: u8,
    ) -> Result<Opening> {
        let mut exchange = AuthExchange::new(
            seq,
            1,
            greeting.plugin.clone(),
            greeting.nonce.clone(),
            self.client_tls && !upstream_is_secure(&self.ctx.upstream),
        );
        exchange.set_client_plugin(&self.plugin);
        let (mut to_client, mut to_server) = (BytesMut::new(), BytesMut::new());
        exchange.on_client_packet(seq, &response[HEADER_LEN..], &mut to_server)?;
        loop {
            if !to_server.is_empty() {
                self.server
                    .write_all(&to_server)
                    .await
                    .map_err(Error::UpstreamIo)?;
                to_server.clear();
            }
            tokio::select! {
                // Cancel-safe: read_buf appends only what it has read.
                read = self.server.read_buf(&mut self.from_server) => {
                    if read.map_err(Error::UpstreamIo)? == 0 {
                        return Err(Error::UpstreamClosed);
                    }
                    while let Some(header) = whole_packet(&self.from_server)? {
                        let packet = self.from_server.split_to(header.wire_len());
                        let outcome = exchange.on_server_packet(
                            header.seq,
                            &packet[HEADER_LEN..],
                            &mut to_client,
                            &mut to_server,
                        )?;
                        self.client.write_all(&to_client).await.map_err(Error::ClientIo)?;
                        to_client.clear();
                        match outcome {
                            AuthOutcome::Continue => {}
                            AuthOutcome::Authenticated(status) => {
                                return Ok(self.opened(capabilities, status, greeting));
                            }
                            AuthOutcome::Refused => return Ok(Opening::Refused),
                        }
                    }
                }
                // Cancel-safe: as above.
                read = self.client.read_buf(&mut self.from_client) => {
                    if read.map_err(Error::ClientIo)? == 0 {
                        return Ok(Opening::Closed);
                    }
                    while let Some(header) = whole_packet(&self.from_client)? {
                        let packet = self.from_client.split_to(header.wire_len());
                        exchange.on_client_packet(header.seq, &packet[HEADER_LEN..], &mut to_server)?;
                    }
                }
            }
        }
    }

    fn opened(
        self,
        capabilities: CapabilityFlags,
        status: StatusFlags,
        greeting: Greeting,
    ) -> Opening {
        Opening::Session(Box::new(Opened {
            client: self.client,
            server: self.server,
            from_client: self.from_client,
            from_server: self.from_server,
            capabilities,
            status,
            thread_id: greeting.connection_id,
            user: self.user,
            database: self.database,
            client_tls: self.client_tls,
            nonce: greeting.nonce,
            extended_metadata: self.extended_metadata,
            executes_last_prepared: greeting.mariadb_capabilities.is_some(),
        }))
    }
}

/// The header of the whole packet at the front of `buf`, once all of it is there.
fn whole_packet(buf: &[u8]) -> Result<Option<Header>> {
    let Some(header) = Header::peek(buf) else {
        return Ok(None);
    };
    if header.payload_len > MAX_HANDSHAKE_PACKET {
        return Err(PacketError::TooLarge {
            declared: header.payload_len,
            max: MAX_HANDSHAKE_PACKET,
        }
        .into());
    }
    Ok((buf.len() >= header.wire_len()).then_some(header))
}

/// Reads from `stream` until a whole packet is at the front of `buf`; `None` if the
/// peer closed first.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Option<Header>> {
    loop {
        if let Some(header) = whole_packet(buf)? {
            return Ok(Some(header));
        }
        // The caller maps the I/O error to its side (client or server).
        if stream.read_buf(buf).await.map_err(Error::ClientIo)? == 0 {
            return Ok(None);
        }
    }
}

fn header_payload(buf: &[u8], header: Header) -> &[u8] {
    header.payload(buf)
}

/// An I/O failure that `read_packet` reported, on the server side.
fn upstream_error(e: Error) -> Error {
    match e {
        Error::ClientIo(io) => Error::UpstreamIo(io),
        other => other,
    }
}

/// An error that `read_packet` reported on the client side: as it is.
fn client_error(e: Error) -> Error {
    e
}

/// Tells the client why its connection is refused, as an ERR packet with `seq` (0: in
/// place of the greeting), then hands the error back.
async fn refuse(client: &mut ClientStream, seq: u8, error: Error) -> Error {
    super::report(client, seq, seq == 0, &error).await;
    error
}
