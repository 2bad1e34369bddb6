//! Ingest: read each region's feeds, turn entries into articles, store them.
//!
//! Feeds are fetched concurrently, at most `ingest.concurrency` at once, each under its
//! own timeouts and body cap, so a slow or hostile feed delays no other. A feed that
//! cannot be read, is refused by the SSRF guard, or does not parse is reported with
//! the reason and retried later with backoff; the other feeds of the run are unaffected.
//! In the daemon each due feed is claimed first (a lease held by this process's worker,
//! see `store::feed_leases`), so that several daemons on one database poll it once.

mod fetch;
pub mod guard;
mod links;
mod parse;

pub use fetch::{FetcherError, Validators};
pub use links::{LinkRefusal, check_link};
pub use parse::{
    FeedContext, ParseError, ParsedFeed, html_to_text, parse_feed, plain_summary, plain_title,
    plausible_date, read_feed,
};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{FeedSource, IngestConfig, Region};
use crate::domain::{RegionSlug, Timestamp};
use crate::metrics::PollResult;
use crate::shutdown::Shutdown;
use crate::store::{FeedCounts, FeedPollState, LeaseOwner, Store, StoreError};
use crate::supervise::Beat;
use fetch::{Fetched, Fetcher};
use guard::GuardError;

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
    /// The server did not answer in time.
    #[error("{url} did not answer within {}s (ingest.timeout)", .after.as_secs_f64())]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The server answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Code and reason.
        status: String,
        /// How long the server asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The SSRF guard refused the address.
    #[error("refused to fetch {url}: {reason}")]
    Refused {
        /// The feed.
        url: String,
        /// Why.
        reason: GuardError,
    },
    /// The body is larger than `ingest.max_body_bytes`.
    #[error(
        "{url} is larger than the {limit}-byte limit after decompression (ingest.max_body_bytes)"
    )]
    TooLarge {
        /// The feed.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// The bytes are not a feed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The parser failed on these bytes instead of returning an error.
    #[error("{url} could not be parsed (the feed parser failed on it)")]
    ParserCrashed {
        /// The feed.
        url: String,
    },
    /// Storing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FeedError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            FeedError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What one successful poll did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollOutcome {
    /// The feed was read and its items stored.
    Stored(FeedCounts),
    /// The server answered `304 Not Modified`: nothing was parsed.
    NotModified,
}

/// The result of polling one feed.
#[derive(Debug)]
pub struct FeedReport {
    /// The region the feed belongs to.
    pub region: RegionSlug,
    /// The feed as configured.
    pub feed: String,
    /// What happened, or why the feed failed.
    pub result: Result<PollOutcome, FeedError>,
    /// When the feed is next due.
    pub next_poll_at: Timestamp,
    /// What reading the document took, when it was read.
    pub notes: ReadNotes,
}

/// What reading a feed's document took beyond the strict parse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadNotes {
    /// The document was repaired before its items could be read: the first error.
    pub recovered: Option<String>,
    /// The document has `<item>`/`<entry>` elements but gave no items: why.
    pub warning: Option<String>,
}

/// Which feeds a run polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every configured feed, now (`herald ingest`).
    All,
    /// Only feeds whose next poll is due (the daemon's loop).
    Due,
}

/// Ingest could not start, or a pass could not record what it did.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Setup(#[from] fetch::FetcherError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Polls every feed of every region (or of one region) once and stores what is new.
pub async fn ingest_all(
    ingest: &IngestConfig,
    breaking_categories: &[String],
    regions: &[Region],
    store: &Store,
    only: Option<&RegionSlug>,
) -> Result<Vec<FeedReport>, IngestError> {
    let ingester = Ingester::new(ingest, breaking_categories, regions, store.clone())?;
    Ok(ingester.poll(only, Which::All).await?)
}

