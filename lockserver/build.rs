//! Compiles `proto/lockserver.proto` (needs `protoc` on PATH; Debian: `protobuf-compiler`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/lockserver.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/lockserver.proto");
    Ok(())
}
