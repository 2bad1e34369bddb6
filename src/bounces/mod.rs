//! Bounces, complaints and unsubscribes that arrive after a relay accepted a message.
//!
//! Whatever brings them (the bounce mailbox, a relay's webhook), they become one
//! [`BounceReport`], which [`crate::store::Store::record_bounce`] matches to the
//! delivery row it answers, records once in `bounce_events`, and applies the
//! [`BouncePolicy`] to. The row is found by the VERP token of the envelope sender the
//! message went out with ([`verp_address`]), else by the Message-ID the report quotes.
//! The `mailto:` in `List-Unsubscribe` carries a token of its own
//! ([`mailto_unsubscribe_address`]). Both formats are written and read here only
//! ([`BounceTag`]): the mailbox's parser takes from an address exactly what the sender
//! wrote into it.
//!
//! The bounce mailbox is read over IMAP ([`imap`]) by a poll loop ([`mailbox`]), each
//! mail read into reports by [`parse`], and each report recorded by [`StoreRecorder`].

pub mod imap;
pub mod mailbox;
pub mod parse;
mod record;
mod seal;
pub mod webhooks;

use crate::config::{BounceAddress, BouncesConfig};
use crate::domain::{DeliveryId, SubscriberId, Timestamp};
use crate::tokens::Signer;

pub use record::{Outcome, StoreRecorder};
pub use seal::SealKey;

/// What a bounce, complaint or unsubscribe says, from whichever source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceKind {
    /// The address does not exist or will never take mail: suppressed at once.
    Hard,
    /// A temporary failure the relay gave up on: suppressed after `soft_limit` days.
    Soft,
    /// The reader reported the message as spam: unsubscribed and suppressed.
    Complaint,
    /// The reader asked to leave (by mail): unsubscribed.
    Unsubscribe,
}

impl BounceKind {
    /// Every kind, in the order reports show them.
    pub const ALL: [BounceKind; 4] = [
        BounceKind::Hard,
        BounceKind::Soft,
        BounceKind::Complaint,
        BounceKind::Unsubscribe,
    ];

    /// The name stored in `bounce_events.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceKind::Hard => "hard",
            BounceKind::Soft => "soft",
            BounceKind::Complaint => "complaint",
            BounceKind::Unsubscribe => "unsubscribe",
        }
    }

    /// The kind stored as `name`.
    pub fn parse(name: &str) -> Option<BounceKind> {
        BounceKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Where a report came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BounceSource {
    /// The bounce mailbox, read over IMAP.
    Imap,
    /// Amazon SES, through an SNS webhook.
    Ses,
    /// Mailgun's webhook.
    Mailgun,
}

impl BounceSource {
    /// The name stored in `bounce_events.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceSource::Imap => "imap",
            BounceSource::Ses => "ses",
            BounceSource::Mailgun => "mailgun",
        }
    }
}

/// What a bounce, complaint or unsubscribe says, from whichever source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceReport {
    /// Where it came from.
    pub source: BounceSource,
    /// Unique per source: the bounce mail's Message-ID, or the webhook event's id. A
    /// report with a (source, source_id) seen before changes nothing.
    pub source_id: String,
    /// What it says.
    pub kind: BounceKind,
    /// The VERP token, if the report carries one: the envelope recipient of the bounce
    /// (the whole address), or the relay's field (the address or the token alone). For
    /// an [`BounceKind::Unsubscribe`] read from the mailbox, the mailto unsubscribe
    /// address the mail was sent to (see [`reader_from_unsubscribe_address`]).
    pub verp_token: Option<String>,
    /// The Message-ID of the original email, if the report carries one.
    pub original_message_id: Option<String>,
    /// The recipient the report names, if any: used only to check it matches the row.
    pub recipient: Option<String>,
    /// The relay's or the receiving server's words (`smtp; 550 5.1.1 …`).
    pub diagnostic: Option<String>,
    /// When the report was made (for soft-bounce days).
    pub at: Timestamp,
}

