//! `herald send`: a manual send of a region's digest, now.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::compose::DigestRequest;
use crate::config::Config;
use crate::deliver::{Deliverer, SendResult, Transport};
use crate::domain::{Cadence, DeliveryArticle, Email, SubscriberId, Timestamp, Timezone};
use crate::plan::manual_digest;
use crate::shutdown::Shutdown;

/// Options for `herald send`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The region whose digest to send.
    #[arg(long)]
    region: String,
    /// Readers of this cadence get it.
    #[arg(long, default_value = "daily")]
    cadence: Cadence,
    /// Send one test copy to this address only (nothing is recorded).
    #[arg(long)]
    to: Option<String>,
    /// Show who would get how many articles; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
}

/// Plans the edition, then delivers the queue with a progress bar.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let region = config
        .regions
        .known(&args.region)
        .map_err(anyhow::Error::msg)?;
    let store = crate::startup::open_store(config).await?;
    if let Some(to) = &args.to {
        let email = Email::parse(to)?;
        return test_send(
            config,
            &store,
            &region.slug,
            &region.name,
            args.cadence,
            &email,
        )
        .await;
    }

    // A broken template must stop the send before anything is queued.
    let composer = crate::startup::composer(config)?;
    let t = Timestamp::now();
    if args.dry_run || !args.yes {
        let plan = manual_digest(
            &config.deliver.expiry,
            &store,
            &region.slug,
            args.cadence,
            t,
            true,
        )
        .await?;
        if args.dry_run {
            for (email, n) in &plan.recipients {
                println!("{email}  {n} article(s)");
            }
            println!(
                "dry run: {} {} reader(s) of {} would get a digest ({} article placements); nothing was sent",
                plan.deliveries, args.cadence, region.slug, plan.articles
            );
            return Ok(ExitCode::SUCCESS);
        }
        if plan.deliveries == 0 {
            println!(
                "nothing to send: no confirmed {} reader of {} has unsent articles",
                args.cadence, region.slug
            );
            return Ok(ExitCode::SUCCESS);
        }
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "this would email {} reader(s); add --yes to send, or --dry-run to see who",
                plan.deliveries
            );
        }
        eprint!(
            "Send the {} digest to {} reader(s)? [y/N] ",
            region.name, plan.deliveries
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("cancelled; nothing was sent");
            return Ok(ExitCode::SUCCESS);
        }
    }

    let plan = manual_digest(
        &config.deliver.expiry,
        &store,
        &region.slug,
        args.cadence,
        Timestamp::now(),
        false,
    )
    .await?;
    println!(
        "queued {} digest(s) for {} ({} readers, {} articles placed)",
        plan.deliveries, region.slug, plan.deliveries, plan.articles
    );
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
    let total = plan.deliveries.max(1);
    let show_bar = std::io::stderr().is_terminal();
    let stats = deliverer
        .run_until_empty(&shutdown, |s| {
            if show_bar {
                let done = s.sent + s.deferred + s.bounced + s.failed + s.expired + s.skipped;
                let width = 30;
                let filled = ((done.min(total) * width) / total) as usize;
                eprint!(
                    "\rsending [{}{}] {done}/{total}  ({} sent, {} deferred)",
                    "#".repeat(filled),
                    " ".repeat(width as usize - filled),
                    s.sent,
                    s.deferred
                );
            }
        })
        .await?;
    if show_bar {
        eprintln!();
    }
    ctrl_c.abort();
    transport.close().await;
    store.close().await;
    Ok(super::deliver::report(&stats, config))
}

/// Renders the region's recent articles for one address and sends it right away.
async fn test_send(
    config: &Config,
    store: &crate::store::Store,
    region: &crate::domain::RegionSlug,
    region_name: &str,
    cadence: Cadence,
    email: &Email,
) -> anyhow::Result<ExitCode> {
    let t = Timestamp::now();
    let articles: Vec<DeliveryArticle> =
        super::preview::region_articles(store, region, region_name, cadence, t).await?;
    if articles.is_empty() {
        anyhow::bail!("region {region} has no articles yet; run `herald ingest` first");
    }
    let composer = crate::startup::composer(config)?;
    let message_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let composed = composer
        .digest(&DigestRequest {
            subscriber_id: SubscriberId::new(0),
            email,
            timezone: Timezone::UTC,
            cadence: Some(cadence),
            message_id: &message_id,
            articles: &articles,
            now: t,
        })
        .context("cannot compose the test email")?;
    let transport = Transport::from_config(&config.mail, &config.smtp);
    let result = transport_send(&transport, &composed).await;
    transport.close().await;
    match result {
        SendResult::Accepted(reply) => {
            println!("test digest sent to {email}: {reply}");
            Ok(ExitCode::SUCCESS)
        }
        SendResult::Temporary(e) | SendResult::Throttled(e) | SendResult::Unreachable(e) => {
            anyhow::bail!("the test digest to {email} was not sent: {e}")
        }
        SendResult::Permanent { reply, .. } => {
            anyhow::bail!("the server refused the test digest to {email}: {reply}")
        }
    }
}

async fn transport_send(transport: &Transport, composed: &crate::compose::Composed) -> SendResult {
    transport.send_one(composed).await
}
