//! Crash safety with the real binary: thousands of digests to a deliberately slow
//! Postfix `smtp-sink`, the sender killed with SIGKILL three times at random moments
//! and restarted. Every reader gets at least one copy, duplicates stay within what was
//! in flight (≤ 3 × connections), every row ends `sent`, and readers removed while
//! their row was still queued get nothing. The same run goes over implicit TLS too,
//! through stunnel in front of the sink: the bound holds for encrypted sessions.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::sink::{received_settled, smtp_sink};
use support::{Site, TestCertificates, free_port};

const CONNECTIONS: usize = 100;

/// stunnel terminating TLS on `port` in front of the sink on `sink_port`, with
/// `TCP_NODELAY` on both sides, presenting the test authority's certificate.
struct Tunnel {
    child: Child,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stunnel(port: u16, sink_port: u16, certs: &TestCertificates) -> Tunnel {
    let conf = certs.dir.path().join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\
             [sink]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{sink_port}\n\
             cert = {}\nkey = {}\n",
            certs.cert.display(),
            certs.key.display()
        ),
    )
    .unwrap();
    let child = Command::new("stunnel")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("stunnel must be installed (Debian package stunnel4)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "stunnel did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Tunnel { child }
}

/// How herald reaches the sink in one run: plain, or over TLS through stunnel.
struct Route<'a> {
    tls: Option<&'a TestCertificates>,
}

fn spawn(site: &Site, route: &Route, args: &[&str]) -> Child {
    let mut command = site.command(args);
    if let Some(certs) = route.tls {
        command
            .env("HERALD__SMTP__TLS", "tls")
            .env("HERALD__SMTP__CA_FILE", &certs.ca);
    }
    command
        .env("HERALD__SMTP__CONNECTIONS", CONNECTIONS.to_string())
        .env("HERALD__SMTP__TIMEOUT", "10s")
        .env("HERALD__DELIVER__LEASE", "3s")
        .env("HERALD__DELIVER__BATCH_SIZE", "200")
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(site.dir.path().join("herald.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

fn count(site: &Site, state: &str) -> usize {
    site.sql(&format!(
        "SELECT COUNT(*) FROM deliveries WHERE state = '{state}'"
    ))[0][0]
        .parse()
        .unwrap()
}

// The lease (3 s) is shorter than the time a claimed row waits for a connection to the
// slow sink (300 claimed rows over 100 connections at a second or more each): only
// lease renewal keeps a live sender's rows from being claimed a second time.
#[test]
fn three_sigkills_lose_nothing_and_duplicate_only_what_was_in_flight() {
    crash_run(5_000, false);
}

#[test]
fn three_sigkills_over_tls_lose_nothing_and_duplicate_only_what_was_in_flight() {
    crash_run(2_000, true);
}

fn crash_run(default_readers: usize, tls: bool) {
    let readers: usize = std::env::var("HERALD_CRASH_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_readers);
    let seed = std::env::var("HERALD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash test: {readers} readers, seed {seed}, TLS {tls}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let sink_port = free_port();
    let sink = smtp_sink(sink_port);
    let certs = tls.then(TestCertificates::new);
    let (port, _tunnel) = match &certs {
        Some(certs) => {
            let port = free_port();
            (port, Some(stunnel(port, sink_port, certs)))
        }
        None => (sink_port, None),
    };
    let route = Route {
        tls: certs.as_ref(),
    };
    let site = Site::new(port);
    site.run(&["ingest"]).ok();
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..readers {
        text.push_str(&format!("reader{i}@crash.example,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    site.run(&[
        "subscribers",
        "import",
        csv.to_str().unwrap(),
        "--confirmed",
    ])
    .ok();

    // First run: plan and send; killed part-way.
    let mut kills = 0;
    let mut child = spawn(&site, &route, &["send", "--region", "riverton", "--yes"]);
    let mut removed: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "did not finish in time");
        if kills < 3 {
            std::thread::sleep(Duration::from_millis(rng.u64(1_500..5_000)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                println!("kill {kills}: {} sent so far", count(&site, "sent"));
                if kills == 1 {
                    // Remove some readers whose email has not been attempted yet.
                    let queued = site.sql(
                        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
                         WHERE d.state = 'queued' AND d.attempts = 0 ORDER BY d.id DESC LIMIT 10",
                    );
                    for row in queued {
                        site.run(&["subscribers", "remove", &row[0]]).ok();
                        removed.push(row[0].clone());
                    }
                }
            }
        } else {
            let status = child.wait().unwrap();
            let _ = status;
        }
        if count(&site, "sent") + count(&site, "cancelled") == readers
            && child.try_wait().unwrap().is_some()
        {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            // Restart after the leases of the killed run lapse.
            std::thread::sleep(Duration::from_millis(500));
            child = spawn(&site, &route, &["deliver", "--until-empty"]);
        }
    }
    let _ = child.wait();
    assert_eq!(
        kills, 3,
        "the sender must have been killed three times while working"
    );

    let log = std::fs::read_to_string(site.dir.path().join("herald.log")).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("error"))
        .take(5)
        .collect();
    println!("herald errors: {errors:?}");
    let copies = received_settled(&sink, readers - removed.len(), Duration::from_secs(20));
    let mut missing = 0;
    for i in 0..readers {
        let email = format!("reader{i}@crash.example");
        if removed.contains(&email) {
            assert!(
                !copies.contains_key(&email),
                "{email} was removed before being mailed"
            );
        } else if !copies.contains_key(&email) {
            missing += 1;
        }
    }
    assert_eq!(
        missing, 0,
        "every remaining reader received at least one copy"
    );
    let attempts: HashMap<String, String> = site
        .sql("SELECT s.email, d.attempts FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    let mut by_attempts: HashMap<String, usize> = HashMap::new();
    for (email, n) in &copies {
        if *n > 1 {
            *by_attempts
                .entry(attempts.get(email).cloned().unwrap_or_default())
                .or_default() += 1;
        }
    }
    println!("duplicated readers by recorded attempts: {by_attempts:?}");
    let total: usize = copies.values().sum();
    let duplicates = total - copies.len();
    println!(
        "{total} messages for {} readers: {duplicates} duplicates",
        copies.len()
    );
    assert!(
        duplicates <= 3 * CONNECTIONS,
        "{duplicates} duplicates > 3 × {CONNECTIONS} connections"
    );
    assert_eq!(
        count(&site, "sent"),
        readers - removed.len(),
        "every row is sent"
    );
    assert_eq!(count(&site, "cancelled"), removed.len());
}
