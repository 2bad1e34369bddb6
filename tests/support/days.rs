//! A site run day by day on its own clock: each command pinned `days` after
//! [`PINNED_CLOCK`](super::PINNED_CLOCK) (23:00 UTC), with the daily slot at 23:00, so the
//! day's slot is due. Each command's clock is pinned anew, to within a second: steps
//! whose order in time matters are run tens of seconds apart (ingest at +10 s, plan and
//! preview at +30 s, deliver at +40 s), never in the same second.

use super::{Site, parse_email, pinned_clock_offset};

/// Runs `herald ARGS…` with the site's clock reading `seconds` after the pinned instant
/// and the daily slot at 23:00; returns its stdout, after checking it succeeded.
pub fn run_at(site: &Site, seconds: i64, args: &[&str]) -> String {
    let mut cmd = site.command(args);
    cmd.env(
        "HERALD_TEST_CLOCK_OFFSET",
        (pinned_clock_offset() + seconds).to_string(),
    )
    .env("HERALD__SCHEDULE__DAILY", "0 23 * * *");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `herald ARGS…` half a minute after the day's 23:00 slot.
pub fn run_on_day(site: &Site, days: i64, args: &[&str]) -> String {
    run_at(site, days * 86_400 + 30, args)
}

/// Stores the feeds' stories ten seconds after the day's slot, before its plan.
pub fn ingest_on_day(site: &Site, days: i64) -> String {
    run_at(site, days * 86_400 + 10, &["ingest"])
}

/// Sends what is due ten seconds after the day's plan, when its rows are due.
pub fn deliver_on_day(site: &Site, days: i64) -> String {
    run_at(site, days * 86_400 + 40, &["deliver", "--until-empty"])
}

/// The text and HTML parts of one email.
pub fn parts(raw: &str) -> (String, String) {
    let email = parse_email(raw);
    let part = |kind: &str| {
        email
            .parts
            .iter()
            .find(|(t, _)| t.starts_with(kind))
            .map(|(_, body)| body.clone())
            .unwrap_or_else(|| panic!("no {kind} part"))
    };
    (part("text/plain"), part("text/html"))
}
