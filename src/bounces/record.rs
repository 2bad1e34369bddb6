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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounces::parse::parse_mail;
    use crate::bounces::{mailto_unsubscribe_address, verp_address};
    use crate::config::{BounceAddress, BouncesConfig};
    use crate::domain::{DeliveryId, SubscriberId};
    use crate::store::testing::{at, seed_planned, send_all_due, stores};
    use crate::tokens::Signer;

    fn config() -> BouncesConfig {
        BouncesConfig {
            address: Some(BounceAddress::new("bounces@news.example.org").unwrap()),
            soft_limit: 3,
            sns_cert_hosts: vec![],
            mailgun_signing_key: None,
            imap: None,
            poll_interval: std::time::Duration::from_secs(60),
        }
    }

    fn dsn(id: &str, verp: &str, recipient: &str) -> Vec<u8> {
        format!(
            "To: {verp}\r\nFrom: MAILER-DAEMON@mx.example.com\r\nMessage-ID: <{id}@mx>\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\n\
             Reporting-MTA: dns; mx.example.com\r\n\r\n\
             Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
             --b--\r\n"
        )
        .into_bytes()
    }

    async fn row_of(store: &Store, email: &str) -> (DeliveryId, SubscriberId) {
        sqlx::query_as(
            "SELECT d.id, s.id FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE s.email = $1",
        )
        .bind(email)
        .fetch_one(store.test_pool())
        .await
        .unwrap()
    }

    async fn state_of(store: &Store, email: &str) -> String {
        let (state,): (String,) = sqlx::query_as("SELECT state FROM subscribers WHERE email = $1")
            .bind(email)
            .fetch_one(store.test_pool())
            .await
            .unwrap();
        state
    }

    /// What the parser reads from the addresses herald wrote, the recorder applies;
    /// a report naming another recipient than its row's changes nothing.
    #[tokio::test]
    async fn parsed_mails_reach_the_store_and_a_stranger_s_report_changes_nothing() {
        let signer = Signer::new(b"test-secret");
        let addresses = BounceAddresses::new(&config(), &signer).unwrap();
        let bounce = config().address.unwrap();
        for (backend, t) in stores().await {
            let store = &t.store;
            seed_planned(store).await;
            send_all_due(store, 10, 2_000).await;
            let recorder = StoreRecorder::new(
                store.clone(),
                BouncePolicy::new(&config(), &signer),
                addresses.clone(),
            );
            let apply = |raw: Vec<u8>| {
                let recorder = recorder.clone();
                let bounce = bounce.clone();
                async move {
                    let reports = parse_mail(&raw, &bounce, at(3_000)).unwrap();
                    assert_eq!(reports.len(), 1);
                    recorder.apply(&reports[0]).await.unwrap()
                }
            };
            let (a_row, _) = row_of(store, "a@example.org").await;
            let (b_row, b) = row_of(store, "b@example.org").await;

            // b's row, but a recipient that is not b: refused, nothing kept.
            let stranger = dsn("x", &verp_address(&addresses, b_row), "z@example.org");
            assert_eq!(
                apply(stranger).await,
                Outcome::Bounce(Recorded::Unmatched),
                "{backend:?}"
            );
            assert_eq!(state_of(store, "b@example.org").await, "confirmed");
            let (events,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM bounce_events")
                .fetch_one(store.test_pool())
                .await
                .unwrap();
            assert_eq!(events, 0);

            // a's genuine hard bounce, in the case a relay may give it back in.
            let verp = verp_address(&addresses, a_row).to_uppercase();
            let hard = dsn("h", &verp, "a@example.org");
            assert_eq!(
                apply(hard.clone()).await,
                Outcome::Bounce(Recorded::Applied {
                    delivery: a_row,
                    suppressed: true
                })
            );
            assert_eq!(apply(hard).await, Outcome::Bounce(Recorded::Duplicate));
            assert_eq!(state_of(store, "a@example.org").await, "suppressed");

            // b writes to the mailto address of the email b was sent.
            let mailto = mailto_unsubscribe_address(&addresses, b, at(2_000));
            let leave = format!(
                "To: <{mailto}>\r\nFrom: b@example.org\r\nMessage-ID: <u@b>\r\n\r\nunsubscribe\r\n"
            );
            assert_eq!(
                apply(leave.clone().into_bytes()).await,
                Outcome::Unsubscribe(true)
            );
            assert_eq!(state_of(store, "b@example.org").await, "unsubscribed");
            assert_eq!(apply(leave.into_bytes()).await, Outcome::Unsubscribe(false));
        }
    }
}
