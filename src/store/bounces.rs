//! Bounces, complaints and unsubscribes that arrive after a message went out: each
//! report matched to its delivery row, kept once in `bounce_events`, and the policy
//! applied in the same transaction (see `crate::bounces`). Also the erasure of
//! sign-ups never confirmed, and the figures `herald status`, the admin API and
//! `/metrics` show.

use sqlx::AssertSqlSafe;

use super::states::{from, target};
use super::subscribers::cancel_waiting;
use super::{Backend, Result, Store};
use crate::bounces::{
    BounceKind, BouncePolicy, BounceReport, MailUnsubscribe, Recorded, stored_message_id,
};
use crate::domain::{DeliveryId, SubscriberId, Timestamp, Transition};

/// A link or address issued this long before a reader's row was made still counts as
/// theirs: clocks of several hosts differ a little (as for the https links).
const CLOCK_SLACK_SECS: i64 = 300;

/// Seconds in a day: soft bounces count once per UTC day.
const DAY: i64 = 86_400;

/// The row a report answers, as the report is checked against it.
struct Matched {
    delivery: DeliveryId,
    subscriber: SubscriberId,
    email: String,
    sent_at: Option<Timestamp>,
}

/// The figures on bounces and complaints (see [`Store::bounce_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BounceStats {
    /// Emails the relay accepted (rows `sent`, and rows a hard bounce reported after
    /// acceptance moved to `bounced`): what the rates are out of.
    pub sent: i64,
    /// Reports recorded, by kind (every kind, zeros included, in `BounceKind::ALL`
    /// order).
    pub by_kind: Vec<(BounceKind, i64)>,
    /// Reports recorded per recipient domain and kind, most reports first (at most
    /// [`TOP_DOMAINS`] domains).
    pub by_domain: Vec<DomainBounces>,
    /// Suppression-list entries by what caused them: a report's kind, or `other`
    /// (a refusal during the SMTP session, an erasure).
    pub suppressions: Vec<(String, i64)>,
    /// Sign-ups erased unconfirmed, all time.
    pub purged_signups: i64,
}

/// Reports for one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainBounces {
    /// The domain, lowercased.
    pub domain: String,
    /// Reports by kind (in `BounceKind::ALL` order).
    pub by_kind: Vec<(BounceKind, i64)>,
    /// Addresses of this domain suppressed by a report.
    pub suppressed: i64,
    /// Emails to this domain the relay accepted (as [`BounceStats::sent`]).
    pub sent: i64,
}

