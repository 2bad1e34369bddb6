//! The bounce mailbox's poll loop: every `poll_interval`, log in over IMAP, read each
//! new mail into reports, hand each report to the recorder, and only then mark the
//! mail read. A mail herald cannot read is set aside (still unread, flagged
//! [`UNPARSED_KEYWORD`](super::imap::UNPARSED_KEYWORD)) for a person, counted, and
//! never deleted.
//!
//! Each mail is recorded once however often the mailbox is polled: a mail is marked
//! read only after the recorder took every report in it, and the recorder is
//! idempotent on the report's `source_id` (the bounce's Message-ID), so a crash
//! between the two records nothing twice when the mail is read again.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::BounceReport;
use super::imap::{Fetched, ImapError, ImapSession, ImapSettings};
use super::parse::{BounceAddress, Unparsed, parse_mail};
use crate::config::BouncesConfig;
use crate::domain::Timestamp;
use crate::shutdown::Shutdown;
use crate::supervise::Beat;

/// Where the poll loop hands each report: in the daemon, the store's bounce recorder.
/// It must be idempotent on `(source, source_id)`; an error leaves the mail unread, to
/// be read again at the next poll.
pub trait RecordBounce: Send + Sync {
    /// Records one report; the error is a sentence for the log.
    fn record(
        &self,
        report: BounceReport,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

impl<F, Fut> RecordBounce for F
where
    F: Fn(BounceReport) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    fn record(
        &self,
        report: BounceReport,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(self(report))
    }
}

/// The mailbox and what its mails are read against.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// Where it is and how to log in.
    pub settings: ImapSettings,
    /// Herald's bounce address, whose `+TOKEN` variants name delivery rows.
    pub bounce: BounceAddress,
    /// The wait between two polls.
    pub poll_interval: Duration,
}

impl Mailbox {
    /// How long the mailbox stage may go without a good poll before `/readyz` says so:
    /// three polls, each with room for its answers to be slow.
    pub fn overdue_after(&self) -> Duration {
        3 * self.poll_interval + 10 * self.settings.timeout
    }
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollSummary {
    /// Mails read and marked read.
    pub mails: usize,
    /// Reports handed to the recorder.
    pub reports: usize,
    /// Mails set aside this poll because herald could not read them.
    pub unparsed: usize,
    /// Mails set aside, this poll or before, that still wait unread for a person.
    pub unparsed_waiting: usize,
}

/// Why a poll stopped early. Nothing is lost: what was not marked read is read again.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Talking to the IMAP server failed.
    #[error(transparent)]
    Imap(#[from] ImapError),
    /// The recorder refused a report.
    #[error("cannot record the bounce from mail {uid} ({source_id}): {reason}")]
    Record {
        /// The mail's IMAP UID.
        uid: u32,
        /// The report's source id.
        source_id: String,
        /// The recorder's sentence.
        reason: String,
    },
}

impl Mailbox {
    /// The mailbox `[bounces]` configures, when `imap_url` (and so `address`) is set.
    pub fn from_config(config: &BouncesConfig) -> Option<Mailbox> {
        Some(Mailbox {
            settings: config.imap.clone()?,
            bounce: config.address.clone()?,
            poll_interval: config.poll_interval,
        })
    }

    /// How many mails wait in the mailbox, unread, because herald could not read them
    /// (for `herald status`); reads nothing else and changes nothing.
    pub async fn unparsed_waiting(&self) -> Result<usize, ImapError> {
        let mut session = ImapSession::open(&self.settings).await?;
        let waiting = session.unparsed_waiting().await?;
        session.logout().await;
        Ok(waiting)
    }

    /// Reads every new mail once: its reports recorded and the mail marked read, or
    /// the mail set aside as unparsed.
    pub async fn poll(&self, recorder: &dyn RecordBounce) -> Result<PollSummary, PollError> {
        self.poll_at(recorder, &Timestamp::now).await
    }

    /// [`Mailbox::poll`], each report stamped with the instant `clock` reads when its
    /// mail is parsed (tests pass their own instants: soft bounces count by day).
    pub async fn poll_at(
        &self,
        recorder: &dyn RecordBounce,
        clock: &(dyn Fn() -> Timestamp + Sync),
    ) -> Result<PollSummary, PollError> {
        let mut session = ImapSession::open(&self.settings).await?;
        let mut summary = PollSummary::default();
        for uid in session.new_mail().await? {
            let raw = match session.fetch(uid).await? {
                Fetched::Mail(raw) => raw,
                Fetched::Gone => continue,
                Fetched::TooLarge(size) => {
                    tracing::warn!(
                        uid,
                        size,
                        "a mail in the bounce mailbox is too large to be a bounce; it is left unread for a person"
                    );
                    session.mark_unparsed(uid).await?;
                    summary.unparsed += 1;
                    continue;
                }
            };
            let at = clock();
            // A mail must never stop the loop: a panic in the parser is one more mail
            // for a person.
            let parsed = catch_unwind(AssertUnwindSafe(|| parse_mail(&raw, &self.bounce, at)))
                .unwrap_or(Err(Unparsed::ParserFailed));
            match parsed {
                Ok(reports) => {
                    for report in reports {
                        let source_id = report.source_id.clone();
                        tracing::info!(
                            uid, kind = ?report.kind, source_id = %report.source_id,
                            recipient = report.recipient.as_deref().unwrap_or(""),
                            "bounce mailbox: report read"
                        );
                        recorder
                            .record(report)
                            .await
                            .map_err(|reason| PollError::Record {
                                uid,
                                source_id,
                                reason,
                            })?;
                        summary.reports += 1;
                    }
                    session.mark_seen(uid).await?;
                    summary.mails += 1;
                }
                Err(reason) => {
                    tracing::warn!(
                        uid, %reason,
                        "a mail in the bounce mailbox is not a bounce herald can read; it is left unread for a person"
                    );
                    session.mark_unparsed(uid).await?;
                    summary.unparsed += 1;
                }
            }
        }
        summary.unparsed_waiting = session.unparsed_waiting().await?;
        session.logout().await;
        Ok(summary)
    }
}

/// The daemon's mailbox stage: polls until shutdown. A failed poll (the server down, a
/// wrong password, the database refusing a report) is logged and tried again at the
/// next interval; only good polls count as the stage's passes, so a mailbox that
/// cannot be read shows in `/readyz`.
pub async fn run(
    mailbox: Arc<Mailbox>,
    recorder: Arc<dyn RecordBounce>,
    shutdown: Shutdown,
    beat: Beat,
) -> Result<(), std::convert::Infallible> {
    while !shutdown.is_triggered() {
        match mailbox.poll(recorder.as_ref()).await {
            Ok(summary) => {
                crate::metrics::METRICS
                    .bounce_mailbox_polled(summary.unparsed, summary.unparsed_waiting);
                if summary.mails + summary.unparsed > 0 {
                    tracing::info!(
                        mails = summary.mails,
                        reports = summary.reports,
                        unparsed = summary.unparsed,
                        unparsed_waiting = summary.unparsed_waiting,
                        "bounce mailbox read"
                    );
                }
                beat.ok();
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the bounce mailbox; trying again at the next poll");
            }
        }
        shutdown.sleep(mailbox.poll_interval).await;
    }
    Ok(())
}
