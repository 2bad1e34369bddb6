//! The database fails while a send is in flight, on both backends: SQLite refuses every
//! write to the delivery ledger for a while (a trigger an operator could add), and
//! PostgreSQL has its server processes terminated, in several rounds. Nothing is lost,
//! no email is sent twice, every row ends `sent`, and the failures are reported.

mod support;

use std::io::Write as _;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::sink::{received_settled, smtp_sink};
use support::{Site, free_port};

const READERS: usize = 1_000;
const CONNECTIONS: usize = 50;

/// A site with `READERS` confirmed readers of Riverton, sending to `port` over
/// `CONNECTIONS` connections; `database` overrides the SQLite file.
fn site(port: u16, database: Option<&str>) -> (Site, Vec<(&'static str, String)>) {
    let site = Site::new(port);
    let mut env = vec![
        ("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string()),
        ("HERALD__SMTP__TIMEOUT", "30s".to_string()),
    ];
    if let Some(url) = database {
        env.push(("HERALD__DATABASE__URL", url.to_string()));
    }
    let run = |args: &[&str]| {
        let mut command = site.command(args);
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["ingest"]);
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..READERS {
        text.push_str(&format!("reader{i}@blip.example,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--confirmed",
    ]);
    (site, env)
}

fn start_send(site: &Site, env: &[(&'static str, String)]) -> Child {
    let mut command = site.command(&["send", "--region", "riverton", "--yes"]);
    command
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.spawn().unwrap()
}

/// Waits for the send, failing the test if it takes more than ten minutes.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(600);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the send did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// Every reader got exactly one copy.
fn exactly_once(sink: &support::sink::Sink) {
    let copies = received_settled(sink, READERS, Duration::from_secs(20));
    let missing = (0..READERS)
        .filter(|i| !copies.contains_key(&format!("reader{i}@blip.example")))
        .count();
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert_eq!(missing, 0, "every reader got the digest");
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(copies.len(), READERS);
}

#[test]
fn sqlite_refusing_writes_mid_send_loses_nothing_and_sends_nothing_twice() {
    let port = free_port();
    let sink = smtp_sink(port);
    let (site, env) = site(port, None);
    // While `fault` has a row, SQLite refuses every change to the ledger.
    site.sql_write("CREATE TABLE fault (on_since INTEGER)");
    site.sql_write(
        "CREATE TRIGGER injected_fault BEFORE UPDATE ON deliveries \
         WHEN EXISTS (SELECT 1 FROM fault) BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    );
    let child = start_send(&site, &env);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        site.sql_write("INSERT INTO fault VALUES (1)");
        std::thread::sleep(Duration::from_millis(1_500));
        site.sql_write("DELETE FROM fault");
        std::thread::sleep(Duration::from_millis(1_500));
    }
    let output = finish(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("could not record delivery outcomes") && stderr.contains("injected fault"),
        "the failures are reported: {stderr}"
    );
    assert!(stdout.contains(&format!("{READERS} sent")), "{stdout}");
    exactly_once(&sink);
    let states = site.sql("SELECT state, COUNT(*) FROM deliveries GROUP BY state");
    assert_eq!(states, vec![vec!["sent".to_string(), READERS.to_string()]]);
}

/// `psql` on the test server's maintenance database.
fn psql(base: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(base)
        .args(["-Atc", sql])
        .output()
        .expect("psql must be installed to run the PostgreSQL half");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn postgresql_backends_terminated_mid_send_lose_nothing_and_send_nothing_twice() {
    let Ok(base) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "PostgreSQL half skipped: set HERALD_TEST_POSTGRES_URL to run it"
        );
        return;
    };
    let name = format!("herald_test_blip_{}", std::process::id());
    psql(&base, &format!("DROP DATABASE IF EXISTS {name}"));
    psql(&base, &format!("CREATE DATABASE {name}"));
    let mut url = url::Url::parse(&base).unwrap();
    url.set_path(&name);
    let port = free_port();
    let sink = smtp_sink(port);
    let (site, env) = site(port, Some(url.as_str()));
    let child = start_send(&site, &env);
    std::thread::sleep(Duration::from_secs(2));
    // Five rounds of a second each in which every server process of the database is
    // terminated every 10 ms (as soon as it appears), a second apart.
    let mut terminated = 0;
    for _ in 0..5 {
        let killed = psql(
            &base,
            &format!(
                "CREATE TEMP TABLE IF NOT EXISTS killed (n int); \
                 DO $$ BEGIN FOR i IN 1..100 LOOP \
                     INSERT INTO killed SELECT COUNT(pg_terminate_backend(pid)) \
                         FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid(); \
                     PERFORM pg_stat_clear_snapshot(); PERFORM pg_sleep(0.01); \
                 END LOOP; END $$; \
                 SELECT COALESCE(SUM(n), 0) FROM killed"
            ),
        );
        terminated += killed
            .lines()
            .last()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(1_000));
    }
    let output = finish(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let states = psql(
        url.as_str(),
        "SELECT state || ':' || COUNT(*) FROM deliveries GROUP BY state",
    );
    psql(
        &base,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    assert!(terminated > 0, "no backend was terminated");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(states, format!("sent:{READERS}"), "{stdout}\n{stderr}");
    exactly_once(&sink);
    assert!(
        stderr.contains("could not record delivery outcomes")
            || stderr.contains("cannot claim deliveries"),
        "the failures are reported: {stderr}"
    );
    eprintln!("{terminated} backends terminated; herald said:\n{stderr}");
}
