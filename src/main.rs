//! `spool-broker`: runs the Spool broker.
//!
//! Prints `spool listening on ADDR` on stdout once it accepts connections
//! (and `kafka listening on ADDR` after it, for the Kafka listener when it
//! is on),
//! logs to stderr (filtered by `RUST_LOG`, default `info`), and shuts down
//! gracefully on SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use spool::broker::{Broker, Config};
use tokio::signal::unix::{signal, SignalKind};

/// The Spool log broker.
#[derive(Debug, Parser)]
#[command(name = "spool-broker", version, about)]
struct Args {
    /// TOML configuration file (see config/spool.toml); without it the
    /// built-in defaults apply.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on, overriding the configuration (port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory, overriding the configuration.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the Kafka listener, overriding `[kafka] listen` (port 0
    /// picks one; "" turns it off).
    #[arg(long, value_name = "ADDR")]
    kafka_listen: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not into a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spool-broker: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.server.data_dir = dir;
    }
    if let Some(listen) = args.kafka_listen {
        config.kafka.listen = listen;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.server.worker_threads > 0 {
        builder.worker_threads(config.server.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spool-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            eprintln!("spool-broker: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let broker = match Broker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("spool-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The ready line: tests and scripts wait for it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "spool listening on {}", broker.local_addr());
    if let Some(kafka) = broker.kafka_addr() {
        let _ = writeln!(stdout, "kafka listening on {kafka}");
    }
    let _ = stdout.flush();
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    broker.shutdown().await;
    ExitCode::SUCCESS
}
