//! The HTTP/JSON API (DESIGN.md) and `/metrics`, for applications and operators.
//!
//! Owns: routes, JSON shapes and the one mapping from [`Error`] to an HTTP status
//! ([`ApiError`]'s `IntoResponse`). Never holds state. Invariant: internal errors
//! are logged once and answered 500 without details; client mistakes are 4xx.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::coordinator::Coordinator;
use crate::core::txn::{Global, Xid};
use crate::error::Error;

/// An error on its way to becoming an HTTP response.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let code = match &e {
            Error::InvalidArgument { .. } | Error::BadLockKey(_) | Error::LimitExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::UnknownXid { .. } | Error::UnknownBranch { .. } => StatusCode::NOT_FOUND,
            Error::DuplicateXid { .. }
            | Error::InvalidState { .. }
            | Error::Expired { .. }
            | Error::PhaseOnePending { .. }
            | Error::LockConflict { .. } => StatusCode::CONFLICT,
            Error::Overloaded
            | Error::ShuttingDown
            | Error::Contention { .. }
            | Error::Unacknowledged { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout { .. } | Error::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Rpc { .. }
            | Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::DamagedLog { .. }
            | Error::Redis(_)
            | Error::Config { .. }
            | Error::Transport(_) => {
                tracing::error!(error = %e, "internal error");
                let body = json!({"error": "internal error (logged by the lockserver)"});
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
            }
        };
        let mut body = json!({ "error": e.to_string() });
        if let Error::InvalidState { status, .. } = &e {
            body["status"] = json!(status.as_str());
        }
        if let Error::LockConflict { holder, .. } = &e {
            body["holder"] = json!(holder.as_str());
        }
        (code, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The axum router (also used in-process by tests).
pub fn router(coord: Arc<Coordinator>) -> Router {
    let body_limit = coord.config.limits.max_body_bytes;
    Router::new()
        .route("/v1/transactions", post(begin).get(list))
        .route("/v1/transactions/{xid}", get(show))
        .route("/v1/transactions/{xid}/commit", post(commit))
        .route("/v1/transactions/{xid}/rollback", post(rollback))
        .route("/v1/locks", get(locks))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(json_errors))
        .fallback(|| async {
            let body =
                json!({ "error": "no such endpoint (see /v1/transactions, /v1/locks, /metrics)" });
            (StatusCode::NOT_FOUND, Json(body))
        })
        .with_state(coord)
}

/// Every error answers JSON, those axum gives itself too: a wrong method, a body past
/// the limit, a path that does not decode.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let mut out = (status, Json(json!({ "error": message }))).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeginBody {
    timeout_ms: Option<u64>,
}

async fn begin(State(c): State<Arc<Coordinator>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let _p = c.permit()?;
    let timeout = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b: BeginBody = serde_json::from_slice(&body).map_err(|_| Error::InvalidArgument {
            what: "body must be {\"timeout_ms\": N} or empty",
        })?;
        b.timeout_ms
    };
    let (xid, _) = c.begin(timeout).await?;
    Ok((StatusCode::CREATED, Json(json!({ "xid": xid.as_str() }))))
}

async fn commit(
    State(c): State<Arc<Coordinator>>,
    Path(xid): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let _p = c.permit()?;
    let s = c.commit(Xid::parse(&xid)?).await?;
    Ok(Json(json!({ "status": s.as_str() })))
}

async fn rollback(
    State(c): State<Arc<Coordinator>>,
    Path(xid): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let _p = c.permit()?;
    let s = c.rollback(Xid::parse(&xid)?).await?;
    Ok(Json(json!({ "status": s.as_str() })))
}

async fn show(
    State(c): State<Arc<Coordinator>>,
    Path(xid): Path<String>,
) -> ApiResult<Json<Global>> {
    let _p = c.permit()?;
    Ok(Json(c.global(&Xid::parse(&xid)?).await?))
}

async fn list(State(c): State<Arc<Coordinator>>) -> ApiResult<Json<serde_json::Value>> {
    let _p = c.permit()?;
    let (transactions, truncated) = c.globals().await?;
    Ok(Json(
        json!({ "transactions": transactions, "truncated": truncated }),
    ))
}

#[derive(Serialize)]
struct LockRow<'a> {
    key: &'a str,
    resource: &'a str,
    table: &'a str,
    pk: Vec<&'a str>,
    xid: &'a str,
}

async fn locks(State(c): State<Arc<Coordinator>>) -> ApiResult<Json<serde_json::Value>> {
    let _p = c.permit()?;
    let (held, truncated) = c.locks().await?;
    let rows: Vec<LockRow> = held
        .iter()
        .map(|(k, x)| LockRow {
            key: k.as_str(),
            resource: k.resource(),
            table: k.table(),
            pk: k.pk(),
            xid: x.as_str(),
        })
        .collect();
    Ok(Json(json!({ "locks": rows, "truncated": truncated })))
}

async fn metrics(State(c): State<Arc<Coordinator>>) -> ApiResult<impl IntoResponse> {
    let text = c.metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            crate::metrics::OPENMETRICS_CONTENT_TYPE,
        )],
        text,
    ))
}