/// What [`crate::store::Store::record_bounce`] did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Matched to this delivery row, recorded, and the policy applied.
    Applied {
        /// The row it answers.
        delivery: DeliveryId,
        /// Whether it suppressed the address.
        suppressed: bool,
    },
    /// The same report was recorded before: nothing changed.
    Duplicate,
    /// No delivery row matches it (or the recipient it names is not the row's): nothing
    /// changed, nothing kept.
    Unmatched,
}

/// What a recorded report does, and the key its VERP tokens are checked with.
#[derive(Debug, Clone)]
pub struct BouncePolicy {
    /// Soft bounces on this many distinct days (UTC), with no success between,
    /// suppress the address.
    pub soft_limit: u32,
    verp: SealKey,
}

impl BouncePolicy {
    /// The policy of `[bounces]`, checking tokens signed with the site secret.
    pub fn new(config: &BouncesConfig, signer: &Signer) -> BouncePolicy {
        BouncePolicy {
            soft_limit: config.soft_limit,
            verp: verp_key(signer),
        }
    }

    /// The delivery a VERP token names: `token` is the token alone, or a whole address
    /// with it after the `+` (the bounce domain is not checked: the token is signed).
    pub fn delivery_of(&self, token: &str) -> Option<DeliveryId> {
        let token = token.trim().trim_start_matches('<').trim_end_matches('>');
        let token = match token.rsplit_once('@') {
            Some((local, _)) => local.rsplit_once('+')?.1,
            None => token,
        };
        open_delivery(&self.verp, token)
    }
}

/// The bounce address and the keys of the tokens herald writes into it.
#[derive(Debug, Clone)]
pub struct BounceAddresses {
    address: BounceAddress,
    verp: SealKey,
    unsubscribe: SealKey,
}

impl BounceAddresses {
    /// The addresses of `[bounces] address`, or `None` when it is not set.
    pub fn new(config: &BouncesConfig, signer: &Signer) -> Option<BounceAddresses> {
        Some(BounceAddresses {
            address: config.address.clone()?,
            verp: verp_key(signer),
            unsubscribe: SealKey::new(&signer.derive_key("mail-unsubscribe")),
        })
    }

    /// The bounce address the tokens are written into.
    pub fn address(&self) -> &BounceAddress {
        &self.address
    }
}

/// Payload bytes of a VERP token: the delivery id.
const VERP_PAYLOAD: usize = 8;

/// Payload bytes of a mail unsubscribe token: the reader id and the issue time.
const UNSUBSCRIBE_PAYLOAD: usize = 12;

/// What marks an unsubscribe token in the address (a VERP token has none).
const UNSUBSCRIBE_PREFIX: &str = "u-";

/// What an address at herald's bounce address carries after its `+`, when it is one of
/// the two formats herald writes: `local+TOKEN@domain` (VERP, [`verp_address`]) or
/// `local+u-TOKEN@domain` ([`mailto_unsubscribe_address`]). Only the spelling is
/// checked here (herald's own local part and domain, any case; a token of the length
/// and alphabet the sender writes); whether the token is genuine is checked where it
/// is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BounceTag {
    /// A VERP token, lowercased.
    Verp(String),
    /// A mail unsubscribe token (without its `u-`), lowercased.
    Unsubscribe(String),
}

impl BounceTag {
    /// The tag of `addr` (bare, in `<…>`, or after `mailto:`), if it is one herald
    /// writes at `address`.
    pub fn read(address: &BounceAddress, addr: &str) -> Option<BounceTag> {
        let addr = addr
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        let addr = match addr.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("mailto:") => &addr[7..],
            _ => addr,
        };
        let (local, domain) = addr.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&address.domain) {
            return None;
        }
        let (base, tag) = local.split_once('+')?;
        if !base.eq_ignore_ascii_case(&address.local) {
            return None;
        }
        let tag = tag.to_ascii_lowercase();
        match tag.strip_prefix(UNSUBSCRIBE_PREFIX) {
            Some(token) => seal::well_formed(token, UNSUBSCRIBE_PAYLOAD)
                .then(|| BounceTag::Unsubscribe(token.to_string())),
            None => seal::well_formed(&tag, VERP_PAYLOAD).then_some(BounceTag::Verp(tag)),
        }
    }

    /// `token` lowercased, when it is spelt as a VERP token (a relay's field, a DSN's
    /// Original-Envelope-Id, without the address around it).
    pub fn verp_token(token: &str) -> Option<String> {
        let token = token.trim().to_ascii_lowercase();
        seal::well_formed(&token, VERP_PAYLOAD).then_some(token)
    }

    /// The address carrying this tag at `address`: what the sender writes.
    pub fn address(&self, address: &BounceAddress) -> String {
        let tag = match self {
            BounceTag::Verp(token) => token.clone(),
            BounceTag::Unsubscribe(token) => format!("{UNSUBSCRIBE_PREFIX}{token}"),
        };
        format!("{}+{tag}@{}", address.local, address.domain)
    }
}

