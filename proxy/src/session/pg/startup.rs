//! The untagged opening of a PostgreSQL connection: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage.
//!
//! Owns the negotiation up to the StartupMessage; never talks to the backend except to
//! deliver a CancelRequest. Invariant: TLS starts only when the client has sent nothing
//! after its SSLRequest (bytes sent in the clear before the handshake must not be read
//! as if they had come through TLS — the lesson of CVE-2021-23222).

use super::PgFrontendContext;
use crate::error::{Error, Result};
use crate::tls::ClientStream;
use crate::upstream;
use crate::wire::pg::StartupFrame;
use crate::wire::pg::codes::startup as code;
use crate::wire::pg::messages::response::put_negotiation_answer;
use crate::wire::pg::messages::startup::{CancelKey, StartupParams};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a connection opened.
pub enum Opening {
    /// A session: the StartupMessage to forward and what the client sent after it.
    Session {
        client: ClientStream,
        startup_packet: Bytes,
        params: StartupParams,
        leftover: BytesMut,
    },
    /// A CancelRequest: the key it carries.
    Cancel(CancelKey),
    /// The client went away during negotiation.
    Closed,
}

/// SSLRequest and GSSENCRequest may each come once before the StartupMessage.
const MAX_NEGOTIATIONS: usize = 2;

pub async fn negotiate(ctx: &PgFrontendContext, socket: TcpStream) -> Result<Opening> {
    let mut client = ClientStream::Plain(socket);
    let mut buf = BytesMut::with_capacity(512);
    let mut negotiations = 0;
    loop {
        let frame = loop {
            match StartupFrame::peek(&buf) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => return Err(refuse(&mut client, e.into()).await),
            }
            if client.read_buf(&mut buf).await.map_err(Error::ClientIo)? == 0 {
                return Ok(Opening::Closed);
            }
        };
        match frame.code {
            code::SSL_REQUEST | code::GSSENC_REQUEST if negotiations < MAX_NEGOTIATIONS => {
                negotiations += 1;
                buf.advance(frame.wire_len);
                client = answer_negotiation(ctx, client, frame.code, &buf).await?;
            }
            code::CANCEL_REQUEST => {
                return match CancelKey::decode(frame.payload(&buf)) {
                    Ok(key) => Ok(Opening::Cancel(key)),
                    Err(_) => {
                        let e = Error::Malformed {
                            what: "CancelRequest",
                        };
                        Err(refuse(&mut client, e).await)
                    }
                };
            }
            version if version >> 16 == 3 => {
                let params = match StartupParams::decode(frame.payload(&buf)) {
                    Ok(params) => params,
                    Err(_) => {
                        let e = Error::Malformed {
                            what: "StartupMessage",
                        };
                        return Err(refuse(&mut client, e).await);
                    }
                };
                if params
                    .get("replication")
                    .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
                {
                    let e = Error::Unsupported {
                        what: "a replication connection",
                    };
                    return Err(refuse(&mut client, e).await);
                }
                let startup_packet = buf.split_to(frame.wire_len).freeze();
                return Ok(Opening::Session {
                    client,
                    startup_packet,
                    params,
                    leftover: buf,
                });
            }
            other => return Err(refuse(&mut client, Error::UnsupportedStartup(other)).await),
        }
    }
}

/// Tells the client why its connection is refused, then hands the error back.
async fn refuse(client: &mut ClientStream, error: Error) -> Error {
    super::report_fatal(client, &error).await;
    error
}

async fn answer_negotiation(
    ctx: &PgFrontendContext,
    mut client: ClientStream,
    request: i32,
    after_request: &[u8],
) -> Result<ClientStream> {
    let mut answer = BytesMut::with_capacity(1);
    let accept_tls = request == code::SSL_REQUEST && ctx.tls.is_some();
    put_negotiation_answer(
        &mut answer,
        if accept_tls {
            code::ACCEPT_SSL
        } else {
            code::REFUSE
        },
    );
    client.write_all(&answer).await.map_err(Error::ClientIo)?;
    if !accept_tls {
        return Ok(client);
    }
    if !after_request.is_empty() {
        return Err(Error::UnexpectedMessage {
            tag: after_request[0],
            context: "sent in the clear after SSLRequest",
        });
    }
    match (client, &ctx.tls) {
        (ClientStream::Plain(tcp), Some(acceptor)) => {
            let tls = acceptor.accept(tcp).await.map_err(Error::TlsHandshake)?;
            Ok(ClientStream::Tls(Box::new(tls)))
        }
        (ClientStream::Tls(_), _) => Err(Error::UnexpectedMessage {
            tag: 0,
            context: "SSLRequest inside TLS",
        }),
        (plain, None) => Ok(plain),
    }
}

/// Relays a CancelRequest to the backend behind the key, if tandem handed that key out.
/// Unknown keys are dropped silently, as PostgreSQL itself does, so that a probe learns
/// nothing.
pub async fn forward_cancel(ctx: &PgFrontendContext, key: CancelKey) -> Result<()> {
    let Some(target) = ctx.cancels.lookup(&key) else {
        tracing::debug!("cancel request with an unknown key");
        return Ok(());
    };
    let forwarded = upstream::send_cancel(
        &target.upstream,
        target.backend,
        ctx.config.connect_timeout(),
    )
    .await;
    // While tandem itself waits (for a global lock), the backend is idle and ignores
    // the cancel: the session hears it too. After the backend has it, so that it less
    // likely meets the statements tandem sends once its wait ends.
    target.interrupt.interrupt();
    forwarded
}
