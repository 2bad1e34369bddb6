//! herald as operators install it: the systemd unit verifies, the production example
//! config loads, and `herald backup` copies a running daemon's database.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Daemon, Site, SmtpServer, repo};

#[test]
fn the_systemd_unit_verifies() {
    // systemd-analyze also checks that ExecStart names an executable; point it at the
    // binary this build made instead of /usr/local/bin, and check the rest as written.
    let unit = std::fs::read_to_string(repo().join("deploy/herald.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/herald --config /etc/herald/herald.toml daemon")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/herald", env!("CARGO_BIN_EXE_herald")),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze must be installed (Debian package systemd)");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_production_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--config")
        .arg(repo().join("deploy/herald.production.toml"))
        .arg("status")
        .current_dir(dir.path())
        // Not /var/lib/herald: this test is no installation.
        .env(
            "HERALD__DATABASE__URL",
            format!("sqlite://{}", dir.path().join("herald.db").display()),
        )
        .env(
            "HERALD__SECURITY__SECRET_FILE",
            dir.path().join("secret.key"),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("deliveries:"));
}

#[test]
fn backup_copies_a_running_daemons_database() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for i in 0..20 {
        site.add_confirmed(&format!("reader{i}@example.org"), "riverton");
    }
    let daemon = Daemon::start(&site);
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    smtp.wait_for(20, Duration::from_secs(20));

    let copy = site.dir.path().join("backup.db");
    let run = site.run(&["backup", copy.to_str().unwrap()]).ok();
    assert!(run.stdout().contains("20 readers"), "{}", run.stdout());
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys\n\
             c=sqlite3.connect(sys.argv[1])\n\
             print(c.execute('PRAGMA integrity_check').fetchone()[0])\n\
             print(c.execute(\"SELECT COUNT(*) FROM deliveries WHERE state='sent'\").fetchone()[0])",
        )
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["ok", "20"],
        "{text}"
    );

    // A backup never overwrites.
    let again = site.run(&["backup", copy.to_str().unwrap()]).failed();
    assert!(
        again.stderr().contains("already exists"),
        "{}",
        again.stderr()
    );
    daemon.stop();
}
