//! The outbox: planning deliveries in sets, claiming them under a lease, recording outcomes.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::planning::DigestBatch;
use super::signup::ReaderRegion;
use super::{
    Backend, EngineConnRef, EngineTransaction, OnDurable, Result, Store, StoreError,
    SuppressionKey, on_engine, placeholders,
};
use crate::domain::{Cadence, DeliveryKind, DeliveryState, RegionSlug, SubscriberState};

/// What planning one edition produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSummary {
    /// The edition row (new, or the existing one for this slot).
    pub edition_id: i64,
    /// Emails queued.
    pub deliveries: u64,
    /// Articles across those emails (each email's count, summed).
    pub articles: u64,
    /// Rows written to store those emails' contents: one per article per content group.
    pub content_rows: u64,
    /// On a dry run: each recipient with the number of articles they would get.
    pub recipients: Vec<(String, i64)>,
}

/// Who holds a claimed row: one value per running worker, chosen at random, so a
/// worker renews, records and returns only rows it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseOwner(i64);

impl LeaseOwner {
    /// A fresh owner for a new worker.
    pub fn random() -> LeaseOwner {
        LeaseOwner(fastrand::i64(..))
    }

    /// The owner the store tests claim as.
    #[cfg(test)]
    pub(crate) const TEST: LeaseOwner = LeaseOwner(1);
}

/// A claim's lease: who holds the rows, and until when (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The worker holding the rows.
    pub owner: LeaseOwner,
    /// The rows are due again for anyone after this instant.
    pub until: i64,
}

/// A claim to take: up to `limit` rows due at `now`, held under `lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// At most this many rows.
    pub limit: usize,
    /// Rows due at this instant (Unix seconds) are claimed.
    pub now: i64,
    /// Who holds them, and until when.
    pub lease: Lease,
}

/// A row claimed by a worker, with what composing it needs.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// Row id.
    pub id: i64,
    /// The reader's id.
    pub subscriber_id: i64,
    /// Confirmation, alert or digest.
    pub kind: DeliveryKind,
    /// Digest cadence, when a digest.
    pub cadence: Option<Cadence>,
    /// Planned when the row was made; reused on every retry.
    pub message_id: String,
    /// Attempts including this one.
    pub attempts: i64,
    /// After this, the row expires instead of being sent.
    pub expires_at: i64,
    /// The reader's address; `None` when the reader was erased meanwhile.
    pub email: Option<String>,
    /// The reader's state now (checked at send time, not only at plan time).
    pub subscriber_state: Option<SubscriberState>,
    /// The reader's zone name.
    pub timezone: Option<String>,
    /// Whether the address is on the suppression list.
    pub suppressed: bool,
    /// The articles to carry, ordered by region then newest first; shared by the
    /// readers of one content group.
    pub articles: Arc<[DeliveryArticle]>,
    /// For sign-up emails only: the regions the reader follows, by name.
    pub regions: Vec<ReaderRegion>,
}

/// One article placed in one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryArticle {
    /// Article id.
    pub article_id: i64,
    /// Region it is shown under.
    pub region_slug: String,
    /// Region display name.
    pub region_name: String,
    /// Title.
    pub title: String,
    /// Link.
    pub link: String,
    /// Summary.
    pub summary: String,
    /// Category.
    pub category: String,
    /// Publication time.
    pub published_at: Option<i64>,
}

/// The result of one attempt, to be written back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the server, with its reply.
    Sent {
        /// The server's reply (or the file written).
        reply: String,
    },
    /// Temporary failure; try again at `retry_at`.
    Deferred {
        /// What went wrong.
        error: String,
        /// When to try again.
        retry_at: i64,
    },
    /// Refused permanently.
    Bounced {
        /// The server's reply.
        reply: String,
        /// Whether the mailbox does not exist (5.1.x): the reader is suppressed too.
        suppress: bool,
    },
    /// Cannot be sent and retrying will not help.
    Failed {
        /// Why.
        error: String,
    },
    /// Too old to be worth sending.
    Expired,
    /// The reader left or was erased.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The address is suppressed.
    Suppressed,
}

impl Outcome {
    /// The state this outcome puts the row in.
    pub fn state(&self) -> DeliveryState {
        match self {
            Outcome::Sent { .. } => DeliveryState::Sent,
            Outcome::Deferred { .. } => DeliveryState::Deferred,
            Outcome::Bounced { .. } => DeliveryState::Bounced,
            Outcome::Failed { .. } => DeliveryState::Failed,
            Outcome::Expired => DeliveryState::Expired,
            Outcome::Cancelled { .. } => DeliveryState::Cancelled,
            Outcome::Suppressed => DeliveryState::Suppressed,
        }
    }
}

/// The outbox at a glance, for `herald status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct QueueStatus {
    /// Rows per state.
    pub by_state: Vec<(DeliveryState, i64)>,
    /// Creation time of the oldest row still waiting (queued or deferred).
    pub oldest_waiting_since: Option<i64>,
    /// The most recent error recorded on any row.
    pub last_error: Option<(i64, String)>,
}

