//! Domain types: values that can only exist when they are valid, so nothing
//! downstream has to check them again.

mod article;
mod delivery;
mod email;
mod ids;
mod send;
mod sponsor;
mod time;

pub use article::{DeliveryArticle, FeedItem, MoreStories};
pub use delivery::{DeliveryKind, DeliveryState, Outcome, Rule, Transition};
pub use email::{Email, EmailError};
pub use ids::{
    ArticleId, DeliveryId, EditionId, FeedId, SendId, SignupId, SponsorId, SubscriberId,
};
pub use send::SendState;
pub use sponsor::{NewSponsor, SponsorBlock, SponsorError, SponsorFields};
pub use time::Timestamp;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The short name of a region, as used in URLs, config and the CLI (`riverton`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegionSlug(String);

impl RegionSlug {
    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegionSlug {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(RegionSlug(value))
        } else {
            Err(format!(
                "\"{value}\" is not a region slug (use 1-64 lowercase letters, digits, '-' or '_')"
            ))
        }
    }
}

impl FromStr for RegionSlug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RegionSlug::try_from(s.trim().to_string())
    }
}

impl From<RegionSlug> for String {
    fn from(value: RegionSlug) -> String {
        value.0
    }
}

impl fmt::Display for RegionSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// How often a reader wants news from one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cadence {
    /// Breaking news as it happens.
    Alert,
    /// One digest a day.
    Daily,
    /// One digest a week.
    Weekly,
}

impl Cadence {
    /// Every cadence, in display order.
    pub const ALL: [Cadence; 3] = [Cadence::Alert, Cadence::Daily, Cadence::Weekly];

    /// The name stored in the database and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Cadence::Alert => "alert",
            Cadence::Daily => "daily",
            Cadence::Weekly => "weekly",
        }
    }

    /// How far back a reader's first digest of this cadence reaches.
    pub fn period(self) -> std::time::Duration {
        const HOUR: u64 = 3_600;
        std::time::Duration::from_secs(match self {
            Cadence::Alert => 6 * HOUR,
            Cadence::Daily => 24 * HOUR,
            Cadence::Weekly => 7 * 24 * HOUR,
        })
    }
}

impl FromStr for Cadence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "alert" => Ok(Cadence::Alert),
            "daily" => Ok(Cadence::Daily),
            "weekly" => Ok(Cadence::Weekly),
            other => Err(format!(
                "\"{other}\" is not a cadence (use alert, daily or weekly)"
            )),
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IANA time zone such as `America/Los_Angeles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timezone(chrono_tz::Tz);

impl Timezone {
    /// Coordinated Universal Time.
    pub const UTC: Timezone = Timezone(chrono_tz::UTC);

    /// The underlying zone for date arithmetic.
    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }

    /// The IANA name.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl FromStr for Timezone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<chrono_tz::Tz>()
            .map(Timezone)
            .map_err(|_| {
                format!(
                    "unknown time zone \"{s}\" (use an IANA name such as \"America/Los_Angeles\")"
                )
            })
    }
}

impl fmt::Display for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl PartialEq<&str> for Timezone {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// One region a reader follows, as sign-up emails list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderRegion {
    /// Slug.
    pub slug: RegionSlug,
    /// Display name.
    pub name: String,
    /// How often.
    pub cadence: Cadence,
}

/// Where a reader stands: only `Confirmed` readers get digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberState {
    /// Signed up, has not confirmed yet.
    Pending,
    /// Confirmed (double opt-in, or added by an admin with `--confirmed`).
    Confirmed,
    /// Left through an unsubscribe link.
    Unsubscribed,
    /// Mail to the address bounced hard; never mailed again.
    Suppressed,
}

impl SubscriberState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriberState::Pending => "pending",
            SubscriberState::Confirmed => "confirmed",
            SubscriberState::Unsubscribed => "unsubscribed",
            SubscriberState::Suppressed => "suppressed",
        }
    }
}

impl FromStr for SubscriberState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(SubscriberState::Pending),
            "confirmed" => Ok(SubscriberState::Confirmed),
            "unsubscribed" => Ok(SubscriberState::Unsubscribed),
            "suppressed" => Ok(SubscriberState::Suppressed),
            other => Err(format!("unknown subscriber state \"{other}\"")),
        }
    }
}

impl fmt::Display for SubscriberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_reject_uppercase_and_spaces() {
        assert!("riverton".parse::<RegionSlug>().is_ok());
        assert!("cedar-falls".parse::<RegionSlug>().is_ok());
        assert!("Cedar Falls".parse::<RegionSlug>().is_err());
        assert!("".parse::<RegionSlug>().is_err());
    }

    #[test]
    fn cadence_round_trips_and_rejects_unknown() {
        for cadence in Cadence::ALL {
            assert_eq!(cadence.as_str().parse::<Cadence>().unwrap(), cadence);
        }
        let err = "hourly".parse::<Cadence>().unwrap_err();
        assert!(err.contains("alert, daily or weekly"), "{err}");
    }

    #[test]
    fn timezones_are_iana_names() {
        assert_eq!(
            "Asia/Kolkata".parse::<Timezone>().unwrap().name(),
            "Asia/Kolkata"
        );
        assert!("Mars/Olympus".parse::<Timezone>().is_err());
    }
}
