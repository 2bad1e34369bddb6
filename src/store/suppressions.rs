//! The suppression list: addresses herald must never mail again (bounced, or erased by
//! `herald subscribers remove`), kept without the address.
//!
//! An entry is HMAC-SHA256, under a key derived from the site secret, of the SHA-256 of
//! the normalised address. An unkeyed hash would be reversed by hashing a list of
//! addresses and looking for matches; without the secret, an entry cannot be tested
//! against any address. The SHA-256 inside is what lists before migration 0011 kept, so
//! their rows are re-keyed from the stored value alone, once, by [`Store::migrate`].
//! Every lookup and insert goes through [`SuppressionKey::entry`].

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{Result, Store};
use crate::domain::{Email, Timestamp};

/// How entries made by this version are hashed (`suppressions.hash_scheme`).
const KEYED: &str = "hmac-sha256";

/// How entries made before migration 0011 were hashed: to be re-keyed.
const UNKEYED: &str = "sha256";

/// Old entries re-keyed per transaction.
const REKEY_BATCH: i64 = 500;

/// The key the suppression list is hashed under, derived from the site secret (kept
/// as a keyed HMAC, ready to be cloned per entry).
#[derive(Clone)]
pub struct SuppressionKey(Hmac<Sha256>);

impl std::fmt::Debug for SuppressionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuppressionKey(..)")
    }
}

