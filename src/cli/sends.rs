//! `herald sends`: manual sends as objects, the same ones the admin API shows: list
//! them, show one with its rows by state, pause, resume or cancel one.

use std::process::ExitCode;

use crate::config::Config;
use crate::domain::{SendId, Timestamp};
use crate::store::{ManualSend, SendChange};

/// Subcommands of `herald sends`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The latest sends, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One send: who started it, where it stands, its emails by delivery state.
    Show {
        /// The send's id (printed by `herald send`).
        id: SendId,
    },
    /// Stop claiming the send's emails; those already sent stay sent.
    Pause {
        /// The send's id.
        id: SendId,
    },
    /// Go on from the send's unsent emails.
    Resume {
        /// The send's id.
        id: SendId,
    },
    /// Cancel the send's unsent emails; those already sent stay sent.
    Cancel {
        /// The send's id.
        id: SendId,
    },
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let now = Timestamp::now();
    let result = match command {
        Command::List { limit } => {
            let sends = store.sends(limit).await?;
            if sends.is_empty() {
                println!("no sends yet; start one with `herald send --region SLUG`");
            }
            for send in &sends {
                println!("{}", summary(send));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { id } => match store.send(id).await? {
            Some(send) => {
                show(&send);
                Ok(ExitCode::SUCCESS)
            }
            None => Err(not_found(id)),
        },
        Command::Pause { id } => changed(store.pause_send(id, now).await?, id, "paused"),
        Command::Resume { id } => changed(store.resume_send(id, now).await?, id, "resumed"),
        Command::Cancel { id } => changed(store.cancel_send(id, now).await?, id, "cancelled"),
    };
    store.close().await;
    result
}

fn not_found(id: SendId) -> anyhow::Error {
    anyhow::anyhow!("there is no send {id}; `herald sends list` shows them")
}

fn changed(change: SendChange, id: SendId, done: &str) -> anyhow::Result<ExitCode> {
    match change {
        SendChange::Changed(send) => {
            println!("send {id} {done}");
            println!("{}", summary(&send));
            Ok(ExitCode::SUCCESS)
        }
        SendChange::Refused(send) => Err(anyhow::anyhow!(
            "send {id} is {}, so it cannot be {done}: {}",
            send.state,
            crate::sends::refusal_hint(send.state)
        )),
        SendChange::NotFound => Err(not_found(id)),
    }
}

/// One line per send: id, state, region and cadence, counts, who and when.
pub fn summary(send: &ManualSend) -> String {
    let kind = if send.dry_run {
        "dry run".to_string()
    } else if let Some(to) = &send.test_address {
        format!("test copy to {to}")
    } else {
        let counts: Vec<String> = send
            .counts
            .by_state
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        format!(
            "{} email(s){}",
            send.counts.total(),
            if counts.is_empty() {
                String::new()
            } else {
                format!(": {}", counts.join(", "))
            }
        )
    };
    format!(
        "send {}  {}  {} {}  {kind}  by {}  started {}",
        send.id,
        send.state,
        send.region,
        send.cadence,
        send.started_by,
        super::format_time(Some(send.started_at)),
    )
}

fn show(send: &ManualSend) {
    println!("send {}", send.id);
    println!("  state:       {}", send.state);
    println!("  region:      {} ({})", send.region, send.cadence);
    println!("  started by:  {}", send.started_by);
    println!(
        "  started:     {}",
        super::format_time(Some(send.started_at))
    );
    println!("  finished:    {}", super::format_time(send.finished_at));
    if send.dry_run {
        println!("  dry run:     nothing was sent");
    }
    if let Some(to) = &send.test_address {
        println!("  test copy:   {to}");
    }
    if let Some(error) = &send.error {
        println!("  error:       {error}");
    }
    println!("  emails:      {}", send.counts.total());
    for (state, n) in &send.counts.by_state {
        println!("    {:<11}{n}", state.as_str());
    }
}
