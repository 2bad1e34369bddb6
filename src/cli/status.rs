//! `herald status`: the outbox and the feeds at a glance.

use std::process::ExitCode;

use super::format_time;
use crate::bounces::BounceKind;
use crate::config::Config;
use crate::domain::Timestamp;

/// Prints counts by state, the oldest waiting row, the last error, and each feed's last
/// success, last error and next poll.
pub async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let store = crate::startup::open_store(config).await?;
    let queue = store.queue_status().await?;
    println!("deliveries:");
    for (state, n) in &queue.by_state {
        println!("  {:<11} {n}", state.as_str());
    }
    match queue.oldest_waiting_since {
        Some(t) => println!(
            "oldest waiting: {} ({}s ago)",
            format_time(Some(t)),
            Timestamp::now().seconds_since(t)
        ),
        None => println!("oldest waiting: none"),
    }
    match &queue.last_error {
        Some((t, e)) => println!("last error: {} {e}", format_time(Some(*t))),
        None => println!("last error: none"),
    }
    let bounces = store.bounce_stats().await?;
    println!(
        "bounces: {} reported after sending ({} hard, {} soft), bounce rate {:.2}%; \
         {} complaint(s), complaint rate {:.3}%; {} unsubscribe(s) by mail",
        bounces.count(BounceKind::Hard) + bounces.count(BounceKind::Soft),
        bounces.count(BounceKind::Hard),
        bounces.count(BounceKind::Soft),
        bounces.bounce_rate() * 100.0,
        bounces.count(BounceKind::Complaint),
        bounces.complaint_rate() * 100.0,
        bounces.count(BounceKind::Unsubscribe),
    );
    for domain in &bounces.by_domain {
        let kinds: Vec<String> = domain
            .by_kind
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {}", k.as_str()))
            .collect();
        println!(
            "  {:<24} {}; bounce rate {:.2}%, complaint rate {:.3}% of {} sent; {} suppressed",
            domain.domain,
            kinds.join(", "),
            domain.bounce_rate() * 100.0,
            domain.complaint_rate() * 100.0,
            domain.sent,
            domain.suppressed
        );
    }
    let causes: Vec<String> = bounces
        .suppressions
        .iter()
        .map(|(cause, n)| format!("{n} {cause}"))
        .collect();
    println!(
        "suppressions: {}",
        if causes.is_empty() {
            "none".into()
        } else {
            causes.join(", ")
        }
    );
    if bounces.purged_signups > 0 {
        println!("sign-ups erased unconfirmed: {}", bounces.purged_signups);
    }
    if let Some(mailbox) = crate::bounces::mailbox::Mailbox::from_config(&config.bounces) {
        match mailbox.unparsed_waiting().await {
            Ok(n) => println!(
                "bounce mailbox: {n} mail(s) herald could not read, left unread (flagged {})",
                crate::bounces::imap::UNPARSED_KEYWORD
            ),
            Err(error) => println!("bounce mailbox: cannot be read: {error}"),
        }
    }
    let (articles, breaking) = store.article_totals().await?;
    println!("articles: {articles} stored, {breaking} breaking");
    println!("feeds:");
    for feed in store.feed_statuses().await? {
        let state = match &feed.last_error {
            Some(e) if feed.consecutive_failures > 1 => {
                format!(
                    "FAILING ({} polls in a row): {e}",
                    feed.consecutive_failures
                )
            }
            Some(e) => format!("FAILING: {e}"),
            None => match (&feed.recovered_error, &feed.parse_warning) {
                (Some(e), _) => format!("recovered (not well-formed: {e})"),
                (None, Some(w)) => format!("WARNING: {w}"),
                (None, None) => "ok".into(),
            },
        };
        let next = match feed.next_poll_at {
            Some(t) => format_time(Some(t)),
            None => "at the next run".into(),
        };
        println!(
            "  {:<14} {}  last success {}  next poll {next}  {state}",
            feed.region,
            feed.url,
            format_time(feed.last_success_at)
        );
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
