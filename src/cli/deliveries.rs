//! `herald deliveries`: act on delivery rows.

use std::process::ExitCode;

use crate::config::Config;
use crate::domain::{DeliveryKind, Timestamp};

/// Subcommands of `herald deliveries`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Requeue rows that ended failed or expired.
    Retry {
        /// Requeue `failed` and `expired` rows (required, to say what you mean).
        #[arg(long)]
        failed: bool,
    },
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    let Command::Retry { failed } = command;
    if !failed {
        anyhow::bail!("say which rows to retry: `herald deliveries retry --failed`");
    }
    let store = crate::startup::open_store(config).await?;
    let t = Timestamp::now();
    let expiry = config.deliver.expiry.of(DeliveryKind::Digest, None);
    let n = store.retry_failed(t, t + expiry).await?;
    println!(
        "requeued {n} failed or expired deliveries; `herald deliver --until-empty` sends them"
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
