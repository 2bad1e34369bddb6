//! The life of one email in the outbox: its states, its kinds, the outcomes of an
//! attempt, and the one table of transitions ([`Transition::rule`]) that every statement
//! changing a row's state follows. The store builds its SQL state lists from that table,
//! and its tests check each statement moves rows only along it.

use std::fmt;
use std::str::FromStr;

use super::Timestamp;

/// Where one email stands in the outbox; [`Transition`] says how it moves.
///
/// `queued → sending → sent | deferred | bounced | failed | expired | cancelled | suppressed`;
/// `deferred` goes back to `sending` when its retry time comes. A paused manual send
/// holds its waiting rows `paused` until it resumes or is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker under a lease.
    Sending,
    /// Accepted by the server (250 after DATA) or written to the outbox directory.
    Sent,
    /// A temporary failure; retried at `next_attempt_at`.
    Deferred,
    /// Refused permanently by the server (5xx).
    Bounced,
    /// Could not be built or sent for a reason retrying will not fix.
    Failed,
    /// Still undelivered when its kind's expiry passed.
    Expired,
    /// The reader left before it went out.
    Cancelled,
    /// The address is on the suppression list.
    Suppressed,
    /// Waiting, but held by a paused manual send: no claim takes it until the send
    /// resumes.
    Paused,
}

impl DeliveryState {
    /// Every state, in the order `herald status` shows them.
    pub const ALL: [DeliveryState; 10] = [
        DeliveryState::Queued,
        DeliveryState::Sending,
        DeliveryState::Sent,
        DeliveryState::Deferred,
        DeliveryState::Bounced,
        DeliveryState::Failed,
        DeliveryState::Expired,
        DeliveryState::Cancelled,
        DeliveryState::Suppressed,
        DeliveryState::Paused,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sending => "sending",
            DeliveryState::Sent => "sent",
            DeliveryState::Deferred => "deferred",
            DeliveryState::Bounced => "bounced",
            DeliveryState::Failed => "failed",
            DeliveryState::Expired => "expired",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Suppressed => "suppressed",
            DeliveryState::Paused => "paused",
        }
    }

    /// Whether the row will never change again on its own.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            DeliveryState::Queued
                | DeliveryState::Sending
                | DeliveryState::Deferred
                | DeliveryState::Paused
        )
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeliveryState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown delivery state \"{s}\""))
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an email is, which decides its priority lane and how long it stays worth sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryKind {
    /// A double opt-in confirmation.
    Confirmation,
    /// "You are subscribed": after confirming, or when a confirmed reader signs up again.
    Welcome,
    /// A breaking-news alert.
    Alert,
    /// A daily, weekly or manual digest.
    Digest,
}

impl DeliveryKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Confirmation => "confirmation",
            DeliveryKind::Welcome => "welcome",
            DeliveryKind::Alert => "alert",
            DeliveryKind::Digest => "digest",
        }
    }

    /// Whether this is a sign-up email (links, no articles) rather than news.
    pub fn is_signup(self) -> bool {
        matches!(self, DeliveryKind::Confirmation | DeliveryKind::Welcome)
    }

    /// Lower runs first: sign-up emails and alerts are never starved by digests.
    pub fn priority(self) -> i64 {
        match self {
            DeliveryKind::Confirmation | DeliveryKind::Welcome => 0,
            DeliveryKind::Alert => 1,
            DeliveryKind::Digest => 2,
        }
    }
}

impl FromStr for DeliveryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "confirmation" => Ok(DeliveryKind::Confirmation),
            "welcome" => Ok(DeliveryKind::Welcome),
            "alert" => Ok(DeliveryKind::Alert),
            "digest" => Ok(DeliveryKind::Digest),
            other => Err(format!("unknown delivery kind \"{other}\"")),
        }
    }
}

/// The result of one attempt, to be written back.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Accepted by the server, with its reply.
    Sent {
        /// The server's reply (or the file written).
        reply: String,
    },
    /// Temporary failure; try again at `retry_at`.
    Deferred {
        /// What went wrong.
        error: String,
        /// When to try again.
        retry_at: Timestamp,
    },
    /// Refused permanently.
    Bounced {
        /// The server's reply.
        reply: String,
        /// Whether the mailbox does not exist (5.1.x): the reader is suppressed too.
        suppress: bool,
    },
    /// Cannot be sent and retrying will not help.
    Failed {
        /// Why.
        error: String,
    },
    /// Too old to be worth sending.
    Expired,
    /// The reader left or was erased.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The address is suppressed.
    Suppressed,
}

impl Outcome {
    /// The state this outcome puts the row in.
    pub fn state(&self) -> DeliveryState {
        match self {
            Outcome::Sent { .. } => DeliveryState::Sent,
            Outcome::Deferred { .. } => DeliveryState::Deferred,
            Outcome::Bounced { .. } => DeliveryState::Bounced,
            Outcome::Failed { .. } => DeliveryState::Failed,
            Outcome::Expired => DeliveryState::Expired,
            Outcome::Cancelled { .. } => DeliveryState::Cancelled,
            Outcome::Suppressed => DeliveryState::Suppressed,
        }
    }
}

