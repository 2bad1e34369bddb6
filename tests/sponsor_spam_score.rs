//! A digest with a sponsor block scores no worse with SpamAssassin than the same digest
//! without one. Both are rendered by `herald preview --format eml` (the message exactly
//! as it would be sent) from the same stories, before and after the booking, and scored
//! with SpamAssassin's local rules only (`spamassassin -L -t`: no network tests, no
//! Bayes, nothing learned), so the score depends on the message alone.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use support::{Site, free_port};

/// SpamAssassin's score of a message, from the `X-Spam-Status` it adds.
fn score(eml: &str) -> f64 {
    let mut child = Command::new("spamassassin")
        .args(["-L", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spamassassin is installed (scripts/test-deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(eml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .lines()
        .find(|l| l.starts_with("X-Spam-Status:"))
        .unwrap_or_else(|| panic!("no X-Spam-Status in:\n{text}"));
    let at = status.find("score=").expect("a score") + 6;
    status[at..]
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_sponsor_block_does_not_raise_the_spam_score() {
    let site = Site::new(free_port()).with_public_url("https://news.test.example");
    site.run(&["ingest"]).ok();
    let preview = || {
        site.run(&["preview", "--region", "riverton", "--format", "eml"])
            .ok()
            .stdout()
    };
    let without = preview();
    assert!(!without.contains("Sponsored"), "no booking yet");
    // The site's clock is pinned to 13 January 2027.
    site.run(&[
        "sponsors",
        "add",
        "--region",
        "riverton",
        "--from",
        "2027-01-10",
        "--to",
        "2027-01-20",
        "--label",
        "Sponsored by Riverton Hardware",
        "--headline",
        "Winter sale on shovels and salt",
        "--body",
        "Everything for the snow, 20% off at our Main Street store this week.",
        "--link",
        "https://hardware.example/winter",
        "--image",
        "https://hardware.example/winter.png",
        "--alt",
        "A red snow shovel",
    ])
    .ok();
    let with = preview();
    assert!(with.contains("Sponsored by Riverton Hardware"), "{with}");
    let (before, after) = (score(&without), score(&with));
    eprintln!("SpamAssassin score without a sponsor block {before}, with one {after}");
    assert!(
        after <= before,
        "the sponsor block raised the score from {before} to {after}"
    );
}
