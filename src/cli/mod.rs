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
mod sponsors;
mod status;
mod subscribers;
mod suppressions;
mod templates;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_PATH, LogFormat, PathBase};
use crate::domain::Timestamp;

/// herald — regional news alerts and digests.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file; relative paths in it are read against its folder. Without
    /// one, config/herald.toml is read, with paths against the working directory.
    #[arg(long, global = true, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The commands that run on a configuration (and open the database).
    #[command(flatten)]
    Configured(Configured),
    /// The built-in email and page templates.
    #[command(subcommand)]
    Templates(templates::Command),
}

#[derive(Debug, Subcommand)]
enum Configured {
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
    /// Sponsor slots per region and date range: add, list, remove, report.
    #[command(subcommand)]
    Sponsors(sponsors::Command),
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
    let command = match cli.command {
        // Needs no configuration: it writes what is built into the binary.
        Command::Templates(cmd) => return report(templates::run(cmd)),
        Command::Configured(command) => command,
    };
    let loaded = match &cli.config {
        Some(path) => Config::load(path, PathBase::ConfigFolder),
        None => Config::load(Path::new(DEFAULT_PATH), PathBase::WorkingDirectory),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(config.log.format);
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
    report(runtime.block_on(run(command, config)))
}

/// The exit code of a command's result, with its error printed.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stderr, filtered by `HERALD_LOG`: human-readable by default, or
/// one JSON object per line (`[log] format = "json"`), the event's fields at the top
/// level beside `timestamp`, `level`, `target` and `message`.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("warn,herald=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .try_init(),
    };
}

async fn run(command: Configured, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Configured::Migrate(args) => migrate::run(&config, args).await,
        Configured::Daemon => crate::daemon::run(config).await,
        Configured::Ingest(args) => ingest::run(&config, args).await,
        Configured::Plan(args) => plan::run(&config, args).await,
        Configured::Send(args) => send::run(&config, args).await,
        Configured::Deliver(args) => deliver::run(&config, args).await,
        Configured::Preview(args) => preview::run(&config, args).await,
        Configured::Subscribers(cmd) => subscribers::run(&config, cmd).await,
        Configured::Sends(cmd) => sends::run(&config, cmd).await,
        Configured::Suppressions(cmd) => suppressions::run(&config, cmd).await,
        Configured::Sponsors(cmd) => sponsors::run(&config, cmd).await,
        Configured::Status => status::run(&config).await,
        Configured::Backup(args) => backup::run(&config, args).await,
        Configured::Deliveries(cmd) => deliveries::run(&config, cmd).await,
        Configured::Admin(cmd) => admin::run(&config, cmd).await,
    }
}

/// Formats an instant in UTC for tables; `never` for none.
pub fn format_time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_utc().format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "never".into())
}
