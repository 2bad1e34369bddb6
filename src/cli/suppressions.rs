//! `herald suppressions`: the addresses herald never mails, each with its reason.
//! Entries are keyed hashes (an erased reader's address is not kept), so the list
//! shows the hash; `remove` takes the address and lifts its entry.

use std::process::ExitCode;

use crate::config::Config;
use crate::domain::Email;

/// Subcommands of `herald suppressions`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every entry: its date, hash and reason, and the bounce or complaint behind it.
    List,
    /// Lift the suppression of one address, so herald may mail it again.
    Remove {
        /// The address.
        email: String,
    },
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let result = match command {
        Command::List => {
            let entries = store.suppressions().await?;
            for entry in &entries {
                // The report that caused it, when one did: its id, kind, source and row.
                let cause = match &entry.event {
                    Some(e) => format!(
                        "  (event {} {} via {}, delivery {})",
                        e.id, e.kind, e.source, e.delivery
                    ),
                    None => String::new(),
                };
                println!(
                    "{}  {}  {}{cause}",
                    super::format_time(Some(entry.created_at)),
                    entry.entry,
                    entry.reason,
                );
            }
            println!("{} suppressed address(es)", entries.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { email } => {
            let email = Email::parse(&email)?;
            if store.remove_suppression(&email).await? {
                println!("{email} is no longer suppressed");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(anyhow::anyhow!(
                    "{email} is not on the suppression list; `herald suppressions list` shows it"
                ))
            }
        }
    };
    store.close().await;
    result
}