impl DomainBounces {
    /// This domain's reports of `kind`.
    pub fn count(&self, kind: BounceKind) -> i64 {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// Hard and soft bounces per email to this domain the relay accepted (0 before any).
    pub fn bounce_rate(&self) -> f64 {
        rate(
            self.count(BounceKind::Hard) + self.count(BounceKind::Soft),
            self.sent,
        )
    }

    /// Complaints per email to this domain the relay accepted (0 before any).
    pub fn complaint_rate(&self) -> f64 {
        rate(self.count(BounceKind::Complaint), self.sent)
    }
}

/// Domains listed in [`BounceStats::by_domain`], so a scrape stays small.
pub const TOP_DOMAINS: usize = 20;

impl BounceStats {
    /// Reports of `kind`.
    pub fn count(&self, kind: BounceKind) -> i64 {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// Hard and soft bounces per email accepted (0 before any).
    pub fn bounce_rate(&self) -> f64 {
        rate(
            self.count(BounceKind::Hard) + self.count(BounceKind::Soft),
            self.sent,
        )
    }

    /// Complaints per email accepted (0 before any).
    pub fn complaint_rate(&self) -> f64 {
        rate(self.count(BounceKind::Complaint), self.sent)
    }
}

fn rate(n: i64, of: i64) -> f64 {
    if of <= 0 { 0.0 } else { n as f64 / of as f64 }
}

/// An address as reports write it (`rfc822; Ada@Example.org`, `<ada@example.org>`),
/// reduced to compare with a stored one.
fn bare_address(text: &str) -> String {
    let text = text.trim();
    let text = match text.split_once(';') {
        Some((kind, rest)) if kind.trim().eq_ignore_ascii_case("rfc822") => rest,
        _ => text,
    };
    text.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_lowercase()
}

impl Store {
    /// Matches the report to its delivery row (VERP token first, then Message-ID),
    /// records it in `bounce_events` once, and applies the policy: a hard bounce
    /// suppresses the address and marks the row `bounced`; a complaint unsubscribes the
    /// reader, suppresses the address and withdraws the consent record; soft bounces
    /// suppress once they fall on `policy.soft_limit` distinct days with no email
    /// accepted in between; an unsubscribe unsubscribes. A report whose recipient is not
    /// the row's changes nothing.
    pub async fn record_bounce(
        &self,
        report: &BounceReport,
        policy: &BouncePolicy,
    ) -> Result<Recorded> {
        let mut tx = self.begin_write().await?;
        let seen: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM bounce_events WHERE source = $1 AND source_id = $2")
                .bind(report.source.as_str())
                .bind(&report.source_id)
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            tx.rollback().await?;
            return Ok(Recorded::Duplicate);
        }
        let Some(row) = self.match_report(&mut tx, report, policy).await? else {
            tx.rollback().await?;
            return Ok(Recorded::Unmatched);
        };
        let domain = row
            .email
            .rsplit_once('@')
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default();
        let diagnostic = report.diagnostic.as_deref().map(|d| {
            d.chars()
                .filter(|c| !c.is_control())
                .take(1000)
                .collect::<String>()
        });
        let inserted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO bounce_events (source, source_id, kind, delivery_id, subscriber_id,
                 domain, diagnostic, message_id, occurred_at, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (source, source_id) DO NOTHING RETURNING id",
        )
        .bind(report.source.as_str())
        .bind(&report.source_id)
        .bind(report.kind.as_str())
        .bind(row.delivery)
        .bind(row.subscriber)
        .bind(&domain)
        .bind(&diagnostic)
        .bind(report.original_message_id.as_deref())
        .bind(report.at)
        .bind(Timestamp::now())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((event,)) = inserted else {
            tx.rollback().await?;
            return Ok(Recorded::Duplicate);
        };
        let at = report.at;
        let suppressed = match report.kind {
            BounceKind::Hard => {
                sqlx::query(AssertSqlSafe(format!(
                    "UPDATE deliveries SET state = {bounced}, last_error = $1, updated_at = $2
                     WHERE id = $3 AND {late}",
                    bounced = target(Transition::LateBounce),
                    late = from(Transition::LateBounce),
                )))
                .bind(format!(
                    "bounced after it was accepted: {}",
                    diagnostic.as_deref().unwrap_or("no diagnostic")
                ))
                .bind(at)
                .bind(row.delivery)
                .execute(&mut *tx)
                .await?;
                let reason = match &diagnostic {
                    Some(d) => format!("hard bounce: {d}"),
                    None => "hard bounce".into(),
                };
                suppress(&mut tx, self, &row, &reason, event, at).await?;
                true
            }
            BounceKind::Complaint => {
                leave(&mut tx, row.subscriber, "complaint", at).await?;
                suppress(&mut tx, self, &row, "complaint", event, at).await?;
                true
            }
            BounceKind::Unsubscribe => {
                leave(&mut tx, row.subscriber, "unsubscribe by mail", at).await?;
                false
            }
            BounceKind::Soft => {
                let days = soft_days(&mut tx, &row, at).await?;
                if days >= i64::from(policy.soft_limit) {
                    let reason = format!("soft bounces on {days} days");
                    suppress(&mut tx, self, &row, &reason, event, at).await?;
                    true
                } else {
                    false
                }
            }
        };
        tx.commit().await?;
        Ok(Recorded::Applied {
            delivery: row.delivery,
            suppressed,
        })
    }

