//! `herald preview`: render a region's digest without sending it.

use std::process::ExitCode;

use crate::compose::DigestRequest;
use crate::config::Config;
use crate::domain::{Cadence, Email, SubscriberId, Timestamp};
use crate::sends::region_articles;

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// The HTML part.
    Html,
    /// The text/plain part.
    Text,
    /// The whole message as it would be sent.
    Eml,
}

/// Options for `herald preview`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The region to preview.
    #[arg(long)]
    region: String,
    /// Which cadence's digest.
    #[arg(long, default_value = "daily")]
    cadence: Cadence,
    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Prints the rendered digest to stdout.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    let region = config
        .regions
        .known(&args.region)
        .map_err(anyhow::Error::msg)?;
    let store = crate::startup::open_store(config).await?;
    let t = Timestamp::now();
    let articles = region_articles(
        &store,
        &region.slug,
        &region.name,
        args.cadence,
        region.timezone,
        t,
    )
    .await?;
    store.close().await;
    if articles.is_empty() {
        anyhow::bail!(
            "region {} has no articles yet; run `herald ingest` first",
            region.slug
        );
    }
    let composer = crate::startup::composer(config)?;
    let email = Email::parse("preview@example.invalid").expect("valid preview address");
    let request = DigestRequest {
        subscriber_id: SubscriberId::new(0),
        email: &email,
        timezone: region.timezone,
        cadence: Some(args.cadence),
        message_id: "00000000000000000000000000000000",
        articles: &articles.articles,
        more: &articles.more,
        sponsor: articles.sponsor.as_ref(),
        now: t,
    };
    match args.format {
        Format::Eml => {
            let composed = composer.digest(&request)?;
            print!("{}", String::from_utf8_lossy(&composed.bytes));
        }
        Format::Text | Format::Html => {
            let ctx = composer.digest_context(&request);
            let (text, html) = composer.render_digest(&ctx)?;
            match args.format {
                Format::Text => println!("Subject: {}\n\n{text}", ctx.subject),
                _ => println!("{html}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