/// A change the outbox makes to rows' states. Each is one kind of statement in the
/// store; [`Transition::rule`] gives the states it takes rows from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Planning queues a new row (a digest, an alert, a sign-up email).
    Plan,
    /// A worker claims a due row under a lease; a deferred row's retry is a claim too.
    Claim,
    /// A worker claims a row whose lease lapsed (its worker died): still `sending`, under
    /// the new lease, with the same Message-ID.
    Reclaim,
    /// The worker holding a row extends its lease.
    Renew,
    /// The worker holding a row records the outcome of its attempt.
    Record,
    /// The worker holding a row gives it back unsent (shutdown), or a live worker gives
    /// back a dead worker's rows (its heartbeat stopped): it waits again.
    Release,
    /// A waiting row's expiry passed.
    Expire,
    /// `herald deliveries retry --failed`: failed and expired rows wait again.
    RetryFailed,
    /// The reader unsubscribed or was erased, or an admin cancelled the manual send:
    /// the waiting rows are cancelled.
    Cancel,
    /// An admin paused a manual send: its waiting rows are held.
    Pause,
    /// An admin resumed a paused send: its held rows wait again, a row that was
    /// deferred keeping its retry time.
    Resume,
    /// A hard bounce came back after the relay had accepted the row (by mail or a
    /// relay's webhook): the row is bounced after all.
    LateBounce,
}

/// The states one transition moves rows from, and the states it may leave them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// A row must be in one of these for the transition to touch it (none: it makes rows).
    pub from: &'static [DeliveryState],
    /// The row is in one of these afterwards.
    pub to: &'static [DeliveryState],
}

use DeliveryState::{
    Bounced, Cancelled, Deferred, Expired, Failed, Paused, Queued, Sending, Sent, Suppressed,
};

/// The transition table: the only moves a row's state makes.
#[rustfmt::skip]
const RULES: [(Transition, &[DeliveryState], &[DeliveryState]); 12] = [
    // transition              from                  to
    (Transition::Plan,         &[],                  &[Queued]),
    (Transition::Claim,        &[Queued, Deferred],  &[Sending]),
    (Transition::Reclaim,      &[Sending],           &[Sending]),
    (Transition::Renew,        &[Sending],           &[Sending]),
    (Transition::Record,       &[Sending],           &[Sent, Deferred, Bounced, Failed, Expired,
                                                       Cancelled, Suppressed]),
    (Transition::Release,      &[Sending],           &[Queued, Deferred]),
    (Transition::Expire,       &[Queued, Deferred],  &[Expired]),
    (Transition::RetryFailed,  &[Failed, Expired],   &[Queued]),
    (Transition::Cancel,       &[Queued, Deferred, Paused],
                                                     &[Cancelled]),
    (Transition::Pause,        &[Queued, Deferred],  &[Paused]),
    (Transition::Resume,       &[Paused],            &[Queued, Deferred]),
    (Transition::LateBounce,   &[Sent],              &[Bounced]),
];

impl Transition {
    /// Every transition, in table order.
    pub const ALL: [Transition; 12] = [
        Transition::Plan,
        Transition::Claim,
        Transition::Reclaim,
        Transition::Renew,
        Transition::Record,
        Transition::Release,
        Transition::Expire,
        Transition::RetryFailed,
        Transition::Cancel,
        Transition::Pause,
        Transition::Resume,
        Transition::LateBounce,
    ];

    /// Its row of the transition table.
    pub fn rule(self) -> Rule {
        let (_, from, to) = RULES[self as usize];
        Rule { from, to }
    }

    /// Whether it may move a row from `from` to `to` (staying put included).
    pub fn allows(self, from: DeliveryState, to: DeliveryState) -> bool {
        let rule = self.rule();
        rule.from.contains(&from) && rule.to.contains(&to)
    }

    /// The single state it leaves rows in, for a transition with one.
    pub fn target(self) -> DeliveryState {
        match self.rule().to {
            [only] => *only,
            several => panic!("{self:?} leaves rows in one of {several:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_states_round_trip() {
        for state in DeliveryState::ALL {
            assert_eq!(state.as_str().parse::<DeliveryState>().unwrap(), state);
        }
        assert!(DeliveryState::Sent.is_final());
        assert!(!DeliveryState::Deferred.is_final());
    }

    #[test]
    fn the_table_lists_every_transition_once_in_order() {
        for (i, transition) in Transition::ALL.into_iter().enumerate() {
            assert_eq!(RULES[i].0, transition);
        }
    }

    #[test]
    fn final_states_are_those_only_an_admin_or_a_late_bounce_moves_rows_out_of() {
        for state in DeliveryState::ALL {
            let moved_on_its_own = Transition::ALL
                .into_iter()
                .filter(|t| !matches!(t, Transition::RetryFailed | Transition::LateBounce))
                .any(|t| t.rule().from.contains(&state));
            assert_eq!(state.is_final(), !moved_on_its_own, "{state}");
        }
    }

    #[test]
    fn every_outcome_is_a_state_recording_may_leave() {
        let outcomes = [
            Outcome::Sent {
                reply: String::new(),
            },
            Outcome::Deferred {
                error: String::new(),
                retry_at: Timestamp::default(),
            },
            Outcome::Bounced {
                reply: String::new(),
                suppress: true,
            },
            Outcome::Failed {
                error: String::new(),
            },
            Outcome::Expired,
            Outcome::Cancelled {
                reason: String::new(),
            },
            Outcome::Suppressed,
        ];
        let recorded: Vec<DeliveryState> = outcomes.iter().map(Outcome::state).collect();
        assert_eq!(recorded, Transition::Record.rule().to);
        assert!(Transition::Record.allows(Sending, Sent));
        assert!(!Transition::Record.allows(Queued, Sent));
    }
}
