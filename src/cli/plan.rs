//! `herald plan`: plan the slots due at an instant (default now).

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::plan::plan_due;

/// Options for `herald plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Plan as if it were this instant (RFC 3339, e.g. 2026-11-28T15:00:00Z).
    #[arg(long, value_parser = parse_instant)]
    at: Option<DateTime<Utc>>,
    /// Show what would be planned; write nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("\"{text}\" is not an RFC 3339 instant such as 2026-11-28T07:00:00Z ({e})")
        })
}

/// Plans and prints one line per slot, skipped slot and alert.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let at = args.at.unwrap_or_else(crate::clock::now_utc);
    let report = plan_due(
        &crate::startup::plan_config(config),
        &store,
        at,
        args.dry_run,
    )
    .await?;
    for (cadence, zone, slot, summary) in &report.slots {
        println!(
            "{cadence:<7} {zone:<22} {}  {} digest(s), {} article(s)",
            slot.with_timezone(&zone.tz()).format("%Y-%m-%d %H:%M %Z"),
            summary.deliveries,
            summary.articles
        );
        for (email, n) in &summary.recipients {
            println!("          {email}  {n} article(s)");
        }
    }
    for (cadence, zone, slot, summary) in &report.finished {
        println!(
            "{cadence:<7} {zone:<22} {}  {} more digest(s), {} article(s): the rest of a slot begun earlier",
            slot.with_timezone(&zone.tz()).format("%Y-%m-%d %H:%M %Z"),
            summary.deliveries,
            summary.articles
        );
    }
    for (cadence, zone, slot) in &report.skipped {
        println!(
            "{cadence:<7} {zone:<22} {}  skipped: older than schedule.max_lateness",
            slot.format("%Y-%m-%d %H:%MZ")
        );
    }
    for (article, zone, release, summary) in &report.alerts {
        println!(
            "alert   {zone:<22} article {article}: {} alert(s), sent from {}",
            summary.deliveries,
            release.format("%Y-%m-%d %H:%MZ")
        );
    }
    println!(
        "{}planned {} email(s) at {}: {} slot(s), {} skipped, {} alert batch(es)",
        if args.dry_run {
            "dry run: would have "
        } else {
            ""
        },
        report.deliveries(),
        at.to_rfc3339(),
        report.slots.len(),
        report.skipped.len(),
        report.alerts.len()
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
