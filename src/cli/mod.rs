//! The command line: one file per subcommand, each with its arguments and its run.

mod admin;
mod backup;
mod deliver;
mod deliveries;
mod ingest;
mod migrate;
mod plan;
mod preview;
mod send;
mod sends;
mod status;
mod subscribers;
mod suppressions;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::domain::Timestamp;

/// herald — regional news alerts and digests.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "HERALD_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    config: PathBuf,
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the database schema.
    Migrate(migrate::Args),
    /// Ingest, deliver and serve HTTP until SIGTERM/SIGINT, then drain.
    Daemon,
    /// Poll feeds once and print new/updated/unchanged/failed counts per feed.
    Ingest(ingest::Args),
    /// Plan the digest slots and alerts due at an instant (default now).
    Plan(plan::Args),
    /// Send a region's digest now to its confirmed readers, then deliver the queue.
    Send(send::Args),
    /// Send what is queued, then exit.
    Deliver(deliver::Args),
    /// Render a region's digest without sending it.
    Preview(preview::Args),
    /// Manage readers.
    #[command(subcommand)]
    Subscribers(subscribers::Command),
    /// Manual sends: list, show, pause, resume, cancel.
    #[command(subcommand)]
    Sends(sends::Command),
    /// The suppression list: list it, or lift one address.
    #[command(subcommand)]
    Suppressions(suppressions::Command),
    /// Show counts by delivery state, queue age, last error and feed health.
    Status,
    /// Write a consistent copy of the SQLite database, while the daemon runs.
    Backup(backup::Args),
    /// Act on delivery rows.
    #[command(subcommand)]
    Deliveries(deliveries::Command),
    /// Admin API tokens.
    #[command(subcommand)]
    Admin(admin::Command),
}

/// Parses arguments, runs the command, and turns errors into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match crate::clock::init() {
        Ok(Some(offset)) => tracing::warn!(
            offset_seconds = offset,
            now = %crate::clock::now_utc(),
            "the clock is shifted by {} (for tests only)",
            crate::clock::OFFSET_VAR
        ),
        Ok(None) => {}
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    }
    // One thread runs all async work: SMTP connections, the delivery engine's feeder and
    // recorder, the HTTP server, feed fetches. What takes CPU for longer runs elsewhere
    // (feed parsing and full renders on the blocking pool, SQLite statements on sqlx's
    // connection threads). On two cores a two-worker runtime sent about a fifth fewer
    // messages per second: each SMTP reply and each commit acknowledgement crossed
    // threads, and the hand-offs cost more CPU than the work (BENCHMARKS.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,herald=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Migrate(args) => migrate::run(&config, args).await,
        Command::Daemon => crate::daemon::run(config).await,
        Command::Ingest(args) => ingest::run(&config, args).await,
        Command::Plan(args) => plan::run(&config, args).await,
        Command::Send(args) => send::run(&config, args).await,
        Command::Deliver(args) => deliver::run(&config, args).await,
        Command::Preview(args) => preview::run(&config, args).await,
        Command::Subscribers(cmd) => subscribers::run(&config, cmd).await,
        Command::Sends(cmd) => sends::run(&config, cmd).await,
        Command::Suppressions(cmd) => suppressions::run(&config, cmd).await,
        Command::Status => status::run(&config).await,
        Command::Backup(args) => backup::run(&config, args).await,
        Command::Deliveries(cmd) => deliveries::run(&config, cmd).await,
        Command::Admin(cmd) => admin::run(&config, cmd).await,
    }
}

/// Formats an instant in UTC for tables; `never` for none.
pub fn format_time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "never".into())
}
