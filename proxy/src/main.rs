//! The `tandem` command: parse arguments, load configuration, bind, then run.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tandem_proxy::dev::{self, LockserverListeners};
use tandem_proxy::shutdown::os_signal;
use tandem_proxy::{Config, server};

/// mimalloc instead of glibc malloc: the lockserver hosted by `tandem lockserver` and
/// `tandem dev` allocates many small short-lived objects per call (measured: glibc malloc
/// was about a fifth of its CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Create tandem's tables (undo_log) in each database given by URL.
    Migrate {
        /// postgres://user@host:port/database (more than one allowed).
        #[arg(required = true)]
        urls: Vec<String>,
    },
    /// Local development: an embedded lockserver plus proxies in front of the local databases.
    Dev {
        /// Proxy configuration; the defaults serve 127.0.0.1:5432 on 127.0.0.1:6433 and
        /// 127.0.0.1:3306 on 127.0.0.1:3307.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Lockserver configuration; the defaults listen on 127.0.0.1:8091 and :7091.
        #[arg(long)]
        lockserver_config: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    tandem_lockserver::error::exit_code("tandem", main_result())
}

fn main_result() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    // The proxy's configuration says how many threads its runtime gets.
    let proxy_config = match &cli.command {
        Command::Proxy { config } => Some(Config::load(config)?),
        Command::Dev {
            config: Some(path), ..
        } => Some(Config::load(path)?),
        Command::Dev { config: None, .. } => Some(Config::default()),
        _ => None,
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = proxy_config.as_ref().and_then(Config::runtime_threads) {
        runtime.worker_threads(threads);
    }
    runtime
        .enable_all()
        .build()?
        .block_on(run(cli.command, proxy_config))
}

async fn run(
    command: Command,
    proxy_config: Option<Config>,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Proxy { .. } => {
            let config = proxy_config.unwrap_or_default();
            let listeners = server::Listeners::bind(&config).await?;
            server::run(listeners, config, os_signal()).await?;
        }
        Command::Lockserver { config } => {
            let config = dev::load_lockserver_config(config.as_deref())?;
            let l = LockserverListeners::bind(&config).await?;
            tandem_lockserver::server::run(l.grpc, l.http, config, os_signal()).await?;
        }
        Command::Migrate { urls } => {
            // Each database on its own: one that fails does not keep the others back.
            let mut failed = 0;
            for url in &urls {
                match tandem_proxy::migrate::apply(url).await {
                    Ok(applied) => println!(
                        "tandem migrate: {} applied to {} (undo_log in {})",
                        applied.migrations.join(", "),
                        tandem_proxy::migrate::redact(url),
                        applied.schema
                    ),
                    Err(e) => {
                        // The driver's own message ("db error") names no cause; its
                        // sources do.
                        eprintln!("tandem migrate: {}", tandem_lockserver::error::chain(&e));
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Err(format!("{failed} of {} databases not migrated", urls.len()).into());
            }
        }
        Command::Dev {
            lockserver_config, ..
        } => {
            let config = proxy_config.unwrap_or_default();
            let lock_config = dev::load_lockserver_config(lockserver_config.as_deref())?;
            let listeners = server::Listeners::bind(&config).await?;
            let lock_listeners = LockserverListeners::bind(&lock_config).await?;
            dev::announce(&config, &listeners, &lock_listeners);
            dev::run(listeners, config, lock_listeners, lock_config, os_signal()).await?;
        }
    }
    Ok(())
}

fn init_tracing(json: bool) {
    let configured = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // sqlparser logs every statement it parses, literals and all, at debug: a
    // `RUST_LOG=debug` to look at tandem would write every client's data to the log.
    // Named explicitly (`sqlparser=debug`), it is the operator's choice.
    if !configured.contains("sqlparser")
        && let Ok(quiet) = "sqlparser=info".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
