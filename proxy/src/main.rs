//! The `tandem` command: parse arguments, load configuration, bind, then run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tandem_proxy::{Config, server};

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Atomic commit across PostgreSQL and MySQL databases"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxies a configuration file describes.
    Proxy {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run everything for local development: proxies in front of the local databases.
    Dev {
        /// Optional configuration file; the defaults serve 127.0.0.1:5432 on 127.0.0.1:6433.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let config = match &cli.command {
        Command::Proxy { config } => Config::load(config)?,
        Command::Dev { config: Some(path) } => Config::load(path)?,
        Command::Dev { config: None } => Config::default(),
    };
    let listeners = server::Listeners::bind(&config).await?;
    if let Command::Dev { .. } = cli.command {
        for (addr, frontend) in listeners.postgres_addrs().iter().zip(&config.postgres) {
            println!(
                "tandem dev: PostgreSQL {} -> postgres://{addr}/",
                frontend.upstream
            );
        }
        if let Some(admin) = listeners.admin_addr() {
            println!("tandem dev: metrics at http://{admin}/metrics");
        }
    }
    server::run(listeners, config, tandem_proxy::shutdown::os_signal()).await?;
    Ok(())
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
