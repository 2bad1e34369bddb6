//! `herald admin token create|list|revoke`: bearer tokens for the admin API.

use std::process::ExitCode;

use super::format_time;
use crate::api_token;
use crate::config::Config;
use crate::domain::Timestamp;

/// Subcommands of `herald admin`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Manage the bearer tokens that open `/admin/api/…`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Subcommands of `herald admin token`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it once; only its SHA-256 is stored.
    Create {
        /// Who or what will use it (e.g. `newsroom-cms`).
        name: String,
    },
    /// One line per token: name, created, last used.
    List,
    /// Delete a token; requests carrying it are refused from then on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    let Command::Token(command) = command;
    let store = crate::startup::open_store(config).await?;
    let code = match command {
        TokenCommand::Create { name } => {
            let name = api_token::check_name(&name)?;
            let token = api_token::generate()?;
            if store
                .create_api_token(name, &api_token::hash(&token), Timestamp::now())
                .await?
            {
                // The token alone on stdout, so `TOKEN=$(herald admin token create cms)` works.
                println!("{token}");
                eprintln!(
                    "created token \"{name}\"; copy it now, it is not shown again \
                     (send it as `Authorization: Bearer …`)"
                );
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: a token named \"{name}\" exists; revoke it first \
                     (`herald admin token revoke {name}`) or pick another name"
                );
                ExitCode::FAILURE
            }
        }
        TokenCommand::List => {
            let tokens = store.api_tokens().await?;
            if tokens.is_empty() {
                println!("no tokens; make one with `herald admin token create NAME`");
            }
            for token in tokens {
                println!(
                    "{:<24} created {}  last used {}",
                    token.name,
                    format_time(Some(token.created_at)),
                    format_time(token.last_used_at)
                );
            }
            ExitCode::SUCCESS
        }
        TokenCommand::Revoke { name } => {
            if store.revoke_api_token(&name).await? {
                println!("revoked token \"{name}\"");
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: there is no token named \"{name}\" (see `herald admin token list`)"
                );
                ExitCode::FAILURE
            }
        }
    };
    store.close().await;
    Ok(code)
}