fn verp_key(signer: &Signer) -> SealKey {
    SealKey::new(&signer.derive_key("verp"))
}

fn open_delivery(key: &SealKey, token: &str) -> Option<DeliveryId> {
    let payload = key.open(token, VERP_PAYLOAD)?;
    let id = i64::from_be_bytes(payload.try_into().ok()?);
    (id > 0).then(|| DeliveryId::new(id))
}

/// The envelope sender for delivery `delivery`: `local+TOKEN@domain`, the token signed
/// with the site secret and naming the row.
pub fn verp_address(addresses: &BounceAddresses, delivery: DeliveryId) -> String {
    BounceTag::Verp(addresses.verp.seal(&delivery.get().to_be_bytes())).address(&addresses.address)
}

/// The delivery an address herald wrote as an envelope sender names, if it is one
/// (the bounce address with a genuine token).
pub fn verp_token_from_address(addresses: &BounceAddresses, addr: &str) -> Option<DeliveryId> {
    match BounceTag::read(&addresses.address, addr)? {
        BounceTag::Verp(token) => open_delivery(&addresses.verp, &token),
        BounceTag::Unsubscribe(_) => None,
    }
}

/// A reader named by a signed unsubscribe address, and when the address was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailUnsubscribe {
    /// The reader.
    pub reader: SubscriberId,
    /// When the email carrying the address was composed: a reader created after it (an
    /// erased reader's id given again) is not the one it was sent to.
    pub issued_at: Timestamp,
}

/// The address of `List-Unsubscribe`'s `mailto:` for `reader`, in an email composed at
/// `now`: `local+u-TOKEN@domain`. It does not expire (leaving must always work).
pub fn mailto_unsubscribe_address(
    addresses: &BounceAddresses,
    reader: SubscriberId,
    now: Timestamp,
) -> String {
    let mut payload = [0u8; UNSUBSCRIBE_PAYLOAD];
    payload[..8].copy_from_slice(&reader.get().to_be_bytes());
    let issued = u32::try_from(now.unix().max(0)).unwrap_or(u32::MAX);
    payload[8..].copy_from_slice(&issued.to_be_bytes());
    BounceTag::Unsubscribe(addresses.unsubscribe.seal(&payload)).address(&addresses.address)
}

/// The reader a mail to `addr` unsubscribes, if `addr` is a genuine unsubscribe address
/// (see [`crate::store::Store::unsubscribe_by_mail`]).
pub fn reader_from_unsubscribe_address(
    addresses: &BounceAddresses,
    addr: &str,
) -> Option<MailUnsubscribe> {
    let BounceTag::Unsubscribe(token) = BounceTag::read(&addresses.address, addr)? else {
        return None;
    };
    let payload = addresses.unsubscribe.open(&token, UNSUBSCRIBE_PAYLOAD)?;
    let reader = i64::from_be_bytes(payload[..8].try_into().ok()?);
    let issued = u32::from_be_bytes(payload[8..].try_into().ok()?);
    (reader > 0).then(|| MailUnsubscribe {
        reader: SubscriberId::new(reader),
        issued_at: Timestamp::from_unix(i64::from(issued)),
    })
}