impl SuppressionKey {
    /// A key from secret bytes (see `Signer::derive_key`).
    pub fn new(key: &[u8]) -> SuppressionKey {
        SuppressionKey(Hmac::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// The suppression list's entry for a normalised address.
    pub fn entry(&self, email: &str) -> String {
        self.rekey(&hex(&Sha256::digest(email.as_bytes())))
    }

    /// The entry for what an unkeyed list stored: the SHA-256 of the address, in hex.
    fn rekey(&self, sha256_hex: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(b"herald-suppression:");
        mac.update(sha256_hex.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Re-keys the entries an older herald kept as a bare SHA-256 (see the module
    /// documentation); returns how many. Each row is converted once, even with several
    /// daemons starting together: a row is taken by deleting it.
    pub(super) async fn rekey_suppressions(&self) -> Result<u64> {
        let mut done = 0;
        loop {
            let mut tx = self.begin_write().await?;
            let old: Vec<(String,)> = sqlx::query_as(
                "SELECT email_hash FROM suppressions WHERE hash_scheme = $1
                 ORDER BY email_hash LIMIT $2",
            )
            .bind(UNKEYED)
            .bind(REKEY_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if old.is_empty() {
                tx.rollback().await?;
                return Ok(done);
            }
            for (hash,) in &old {
                let taken: Option<(String, i64)> = sqlx::query_as(
                    "DELETE FROM suppressions WHERE email_hash = $1 AND hash_scheme = $2
                     RETURNING reason, created_at",
                )
                .bind(hash)
                .bind(UNKEYED)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((reason, created_at)) = taken else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO suppressions (email_hash, reason, created_at, hash_scheme)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (email_hash) DO NOTHING",
                )
                .bind(self.suppression.rekey(hash))
                .bind(reason)
                .bind(created_at)
                .bind(KEYED)
                .execute(&mut *tx)
                .await?;
                done += 1;
            }
            tx.commit().await?;
        }
    }
}

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// The keyed hash the entry is stored under (the address itself is not kept).
    pub entry: String,
    /// Why: `bounced`, `complaint`, `removed` (erased by an admin), …
    pub reason: String,
    /// When it was added.
    pub created_at: Timestamp,
    /// The bounce or complaint report that caused it, if one did.
    pub event: Option<SuppressionEvent>,
}

/// The report behind a suppression (a row of `bounce_events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionEvent {
    /// `bounce_events.id`.
    pub id: i64,
    /// `hard`, `soft` or `complaint`.
    pub kind: String,
    /// `imap`, `ses` or `mailgun`.
    pub source: String,
    /// The delivery row it answered.
    pub delivery: i64,
    /// When the report was made.
    pub at: Timestamp,
}

/// An entry as selected: the suppression's columns, then its report's.
type Row = (
    String,
    String,
    Timestamp,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<Timestamp>,
);

/// The columns of [`Row`], from `suppressions p` joined to its report `e`.
const COLUMNS: &str = "p.email_hash, p.reason, p.created_at, e.id, e.kind, e.source, e.delivery_id,
     e.occurred_at FROM suppressions p LEFT JOIN bounce_events e ON e.id = p.bounce_event_id";

fn entry_of(row: Row) -> Suppression {
    let (entry, reason, created_at, id, kind, source, delivery, at) = row;
    let event = match (id, kind, source, delivery, at) {
        (Some(id), Some(kind), Some(source), Some(delivery), Some(at)) => Some(SuppressionEvent {
            id,
            kind,
            source,
            delivery,
            at,
        }),
        _ => None,
    };
    Suppression {
        entry,
        reason,
        created_at,
        event,
    }
}

impl Store {
    /// Every entry, newest first.
    pub async fn suppressions(&self) -> Result<Vec<Suppression>> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} ORDER BY p.created_at DESC, p.email_hash"
        )))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(entry_of).collect())
    }

    /// Whether `email` is on the list, and why.
    pub async fn suppression_of(&self, email: &Email) -> Result<Option<Suppression>> {
        let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} WHERE p.email_hash = $1"
        )))
        .bind(self.suppression.entry(email.as_str()))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(entry_of))
    }

    /// Lifts the suppression of `email`; false if it was not suppressed.
    pub async fn remove_suppression(&self, email: &Email) -> Result<bool> {
        let n = sqlx::query("DELETE FROM suppressions WHERE email_hash = $1")
            .bind(self.suppression.entry(email.as_str()))
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Cadence, Email};
    use crate::store::testing::{TEST_SUPPRESSION_KEY, at, lease, stores, stores_migrated_to};
    use crate::store::{Consent, NewSubscriber, SignupMail, SignupOutcome, WebSignup};

    fn sha256_hex(text: &str) -> String {
        hex(&Sha256::digest(text.as_bytes()))
    }

    #[test]
    fn entries_are_keyed_and_never_the_bare_hash() {
        let key = SuppressionKey::new(b"one");
        let entry = key.entry("ada@example.org");
        assert_eq!(entry.len(), 64);
        assert_eq!(entry, key.entry("ada@example.org"));
        assert_ne!(entry, sha256_hex("ada@example.org"));
        assert_ne!(entry, SuppressionKey::new(b"two").entry("ada@example.org"));
        assert_ne!(entry, key.entry("bo@example.org"));
        assert_eq!(entry, key.rekey(&sha256_hex("ada@example.org")));
    }

    async fn stored(store: &Store) -> Vec<(String, String)> {
        sqlx::query_as("SELECT email_hash, hash_scheme FROM suppressions ORDER BY reason")
            .fetch_all(&store.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn erasing_keeps_a_keyed_entry_that_still_refuses_the_address() {
        for (backend, t) in stores().await {
            let store = &t.store;
            let email = Email::parse("gone@example.org").unwrap();
            let reader = NewSubscriber {
                email: email.clone(),
                regions: vec![("town".parse().unwrap(), Cadence::Daily)],
                timezone: "UTC".parse().unwrap(),
                confirmed: true,
            };
            store.add_subscriber(&reader, at(1)).await.unwrap();
            assert!(store.remove_subscriber(&email, at(2)).await.unwrap());
            let rows = stored(store).await;
            assert_eq!(rows.len(), 1, "{backend:?}");
            assert_ne!(rows[0].0, sha256_hex("gone@example.org"));
            assert_eq!(rows[0].0, store.suppression.entry("gone@example.org"));
            assert_eq!(rows[0].1, KEYED);
            let signup = WebSignup {
                email,
                regions: vec![("town".parse().unwrap(), Cadence::Daily)],
                timezone: "UTC".parse().unwrap(),
                consent: Consent {
                    ip: "203.0.113.9".into(),
                    user_agent: "Test".into(),
                    text_version: "1".into(),
                },
            };
            let mail = SignupMail {
                per_day: 3,
                expires_at: at(100),
            };
            assert_eq!(
                store.record_web_signup(&signup, at(3), mail).await.unwrap(),
                SignupOutcome::Suppressed
            );
        }
    }

    #[tokio::test]
    async fn migration_re_keys_bare_hashes_once_and_they_still_match() {
        for (backend, t) in stores_migrated_to(10).await {
            let store = &t.store;
            // Entries as an older herald kept them: a bounce and an erasure.
            for (email, reason) in [("bounced@example.org", "a"), ("erased@example.org", "b")] {
                sqlx::query(
                    "INSERT INTO suppressions (email_hash, reason, created_at) VALUES ($1, $2, 7)",
                )
                .bind(sha256_hex(email))
                .bind(reason)
                .execute(&store.pool)
                .await
                .unwrap();
            }
            store.migrate().await.unwrap();
            let key = SuppressionKey::new(TEST_SUPPRESSION_KEY);
            let expected = vec![
                (key.entry("bounced@example.org"), KEYED.to_string()),
                (key.entry("erased@example.org"), KEYED.to_string()),
            ];
            assert_eq!(stored(store).await, expected, "{backend:?}");
            // Migrating again changes nothing: each row is re-keyed once.
            store.migrate().await.unwrap();
            assert_eq!(stored(store).await, expected);
            let (created_at,): (i64,) = sqlx::query_as("SELECT MIN(created_at) FROM suppressions")
                .fetch_one(&store.pool)
                .await
                .unwrap();
            assert_eq!(created_at, 7, "the entry keeps its date");
            // And the address is still refused.
            let signup = WebSignup {
                email: Email::parse("Erased@Example.org").unwrap(),
                regions: vec![("town".parse().unwrap(), Cadence::Daily)],
                timezone: "UTC".parse().unwrap(),
                consent: Consent {
                    ip: "203.0.113.9".into(),
                    user_agent: "Test".into(),
                    text_version: "1".into(),
                },
            };
            let mail = SignupMail {
                per_day: 3,
                expires_at: at(100),
            };
            assert_eq!(
                store.record_web_signup(&signup, at(3), mail).await.unwrap(),
                SignupOutcome::Suppressed
            );
            // An admin adds the bounced address back: the send-time check still holds
            // its mail back.
            let reader = NewSubscriber {
                email: Email::parse("bounced@example.org").unwrap(),
                regions: vec![("town".parse().unwrap(), Cadence::Daily)],
                timezone: "UTC".parse().unwrap(),
                confirmed: false,
            };
            store.add_subscriber(&reader, at(4)).await.unwrap();
            let id = store.list_subscribers().await.unwrap()[0].id;
            store
                .confirm_subscriber(id, "ip", at(5), at(500))
                .await
                .unwrap();
            let claimed = store
                .claim_due_deliveries(10, at(6), lease(300))
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1);
            assert!(claimed[0].suppressed, "{backend:?}");
        }
    }
}
