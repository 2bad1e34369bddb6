//! `herald backup PATH`: a consistent copy of the SQLite database, taken while the
//! daemon runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::Config;

/// Arguments of `herald backup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the copy (a new file; its folder must exist).
    path: PathBuf,
}

/// Copies the database to `path` and says what it holds.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let path = std::path::absolute(&args.path)
        .with_context(|| format!("cannot use {} as a path", args.path.display()))?;
    let store = crate::startup::open_store(config).await?;
    let copied = store.backup_to(&path).await;
    store.close().await;
    let summary = copied?;
    println!(
        "backed up to {}: {} bytes, {} readers, {} deliveries",
        path.display(),
        summary.bytes,
        summary.subscribers,
        summary.deliveries
    );
    Ok(ExitCode::SUCCESS)
}
