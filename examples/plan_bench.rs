//! Benchmark: plan one daily slot for many confirmed readers.
//!
//! ```sh
//! cargo build --release --features bench-seed --example plan_bench
//! target/release/examples/plan_bench seed sqlite:///tmp/plan-bench.db 1000000
//! /usr/bin/time -v target/release/examples/plan_bench plan sqlite:///tmp/plan-bench.db
//! ```
//!
//! `seed` builds the data set (10 zones, 200 regions, 20 new articles per region, N
//! readers each following one region daily) and then refreshes the planner statistics
//! (PostgreSQL: `VACUUM (ANALYZE)`, what autovacuum does after a bulk load); `plan` plans
//! the 07:00 slot of every zone, one after the other as the daemon would, and prints
//! seconds, digests and rows written per second, and the process's peak RSS. Run `plan` in its
//! own process so that peak is the planner's alone. On PostgreSQL the server's memory
//! is not in that figure.
//!
//! The same works with `postgres://user@host/db` (an existing, empty database).

use std::time::Instant;

use chrono::{DateTime, Utc};
use herald::domain::{Cadence, FeedItem, RegionSlug, Timestamp};
use herald::store::{SlotPlan, Store, SuppressionKey};

const ZONES: [&str; 10] = [
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
];

fn slot_for(zone: &str, day: &str) -> DateTime<Utc> {
    use chrono::TimeZone;
    let tz: chrono_tz::Tz = zone.parse().unwrap();
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    tz.from_local_datetime(&date.and_hms_opt(7, 0, 0).unwrap())
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

/// The process's peak resident set size so far, from `/proc/self/status` (Linux).
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} MB", kb as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, url) = (args.get(1).map(String::as_str), args.get(2).cloned());
    let (Some(mode), Some(url)) = (mode, url) else {
        anyhow::bail!("usage: plan_bench seed|plan DATABASE_URL [READERS]");
    };
    let store = Store::connect(&url, 4, SuppressionKey::new(b"plan-bench")).await?;
    store.migrate().await?;
    let day = "2026-11-28";
    // Articles arrive the evening before: inside every zone's first-digest window.
    let articles_at = slot_for("Pacific/Auckland", day).timestamp() - 3 * 3600;
    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
    match mode {
        "seed" => {
            let readers: u64 = args
                .get(3)
                .map(|s| s.parse())
                .transpose()?
                .unwrap_or(1_000_000);
            let regions: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
            let start = Instant::now();
            for region in &regions {
                let slug: RegionSlug = region.parse().map_err(anyhow::Error::msg)?;
                let feed = store
                    .feed_id(&slug, &format!("file://{region}.xml"))
                    .await?;
                let items: Vec<FeedItem> = (0..20)
                    .map(|i| FeedItem {
                        guid: format!("{region}-{i}"),
                        link: format!("https://bench.example/{region}/{i}"),
                        title: format!("Story {i} in {region}"),
                        summary: "A short summary of the story.".into(),
                        category: "Community".into(),
                        published_at: Some(articles_at),
                        breaking: false,
                    })
                    .collect();
                store
                    .record_feed_items(feed, &slug, &items, Timestamp::from_unix(articles_at))
                    .await?;
            }
            store
                .seed_synthetic_readers(
                    readers,
                    "bench.example",
                    &ZONES,
                    &regions,
                    "daily",
                    Timestamp::from_unix(articles_at) - DAY,
                )
                .await?;
            store.refresh_statistics().await?;
            println!(
                "seeded {readers} readers, 200 regions, 4000 articles in {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
        "plan" => {
            let start = Instant::now();
            let mut deliveries = 0;
            let mut placements = 0;
            let mut content_rows = 0;
            for zone in ZONES {
                let slot = slot_for(zone, day);
                let now = Timestamp::from_unix(slot.timestamp() + 30);
                let key = format!("daily:{zone}:{}", slot.timestamp());
                let summary = store
                    .plan_slot_digest(
                        &SlotPlan {
                            slot_key: &key,
                            cadence: Cadence::Daily,
                            zone: zone.parse().map_err(anyhow::Error::msg)?,
                            slot_at: slot.into(),
                            period: DAY,
                            now,
                            expires_at: now + DAY,
                        },
                        false,
                    )
                    .await?;
                deliveries += summary.deliveries;
                placements += summary.articles;
                content_rows += summary.content_rows;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "planned {deliveries} digests ({placements} articles in them, stored as \
                 {content_rows} content rows) in {secs:.2}s: {:.0} digests/s, {:.0} rows/s \
                 (deliveries + content rows), peak RSS {}",
                deliveries as f64 / secs,
                (deliveries + content_rows) as f64 / secs,
                peak_rss()
            );
        }
        other => anyhow::bail!("unknown mode {other}; use seed or plan"),
    }
    store.close().await;
    Ok(())
}
