//! Manual sends, the same from `herald send` and the admin API: start one (a row in
//! `sends`), plan its region's digest for its readers, and for a dry run keep what it
//! found (readers per zone and one rendered sample) with the send. A test copy to one
//! address is composed and sent at once; it queues nothing. The delivery engine sends
//! the queued rows like any others.

use std::sync::Arc;

use serde_json::json;

use crate::compose::{ComposeError, Composer, DigestRequest};
use crate::config::{Expiry, Regions};
use crate::deliver::{SendResult, Transport};
use crate::domain::{
    Cadence, DeliveryArticle, Email, MoreStories, RegionSlug, SendState, SponsorBlock,
    SubscriberId, Timestamp, Timezone,
};
use crate::store::{ManualSend, NewSend, PlanSummary, Store, StoreError};

/// Why a manual send could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The region is not configured.
    #[error("{0}")]
    UnknownRegion(String),
    /// The region has no articles to send.
    #[error("region {0} has no articles yet; ingest its feeds (or push an article) first")]
    NoArticles(RegionSlug),
    /// A template failed.
    #[error("cannot render the digest: {0}")]
    Compose(#[from] ComposeError),
    /// The test copy was not accepted.
    #[error("{0}")]
    TestCopy(String),
    /// The same Idempotency-Key came with a different request.
    #[error(
        "this Idempotency-Key was used for send {0} with a different region, cadence, address or dry_run; use a new key for a new send"
    )]
    KeyReused(crate::domain::SendId),
}

/// What manual sends need: the database, the templates, the transport for test copies,
/// the regions and the expiries.
#[derive(Clone)]
pub struct ManualSends {
    /// The database.
    pub store: Store,
    /// Renders samples and test copies.
    pub composer: Arc<Composer>,
    /// Sends test copies.
    pub transport: Arc<Transport>,
    /// The configured regions (their names).
    pub regions: Regions,
    /// How long digests stay worth sending.
    pub expiry: Expiry,
}

/// A send as [`ManualSends::start`] left it.
#[derive(Debug, Clone)]
pub struct Started {
    /// The send, counted from the ledger.
    pub send: ManualSend,
    /// False when an earlier request with the same key made it.
    pub fresh: bool,
    /// What planning queued (or, on a dry run, would queue); empty for a send that
    /// was not new or a test copy.
    pub plan: PlanSummary,
}

impl ManualSends {
    /// Starts a manual send: records it, then plans it (or sends its test copy). A
    /// request whose idempotency key was seen before gets that send back untouched.
    pub async fn start(&self, new: NewSend, now: Timestamp) -> Result<Started, SendError> {
        let region = self
            .regions
            .known(new.region.as_str())
            .map_err(SendError::UnknownRegion)?
            .clone();
        let (send, fresh) = self.store.create_send(&new, now).await?;
        if !fresh {
            let same = send.region == new.region
                && send.cadence == new.cadence
                && send.dry_run == new.dry_run
                && send.test_address == new.test_address;
            if !same {
                return Err(SendError::KeyReused(send.id));
            }
            return Ok(Started {
                send,
                fresh,
                plan: PlanSummary::default(),
            });
        }
        let outcome = match &send.test_address {
            Some(to) => self
                .test_copy(&region.slug, &region.name, send.cadence, to, now)
                .await
                .map(|report| (PlanSummary::default(), Some(report))),
            None => self.plan(&send, &region.name, now).await,
        };
        match outcome {
            Ok((plan, report)) => {
                let queued = !send.dry_run && send.test_address.is_none() && plan.deliveries > 0;
                self.store
                    .finish_send_planning(send.id, queued, report.as_deref(), now)
                    .await?;
                let send = self.store.send(send.id).await?.unwrap_or(send);
                Ok(Started { send, fresh, plan })
            }
            Err(error) => {
                self.store
                    .fail_send(send.id, &error.to_string(), now)
                    .await?;
                Err(error)
            }
        }
    }

