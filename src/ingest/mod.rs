//! Ingest: read each region's feeds, turn entries into articles, store them.
//!
//! A feed that cannot be read or parsed is reported with the reason and skipped;
//! the other feeds of the same run are unaffected.

mod parse;

pub use parse::{ParseError, parse_feed};

use std::time::Duration;

use crate::config::{Config, FeedSource};
use crate::domain::RegionSlug;
use crate::store::{FeedCounts, Store, StoreError, now};

/// Why one feed produced nothing this time.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP request failed.
    #[error("cannot fetch {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        message: String,
    },
    /// The body is larger than `ingest.max_body_bytes`.
    #[error("{url} is larger than the {limit}-byte limit (ingest.max_body_bytes)")]
    TooLarge {
        /// The feed.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// The bytes are not a feed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of polling one feed.
#[derive(Debug)]
pub struct FeedReport {
    /// The region the feed belongs to.
    pub region: RegionSlug,
    /// The feed as configured.
    pub feed: String,
    /// Counts, or why the feed failed.
    pub result: Result<FeedCounts, FeedError>,
}

/// Polls every feed of every region (or of one region) once and stores what is new.
pub async fn ingest_all(
    config: &Config,
    store: &Store,
    only: Option<&RegionSlug>,
) -> Result<Vec<FeedReport>, StoreError> {
    let client = http_client(config.ingest.timeout);
    let mut reports = Vec::new();
    for region in &config.regions {
        if only.is_some_and(|slug| slug != &region.slug) {
            continue;
        }
        for (raw, source) in region.feeds.iter().zip(&region.sources) {
            let feed_id = store.feed_id(&region.slug, raw).await?;
            let result = poll_feed(config, store, &client, feed_id, &region.slug, source).await;
            if let Err(error) = &result {
                store
                    .record_feed_error(feed_id, &error.to_string(), now())
                    .await?;
            }
            reports.push(FeedReport {
                region: region.slug.clone(),
                feed: raw.clone(),
                result,
            });
        }
    }
    Ok(reports)
}

async fn poll_feed(
    config: &Config,
    store: &Store,
    client: &reqwest::Client,
    feed_id: i64,
    region: &RegionSlug,
    source: &FeedSource,
) -> Result<FeedCounts, FeedError> {
    let (bytes, base) = match source {
        FeedSource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|source| FeedError::File {
                    path: path.display().to_string(),
                    source,
                })?;
            if bytes.len() as u64 > config.ingest.max_body_bytes {
                return Err(FeedError::TooLarge {
                    url: path.display().to_string(),
                    limit: config.ingest.max_body_bytes,
                });
            }
            (bytes, None)
        }
        FeedSource::Http(url) => (
            fetch(client, url, config.ingest.max_body_bytes).await?,
            Some(url.clone()),
        ),
    };
    let mut items = parse_feed(&bytes, base.as_ref())?;
    items.truncate(config.ingest.max_items);
    Ok(store
        .record_feed_items(feed_id, region, &items, now())
        .await?)
}

fn http_client(timeout: Duration) -> reqwest::Client {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is static and valid")
}

async fn fetch(client: &reqwest::Client, url: &url::Url, limit: u64) -> Result<Vec<u8>, FeedError> {
    let http = |message: String| FeedError::Http {
        url: url.to_string(),
        message,
    };
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| http(describe_reqwest(&e)))?;
    if !response.status().is_success() {
        return Err(http(format!("server answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| http(describe_reqwest(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(FeedError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
    }
    Ok(body)
}

fn describe_reqwest(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("connection failed ({error})")
    } else {
        error.to_string()
    }
}
