//! `herald ingest`: poll feeds once and report per feed.

use std::process::ExitCode;

use crate::config::Config;
use crate::ingest::{PollOutcome, ingest_all};

/// Options for `herald ingest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this region's feeds.
    #[arg(long)]
    region: Option<String>,
}

/// Polls, stores, prints one line per feed and a total; exits 1 if any feed failed.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let only = match &args.region {
        Some(text) => Some(
            config
                .regions
                .known(text)
                .map_err(anyhow::Error::msg)?
                .slug
                .clone(),
        ),
        None => None,
    };
    let store = crate::startup::open_store(config).await?;
    let reports = ingest_all(
        &config.ingest,
        &config.alerts.categories,
        &config.regions,
        &store,
        only.as_ref(),
    )
    .await?;
    let (mut new, mut updated, mut unchanged, mut not_modified, mut failed) = (0, 0, 0, 0, 0);
    for report in &reports {
        match &report.result {
            Ok(PollOutcome::Stored(counts)) => {
                new += counts.new;
                updated += counts.updated;
                unchanged += counts.unchanged;
                let note = match (&report.notes.recovered, &report.notes.warning) {
                    (Some(e), _) => format!("  (recovered: {e})"),
                    (None, Some(w)) => format!("  WARNING: {w}"),
                    (None, None) => String::new(),
                };
                println!(
                    "{:<14} {}  {} new, {} updated, {} unchanged{note}",
                    report.region, report.feed, counts.new, counts.updated, counts.unchanged
                );
            }
            Ok(PollOutcome::NotModified) => {
                not_modified += 1;
                println!(
                    "{:<14} {}  unchanged (304 Not Modified, nothing parsed)",
                    report.region, report.feed
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "{:<14} {}  FAILED: {error} (next try {})",
                    report.region,
                    report.feed,
                    super::format_time(Some(report.next_poll_at))
                );
            }
        }
    }
    println!(
        "ingested {} feed(s): {new} new, {updated} updated, {unchanged} unchanged, {not_modified} not modified, {failed} failed",
        reports.len()
    );
    store.close().await;
    if failed > 0 {
        eprintln!(
            "error: {failed} feed(s) could not be ingested (see the lines marked FAILED); the other feeds were stored"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