/// A report's Message-ID as herald stores it (32 hex digits), if it is one herald
/// wrote (`<uuid@domain>`, any case, brackets or not).
pub fn stored_message_id(message_id: &str) -> Option<String> {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (uuid, _) = id.split_once('@')?;
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses() -> (BounceAddresses, Signer) {
        let signer = Signer::new(b"secret");
        let config = BouncesConfig {
            address: Some(BounceAddress {
                local: "bounces".into(),
                domain: "news.example.org".into(),
            }),
            soft_limit: 3,
            sns_cert_hosts: vec![],
            mailgun_signing_key: None,
            imap: None,
            poll_interval: std::time::Duration::from_secs(60),
        };
        (BounceAddresses::new(&config, &signer).unwrap(), signer)
    }

    #[test]
    fn verp_addresses_name_their_row_and_nothing_else() {
        let (a, signer) = addresses();
        let addr = verp_address(&a, DeliveryId::new(1234));
        assert!(addr.starts_with("bounces+") && addr.ends_with("@news.example.org"));
        assert!(addr.split('@').next().unwrap().len() <= 64, "{addr}");
        assert!(!addr.contains("1234"));
        assert_eq!(
            verp_token_from_address(&a, &addr),
            Some(DeliveryId::new(1234))
        );
        assert_eq!(
            verp_token_from_address(&a, &format!("<{}>", addr.to_uppercase())),
            Some(DeliveryId::new(1234))
        );
        let policy = BouncePolicy {
            soft_limit: 3,
            verp: verp_key(&signer),
        };
        assert_eq!(policy.delivery_of(&addr), Some(DeliveryId::new(1234)));
        let token = addr.split(['+', '@']).nth(1).unwrap();
        assert_eq!(policy.delivery_of(token), Some(DeliveryId::new(1234)));
        assert_eq!(
            verp_token_from_address(&a, &addr.replace("news.", "other.")),
            None
        );
        assert_eq!(
            verp_token_from_address(&a, &addr.replace("bounces+", "other+")),
            None
        );
        // An unsubscribe address is not a VERP address, nor the other way round.
        let unsubscribe =
            mailto_unsubscribe_address(&a, SubscriberId::new(7), Timestamp::from_unix(99));
        assert_eq!(verp_token_from_address(&a, &unsubscribe), None);
        assert_eq!(reader_from_unsubscribe_address(&a, &addr), None);
        // Another site's secret signs other tokens.
        let other = BounceAddresses::new(
            &BouncesConfig {
                address: Some(a.address.clone()),
                soft_limit: 3,
                sns_cert_hosts: vec![],
                mailgun_signing_key: None,
                imap: None,
                poll_interval: std::time::Duration::from_secs(60),
            },
            &Signer::new(b"other"),
        )
        .unwrap();
        assert_eq!(verp_token_from_address(&other, &addr), None);
    }

    #[test]
    fn unsubscribe_addresses_carry_the_reader_and_the_issue_time() {
        let (a, _) = addresses();
        let addr = mailto_unsubscribe_address(
            &a,
            SubscriberId::new(7),
            Timestamp::from_unix(1_800_000_000),
        );
        assert!(addr.split('@').next().unwrap().len() <= 64, "{addr}");
        assert_eq!(
            reader_from_unsubscribe_address(&a, &format!("mailto:{addr}")),
            Some(MailUnsubscribe {
                reader: SubscriberId::new(7),
                issued_at: Timestamp::from_unix(1_800_000_000)
            })
        );
        let mut forged = addr.clone();
        let at = forged.find('@').unwrap() - 1;
        let c = if forged.as_bytes()[at] == b'a' {
            "b"
        } else {
            "a"
        };
        forged.replace_range(at..=at, c);
        assert_eq!(reader_from_unsubscribe_address(&a, &forged), None);
    }

    #[test]
    fn message_ids_are_read_as_stored() {
        assert_eq!(
            stored_message_id("<0A1B2C3D-0000-4000-8000-00000000000F@news.example.org>").as_deref(),
            Some("0a1b2c3d00004000800000000000000f")
        );
        assert_eq!(stored_message_id("<short@x>"), None);
        assert_eq!(stored_message_id("no-at-sign"), None);
    }
}
