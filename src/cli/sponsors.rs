//! `herald sponsors`: book a sponsor for regions over a date range, list and remove
//! bookings, and count from the delivery ledger what each went out in.

use std::process::ExitCode;

use crate::config::Config;
use crate::domain::{NewSponsor, SponsorFields, SponsorId, Timestamp};

/// Subcommands of `herald sponsors`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Book a sponsor: one block in the digests of these regions (and of the regions
    /// below them) from one day to another, both included, in each reader's zone.
    Add {
        /// A region whose readers get the block (repeat, or list several).
        #[arg(long = "region", required = true, num_args = 1..)]
        regions: Vec<String>,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (included).
        #[arg(long)]
        to: String,
        /// The label, e.g. "Sponsored by Riverton Hardware".
        #[arg(long)]
        label: String,
        /// The headline.
        #[arg(long)]
        headline: String,
        /// Up to 300 characters of text.
        #[arg(long, default_value = "")]
        body: String,
        /// Where the block leads (https://…).
        #[arg(long)]
        link: String,
        /// An image (https://…), shown above the headline.
        #[arg(long)]
        image: Option<String>,
        /// The image's alt text (required with --image).
        #[arg(long)]
        alt: Option<String>,
    },
    /// Every booking: id, days, regions, label.
    List,
    /// Remove a booking (digests already sent keep it in the report's history).
    Remove {
        /// The booking's id, from `herald sponsors list`.
        id: String,
    },
    /// How many digests each booking went out in, from the delivery ledger.
    Report,
}

/// Runs the subcommand.
pub async fn run(config: &Config, command: Command) -> anyhow::Result<ExitCode> {
    // Check what the admin typed before opening the database.
    let booking = match &command {
        Command::Add {
            regions,
            from,
            to,
            label,
            headline,
            body,
            link,
            image,
            alt,
        } => {
            for region in regions {
                config.regions.known(region).map_err(anyhow::Error::msg)?;
            }
            Some(NewSponsor::parse(SponsorFields {
                regions: regions.clone(),
                from: from.clone(),
                to: to.clone(),
                label: label.clone(),
                headline: headline.clone(),
                body: body.clone(),
                link: link.clone(),
                image: image.clone(),
                alt: alt.clone(),
            })?)
        }
        _ => None,
    };
    let store = crate::startup::open_store(config).await?;
    let result = match command {
        Command::Add { .. } => {
            let booking = booking.expect("parsed above");
            let id = store.add_sponsor(&booking, Timestamp::now()).await?;
            println!(
                "booked sponsor {id}: {} to {} in {}",
                booking.starts_on,
                booking.ends_on,
                booking
                    .regions
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let rows = store.sponsors().await?;
            for row in &rows {
                let regions: Vec<&str> = row.regions.iter().map(|r| r.as_str()).collect();
                println!(
                    "{:>4}  {} to {}  {:<24}  {}  {}",
                    row.block.id,
                    row.starts_on,
                    row.ends_on,
                    regions.join(","),
                    row.block.label,
                    row.block.link
                );
            }
            println!("{} booking(s)", rows.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { id } => {
            let id: SponsorId = id.parse().map_err(anyhow::Error::msg)?;
            if store.remove_sponsor(id).await? {
                println!("removed sponsor {id}");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(anyhow::anyhow!(
                    "there is no sponsor {id}; `herald sponsors list` shows the bookings"
                ))
            }
        }
        Command::Report => {
            let rows = store.sponsor_report().await?;
            println!("  id  sent  waiting  not sent  label");
            for row in &rows {
                println!(
                    "{:>4}  {:>4}  {:>7}  {:>8}  {}",
                    row.id, row.sent, row.waiting, row.not_sent, row.label
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    store.close().await;
    result
}
