//! The daemon's bounce recorder: each report the mailbox reads goes to the store, which
//! matches it to its delivery row, keeps it once and applies the policy
//! ([`Store::record_bounce`]); a mail to a mailto unsubscribe address unsubscribes the
//! reader its signed token names ([`Store::unsubscribe_by_mail`]).

use std::future::Future;
use std::pin::Pin;

use super::mailbox::RecordBounce;
use super::{
    BounceAddresses, BounceKind, BouncePolicy, BounceReport, Recorded,
    reader_from_unsubscribe_address,
};
use crate::store::Store;

/// What happened to one report, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A bounce or complaint: what the store did with it.
    Bounce(Recorded),
    /// A mail unsubscribe: whether the reader was unsubscribed by it (false when the
    /// reader had left already, or the address names no reader on file).
    Unsubscribe(bool),
}

/// Records reports in the store. A report the store cannot match (no row, a forged
/// token, a recipient that is not the row's address) changes nothing and is only
/// logged: the mail is still marked read, as it was read.
#[derive(Clone)]
pub struct StoreRecorder {
    store: Store,
    policy: BouncePolicy,
    addresses: BounceAddresses,
}

impl StoreRecorder {
    /// A recorder into `store`, with the policy and keys of `[bounces]`.
    pub fn new(store: Store, policy: BouncePolicy, addresses: BounceAddresses) -> StoreRecorder {
        StoreRecorder {
            store,
            policy,
            addresses,
        }
    }

    /// Records one report.
    pub async fn apply(&self, report: &BounceReport) -> anyhow::Result<Outcome> {
        let outcome = if report.kind == BounceKind::Unsubscribe {
            let reader = report
                .verp_token
                .as_deref()
                .and_then(|addr| reader_from_unsubscribe_address(&self.addresses, addr));
            match reader {
                Some(reader) => {
                    Outcome::Unsubscribe(self.store.unsubscribe_by_mail(&reader, report.at).await?)
                }
                None => Outcome::Unsubscribe(false),
            }
        } else {
            Outcome::Bounce(self.store.record_bounce(report, &self.policy).await?)
        };
        match outcome {
            Outcome::Bounce(Recorded::Unmatched) => tracing::warn!(
                source_id = %report.source_id, kind = report.kind.as_str(),
                recipient = report.recipient.as_deref().unwrap_or(""),
                "a bounce report matches no delivery row (or names another recipient); nothing changed"
            ),
            Outcome::Unsubscribe(false) => tracing::info!(
                source_id = %report.source_id,
                "a mail unsubscribe changed nothing: the reader had left, or its address is not genuine"
            ),
            _ => tracing::info!(source_id = %report.source_id, ?outcome, "bounce report recorded"),
        }
        Ok(outcome)
    }
}

impl RecordBounce for StoreRecorder {
    fn record(
        &self,
        report: BounceReport,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.apply(&report)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
    }
}