    /// The delivery row a report answers, if any matches and its reader is on file
    /// with the address the report names.
    async fn match_report(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        report: &BounceReport,
        policy: &BouncePolicy,
    ) -> Result<Option<Matched>> {
        let by_token = report
            .verp_token
            .as_deref()
            .and_then(|t| policy.delivery_of(t));
        let id = match by_token {
            Some(id) => Some(id),
            None => match report
                .original_message_id
                .as_deref()
                .and_then(stored_message_id)
            {
                Some(message_id) => {
                    let found: Option<(DeliveryId,)> = sqlx::query_as(
                        "SELECT id FROM deliveries WHERE message_id = $1 ORDER BY id LIMIT 1",
                    )
                    .bind(message_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                    found.map(|(id,)| id)
                }
                None => None,
            },
        };
        let Some(id) = id else {
            return Ok(None);
        };
        let row: Option<(DeliveryId, SubscriberId, Option<Timestamp>, String)> = sqlx::query_as(
            "SELECT d.id, d.subscriber_id, d.sent_at, s.email
             FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.id = $1",
        )
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((delivery, subscriber, sent_at, email)) = row else {
            return Ok(None);
        };
        if let Some(named) = &report.recipient
            && bare_address(named) != email.to_lowercase()
        {
            return Ok(None);
        }
        Ok(Some(Matched {
            delivery,
            subscriber,
            email,
            sent_at,
        }))
    }

    /// Unsubscribes the reader a signed `mailto:` unsubscribe address names (see
    /// `crate::bounces::reader_from_unsubscribe_address`), as the https link does, and
    /// notes it on the consent record. False when nothing changed: the reader had left,
    /// is gone, or was made after the address was (an erased reader's id given again).
    pub async fn unsubscribe_by_mail(
        &self,
        reader: &MailUnsubscribe,
        at: Timestamp,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let found: Option<(Timestamp,)> =
            sqlx::query_as("SELECT created_at FROM subscribers WHERE id = $1")
                .bind(reader.reader)
                .fetch_optional(&mut *tx)
                .await?;
        let theirs = found.is_some_and(|(created_at,)| {
            reader.issued_at.unix() >= created_at.unix() - CLOCK_SLACK_SECS
        });
        if !theirs {
            tx.rollback().await?;
            return Ok(false);
        }
        let changed = leave(&mut tx, reader.reader, "unsubscribe by mail", at).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Erases the readers who signed up but never confirmed, once their confirmation
    /// link (and any sent since) has expired: their row, subscriptions and consent
    /// records (consent was never given), and their waiting mail is cancelled. Only
    /// the number is kept, per day. Returns how many were erased.
    pub async fn purge_pending(
        &self,
        link_lifetime: std::time::Duration,
        now: Timestamp,
    ) -> Result<u64> {
        let cutoff = now - link_lifetime;
        let mut tx = self.begin_write().await?;
        let stale: Vec<(SubscriberId,)> = sqlx::query_as(
            "SELECT s.id FROM subscribers s
             WHERE s.state = 'pending' AND s.created_at < $1
               AND NOT EXISTS (SELECT 1 FROM deliveries d
                               WHERE d.subscriber_id = s.id AND d.created_at >= $1)
             ORDER BY s.id",
        )
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        for (id,) in &stale {
            cancel_waiting(&mut tx, *id, "sign-up never confirmed", now).await?;
            for statement in [
                "DELETE FROM subscriptions WHERE subscriber_id = $1",
                "DELETE FROM consents WHERE subscriber_id = $1",
                "DELETE FROM subscribers WHERE id = $1 AND state = 'pending'",
            ] {
                sqlx::query(statement).bind(*id).execute(&mut *tx).await?;
            }
        }
        let count = stale.len() as i64;
        if count > 0 {
            sqlx::query(
                "INSERT INTO purged_signups (day, count) VALUES ($1, $2)
                 ON CONFLICT (day) DO UPDATE SET count = purged_signups.count + $2",
            )
            .bind(now.unix().div_euclid(DAY))
            .bind(count)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stale.len() as u64)
    }

    /// Reports by kind and by domain, the emails accepted they are out of, and the
    /// suppression list by cause.
    pub async fn bounce_stats(&self) -> Result<BounceStats> {
        let (sent_rows,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE state = 'sent'")
                .fetch_one(&self.pool)
                .await?;
        self.bounce_stats_with(sent_rows).await
    }

    /// [`Store::bounce_stats`], given the rows now `sent` (the ledger snapshot has
    /// counted them already, and a scrape need not count a large table twice).
    pub(super) async fn bounce_stats_with(&self, sent_rows: i64) -> Result<BounceStats> {
        // Accepted by the relay: the rows still `sent`, and those a late hard bounce
        // moved to `bounced` (one per row, however many reports it had).
        let (late,): (i64,) = sqlx::query_as(
            "SELECT COUNT(DISTINCT delivery_id) FROM bounce_events WHERE kind = 'hard'",
        )
        .fetch_one(&self.pool)
        .await?;
        let sent = sent_rows + late;
        let kinds: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, COUNT(*) FROM bounce_events GROUP BY kind")
                .fetch_all(&self.pool)
                .await?;
        let by_kind = BounceKind::ALL
            .into_iter()
            .map(|k| {
                let n = kinds
                    .iter()
                    .find(|(name, _)| name == k.as_str())
                    .map_or(0, |(_, n)| *n);
                (k, n)
            })
            .collect();
        let domains: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT domain, kind, COUNT(*) FROM bounce_events GROUP BY domain, kind",
        )
        .fetch_all(&self.pool)
        .await?;
        let suppressed_by_domain: Vec<(String, i64)> = sqlx::query_as(
            "SELECT e.domain, COUNT(*) FROM suppressions p
             JOIN bounce_events e ON e.id = p.bounce_event_id GROUP BY e.domain",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_domain: Vec<DomainBounces> = Vec::new();
        for (domain, kind, n) in domains {
            let Some(kind) = BounceKind::parse(&kind) else {
                continue;
            };
            let entry = match by_domain.iter_mut().position(|d| d.domain == domain) {
                Some(i) => &mut by_domain[i],
                None => {
                    by_domain.push(DomainBounces {
                        suppressed: suppressed_by_domain
                            .iter()
                            .find(|(d, _)| *d == domain)
                            .map_or(0, |(_, n)| *n),
                        domain,
                        by_kind: BounceKind::ALL.into_iter().map(|k| (k, 0)).collect(),
                        sent: 0,
                    });
                    by_domain.last_mut().expect("pushed")
                }
            };
            if let Some(slot) = entry.by_kind.iter_mut().find(|(k, _)| *k == kind) {
                slot.1 += n;
            }
        }
        by_domain.sort_by(|a, b| {
            let total = |d: &DomainBounces| d.by_kind.iter().map(|(_, n)| n).sum::<i64>();
            total(b).cmp(&total(a)).then(a.domain.cmp(&b.domain))
        });
        by_domain.truncate(TOP_DOMAINS);
        if !by_domain.is_empty() {
            // What the listed domains were sent, counted like `sent` above: one pass
            // over the rows still `sent`, grouped by the address's domain (stored
            // lowercased), and the rows a late hard bounce moved, from their reports.
            let domain_of = match self.backend {
                Backend::Sqlite => "substr(s.email, instr(s.email, '@') + 1)",
                Backend::Postgres => "split_part(s.email, '@', 2)",
            };
            let sent_by_domain: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT {domain_of}, COUNT(*) FROM deliveries d
                     JOIN subscribers s ON s.id = d.subscriber_id
                     WHERE d.state = 'sent' GROUP BY {domain_of}"
            )))
            .fetch_all(&self.pool)
            .await?;
            let late_by_domain: Vec<(String, i64)> = sqlx::query_as(
                "SELECT domain, COUNT(DISTINCT delivery_id) FROM bounce_events
                 WHERE kind = 'hard' GROUP BY domain",
            )
            .fetch_all(&self.pool)
            .await?;
            for entry in &mut by_domain {
                let of = |rows: &[(String, i64)]| {
                    rows.iter()
                        .find(|(d, _)| *d == entry.domain)
                        .map_or(0, |(_, n)| *n)
                };
                entry.sent = of(&sent_by_domain) + of(&late_by_domain);
            }
        }
        let suppressions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT COALESCE(e.kind, 'other'), COUNT(*) FROM suppressions p
             LEFT JOIN bounce_events e ON e.id = p.bounce_event_id
             GROUP BY COALESCE(e.kind, 'other') ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        let (purged,): (Option<i64>,) =
            sqlx::query_as("SELECT CAST(SUM(count) AS BIGINT) FROM purged_signups")
                .fetch_one(&self.pool)
                .await?;
        Ok(BounceStats {
            sent,
            by_kind,
            by_domain,
            suppressions,
            purged_signups: purged.unwrap_or(0),
        })
    }
}

/// Puts the row's address on the suppression list, naming the report, and marks the
/// reader suppressed (no more mail, whatever their subscriptions).
async fn suppress(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    store: &Store,
    row: &Matched,
    reason: &str,
    event: i64,
    at: Timestamp,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO suppressions (email_hash, reason, created_at, bounce_event_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (email_hash) DO NOTHING",
    )
    .bind(store.suppression.entry(&row.email))
    .bind(reason)
    .bind(at)
    .bind(event)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE subscribers SET state = 'suppressed', updated_at = $1
         WHERE id = $2 AND state <> 'unsubscribed'",
    )
    .bind(at)
    .bind(row.subscriber)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Unsubscribes a reader from everything, cancels their waiting mail, and notes on
/// their consent records when and why consent was withdrawn. True if they had not
/// left before.
async fn leave(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    reader: SubscriberId,
    why: &str,
    at: Timestamp,
) -> Result<bool> {
    let changed = sqlx::query(
        "UPDATE subscribers SET state = 'unsubscribed', unsubscribed_at = $1, updated_at = $1
         WHERE id = $2 AND state IN ('pending', 'confirmed', 'suppressed')",
    )
    .bind(at)
    .bind(reader)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE consents SET withdrawn_at = $1, withdrawn_by = $2
         WHERE subscriber_id = $3 AND withdrawn_at IS NULL",
    )
    .bind(at)
    .bind(why)
    .bind(reader)
    .execute(&mut **tx)
    .await?;
    cancel_waiting(tx, reader, why, at).await?;
    Ok(changed > 0)
}

