//! Instants as herald stores and compares them: whole seconds since the Unix epoch, in
//! UTC. Zones only matter when an instant is shown to a reader or matched against a
//! schedule, and that is done with chrono on the way out.

use std::ops::{Add, Sub};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// An instant, in whole seconds since 1970-01-01 00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The instant `secs` seconds after the Unix epoch.
    pub const fn from_unix(secs: i64) -> Timestamp {
        Timestamp(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> i64 {
        self.0
    }

    /// Now, by herald's clock (see [`crate::clock`]).
    pub fn now() -> Timestamp {
        Timestamp(crate::clock::now())
    }

    /// The same instant for chrono; instants chrono cannot represent (hundreds of
    /// millennia away) become the nearest one it can.
    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0, 0).unwrap_or(if self.0 < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
    }

    /// The calendar day of this instant in `zone`.
    pub fn local_date(self, zone: super::Timezone) -> chrono::NaiveDate {
        self.to_utc().with_timezone(&zone.tz()).date_naive()
    }

    /// Seconds from `earlier` to this instant; negative when `earlier` is later.
    pub fn seconds_since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(instant: DateTime<Utc>) -> Timestamp {
        Timestamp(instant.timestamp())
    }
}

/// Whole seconds of `duration`, saturating (a duration past `i64` seconds is forever).
fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(secs(duration)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(secs(duration)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_in_whole_seconds_and_saturates() {
        let t = Timestamp::from_unix(1_795_248_000);
        assert_eq!((t + Duration::from_millis(90_500)).unix(), 1_795_248_090);
        assert_eq!((t - Duration::from_secs(86_400)).unix(), 1_795_161_600);
        assert_eq!((t + Duration::MAX).unix(), i64::MAX);
        assert_eq!(t.seconds_since(Timestamp::from_unix(1_795_247_000)), 1_000);
        assert_eq!(Timestamp::from(t.to_utc()), t);
        assert_eq!(t.to_utc().to_rfc3339(), "2026-11-21T08:00:00+00:00");
        assert_eq!(
            Timestamp::from_unix(i64::MAX).to_utc(),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
