//! Compiles `proto/lockserver.proto`. `protoc` comes from `protoc-bin-vendored`, so a
//! fresh machine builds tandem without a system protobuf compiler; `PROTOC` still wins
//! when it is set.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: a build script is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    tonic_prost_build::configure().compile_protos(&["proto/lockserver.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/lockserver.proto");
    Ok(())
}
