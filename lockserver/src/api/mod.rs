//! Thin adapters from the wire to the [`crate::coordinator::Coordinator`]: gRPC for
//! proxies, HTTP/JSON for applications and operators. Each handler decodes, calls
//! the coordinator, and maps the error in the one place its protocol has for that.

pub mod grpc;
pub mod http;
pub mod listener;
mod pipeline;
