//! Where a manual send stands. The admin moves it (pause, resume, cancel); the ledger
//! decides when it is done: a sending send whose rows no longer wait is `done`.

use std::fmt;
use std::str::FromStr;

/// The life of one manual send: `planning → sending ⇄ paused → done | cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendState {
    /// Its readers are being worked out and its rows queued.
    Planning,
    /// Its rows are queued and the delivery engine is sending them.
    Sending,
    /// An admin paused it: its waiting rows are held, none is claimed.
    Paused,
    /// None of its rows waits any more (or it was a dry run or a test copy).
    Done,
    /// An admin cancelled it: its unsent rows were cancelled.
    Cancelled,
}

impl SendState {
    /// Every state, in the order a send goes through them.
    pub const ALL: [SendState; 5] = [
        SendState::Planning,
        SendState::Sending,
        SendState::Paused,
        SendState::Done,
        SendState::Cancelled,
    ];

    /// The name stored in the database and shown by the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Planning => "planning",
            SendState::Sending => "sending",
            SendState::Paused => "paused",
            SendState::Done => "done",
            SendState::Cancelled => "cancelled",
        }
    }

    /// Whether it will never change again.
    pub fn is_finished(self) -> bool {
        matches!(self, SendState::Done | SendState::Cancelled)
    }
}

impl FromStr for SendState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SendState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown send state \"{s}\""))
    }
}

impl fmt::Display for SendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_states_round_trip() {
        for state in SendState::ALL {
            assert_eq!(state.as_str().parse::<SendState>().unwrap(), state);
        }
        assert!("finished".parse::<SendState>().is_err());
    }
}