impl Store {
    /// Queues one digest for each confirmed reader of `region` at `cadence` who has
    /// articles there (added since `since`) they have not received yet, in one transaction.
    ///
    /// Set-based: a handful of statements whatever the number of readers, sharing the
    /// scheduled slots' content groups (readers who already had some of the articles get
    /// a content without them). An edition that already exists is left as it is.
    #[allow(clippy::too_many_arguments)]
    pub async fn plan_region_digest(
        &self,
        slot_key: &str,
        region: &RegionSlug,
        cadence: Cadence,
        since: i64,
        now: i64,
        expires_at: i64,
        dry_run: bool,
    ) -> Result<PlanSummary> {
        let mut tx = self.begin_plan().await?;
        let created: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO editions (slot_key, kind, cadence, region_slug, planned_at, slot_at)
             VALUES ($1, 'digest', $2, $3, $4, $4) ON CONFLICT (slot_key) DO NOTHING RETURNING id",
        )
        .bind(slot_key)
        .bind(cadence.as_str())
        .bind(region.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((edition_id,)) = created else {
            let (edition_id,): (i64,) =
                sqlx::query_as("SELECT id FROM editions WHERE slot_key = $1")
                    .bind(slot_key)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return Ok(PlanSummary {
                edition_id,
                ..PlanSummary::default()
            });
        };
        self.create_plan_readers(&mut tx).await?;
        sqlx::query(
            "INSERT INTO plan_readers (subscriber_id, window_start, regions, articles_through)
             SELECT s.id, $1, sub.region_slug,
                    (SELECT MAX(d.articles_through) FROM deliveries d
                     WHERE d.subscriber_id = s.id AND d.articles_through IS NOT NULL)
             FROM subscribers s JOIN subscriptions sub ON sub.subscriber_id = s.id
             WHERE s.state = 'confirmed' AND sub.region_slug = $2 AND sub.cadence = $3",
        )
        .bind(since)
        .bind(region.as_str())
        .bind(cadence.as_str())
        .execute(&mut *tx)
        .await?;
        let summary = self
            .queue_digests(
                &mut tx,
                &DigestBatch {
                    edition_id,
                    cadence,
                    region: Some(region),
                    slot_at: now,
                    now,
                    expires_at,
                },
            )
            .await?;
        let recipients = self.finish_plan(tx, edition_id, dry_run).await?;
        Ok(PlanSummary {
            recipients,
            ..summary
        })
    }

    /// Marks waiting rows whose expiry has passed as `expired`. Returns how many.
    pub async fn expire_overdue(&self, now: i64) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'expired', lease_until = NULL, updated_at = $1
             WHERE state IN ('queued', 'deferred') AND expires_at < $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Claims up to `limit` due rows under `lease`, most urgent lane first. Rows whose
    /// lease ran out (a crashed worker) are due again.
    pub async fn claim_due_deliveries(
        &self,
        limit: usize,
        now: i64,
        lease: Lease,
    ) -> Result<Vec<ClaimedDelivery>> {
        let claim = Claim { limit, now, lease };
        let mut writer = self.engine_writer().await?;
        let ids = claim_ids(writer.conn(), self.backend, claim).await?;
        drop(writer);
        self.load_claimed(&ids).await
    }