/// Distinct UTC days with a soft bounce for the reader since their last success: the
/// newest email accepted for them with no report of its own, sent before the row this
/// report answers (a later email may not have had time to bounce yet).
async fn soft_days(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    row: &Matched,
    at: Timestamp,
) -> Result<i64> {
    let this_sent = row.sent_at.unwrap_or(at);
    let (last_success,): (Option<i64>,) = sqlx::query_as(
        "SELECT MAX(d.sent_at) FROM deliveries d
         WHERE d.subscriber_id = $1 AND d.state = 'sent' AND d.sent_at < $2
           AND NOT EXISTS (SELECT 1 FROM bounce_events e WHERE e.delivery_id = d.id)",
    )
    .bind(row.subscriber)
    .bind(this_sent)
    .fetch_one(&mut **tx)
    .await?;
    let (days,): (i64,) = sqlx::query_as(
        "SELECT COUNT(DISTINCT e.occurred_at / 86400) FROM bounce_events e
         JOIN deliveries d ON d.id = e.delivery_id
         WHERE e.subscriber_id = $1 AND e.kind = 'soft'
           AND COALESCE(d.sent_at, e.occurred_at) > $2",
    )
    .bind(row.subscriber)
    .bind(last_success.unwrap_or(i64::MIN))
    .fetch_one(&mut **tx)
    .await?;
    Ok(days)
}

#[cfg(test)]
mod tests;
