//! The `tandem` command: parse arguments, load configuration, bind, then run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tandem_proxy::dev::{self, LockserverListeners};
use tandem_proxy::shutdown::os_signal;
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
    /// Run the lockserver (the transaction coordinator).
    Lockserver {
        /// Without it, every default applies (embedded store in .tandem/lockserver).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Local development: an embedded lockserver plus proxies in front of the local databases.
    Dev {
        /// Proxy configuration; the defaults serve 127.0.0.1:5432 on 127.0.0.1:6433.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Lockserver configuration; the defaults listen on 127.0.0.1:8091 and :7091.
        #[arg(long)]
        lockserver_config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Proxy { config } => {
            let config = Config::load(&config)?;
            let listeners = server::Listeners::bind(&config).await?;
            server::run(listeners, config, os_signal()).await?;
        }
        Command::Lockserver { config } => {
            let config = load_lockserver(config.as_deref())?;
            let l = LockserverListeners::bind(&config).await?;
            tandem_lockserver::server::run(l.grpc, l.http, config, os_signal()).await?;
        }
        Command::Dev {
            config,
            lockserver_config,
        } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            let lock_config = load_lockserver(lockserver_config.as_deref())?;
            let listeners = server::Listeners::bind(&config).await?;
            let lock_listeners = LockserverListeners::bind(&lock_config).await?;
            for (addr, frontend) in listeners.postgres_addrs().iter().zip(&config.postgres) {
                println!(
                    "tandem dev: PostgreSQL {} -> postgres://{addr}/",
                    frontend.upstream
                );
            }
            println!(
                "tandem dev: lockserver gRPC {}",
                lock_listeners.grpc.local_addr()?
            );
            println!(
                "tandem dev: lockserver HTTP http://{}/v1/transactions",
                lock_listeners.http.local_addr()?
            );
            if let Some(admin) = listeners.admin_addr() {
                println!("tandem dev: proxy metrics http://{admin}/metrics");
            }
            dev::run(listeners, config, lock_listeners, lock_config, os_signal()).await?;
        }
    }
    Ok(())
}

fn load_lockserver(
    path: Option<&std::path::Path>,
) -> Result<tandem_lockserver::Config, tandem_lockserver::Error> {
    match path {
        Some(path) => tandem_lockserver::Config::load(path),
        None => Ok(tandem_lockserver::Config::default()),
    }
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
