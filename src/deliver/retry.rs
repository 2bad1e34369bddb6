//! What a send's result means for its row: the reply-to-outcome mapping (accepted ⇒
//! `sent`, 4xx or a dropped session ⇒ `deferred` with exponential backoff and jitter
//! until the kind's expiry, 5xx ⇒ `bounced`, 5.1.x also suppressing the reader) and
//! the backoff itself.

use std::time::Duration;

use super::smtp::SendResult;
use crate::domain::{Outcome, Timestamp};

/// Retry delays: `base · 2^(attempt-1)`, capped at `max`, with ±25 % jitter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) base: Duration,
    pub(super) max: Duration,
}

impl Backoff {
    pub(super) fn retry(self, error: String, attempts: i64, expires_at: Timestamp) -> Outcome {
        self.retry_from(Timestamp::now(), error, attempts, expires_at)
    }

    /// The deferral of a message that failed at `now` on its `attempts`-th try.
    fn retry_from(
        self,
        now: Timestamp,
        error: String,
        attempts: i64,
        expires_at: Timestamp,
    ) -> Outcome {
        let exponent = (attempts.max(1) - 1).min(20) as i32;
        let delay = (self.base.as_secs_f64() * 2f64.powi(exponent)).min(self.max.as_secs_f64());
        let jittered = (delay * (0.75 + fastrand::f64() * 0.5)).ceil() as i64;
        let delay = if self.base.is_zero() {
            0
        } else {
            jittered.max(1)
        };
        // Never past the expiry: the row then expires on the next pass.
        let retry_at = Timestamp::from_unix((now.unix() + delay).min(expires_at.unix() + 1));
        Outcome::Deferred { error, retry_at }
    }
}

/// The row's outcome for one send's `result`: `attempts` is the row's attempt count
/// including this one, `expires_at` when it stops being worth sending. A throttling
/// reply is retried as if it were the first attempt: it means "slower", not "broken".
pub(super) fn outcome_of(
    result: SendResult,
    backoff: Backoff,
    attempts: i64,
    expires_at: Timestamp,
) -> Outcome {
    match result {
        SendResult::Accepted(reply) => Outcome::Sent { reply },
        SendResult::Temporary(error) | SendResult::Unreachable(error) => {
            backoff.retry(error, attempts, expires_at)
        }
        SendResult::Throttled(error) => backoff.retry(error, 1, expires_at),
        SendResult::Permanent { reply, no_mailbox } => Outcome::Bounced {
            reply,
            suppress: no_mailbox,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stops_at_expiry() {
        let backoff = Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        };
        let t = Timestamp::from_unix(1_800_000_000);
        let delay = |attempts, expires_in: i64| {
            let expires_at = Timestamp::from_unix(t.unix() + expires_in);
            match backoff.retry_from(t, "x".into(), attempts, expires_at) {
                Outcome::Deferred { retry_at, .. } => retry_at.seconds_since(t),
                other => panic!("{other:?}"),
            }
        };
        // 60 s × 2^(attempt - 1), with ±25 % jitter, rounded up.
        assert!((45..=75).contains(&delay(1, 100_000)));
        assert!((360..=600).contains(&delay(4, 100_000)));
        assert!(
            (2700..=4500).contains(&delay(12, 100_000)),
            "capped at retry_max"
        );
        assert_eq!(delay(3, 10), 11, "never past the expiry");
    }

    #[test]
    fn replies_map_to_outcomes() {
        let backoff = Backoff {
            base: Duration::from_secs(60),
            max: Duration::from_secs(3600),
        };
        let far = Timestamp::now() + Duration::from_secs(100_000);
        let sent = outcome_of(SendResult::Accepted("250 ok".into()), backoff, 1, far);
        assert!(matches!(sent, Outcome::Sent { reply } if reply == "250 ok"));
        let bounced = SendResult::Permanent {
            reply: "550 5.1.1 no such user".into(),
            no_mailbox: true,
        };
        assert!(matches!(
            outcome_of(bounced, backoff, 1, far),
            Outcome::Bounced { suppress: true, .. }
        ));
        for result in [
            SendResult::Temporary("450 busy".into()),
            SendResult::Unreachable("connection refused".into()),
            SendResult::Throttled("421 slow down".into()),
        ] {
            assert!(matches!(
                outcome_of(result, backoff, 3, far),
                Outcome::Deferred { .. }
            ));
        }
    }
}
