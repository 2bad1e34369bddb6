//! An admin uses the dashboard in a real browser: the system's headless Chromium,
//! driven by `tests/browser/admin.mjs` (npm `playwright-core`), against the real
//! `herald daemon` delivering to aiosmtpd. Log in, a dry run from the form with its
//! counts, confirm, the progress bar reaching done without a reload; screenshots of
//! every page at 390px and 1280px land in `target/admin-screenshots/`.
//!
//! Needs Node.js, Debian's `chromium` at /usr/bin/chromium, and `npm ci` run in
//! tests/browser (`.ci/run` does all three); without them this test fails and says so.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Daemon, Site, SmtpServer, repo};

/// Enough readers, sent at a few a second, that the bar is seen filling.
const READERS: usize = 12;

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    target.join("admin-screenshots")
}

fn require_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "Node.js is not installed: the browser test runs tests/browser/admin.mjs with node \
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
fn an_admin_sends_from_the_dashboard_in_headless_chromium() {
    require_tools();
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for i in 0..READERS {
        site.add_confirmed(&format!("reader{i:02}@example.org"), "riverton");
    }
    let token = site
        .run(&["admin", "token", "create", "desk"])
        .ok()
        .stdout();
    let mut command = site.command(&["daemon"]);
    command
        .env("HERALD__SMTP__RATE_PER_SECOND", "3")
        .env("HERALD__DELIVER__BATCH_SIZE", "1");
    let daemon = Daemon::start_command(&site, command);
    let shots = screenshot_dir();
    // The browser runs on the real clock even under scripts/test-at-hours: Chromium
    // stalls under libfaketime, and nothing it does depends on the time; herald keeps
    // the clock it was given.
    let output = Command::new("node")
        .env_remove("LD_PRELOAD")
        .env_remove("FAKETIME")
        .arg(repo().join("tests/browser/admin.mjs"))
        .env("HERALD_URL", format!("http://127.0.0.1:{}", site.http_port))
        .env("ADMIN_TOKEN", token.trim())
        .env("READERS", READERS.to_string())
        .env("READER_EMAIL", "reader00@example.org")
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("admin browser test passed"), "{stdout}");
    for page in [
        "queue",
        "send_form",
        "dry_run",
        "send",
        "sends",
        "readers",
        "failures",
        "feeds",
        "login",
    ] {
        for width in ["phone", "desktop"] {
            let path = shots.join(format!("{page}-{width}.png"));
            assert!(
                std::fs::metadata(&path).is_ok_and(|m| m.len() > 1_000),
                "missing screenshot {}",
                path.display()
            );
        }
    }

    // What the bar showed is what the SMTP server received: each reader once.
    let mut recipients: Vec<String> = smtp
        .wait_for(READERS, Duration::from_secs(10))
        .into_iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), READERS);
    assert_eq!(smtp.messages().len(), READERS);
    assert_eq!(
        site.sql("SELECT state, COUNT(*) FROM deliveries GROUP BY state"),
        [["sent".to_string(), READERS.to_string()]]
    );
    daemon.stop();
}
