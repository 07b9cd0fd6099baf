//! Generated gRPC types and stubs for `proto/lockserver.proto`
//! (by `tonic-prost-build` in `build.rs`). Only `api::grpc` and `client` use them.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("tandem.lockserver.v1");