/// The feed poller: one HTTP client, built once (building it reads the system's CA
/// certificates, which can fail when descriptors run out), shared by every pass.
pub struct Ingester {
    shared: Arc<Shared>,
    /// The regions whose feeds it polls, in configuration order.
    regions: Vec<Region>,
    /// The daemon's worker, which claims each due feed before polling it (see
    /// [`FeedLease`]); `None` polls without claiming (`herald ingest`).
    lease: Option<FeedLease>,
}

/// How a daemon claims feeds, so that several daemons on one database poll each feed
/// once: as its worker (the owner its deliveries carry), for as long as its heartbeat
/// keeps the claim (`deliver.worker_timeout`, renewed with each beat).
#[derive(Debug, Clone, Copy)]
pub struct FeedLease {
    /// The worker that polls.
    pub owner: LeaseOwner,
    /// How long a claim holds without a heartbeat.
    pub length: Duration,
}

impl Ingester {
    /// The poller for `regions`' feeds, storing into `store`; articles in one of
    /// `breaking_categories` (`alerts.categories`) are marked breaking.
    pub fn new(
        ingest: &IngestConfig,
        breaking_categories: &[String],
        regions: &[Region],
        store: Store,
    ) -> Result<Ingester, IngestError> {
        Ok(Ingester {
            regions: regions.to_vec(),
            lease: None,
            shared: Arc::new(Shared {
                ingest: ingest.clone(),
                breaking_categories: breaking_categories.to_vec(),
                store,
                fetcher: Fetcher::new(ingest)?,
                permits: Semaphore::new(ingest.concurrency),
            }),
        })
    }

    /// The same poller claiming each due feed as `lease.owner` before polling it.
    pub fn with_lease(mut self, lease: FeedLease) -> Ingester {
        self.lease = Some(lease);
        self
    }

    /// Polls the chosen feeds concurrently (bounded by `ingest.concurrency`); reports
    /// come back in configuration order.
    pub async fn poll(
        &self,
        only: Option<&RegionSlug>,
        which: Which,
    ) -> Result<Vec<FeedReport>, StoreError> {
        let started = Timestamp::now();
        let store = &self.shared.store;
        let mut tasks = JoinSet::new();
        let mut order = HashMap::new();
        let mut names = Vec::new();
        for region in &self.regions {
            if only.is_some_and(|slug| slug != &region.slug) {
                continue;
            }
            for ((raw, source), interval) in region
                .feeds
                .iter()
                .zip(&region.sources)
                .zip(&region.intervals)
            {
                let state = match (which, self.lease) {
                    (Which::Due, Some(lease)) => {
                        let until = started + lease.length;
                        match store
                            .claim_feed(&region.slug, raw, lease.owner, started, until)
                            .await?
                        {
                            Some(state) => state,
                            // Not due, or another daemon polls it.
                            None => continue,
                        }
                    }
                    _ => store.feed_poll_state(&region.slug, raw).await?,
                };
                if which == Which::Due && state.next_poll_at.is_some_and(|at| at > started) {
                    continue;
                }
                let job = Job {
                    region: region.slug.clone(),
                    feed: raw.clone(),
                    source: source.clone(),
                    interval: *interval,
                    state,
                };
                let handle = tasks.spawn(poll_one(self.shared.clone(), job, self.lease));
                order.insert(handle.id(), names.len());
                names.push((region.slug.clone(), raw.clone()));
            }
        }
        let mut reports: Vec<Option<FeedReport>> = names.iter().map(|_| None).collect();
        while let Some(joined) = tasks.join_next_with_id().await {
            match joined {
                Ok((id, report)) => {
                    let report = report?;
                    crate::metrics::METRICS.feed_poll(match &report.result {
                        Ok(PollOutcome::Stored(_)) => PollResult::Ok,
                        Ok(PollOutcome::NotModified) => PollResult::NotModified,
                        Err(_) => PollResult::Failed,
                    });
                    reports[order[&id]] = Some(report);
                }
                Err(error) => {
                    // poll_one catches parser panics itself; anything else is a bug worth
                    // a log.
                    let (region, feed) = &names[order[&error.id()]];
                    tracing::error!(%region, %feed, %error, "feed task failed");
                }
            }
        }
        Ok(reports.into_iter().flatten().collect())
    }
}

