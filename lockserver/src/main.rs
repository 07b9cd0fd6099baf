//! `tandem-lockserver -c FILE`: a standalone lockserver (the same as `tandem lockserver`).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;
use tandem_lockserver::Config;

/// mimalloc instead of glibc malloc: the hot path allocates and frees many small
/// objects across threads (request messages, keys, oneshots), and glibc's arena
/// locking and consolidation took ~20% of the server's CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tandem's transaction coordinator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file; without it, every default applies.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

// This runtime only binds the listeners and waits for a signal: the lockserver runs
// on its own (`worker_threads`).
fn main() -> std::process::ExitCode {
    tandem_lockserver::error::exit_code("tandem-lockserver", main_result())
}

#[tokio::main(flavor = "current_thread")]
async fn main_result() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let bind = |name: &'static str, addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{name} on {addr}: {e}")))
    };
    let grpc = bind("grpc_listen", config.grpc_listen).await?;
    let http = bind("http_listen", config.http_listen).await?;
    // Tests read these lines to find ephemeral ports.
    println!("grpc_listen={}", grpc.local_addr()?);
    println!("http_listen={}", http.local_addr()?);
    let shutdown = tandem_lockserver::server::shutdown_signal();
    tandem_lockserver::server::run(grpc, http, config, shutdown).await?;
    Ok(())
}