    /// Plans the send's digest; a dry run also renders one sample and reports.
    async fn plan(
        &self,
        send: &ManualSend,
        region_name: &str,
        now: Timestamp,
    ) -> Result<(PlanSummary, Option<String>), SendError> {
        let plan = crate::plan::manual_digest(
            &self.expiry,
            &self.store,
            &send.region,
            send.cadence,
            now,
            send.dry_run,
            Some(send.id),
        )
        .await?;
        if !send.dry_run {
            return Ok((plan, None));
        }
        let zone = plan.zones.first().map_or(Timezone::UTC, |(zone, _)| *zone);
        let articles = region_articles(
            &self.store,
            &send.region,
            region_name,
            send.cadence,
            zone,
            now,
        )
        .await?;
        let sample = match plan.recipients.first() {
            Some((email, _)) if !articles.is_empty() => {
                let request = DigestRequest {
                    subscriber_id: SubscriberId::new(0),
                    email,
                    timezone: zone,
                    cadence: Some(send.cadence),
                    message_id: "00000000000000000000000000000000",
                    articles: &articles.articles,
                    more: &articles.more,
                    sponsor: articles.sponsor.as_ref(),
                    now,
                };
                let context = self.composer.digest_context(&request);
                let (text, html) = self.composer.render_digest(&context)?;
                json!({ "to": email.as_str(), "subject": context.subject, "text": text, "html": html })
            }
            _ => serde_json::Value::Null,
        };
        let report = json!({
            "readers": plan.deliveries,
            "articles": plan.articles,
            "zones": plan.zones.iter()
                .map(|(zone, n)| json!({ "zone": zone.name(), "readers": n }))
                .collect::<Vec<_>>(),
            "sample": sample,
        });
        Ok((plan, Some(report.to_string())))
    }

    /// Renders the region's recent articles for one address and sends it right away;
    /// returns the report kept with the send.
    async fn test_copy(
        &self,
        region: &RegionSlug,
        region_name: &str,
        cadence: Cadence,
        to: &Email,
        now: Timestamp,
    ) -> Result<String, SendError> {
        let articles = region_articles(
            &self.store,
            region,
            region_name,
            cadence,
            Timezone::UTC,
            now,
        )
        .await?;
        if articles.is_empty() {
            return Err(SendError::NoArticles(region.clone()));
        }
        let message_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
        let composed = self.composer.digest(&DigestRequest {
            subscriber_id: SubscriberId::new(0),
            email: to,
            timezone: Timezone::UTC,
            cadence: Some(cadence),
            message_id: &message_id,
            articles: &articles.articles,
            more: &articles.more,
            sponsor: articles.sponsor.as_ref(),
            now,
        })?;
        match self.transport.send_one(&composed).await {
            SendResult::Accepted(reply) => {
                Ok(json!({ "to": to.as_str(), "reply": reply }).to_string())
            }
            SendResult::Temporary(e) | SendResult::Throttled(e) | SendResult::Unreachable(e) => {
                Err(SendError::TestCopy(format!(
                    "the test copy to {to} was not sent: {e}"
                )))
            }
            SendResult::Permanent { reply, .. } => Err(SendError::TestCopy(format!(
                "the server refused the test copy to {to}: {reply}"
            ))),
        }
    }
}

/// What a digest of one region would carry now, ranked and capped as planning does.
#[derive(Debug, Clone, Default)]
pub struct RegionDigest {
    /// The stories it lists.
    pub articles: Vec<DeliveryArticle>,
    /// The stories the cap leaves out (at most one entry: this region).
    pub more: Vec<MoreStories>,
    /// The sponsor block a reader of the region would get today.
    pub sponsor: Option<SponsorBlock>,
}

impl RegionDigest {
    /// Whether there is nothing to show.
    pub fn is_empty(&self) -> bool {
        self.articles.is_empty()
    }
}

/// The digest of `region` now: the last period's stories, or the newest ones of all
/// time when the period is empty (so a preview always shows something), ranked and
/// capped at `[digest] max_stories` as a planned digest is, with the sponsor block a
/// reader of the region in `zone` would get today.
pub async fn region_articles(
    store: &Store,
    region: &RegionSlug,
    region_name: &str,
    cadence: Cadence,
    zone: Timezone,
    now: Timestamp,
) -> Result<RegionDigest, StoreError> {
    let (mut rows, mut left_out) = store
        .ranked_region_articles(region, now - cadence.period())
        .await?;
    if rows.is_empty() {
        (rows, left_out) = store
            .ranked_region_articles(region, Timestamp::from_unix(0))
            .await?;
    }
    let more = if left_out > 0 {
        vec![MoreStories {
            region_slug: region.clone(),
            region_name: region_name.to_string(),
            stories: left_out,
            url: store.region_page(region).await?,
        }]
    } else {
        Vec::new()
    };
    let articles = rows
        .into_iter()
        .map(|a| DeliveryArticle {
            article_id: a.id,
            region_slug: region.clone(),
            region_name: region_name.to_string(),
            title: a.title,
            link: a.link,
            summary: a.summary,
            category: a.category,
            published_at: a.published_at,
        })
        .collect();
    let sponsor = store.sponsor_for(region, now.local_date(zone)).await?;
    Ok(RegionDigest {
        articles,
        more,
        sponsor,
    })
}

/// What can be done with a send in `state`, for an admin whose request was refused.
pub fn refusal_hint(state: SendState) -> &'static str {
    match state {
        SendState::Planning => "wait until its emails are queued",
        SendState::Sending => "it can be paused or cancelled",
        SendState::Paused => "it can be resumed or cancelled",
        SendState::Done | SendState::Cancelled => "it is finished; start a new send",
    }
}