impl Ingester {
    /// How often the daemon looks for due feeds: often enough to poll the soonest one
    /// about on time (each feed keeps its own interval and backoff).
    pub fn tick(&self) -> Duration {
        self.regions
            .iter()
            .flat_map(|r| r.intervals.iter().copied())
            .min()
            .unwrap_or(self.shared.ingest.interval)
            .clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// How long the daemon's ingest may go without a good pass before `/readyz` says
    /// so: three ticks, or one tick and a feed's whole timeout if that is longer (a
    /// pass waits for its slowest feed).
    pub fn overdue_after(&self) -> Duration {
        (3 * self.tick()).max(self.tick() + self.shared.ingest.timeout)
    }
}

/// The daemon's ingest stage: polls the feeds that are due every [`Ingester::tick`] until
/// shutdown. A pass that cannot record its results ends this life of the stage with
/// the error, for the supervisor to restart it; a failing feed is only reported.
pub async fn run(
    ingester: Arc<Ingester>,
    shutdown: Shutdown,
    beat: Beat,
) -> Result<(), StoreError> {
    let tick = ingester.tick();
    while !shutdown.is_triggered() {
        for report in ingester.poll(None, Which::Due).await? {
            if let Some(error) = &report.notes.recovered {
                tracing::warn!(
                    region = %report.region, feed = %report.feed, %error,
                    "feed is not well-formed; its items were recovered"
                );
            }
            if let Some(reason) = &report.notes.warning {
                tracing::warn!(region = %report.region, feed = %report.feed, %reason, "feed gave no items");
            }
            match report.result {
                Ok(PollOutcome::Stored(counts)) if counts.new + counts.updated > 0 => {
                    tracing::info!(
                        region = %report.region, feed = %report.feed,
                        new = counts.new, updated = counts.updated, "ingested"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    region = %report.region, feed = %report.feed, %error, "feed failed"
                ),
            }
        }
        beat.ok();
        shutdown.sleep(tick).await;
    }
    Ok(())
}

/// What every feed task of one run shares.
struct Shared {
    ingest: IngestConfig,
    breaking_categories: Vec<String>,
    store: Store,
    fetcher: Fetcher,
    permits: Semaphore,
}

/// One feed to poll.
struct Job {
    region: RegionSlug,
    feed: String,
    source: FeedSource,
    interval: Duration,
    state: FeedPollState,
}

/// Polls one feed and records the outcome and the next due time; the record clears the
/// feed's lease. When it cannot be recorded, the lease is given up (if the database
/// answers) for the next daemon to try.
async fn poll_one(
    shared: Arc<Shared>,
    job: Job,
    lease: Option<FeedLease>,
) -> Result<FeedReport, StoreError> {
    let feed = job.state.id;
    let report = poll_and_record(&shared, job).await;
    if report.is_err()
        && let Some(lease) = lease
        && let Err(error) = shared.store.release_feed(feed, lease.owner).await
    {
        tracing::warn!(%error, "cannot give up the lease of a feed whose poll was not recorded");
    }
    report
}

async fn poll_and_record(shared: &Shared, job: Job) -> Result<FeedReport, StoreError> {
    let _permit = shared
        .permits
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let polled_at = Timestamp::now();
    let result = poll(shared, &job, polled_at).await;
    let store = &shared.store;
    let mut notes = ReadNotes::default();
    let (result, next_poll_at) = match result {
        Ok((outcome, validators, read)) => {
            notes = read;
            let next = polled_at + job.interval;
            store
                .record_feed_polled(
                    job.state.id,
                    validators.etag.as_deref(),
                    validators.last_modified.as_deref(),
                    polled_at,
                    next,
                )
                .await?;
            (Ok(outcome), next)
        }
        Err(error) => {
            let wait = backoff(
                job.interval,
                job.state.consecutive_failures + 1,
                shared.ingest.max_backoff,
                error.retry_after(),
            );
            let next = polled_at + wait;
            store
                .record_feed_error(job.state.id, &error.to_string(), polled_at, next)
                .await?;
            (Err(error), next)
        }
    };
    Ok(FeedReport {
        region: job.region,
        feed: job.feed,
        result,
        next_poll_at,
        notes,
    })
}

async fn poll(
    shared: &Shared,
    job: &Job,
    now: Timestamp,
) -> Result<(PollOutcome, Validators, ReadNotes), FeedError> {
    let (bytes, charset, base, validators) = match &job.source {
        FeedSource::File(path) => (
            read_file(path, shared.ingest.max_body_bytes).await?,
            None,
            None,
            Validators::default(),
        ),
        FeedSource::Http(url) => {
            let known = Validators {
                etag: job.state.etag.clone(),
                last_modified: job.state.last_modified.clone(),
            };
            match shared.fetcher.fetch(url, &known).await? {
                Fetched::NotModified(validators) => {
                    return Ok((PollOutcome::NotModified, validators, ReadNotes::default()));
                }
                Fetched::Body {
                    bytes,
                    charset,
                    final_url,
                    validators,
                } => (bytes, charset, Some(final_url), validators),
            }
        }
    };
    let context = FeedContext {
        base,
        charset,
        breaking_categories: shared.breaking_categories.clone(),
        max_items: shared.ingest.max_items,
        now: now.unix(),
        keep_internal_links: shared.ingest.allow_private,
    };
    // Parsing is CPU work on untrusted bytes: off the async workers, and a panic in
    // the parser becomes this feed's error instead of the run's.
    let feed = tokio::task::spawn_blocking(move || read_feed(&bytes, &context))
        .await
        .map_err(|_| FeedError::ParserCrashed {
            url: job.feed.clone(),
        })??;
    let counts = shared
        .store
        .record_feed_items(job.state.id, &job.region, &feed.items, now)
        .await?;
    let notes = ReadNotes {
        recovered: feed.recovered,
        warning: feed.warning,
    };
    shared
        .store
        .record_feed_read(
            job.state.id,
            feed.site_link.as_deref(),
            notes.recovered.as_deref(),
            notes.warning.as_deref(),
        )
        .await?;
    Ok((PollOutcome::Stored(counts), validators, notes))
}

/// Reads a local feed, refusing one over the cap without reading it all.
async fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, FeedError> {
    let error = |source| FeedError::File {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(error)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(error)?;
    if bytes.len() as u64 > limit {
        return Err(FeedError::TooLarge {
            url: path.display().to_string(),
            limit,
        });
    }
    Ok(bytes)
}

/// How long to wait after the `failures`-th failure in a row: the interval, doubled
/// for each further failure, at most `max_backoff` (or the interval, if longer); a
/// server's `Retry-After` is honoured up to the same ceiling.
pub fn backoff(
    interval: Duration,
    failures: i64,
    max_backoff: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    let ceiling = max_backoff.max(interval);
    let doublings = (failures - 1).clamp(0, 20) as u32;
    let delay = interval.saturating_mul(1 << doublings).min(ceiling);
    match retry_after {
        Some(asked) => delay.max(asked.min(ceiling)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling_and_honours_retry_after() {
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(backoff(m(15), 1, m(360), None), m(15));
        assert_eq!(backoff(m(15), 2, m(360), None), m(30));
        assert_eq!(backoff(m(15), 4, m(360), None), m(120));
        assert_eq!(backoff(m(15), 9, m(360), None), m(360));
        assert_eq!(backoff(m(15), 1_000, m(360), None), m(360));
        assert_eq!(
            backoff(m(600), 3, m(360), None),
            m(600),
            "never below the interval"
        );
        assert_eq!(backoff(m(15), 1, m(360), Some(m(45))), m(45));
        assert_eq!(backoff(m(15), 1, m(360), Some(m(10_000))), m(360));
    }
}
