//! `herald migrate`: create or upgrade the schema.

use std::process::ExitCode;

use crate::config::Config;

/// No options: the database comes from the configuration.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Applies every pending migration.
pub async fn run(config: &Config, _args: Args) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    store.close().await;
    println!("database schema is up to date ({:?})", store.backend());
    Ok(ExitCode::SUCCESS)
}
