//! A person signs up in a real browser: the system's headless Chromium, driven by
//! `tests/browser/signup.mjs` (npm `playwright-core`), against the real `herald daemon`.
//! Screenshots of the sign-up, preferences and unsubscribe pages land in
//! `target/browser-screenshots/`.
//!
//! Needs Node.js, Debian's `chromium` at /usr/bin/chromium, and `npm ci` run in
//! tests/browser (`.ci/run` does all three); without them this test fails and says so.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use herald::tokens::{Purpose, Signer};
use support::{Daemon, Site, SmtpServer, repo};

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("browser-screenshots")
}

fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "Node.js is not installed: the browser test runs tests/browser/signup.mjs with node \
         (Debian: apt-get install nodejs npm; see .ci/run)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed at /usr/bin/chromium: apt-get update && \
         apt-get install -y --no-install-recommends chromium (see .ci/run)"
    );
    assert!(
        repo()
            .join("tests/browser/node_modules/playwright-core")
            .exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (see .ci/run)"
    );
}

#[test]
fn a_person_signs_up_in_headless_chromium() {
    require_tools();
    let smtp = SmtpServer::start();

    // The demo's few regions: listed in full. A reader whose links the test opens.
    let site = Site::new(smtp.port);
    site.add_confirmed("linked@example.org", "riverton");
    let id: i64 = site.sql("SELECT id FROM subscribers WHERE email = 'linked@example.org'")[0][0]
        .parse()
        .unwrap();
    let signer = Signer::new(b"integration-test-secret");
    let expires = site.now() + 400 * 86_400;
    let base = format!("http://127.0.0.1:{}", site.http_port);
    let preferences = format!(
        "{base}/preferences?token={}",
        signer.sign(Purpose::Preferences, id, expires)
    );
    let unsubscribe = format!(
        "{base}/unsubscribe?token={}",
        signer.sign(Purpose::Unsubscribe, id, expires)
    );

    // A site with many communities: the page searches instead of listing.
    let mut regions = String::from(
        "[[regions]]\nslug = \"state\"\nname = \"Across the State\"\ntimezone = \"America/New_York\"\n",
    );
    for i in 0..80 {
        regions.push_str(&format!(
            "[[regions]]\nslug = \"town-{i}\"\nname = \"Town {i}\"\nparent = \"state\"\n"
        ));
    }
    regions.push_str("[[regions]]\nslug = \"oakdale\"\nname = \"Oakdale\"\nparent = \"state\"\n");
    let many = Site::new(smtp.port).with_regions(&regions);

    let daemon = Daemon::start(&site);
    let search_daemon = Daemon::start(&many);
    let shots = screenshot_dir();
    // The browser runs on the real clock even under scripts/test-at-hours: Chromium
    // stalls under libfaketime, and nothing it does depends on the time; herald keeps
    // the clock it was given.
    let output = Command::new("node")
        .env_remove("LD_PRELOAD")
        .env_remove("FAKETIME")
        .arg(repo().join("tests/browser/signup.mjs"))
        .env("HERALD_URL", &base)
        .env(
            "HERALD_SEARCH_URL",
            format!("http://127.0.0.1:{}", many.http_port),
        )
        .env("PREFERENCES_URL", &preferences)
        .env("UNSUBSCRIBE_URL", &unsubscribe)
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("browser test passed"), "{stdout}");
    for name in [
        "signup",
        "check-inbox",
        "signup-search",
        "preferences",
        "unsubscribe",
    ] {
        let path = shots.join(format!("{name}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 1_000),
            "missing screenshot {}",
            path.display()
        );
    }

    // What the browser did reached the database and the mailboxes.
    site.wait_for_signups();
    many.wait_for_signups();
    assert_eq!(
        site.sql(
            "SELECT s.region_slug, s.cadence, r.timezone FROM subscriptions s
             JOIN subscribers r ON r.id = s.subscriber_id
             WHERE r.email = 'browser.reader@example.org' ORDER BY 1"
        ),
        [
            ["cascadia", "alert", "Europe/Berlin"],
            ["riverton", "weekly", "Europe/Berlin"]
        ]
    );
    assert_eq!(
        site.sql("SELECT state FROM subscribers WHERE email = 'linked@example.org'")[0][0],
        "unsubscribed"
    );
    assert_eq!(
        many.sql("SELECT region_slug FROM subscriptions")[0][0],
        "oakdale"
    );
    let mut recipients: Vec<String> = smtp
        .wait_for(3, Duration::from_secs(10))
        .into_iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "browser.reader@example.org",
            "keyboard.reader@example.org",
            "search.reader@example.org"
        ]
    );
    search_daemon.stop();
    daemon.stop();
}
