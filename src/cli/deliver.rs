//! `herald deliver`: send what is queued, then exit.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Config;
use crate::deliver::{DeliverStats, Deliverer, Transport};
use crate::shutdown::Shutdown;

/// Options for `herald deliver`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep claiming batches until nothing is due (otherwise one batch).
    #[arg(long)]
    until_empty: bool,
}

/// Delivers due rows and prints what happened to them.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let composer = crate::startup::composer(config)?;
    let transport = Arc::new(Transport::from_config(&config.mail, &config.smtp));
    let deliverer = Deliverer::new(
        &config.deliver,
        &config.smtp,
        store.clone(),
        composer,
        transport.clone(),
    );
    let (trigger, shutdown) = Shutdown::new();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            trigger.fire();
        }
    });
    let stats = if args.until_empty {
        deliverer.run_until_empty(&shutdown, |_| {}).await?
    } else {
        deliverer.run_batch(&shutdown).await?
    };
    ctrl_c.abort();
    transport.close().await;
    store.close().await;
    Ok(report(&stats, config))
}

/// Prints a summary line; returns failure when mail was left undelivered.
pub fn report(stats: &DeliverStats, config: &Config) -> ExitCode {
    println!(
        "delivered: {} sent, {} deferred, {} bounced, {} failed, {} expired, {} skipped (unsubscribed or suppressed)",
        stats.sent, stats.deferred, stats.bounced, stats.failed, stats.expired, stats.skipped
    );
    if stats.store_errors > 0 {
        eprintln!(
            "warning: the database failed {} time(s) while recording outcomes (last: {}); each was written again once it answered, and no email was sent twice",
            stats.store_errors,
            stats.last_store_error.as_deref().unwrap_or("unknown error")
        );
    }
    let undelivered = stats.deferred + stats.failed;
    if undelivered > 0 {
        let reason = stats.last_error.as_deref().unwrap_or("unknown error");
        let target = match config.mail.transport {
            crate::config::TransportKind::Smtp => {
                format!("the SMTP server {}:{}", config.smtp.host, config.smtp.port)
            }
            crate::config::TransportKind::File => {
                format!("the outbox folder {}", config.mail.outbox_dir.display())
            }
        };
        eprintln!(
            "error: {undelivered} email(s) could not be delivered to {target}: {reason}. \
             Deferred emails stay queued and are retried by `herald deliver` or the daemon."
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
