//! The one clock herald decides by: digest slots, quiet hours, leases, retries, expiries,
//! link lifetimes and sign-up windows all read the time here, never from the system
//! directly.
//!
//! It is the system clock, unless the environment variable `HERALD_TEST_CLOCK_OFFSET`
//! (whole seconds, may be negative) shifts it. That setting exists for tests: they pin
//! the instant a run starts at (every process of one test gets the same offset, so the
//! clock runs on consistently from one command to the next), and nothing they check then
//! depends on the hour, the weekday or the date the tests happen to run at. Production
//! never sets it; when it is set, `herald` says so on start-up.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

/// The environment variable that shifts herald's clock (tests only).
pub const OFFSET_VAR: &str = "HERALD_TEST_CLOCK_OFFSET";

static OFFSET: OnceLock<i64> = OnceLock::new();

/// Reads `HERALD_TEST_CLOCK_OFFSET` once for the process. Returns the offset when one
/// is set, or a sentence naming the variable when its value is not a whole number.
pub fn init() -> Result<Option<i64>, String> {
    let offset = match std::env::var(OFFSET_VAR) {
        Ok(text) => Some(text.trim().parse::<i64>().map_err(|_| {
            format!("{OFFSET_VAR} must be a whole number of seconds, not {text:?}")
        })?),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{OFFSET_VAR} must be a whole number of seconds"));
        }
    };
    let _ = OFFSET.set(offset.unwrap_or(0));
    Ok(offset)
}

/// Seconds added to the system clock (0 unless [`init`] read an offset).
fn offset() -> i64 {
    OFFSET.get().copied().unwrap_or(0)
}

/// The current instant.
pub fn now_utc() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(offset())
}

/// The current time as Unix seconds.
pub fn now() -> i64 {
    now_utc().timestamp()
}

/// The current instant as a `SystemTime` (for the `Date:` header).
pub fn now_system() -> std::time::SystemTime {
    now_utc().into()
}
