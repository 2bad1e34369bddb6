//! Row ids as types of their own: a reader's id cannot go where a delivery's is meant,
//! and a signature says which row it wants.

use std::fmt;

/// Declares an id type over the stored integer.
macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(i64);

        impl $name {
            /// The id whose stored value is `raw`.
            pub const fn new(raw: i64) -> $name {
                $name(raw)
            }

            /// The stored value.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<$name, String> {
                s.trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map($name)
                    .ok_or_else(|| format!("\"{s}\" is not an id (a positive whole number)"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

ids! {
    /// One email in the outbox (`deliveries.id`).
    DeliveryId;
    /// A reader (`subscribers.id`); signed links carry it.
    SubscriberId;
    /// A stored article (`articles.id`).
    ArticleId;
    /// One planned send: a slot, an alert, a manual send or a sign-up email (`editions.id`).
    EditionId;
    /// One configured feed of one region (`feeds.id`).
    FeedId;
    /// A sign-up the form accepted, waiting to be carried out (`signup_requests.id`).
    SignupId;
    /// A manual send started from the CLI or the admin API (`sends.id`).
    SendId;
    /// A sponsor booking (`sponsors.id`).
    SponsorId;
}
