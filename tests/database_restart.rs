//! PostgreSQL restarts in the middle of a run, twice (`pg_ctlcluster … restart`, a fast
//! shutdown that ends every session): a `herald daemon` and a `herald send` deliver the
//! same send on one database through both restarts. They reconnect and go on; the run
//! completes, every reader gets a copy, every row is `sent`, duplicates stay within the
//! connections that could have a message in flight at each restart, and the daemon
//! stops cleanly afterwards.
//!
//! The server restarted is a cluster of its own, `herald_restart` on port 5439, made by
//! `scripts/test-deps` (never the shared one on 5432, which other tests use). Without
//! PostgreSQL configured for the tests (`HERALD_TEST_POSTGRES_URL`) and outside CI the
//! test is skipped with a note; with either, a missing cluster fails it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::sink::{received_settled, smtp_sink};
use support::{Site, free_port, wait_http};

const READERS: usize = 3_000;
/// SMTP connections of each of the two processes.
const CONNECTIONS: usize = 50;
const RESTARTS: usize = 2;
const CLUSTER: &str = "herald_restart";
const PORT: u16 = 5439;

/// The cluster's PostgreSQL version, if `scripts/test-deps` made it.
fn cluster_version() -> Option<String> {
    let versions = std::fs::read_dir("/etc/postgresql").ok()?;
    versions
        .flatten()
        .filter(|v| v.path().join(CLUSTER).is_dir())
        .map(|v| v.file_name().to_string_lossy().into_owned())
        .max()
}

fn pg_ctlcluster(version: &str, action: &str) {
    let output = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, CLUSTER, action])
        .output()
        .expect("pg_ctlcluster (postgresql-common) must be installed");
    assert!(
        output.status.success(),
        "pg_ctlcluster {action}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", &PORT.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn psql(database: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(format!("postgres://postgres@127.0.0.1:{PORT}/{database}"))
        .args(["-Atc", sql])
        .output()
        .expect("psql must be installed");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A `herald` process of the site on the restarted cluster, logging to `log`.
fn spawn(site: &Site, url: &str, args: &[&str], log: &Path, http: Option<u16>) -> Child {
    let mut command = site.command(args);
    command
        .env("HERALD__DATABASE__URL", url)
        .env("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string())
        .env("HERALD__SMTP__TIMEOUT", "30s")
        .env("HERALD__DELIVER__BATCH_SIZE", "200")
        .env("HERALD__DATABASE__CONNECT_TIMEOUT", "10s")
        .env("HERALD__DATABASE__STATEMENT_TIMEOUT", "30s")
        .env("HERALD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(port) = http {
        command.env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{port}"));
    }
    command.spawn().unwrap()
}

fn run(site: &Site, url: &str, args: &[&str]) {
    let output = site
        .command(args)
        .env("HERALD__DATABASE__URL", url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sent(database: &str) -> usize {
    psql(
        database,
        "SELECT COUNT(*) FROM deliveries WHERE state = 'sent'",
    )
    .parse()
    .unwrap()
}

#[test]
fn postgresql_restarted_twice_mid_run_loses_nothing() {
    let Some(version) = cluster_version() else {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("HERALD_TEST_POSTGRES_URL").is_some();
        assert!(
            !required,
            "the PostgreSQL cluster '{CLUSTER}' on port {PORT} is missing: run scripts/test-deps"
        );
        eprintln!(
            "\n*** SKIPPED: the PostgreSQL restart test needs the cluster '{CLUSTER}' on port \
             {PORT}; run scripts/test-deps to make it ***\n"
        );
        return;
    };
    if !ready() {
        pg_ctlcluster(&version, "start");
    }
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{CLUSTER} did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let name = format!("herald_test_restart_{}", std::process::id());
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {name}"));
    let url = format!("postgres://postgres@127.0.0.1:{PORT}/{name}");

    let port = free_port();
    let sink = smtp_sink(port);
    let site = Site::new(port);
    run(&site, &url, &["ingest"]);
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..READERS {
        text.push_str(&format!("reader{i}@restart.example,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    run(
        &site,
        &url,
        &[
            "subscribers",
            "import",
            csv.to_str().unwrap(),
            "--confirmed",
        ],
    );

    let logs: PathBuf = site.dir.path().to_path_buf();
    let http = free_port();
    let mut daemon = spawn(
        &site,
        &url,
        &["daemon"],
        &logs.join("daemon.log"),
        Some(http),
    );
    assert!(
        wait_http(http, "/healthz", Duration::from_secs(30)),
        "the daemon did not come up"
    );
    let mut send = spawn(
        &site,
        &url,
        &["send", "--region", "riverton", "--yes"],
        &logs.join("send.log"),
        None,
    );
    let log = |file: &str| std::fs::read_to_string(logs.join(file)).unwrap_or_default();

    let started = || psql("postgres", "SELECT pg_postmaster_start_time()");
    let mut restarted_at = Vec::new();
    for round in 0..RESTARTS {
        // Wait until the run is well under way (or further along), then restart.
        let want = (round + 1) * READERS / (RESTARTS + 2);
        let wait = Instant::now();
        while sent(&name) < want {
            assert!(
                wait.elapsed() < Duration::from_secs(120),
                "the run stalled before restart {round}: daemon:\n{}\nsend:\n{}",
                log("daemon.log"),
                log("send.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let before = started();
        let at = sent(&name);
        pg_ctlcluster(&version, "restart");
        assert_ne!(started(), before, "the server was not restarted");
        println!("restart {round}: {at} of {READERS} rows sent before it");
        assert!(at < READERS, "the run was over before restart {round}");
        restarted_at.push(at);
    }

    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = send.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "herald send did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "herald send failed:\n{}", log("send.log"));
    while sent(&name) < READERS {
        assert!(
            Instant::now() < deadline,
            "the run did not complete: {} of {READERS} sent\ndaemon:\n{}",
            sent(&name),
            log("daemon.log")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let states = psql(
        &name,
        "SELECT state || ':' || COUNT(*) FROM deliveries GROUP BY state",
    );
    assert_eq!(states, format!("sent:{READERS}"));

    let copies = received_settled(&sink, READERS, Duration::from_secs(20));
    let missing = (0..READERS)
        .filter(|i| !copies.contains_key(&format!("reader{i}@restart.example")))
        .count();
    assert_eq!(missing, 0, "every reader received a copy");
    let total: usize = copies.values().sum();
    let duplicates = total - copies.len();
    println!(
        "{total} messages for {} readers: {duplicates} duplicates",
        copies.len()
    );
    // At each restart, at most one accepted but unrecorded message per connection of
    // each process.
    assert!(
        duplicates <= RESTARTS * 2 * CONNECTIONS,
        "{duplicates} duplicates > {RESTARTS} restarts × 2 processes × {CONNECTIONS} connections"
    );

    // The daemon went through both restarts and still stops cleanly.
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited:\n{}",
        log("daemon.log")
    );
    assert!(wait_http(http, "/healthz", Duration::from_secs(5)));
    Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    let stop = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(30),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "daemon exit {status:?}:\n{}",
        log("daemon.log")
    );
    let said = format!("{}{}", log("daemon.log"), log("send.log"));
    eprintln!(
        "restarts after {restarted_at:?} rows; what herald logged about the database:\n{}",
        said.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
}