    /// Extends the lease on those of `ids` that `lease.owner` still holds, and returns
    /// them. A worker renews while it holds rows, so a slow server never lets a live
    /// worker's lease lapse; only a dead worker's rows come back.
    pub async fn renew_leases(&self, ids: &[i64], lease: Lease) -> Result<Vec<i64>> {
        let mut renewed = Vec::with_capacity(ids.len());
        let mut writer = self.engine_writer().await?;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE deliveries SET lease_until = $1
                 WHERE state = 'sending' AND lease_owner = $2 AND id IN ({})
                 RETURNING id",
                placeholders(3, chunk.len())
            );
            let rows: Vec<(i64,)> = on_engine!(writer.conn(), |c| {
                let mut query = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(lease.until)
                    .bind(lease.owner.0);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut *c).await
            })?;
            renewed.extend(rows.into_iter().map(|(id,)| id));
        }
        Ok(renewed)
    }

    /// Loads claimed rows with their reader and articles, in id order.
    pub async fn load_claimed(&self, ids: &[i64]) -> Result<Vec<ClaimedDelivery>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.id, d.subscriber_id, d.kind, d.cadence, d.message_id, d.attempts, d.expires_at,
                    s.email, s.state, s.timezone, d.content_id
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.id IN ({}) ORDER BY d.id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<
            _,
            (
                i64,
                i64,
                String,
                Option<String>,
                String,
                i64,
                i64,
                Option<String>,
                Option<String>,
                Option<String>,
                Option<i64>,
            ),
        >(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;

        // Readers of one group share a content: each is read once and shared.
        let mut contents: Vec<i64> = rows.iter().filter_map(|r| r.10).collect();
        contents.sort_unstable();
        contents.dedup();

        let mut articles: HashMap<i64, Vec<DeliveryArticle>> = HashMap::new();
        if !contents.is_empty() {
            let sql = format!(
                "SELECT da.content_id, a.id, da.region_slug, COALESCE(r.name, da.region_slug),
                        a.title, a.link, a.summary, a.category, a.published_at
                 FROM content_articles da
                 JOIN articles a ON a.id = da.article_id
                 LEFT JOIN regions r ON r.slug = da.region_slug
                 WHERE da.content_id IN ({})
                 ORDER BY da.content_id, da.region_slug,
                     COALESCE(a.published_at, a.ingested_at) DESC, a.id DESC",
                placeholders(1, contents.len())
            );
            let mut query = sqlx::query_as::<
                _,
                (
                    i64,
                    i64,
                    String,
                    String,
                    String,
                    String,
                    String,
                    String,
                    Option<i64>,
                ),
            >(AssertSqlSafe(sql));
            for id in &contents {
                query = query.bind(*id);
            }
            for (
                content_id,
                article_id,
                region_slug,
                region_name,
                title,
                link,
                summary,
                category,
                published_at,
            ) in query.fetch_all(&self.pool).await?
            {
                articles
                    .entry(content_id)
                    .or_default()
                    .push(DeliveryArticle {
                        article_id,
                        region_slug,
                        region_name,
                        title,
                        link,
                        summary,
                        category,
                        published_at,
                    });
            }
        }
        let articles: HashMap<i64, Arc<[DeliveryArticle]>> = articles
            .into_iter()
            .map(|(content, list)| (content, list.into()))
            .collect();

        // Each row's suppression entry, computed once (a keyed hash is not free).
        let entries: Vec<Option<String>> = rows
            .iter()
            .map(|r| r.7.as_deref().map(|e| self.suppression.entry(e)))
            .collect();
        let hashes: Vec<&String> = entries.iter().flatten().collect();
        let suppressed: std::collections::HashSet<String> = if hashes.is_empty() {
            Default::default()
        } else {
            let sql = format!(
                "SELECT email_hash FROM suppressions WHERE email_hash IN ({})",
                placeholders(1, hashes.len())
            );
            let mut query = sqlx::query_as::<_, (String,)>(AssertSqlSafe(sql));
            for hash in &hashes {
                query = query.bind((*hash).clone());
            }
            query
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|(h,)| h)
                .collect()
        };

        // Sign-up emails list what the reader chose instead of carrying articles.
        let is_signup = |kind: &str| kind.parse().is_ok_and(DeliveryKind::is_signup);
        let signup_readers: Vec<i64> = rows
            .iter()
            .filter(|r| is_signup(&r.2))
            .map(|r| r.1)
            .collect();
        let regions = self.reader_regions(&signup_readers).await?;

        rows.into_iter()
            .zip(entries)
            .map(
                |(
                    (
                        id,
                        subscriber_id,
                        kind,
                        cadence,
                        message_id,
                        attempts,
                        expires_at,
                        email,
                        state,
                        timezone,
                        content_id,
                    ),
                    entry,
                )| {
                    let is_suppressed = entry.is_some_and(|e| suppressed.contains(&e));
                    let kind: DeliveryKind = kind.parse().map_err(StoreError::Corrupt)?;
                    Ok(ClaimedDelivery {
                        id,
                        subscriber_id,
                        kind,
                        cadence: cadence
                            .map(|c| c.parse().map_err(StoreError::Corrupt))
                            .transpose()?,
                        message_id,
                        attempts,
                        expires_at,
                        email,
                        subscriber_state: state
                            .map(|s| s.parse().map_err(StoreError::Corrupt))
                            .transpose()?,
                        timezone,
                        suppressed: is_suppressed,
                        articles: content_id
                            .and_then(|c| articles.get(&c).cloned())
                            .unwrap_or_else(|| Arc::new([])),
                        regions: if kind.is_signup() {
                            regions.get(&subscriber_id).cloned().unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                    })
                },
            )
            .collect()
    }

    /// Writes a batch of outcomes in one transaction (one forced flush for the batch).
    /// Only rows `owner` still holds are touched, so a late worker cannot undo another's
    /// result.
    pub async fn record_outcomes(
        &self,
        outcomes: &[(i64, Outcome)],
        owner: LeaseOwner,
        now: i64,
    ) -> Result<()> {
        self.record_outcomes_then(outcomes, owner, now, OnDurable::nothing())
            .await
    }

    /// Records outcomes like [`Store::record_outcomes`], then runs `then` once they are
    /// durable (see [`OnDurable`]; with nothing to record, at once).
    pub async fn record_outcomes_then(
        &self,
        outcomes: &[(i64, Outcome)],
        owner: LeaseOwner,
        now: i64,
        then: OnDurable,
    ) -> Result<()> {
        if outcomes.is_empty() {
            then.run();
            return Ok(());
        }
        let suppressing = outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Bounced { suppress: true, .. }));
        if !suppressing && outcomes.len() <= OUTCOMES_PER_STATEMENT {
            // One statement commits atomically on its own: one round trip, one flush.
            let mut writer = self.engine_writer().await?;
            let unarmed = writer.arm(then);
            let recorded = record_chunk(writer.conn(), outcomes, owner, now).await;
            writer.settle(unarmed, recorded.is_ok());
            return recorded;
        }
        let mut tx = self.begin_engine_transaction().await?;
        tx.record_outcomes(outcomes, owner, now).await?;
        tx.commit_then(then).await
    }

    /// Gives claimed rows back (shutdown before they were sent): due again at once,
    /// with the attempt that never happened taken back.
    pub async fn release_deliveries(&self, ids: &[i64], owner: LeaseOwner, now: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE deliveries SET state = CASE WHEN attempts > 1 THEN 'deferred' ELSE 'queued' END,
                 attempts = attempts - 1, lease_until = NULL, lease_owner = NULL,
                 next_attempt_at = $1, updated_at = $1
             WHERE state = 'sending' AND lease_owner = $2 AND id IN ({})",
            placeholders(3, ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(owner.0);
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(&self.pool).await?;
        Ok(())
    }

    /// How many rows are due now (queued or deferred and due, or with a lapsed lease).
    pub async fn due_count(&self, now: i64) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM deliveries
             WHERE (state IN ('queued', 'deferred') AND next_attempt_at <= $1)
                OR (state = 'sending' AND lease_until < $1)",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Counts per state, oldest waiting row and the last error.
    pub async fn queue_status(&self) -> Result<QueueStatus> {
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        let mut by_state = Vec::new();
        for state in DeliveryState::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == state.as_str())
                .map(|(_, n)| *n)
                .unwrap_or(0);
            by_state.push((state, n));
        }
        let (oldest,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(created_at) FROM deliveries WHERE state IN ('queued', 'deferred', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?;
        let last_error: Option<(i64, String)> = sqlx::query_as(
            "SELECT updated_at, last_error FROM deliveries WHERE last_error IS NOT NULL
               AND state IN ('deferred', 'bounced', 'failed')
             ORDER BY updated_at DESC, id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(QueueStatus {
            by_state,
            oldest_waiting_since: oldest,
            last_error,
        })
    }

    /// Counts per state for the rows of one edition.
    pub async fn edition_counts(&self, edition_id: i64) -> Result<Vec<(DeliveryState, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM deliveries WHERE edition_id = $1 GROUP BY state",
        )
        .bind(edition_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(s, n)| Ok((s.parse().map_err(StoreError::Corrupt)?, n)))
            .collect()
    }

    /// Puts `failed` and `expired` rows back in the queue with a fresh expiry. Returns how many.
    pub async fn retry_failed(&self, now: i64, expires_at: i64) -> Result<u64> {
        let n = sqlx::query(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = $1, expires_at = $2,
                 lease_until = NULL, updated_at = $1
             WHERE state IN ('failed', 'expired')",
        )
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Every row in id order: for tests and audits.
    pub async fn delivery_ledger(&self) -> Result<Vec<LedgerRow>> {
        let rows: Vec<RawLedgerRow> = sqlx::query_as(
            "SELECT s.email, d.state, d.attempts, d.message_id, d.last_error
             FROM deliveries d LEFT JOIN subscribers s ON s.id = d.subscriber_id ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(email, state, attempts, message_id, last_error)| {
                Ok(LedgerRow {
                    email,
                    state: state.parse().map_err(StoreError::Corrupt)?,
                    attempts,
                    message_id,
                    last_error,
                })
            })
            .collect()
    }
}

type RawLedgerRow = (Option<String>, String, i64, String, Option<String>);

/// One delivery row as the ledger shows it.
#[derive(Debug, Clone)]
pub struct LedgerRow {
    /// The reader's address (`None` once erased).
    pub email: Option<String>,
    /// Current state.
    pub state: DeliveryState,
    /// Attempts so far.
    pub attempts: i64,
    /// Stored Message-ID (32 hex digits).
    pub message_id: String,
    /// Last error, if any.
    pub last_error: Option<String>,
}

impl EngineTransaction {
    /// Claims like [`Store::claim_due_deliveries`], inside the transaction: the ids
    /// are the caller's once it commits (load them with [`Store::load_claimed`]).
    pub async fn claim(&mut self, claim: Claim) -> Result<Vec<i64>> {
        let backend = self.backend();
        claim_ids(self.conn(), backend, claim).await
    }

    /// Writes outcomes like [`Store::record_outcomes`], inside the transaction.
    pub async fn record_outcomes(
        &mut self,
        outcomes: &[(i64, Outcome)],
        owner: LeaseOwner,
        now: i64,
    ) -> Result<()> {
        for chunk in outcomes.chunks(OUTCOMES_PER_STATEMENT) {
            record_chunk(self.conn(), chunk, owner, now).await?;
        }
        let key = self.suppression.clone();
        for (id, outcome) in outcomes {
            if let Outcome::Bounced {
                suppress: true,
                reply,
            } = outcome
            {
                suppress_reader(self.conn(), &key, *id, reply, now).await?;
            }
        }
        Ok(())
    }
}

/// Claims `claim.limit` due rows in one statement on `conn`; returns their ids.
async fn claim_ids(conn: EngineConnRef<'_>, backend: Backend, claim: Claim) -> Result<Vec<i64>> {
    let skip_locked = backend.skip_locked_sql();
    // Two index walks that each stop after `limit` rows: lapsed leases (a crashed
    // worker's rows) and waiting rows in lane order.
    let sql = format!(
        "UPDATE deliveries SET state = 'sending', lease_until = $1, lease_owner = $4,
             attempts = attempts + 1, updated_at = $2
         WHERE id IN (
             SELECT id FROM (
                 SELECT id FROM deliveries
                 WHERE state = 'sending' AND lease_until < $2
                 ORDER BY lease_until LIMIT $3 {skip_locked}) AS lapsed
             UNION ALL
             SELECT id FROM (
                 SELECT id FROM deliveries
                 WHERE state IN ('queued', 'deferred') AND next_attempt_at <= $2
                 ORDER BY priority, next_attempt_at LIMIT $3 {skip_locked}) AS waiting
             LIMIT $3)
         RETURNING id"
    );
    let claimed: Vec<(i64,)> = on_engine!(conn, |c| sqlx::query_as(AssertSqlSafe(sql))
        .bind(claim.lease.until)
        .bind(claim.now)
        .bind(claim.limit as i64)
        .bind(claim.lease.owner.0)
        .fetch_all(&mut *c)
        .await)?;
    Ok(claimed.into_iter().map(|(id,)| id).collect())
}

/// Suppresses the reader of delivery `id`, whose mailbox the server says does not exist.
async fn suppress_reader(
    mut conn: EngineConnRef<'_>,
    key: &SuppressionKey,
    id: i64,
    reply: &str,
    now: i64,
) -> Result<()> {
    let owner: Option<(String,)> = on_engine!(&mut conn, |c| {
        sqlx::query_as(
        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **c)
    .await
    })?;
    if let Some((email,)) = owner {
        on_engine!(&mut conn, |c| sqlx::query(
            "UPDATE subscribers SET state = 'suppressed', updated_at = $1 WHERE email = $2",
        )
        .bind(now)
        .bind(&email)
        .execute(&mut **c)
        .await
        .map(drop))?;
        on_engine!(&mut conn, |c| sqlx::query(
            "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (email_hash) DO NOTHING",
        )
        .bind(key.entry(&email))
        .bind(format!("bounced: {reply}"))
        .bind(now)
        .execute(&mut **c)
        .await
        .map(drop))?;
    }
    Ok(())
}

/// Rows per outcome statement (six parameters each, well inside both backends' limits).
const OUTCOMES_PER_STATEMENT: usize = 200;

/// Writes a chunk of outcomes with one `UPDATE … FROM (VALUES …)`.
async fn record_chunk(
    conn: EngineConnRef<'_>,
    chunk: &[(i64, Outcome)],
    owner: LeaseOwner,
    now: i64,
) -> Result<()> {
    let rows: Vec<String> = (0..chunk.len())
        .map(|i| {
            let p = 3 + i * 6;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                p,
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            )
        })
        .collect();
    let sql = format!(
        "UPDATE deliveries SET state = v.column2,
                 smtp_reply = COALESCE(v.column3, deliveries.smtp_reply),
                 last_error = COALESCE(v.column4, deliveries.last_error),
                 next_attempt_at = COALESCE(v.column5, deliveries.next_attempt_at),
                 sent_at = v.column6,
                 lease_until = NULL, lease_owner = NULL, updated_at = $1
             FROM (VALUES {}) AS v
             WHERE deliveries.id = v.column1 AND deliveries.state = 'sending'
                 AND deliveries.lease_owner = $2",
        rows.join(", ")
    );
    let values: Vec<_> = chunk
        .iter()
        .map(|(id, outcome)| {
            let (reply, error, next_attempt, sent_at) = match outcome {
                Outcome::Sent { reply } => (Some(reply.clone()), None, None, Some(now)),
                Outcome::Deferred { error, retry_at } => {
                    (None, Some(error.clone()), Some(*retry_at), None)
                }
                Outcome::Bounced { reply, .. } => {
                    (Some(reply.clone()), Some(reply.clone()), None, None)
                }
                Outcome::Failed { error } => (None, Some(error.clone()), None, None),
                Outcome::Expired => (None, None, None, None),
                Outcome::Cancelled { reason } => (None, Some(reason.clone()), None, None),
                Outcome::Suppressed => (None, Some("address is suppressed".into()), None, None),
            };
            (
                *id,
                outcome.state().as_str(),
                reply,
                error,
                next_attempt,
                sent_at,
            )
        })
        .collect();
    on_engine!(conn, |c| {
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(owner.0);
        for (id, state, reply, error, next_attempt, sent_at) in values {
            query = query
                .bind(id)
                .bind(state)
                .bind(reply)
                .bind(error)
                .bind(next_attempt)
                .bind(sent_at);
        }
        query.execute(&mut *c).await.map(drop)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;
    use crate::store::testing::{lease, stores};
    use crate::store::{FeedItem, NewSubscriber};

    /// [`seed`], with the region's daily digest planned at 2,000 for its readers.
    async fn seed_planned(store: &Store) {
        let town = seed(store).await;
        store
            .plan_region_digest("manual:1", &town, Cadence::Daily, 0, 2_000, 9_000, false)
            .await
            .unwrap();
    }

    async fn seed(store: &Store) -> RegionSlug {
        let town: RegionSlug = "town".parse().unwrap();
        let feed = store.feed_id(&town, "file://town.xml").await.unwrap();
        let items: Vec<FeedItem> = (0..3)
            .map(|i| FeedItem {
                guid: format!("g{i}"),
                link: format!("https://news.example/{i}"),
                title: format!("Story {i}"),
                summary: String::new(),
                category: String::new(),
                published_at: Some(1_000 + i),
                breaking: false,
            })
            .collect();
        store
            .record_feed_items(feed, &town, &items, 1_000)
            .await
            .unwrap();
        for (email, confirmed) in [
            ("a@example.org", true),
            ("b@example.org", true),
            ("p@example.org", false),
        ] {
            store
                .add_subscriber(
                    &NewSubscriber {
                        email: Email::parse(email).unwrap(),
                        regions: vec![(town.clone(), Cadence::Daily)],
                        timezone: "UTC".parse().unwrap(),
                        confirmed,
                    },
                    1_000,
                )
                .await
                .unwrap();
        }
        town
    }

    #[tokio::test]
    async fn planning_is_set_based_and_never_repeats_an_article() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let town = seed(store).await;
            let plan = store
                .plan_region_digest("manual:1", &town, Cadence::Daily, 0, 2_000, 9_000, false)
                .await
                .unwrap();
            assert_eq!(
                plan.deliveries, 2,
                "pending readers get nothing ({backend:?})"
            );
            assert_eq!(plan.articles, 6);
            // The same slot again, and a new slot: nothing new for anyone.
            let again = store
                .plan_region_digest("manual:1", &town, Cadence::Daily, 0, 2_001, 9_000, false)
                .await
                .unwrap();
            assert_eq!(again.deliveries, 0);
            let other = store
                .plan_region_digest("manual:2", &town, Cadence::Daily, 0, 2_002, 9_000, false)
                .await
                .unwrap();
            assert_eq!(other.deliveries, 0, "{backend:?}");
            assert_eq!(store.due_count(2_003).await.unwrap(), 2);
        }
    }

    #[tokio::test]
    async fn claims_lease_and_record_outcomes() {
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let claimed = store
                .claim_due_deliveries(10, 2_000, lease(2_300))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2, "{backend:?}");
            assert_eq!(claimed[0].articles.len(), 3);
            assert_eq!(claimed[0].message_id.len(), 32);
            assert_ne!(claimed[0].message_id, claimed[1].message_id);
            assert_eq!(claimed[0].attempts, 1);
            // Leased rows are not claimed twice while the lease holds...
            assert!(
                store
                    .claim_due_deliveries(10, 2_100, lease(2_400))
                    .await
                    .unwrap()
                    .is_empty()
            );
            // ...and come back after it lapses (a crashed worker), keeping their Message-ID.
            let again = store
                .claim_due_deliveries(10, 2_301, lease(2_600))
                .await
                .unwrap();
            assert_eq!(again.len(), 2);
            assert_eq!(again[0].message_id, claimed[0].message_id);
            assert_eq!(again[0].attempts, 2);

            store
                .record_outcomes(
                    &[
                        (
                            again[0].id,
                            Outcome::Sent {
                                reply: "250 ok".into(),
                            },
                        ),
                        (
                            again[1].id,
                            Outcome::Deferred {
                                error: "421 busy".into(),
                                retry_at: 3_000,
                            },
                        ),
                    ],
                    LeaseOwner::TEST,
                    2_400,
                )
                .await
                .unwrap();
            let status = store.queue_status().await.unwrap();
            let count = |s| status.by_state.iter().find(|(st, _)| *st == s).unwrap().1;
            assert_eq!(count(DeliveryState::Sent), 1);
            assert_eq!(count(DeliveryState::Deferred), 1);
            assert_eq!(status.last_error.unwrap().1, "421 busy");
            // Deferred rows wait for their retry time, then expire after their expiry.
            assert!(
                store
                    .claim_due_deliveries(10, 2_500, lease(2_800))
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(store.expire_overdue(10_000).await.unwrap(), 1);
            assert_eq!(store.retry_failed(10_000, 20_000).await.unwrap(), 1);
            assert_eq!(store.due_count(10_000).await.unwrap(), 1);
        }
    }

    /// The rows per state, leaving out states no row is in.
    async fn states(store: &Store) -> Vec<(DeliveryState, i64)> {
        let mut states: Vec<_> = store
            .queue_status()
            .await
            .unwrap()
            .by_state
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        states.sort_by_key(|(state, _)| state.as_str());
        states
    }

    #[tokio::test]
    async fn a_claim_commits_with_outcomes_or_not_at_all() {
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let first = store
                .claim_due_deliveries(1, 2_000, lease(2_300))
                .await
                .unwrap();
            let claim = Claim {
                limit: 10,
                now: 2_000,
                lease: lease(2_300),
            };
            // A transaction dropped before its commit leaves nothing behind: the row it
            // claimed is still due, and the outcome it wrote is not there.
            let mut tx = store.begin_engine_transaction().await.unwrap();
            assert_eq!(tx.claim(claim).await.unwrap().len(), 1, "{backend:?}");
            let sent = [(
                first[0].id,
                Outcome::Sent {
                    reply: "250 ok".into(),
                },
            )];
            tx.record_outcomes(&sent, LeaseOwner::TEST, 2_001)
                .await
                .unwrap();
            drop(tx);
            assert_eq!(store.due_count(2_000).await.unwrap(), 1, "{backend:?}");
            assert_eq!(
                states(store).await,
                [(DeliveryState::Queued, 1), (DeliveryState::Sending, 1)],
                "{backend:?}"
            );

            // Committed, the claim and the outcome land together.
            let mut tx = store.begin_engine_transaction().await.unwrap();
            let ids = tx.claim(claim).await.unwrap();
            tx.record_outcomes(&sent, LeaseOwner::TEST, 2_001)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(ids.len(), 1, "{backend:?}");
            assert_ne!(ids[0], first[0].id);
            let loaded = store.load_claimed(&ids).await.unwrap();
            assert_eq!(loaded[0].articles.len(), 3);
            assert_eq!(loaded[0].attempts, 1);
            assert_eq!(
                states(store).await,
                [(DeliveryState::Sending, 1), (DeliveryState::Sent, 1)],
                "{backend:?}"
            );
            assert_eq!(store.due_count(2_000).await.unwrap(), 0);
        }
    }

    #[tokio::test]
    async fn a_closed_store_refuses_the_engines_writes() {
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let claimed = store
                .claim_due_deliveries(2, 2_000, lease(2_100))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 2, "{backend:?}");
            store.close().await;
            let outcomes = [(claimed[0].id, Outcome::Expired)];
            let refused = store
                .record_outcomes(&outcomes, LeaseOwner::TEST, 2_001)
                .await;
            assert!(refused.is_err(), "{backend:?}: wrote after close");
            assert!(
                store
                    .claim_due_deliveries(2, 2_000, lease(2_100))
                    .await
                    .is_err(),
                "{backend:?}: claimed after close"
            );
        }
    }

    #[tokio::test]
    async fn work_armed_for_an_outcome_commit_runs_once_it_is_durable_and_never_on_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let claimed = store
                .claim_due_deliveries(2, 2_000, lease(2_100))
                .await
                .unwrap();
            let runs = Arc::new(AtomicUsize::new(0));
            let then = |runs: &Arc<AtomicUsize>| {
                let runs = runs.clone();
                OnDurable::new(move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                })
            };
            // On its own statement: by the time the call returns, it has run once, and
            // the outcome is there for any other connection to read.
            let sent = [(
                claimed[0].id,
                Outcome::Sent {
                    reply: "250 ok".into(),
                },
            )];
            store
                .record_outcomes_then(&sent, LeaseOwner::TEST, 2_001, then(&runs))
                .await
                .unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{backend:?}");
            let rows = store.delivery_ledger().await.unwrap();
            assert_eq!(
                rows.iter()
                    .filter(|r| r.state == DeliveryState::Sent)
                    .count(),
                1,
                "{backend:?}"
            );
            // Inside a claim's transaction: only its commit runs it.
            let mut tx = store.begin_engine_transaction().await.unwrap();
            let sent = [(
                claimed[1].id,
                Outcome::Sent {
                    reply: "250 ok".into(),
                },
            )];
            tx.record_outcomes(&sent, LeaseOwner::TEST, 2_002)
                .await
                .unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{backend:?}");
            tx.commit_then(then(&runs)).await.unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 2, "{backend:?}");
            // Nothing to record: at once.
            store
                .record_outcomes_then(&[], LeaseOwner::TEST, 2_003, then(&runs))
                .await
                .unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 3, "{backend:?}");
            // A commit that fails never runs it, then or later.
            store.close().await;
            let expired = [(claimed[0].id, Outcome::Expired)];
            let failed = store
                .record_outcomes_then(&expired, LeaseOwner::TEST, 2_004, then(&runs))
                .await;
            assert!(failed.is_err(), "{backend:?}");
            assert_eq!(runs.load(Ordering::SeqCst), 3, "{backend:?}");
        }
    }

    #[tokio::test]
    async fn only_the_lease_owner_renews_records_and_releases() {
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let first = LeaseOwner::random();
            let second = LeaseOwner::random();
            let held = |owner, until| Lease { owner, until };
            let claimed = store
                .claim_due_deliveries(10, 2_000, held(first, 2_003))
                .await
                .unwrap();
            let ids: Vec<i64> = claimed.iter().map(|d| d.id).collect();
            assert_eq!(ids.len(), 2, "{backend:?}");
            // The owner extends its lease, so the rows are not due when it would have lapsed.
            let mut renewed = store.renew_leases(&ids, held(first, 2_010)).await.unwrap();
            renewed.sort_unstable();
            assert_eq!(renewed, ids);
            assert!(
                store
                    .claim_due_deliveries(10, 2_005, held(second, 2_020))
                    .await
                    .unwrap()
                    .is_empty(),
                "a renewed lease holds ({backend:?})"
            );
            // Another worker renews nothing, and once the lease lapses it takes the rows.
            assert!(
                store
                    .renew_leases(&ids, held(second, 2_010))
                    .await
                    .unwrap()
                    .is_empty()
            );
            let taken = store
                .claim_due_deliveries(10, 2_011, held(second, 2_020))
                .await
                .unwrap();
            assert_eq!(taken.len(), 2);
            // The first worker's late outcome, renewal and release change nothing.
            let deferred = Outcome::Deferred {
                error: "421 late".into(),
                retry_at: 3_000,
            };
            store
                .record_outcomes(&[(ids[0], deferred)], first, 2_012)
                .await
                .unwrap();
            store
                .release_deliveries(&ids[1..], first, 2_012)
                .await
                .unwrap();
            assert!(
                store
                    .renew_leases(&ids, held(first, 2_030))
                    .await
                    .unwrap()
                    .is_empty()
            );
            let ledger = store.delivery_ledger().await.unwrap();
            assert!(
                ledger.iter().all(|row| row.state == DeliveryState::Sending),
                "{ledger:?}"
            );
            // The holder's outcome is recorded.
            let sent = Outcome::Sent {
                reply: "250 ok".into(),
            };
            store
                .record_outcomes(&[(ids[0], sent)], second, 2_013)
                .await
                .unwrap();
            let ledger = store.delivery_ledger().await.unwrap();
            assert_eq!(ledger[0].state, DeliveryState::Sent, "{backend:?}");
        }
    }

    #[tokio::test]
    async fn checkpoints_keep_the_engines_wal_from_growing() {
        for (_backend, t) in stores().await {
            let Some(file) = t.sqlite_file() else {
                continue;
            };
            let store = &t.store;
            seed_planned(store).await;
            let ids: Vec<i64> = store
                .claim_due_deliveries(10, 2_000, lease(2_010))
                .await
                .unwrap()
                .iter()
                .map(|d| d.id)
                .collect();
            let wal = || {
                std::fs::metadata(format!("{}-wal", file.display()))
                    .unwrap()
                    .len()
            };
            // The engine's connection never checkpoints by itself: each round of commits
            // adds to the WAL unless `checkpoint` lets it start over.
            let mut sizes = Vec::new();
            for round in 0..8 {
                for renewal in 0..40 {
                    let until = 3_000 + round * 100 + renewal;
                    let renewed = store.renew_leases(&ids, lease(until)).await;
                    assert_eq!(renewed.unwrap().len(), ids.len());
                }
                store.checkpoint().await.unwrap();
                sizes.push(wal());
            }
            assert!(
                sizes[7] <= sizes[0] * 2,
                "the WAL kept growing across checkpoints: {sizes:?}"
            );
        }
    }

    #[tokio::test]
    async fn send_time_checks_see_unsubscribes_and_suppressions() {
        for (_backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            let claimed = store
                .claim_due_deliveries(10, 2_000, lease(2_300))
                .await
                .unwrap();
            store
                .record_outcomes(
                    &[(
                        claimed[0].id,
                        Outcome::Bounced {
                            reply: "550 5.1.1 no such user".into(),
                            suppress: true,
                        },
                    )],
                    LeaseOwner::TEST,
                    2_100,
                )
                .await
                .unwrap();
            let list = store.list_subscribers().await.unwrap();
            assert_eq!(list[0].state, SubscriberState::Suppressed);
            // Releasing the other row puts it back; its reader unsubscribes before the send.
            store
                .release_deliveries(&[claimed[1].id], LeaseOwner::TEST, 2_100)
                .await
                .unwrap();
            store
                .unsubscribe(claimed[1].subscriber_id, 2_150)
                .await
                .unwrap();
            assert!(
                store
                    .claim_due_deliveries(10, 2_200, lease(2_500))
                    .await
                    .unwrap()
                    .is_empty()
            );
            let ledger = store.delivery_ledger().await.unwrap();
            assert_eq!(ledger[0].state, DeliveryState::Bounced);
            assert_eq!(ledger[1].state, DeliveryState::Cancelled);
            assert_eq!(ledger[1].attempts, 0, "a released claim is not an attempt");
        }
    }
}
