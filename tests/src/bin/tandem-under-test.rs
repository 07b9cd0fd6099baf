//! `tandem proxy -c <file>` as a binary of the test crate, so that tests can run a proxy
//! in its own process and kill it with SIGKILL (Cargo hands integration tests the paths
//! of their own package's binaries only).

use tandem_proxy::shutdown::os_signal;
use tandem_proxy::{Config, server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: tandem-under-test <config.toml>")?;
    let config = Config::load(std::path::Path::new(&path))?;
    let listeners = server::Listeners::bind(&config).await?;
    server::run(listeners, config, os_signal()).await?;
    Ok(())
}
