//! `herald ingest`: poll feeds once and report per feed.

use std::process::ExitCode;

use crate::config::Config;
use crate::ingest::ingest_all;

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
                .known_region(text)
                .map_err(anyhow::Error::msg)?
                .slug
                .clone(),
        ),
        None => None,
    };
    let store = super::open_store(config).await?;
    let reports = ingest_all(config, &store, only.as_ref()).await?;
    let (mut new, mut updated, mut unchanged, mut failed) = (0, 0, 0, 0);
    for report in &reports {
        match &report.result {
            Ok(counts) => {
                new += counts.new;
                updated += counts.updated;
                unchanged += counts.unchanged;
                println!(
                    "{:<14} {}  {} new, {} updated, {} unchanged",
                    report.region, report.feed, counts.new, counts.updated, counts.unchanged
                );
            }
            Err(error) => {
                failed += 1;
                println!("{:<14} {}  FAILED: {error}", report.region, report.feed);
            }
        }
    }
    println!(
        "ingested {} feed(s): {new} new, {updated} updated, {unchanged} unchanged, {failed} failed",
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
