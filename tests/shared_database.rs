//! Several real `herald daemon` processes on one PostgreSQL database (its own, made on
//! `HERALD_TEST_POSTGRES_URL`'s server for each test; the tests are skipped without it):
//!
//! - three daemons poll three slow feeds of an in-test HTTP server: each poll reaches
//!   the server once, never once per daemon, and every feed keeps being polled;
//! - the daemon in the middle of a poll is killed with SIGKILL: another takes the feed
//!   over within `deliver.worker_timeout` plus a few seconds;
//! - a send started through one daemon's admin API is seen, paused, resumed and
//!   cancelled through the other's, and no reader gets two copies;
//! - sign-ups sent to two daemons at once count against one limit.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::feed_server::{FeedServer, Reply};
use support::web::WebClient;
use support::{Site, SmtpServer, free_port, request, wait_http};

/// A database of its own on the test server, dropped at the end.
struct Database {
    base: String,
    name: String,
    url: String,
}

impl Database {
    /// A fresh database, or `None` (the test is skipped) without a test server.
    fn create(test: &str) -> Option<Database> {
        let Ok(base) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
            eprintln!("skipped: set HERALD_TEST_POSTGRES_URL to run the several-daemon tests");
            return None;
        };
        let name = format!("herald_test_{test}_{}", std::process::id());
        psql(
            &base,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(&base, &format!("CREATE DATABASE {name}"));
        let mut url = url::Url::parse(&base).unwrap();
        url.set_path(&name);
        Some(Database {
            base,
            name,
            url: url.to_string(),
        })
    }

    /// One value (or rows joined by newlines) from the site's database.
    fn query(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    fn count(&self, sql: &str) -> usize {
        self.query(sql).parse().unwrap()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.base)
            .args([
                "-Atc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .arg(url)
        .args(["-Atc", sql])
        .output()
        .expect("psql must be installed to run the PostgreSQL tests");
    assert!(
        output.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A `herald` command of `site` on the shared database.
fn command(site: &Site, db: &Database, args: &[&str]) -> Command {
    let mut command = site.command(args);
    command
        .env("HERALD__DATABASE__URL", &db.url)
        .env("HERALD__DELIVER__WORKER_TIMEOUT", "3s");
    command
}

fn run(site: &Site, db: &Database, args: &[&str]) -> String {
    let output = command(site, db, args).output().unwrap();
    assert!(
        output.status.success(),
        "herald {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One `herald daemon` of the site, on its own HTTP port, logging to its own file.
struct Instance {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Instance {
    fn start(site: &Site, db: &Database, name: &str, env: &[(&str, &str)]) -> Instance {
        let port = free_port();
        let log = site.dir.path().join(format!("{name}.log"));
        let mut command = command(site, db, &["daemon"]);
        command
            .env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("HERALD_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        let instance = Instance { child, port, log };
        assert!(
            wait_http(port, "/healthz", Duration::from_secs(30)),
            "daemon {name} did not come up: {}",
            instance.log()
        );
        instance
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, then a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status:?}: {}", self.log());
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not stop on SIGTERM: {}", self.log());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rss(feed: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>{feed}</title>\
         <item><guid>{feed}-1</guid><link>https://news.test.example/{feed}/1</link>\
         <title>News from {feed}</title></item></channel></rss>"
    )
}

/// The site's one region, polling `feeds` of `server` every `interval`.
fn polled_site(server: &FeedServer, feeds: &[&str], interval: &str) -> Site {
    let feeds: Vec<String> = feeds
        .iter()
        .map(|f| {
            format!(
                "{{ url = \"{}\", interval = \"{interval}\" }}",
                server.url(&format!("/{f}.xml"))
            )
        })
        .collect();
    Site::new(free_port())
        .with_regions(&format!(
            "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\ntimezone = \"UTC\"\nfeeds = [{}]\n",
            feeds.join(", ")
        ))
        .with_extra("[ingest]\nallow_private = true\ntimeout = \"60s\"\n")
}

/// When each request to each path arrived.
type Arrivals = Arc<Mutex<BTreeMap<String, Vec<Instant>>>>;

fn record(arrivals: &Arrivals, path: &str) {
    arrivals
        .lock()
        .unwrap()
        .entry(path.to_string())
        .or_default()
        .push(Instant::now());
}

#[test]
fn three_daemons_poll_each_feed_once_per_interval() {
    let Some(db) = Database::create("feeds") else {
        return;
    };
    let server = FeedServer::start();
    let arrivals: Arrivals = Arc::default();
    let feeds = ["north", "south", "east"];
    for feed in feeds {
        let arrivals = arrivals.clone();
        let body = rss(feed);
        server.route_with(&format!("/{feed}.xml"), move |seen| {
            record(&arrivals, &seen.path);
            // Slow answers: without a claim, the daemons that tick while one is
            // fetching would all see the feed due and fetch it too.
            Reply::ok("application/rss+xml", body.clone()).delayed(Duration::from_millis(1_500))
        });
    }
    let site = polled_site(&server, &feeds, "3s");
    run(&site, &db, &["migrate"]);
    let daemons: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&site, &db, &format!("daemon{i}"), &[]))
        .collect();
    std::thread::sleep(Duration::from_secs(25));
    for daemon in daemons {
        daemon.stop();
    }

    let arrivals = arrivals.lock().unwrap().clone();
    for feed in feeds {
        let times = arrivals
            .get(&format!("/{feed}.xml"))
            .cloned()
            .unwrap_or_default();
        let gaps: Vec<f64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        println!("{feed}: {} polls, gaps {gaps:.1?}", times.len());
        // A poll is due 3 s after the whole second it started in: never sooner than
        // 2 s after the one before.
        assert!(
            gaps.iter().all(|gap| *gap > 1.8),
            "{feed} was polled twice at once: gaps {gaps:.2?}"
        );
        // 25 s at one poll every 3 s, each taken at the next tick of some daemon.
        assert!(
            times.len() >= 4,
            "{feed} was polled {} times in 25 s",
            times.len()
        );
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM feeds WHERE lease_owner IS NOT NULL"),
        0,
        "the daemons gave their leases up when they stopped"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM articles"), feeds.len());
}

#[test]
fn a_feed_whose_poller_is_killed_mid_poll_is_taken_over_within_the_worker_timeout() {
    let Some(db) = Database::create("feed_kill") else {
        return;
    };
    let server = FeedServer::start();
    let arrivals: Arrivals = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let (arrivals, calls) = (arrivals.clone(), calls.clone());
        server.route_with("/stuck.xml", move |seen| {
            record(&arrivals, &seen.path);
            let reply = Reply::ok("application/rss+xml", rss("stuck"));
            // The first poll hangs: its daemon holds the lease until it dies.
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                reply.delayed(Duration::from_secs(300))
            } else {
                reply
            }
        });
    }
    // Due every 5 s, so that the daemons try it at every tick while the first poll hangs.
    let site = polled_site(&server, &["stuck"], "5s");
    run(&site, &db, &["migrate"]);
    let mut daemons: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&site, &db, &format!("daemon{i}"), &[]))
        .collect();

    // Wait for the hanging poll, and find its daemon through the feed's lease.
    let start = Instant::now();
    let holder_pid = loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no daemon polled the feed"
        );
        let pid = db.query(
            "SELECT w.pid FROM feeds f JOIN workers w ON w.id = f.lease_owner \
             WHERE f.url LIKE '%/stuck.xml'",
        );
        if !pid.is_empty() && calls.load(Ordering::SeqCst) > 0 {
            break pid.parse::<u32>().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // While it hangs, no other daemon polls the feed.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "another daemon polled a feed whose poll was under way"
    );
    let holder = daemons
        .iter()
        .position(|d| d.child.id() == holder_pid)
        .expect("the lease holder is one of the daemons");
    daemons[holder].kill();
    let killed = Instant::now();
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            killed.elapsed() < Duration::from_secs(3 + 12),
            "the killed daemon's feed was not taken over within worker_timeout (3 s) + 12 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    println!(
        "the feed was polled again {:.1} s after its poller was killed",
        took.as_secs_f64()
    );
    // The taking-over daemon stores the feed's article and clears its lease.
    let start = Instant::now();
    while db.count("SELECT COUNT(*) FROM articles") == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its lease may run out (the heartbeat that renewed it stopped) a moment before a
    // live daemon finds the worker dead and deletes its row; both within the timeout.
    let worker_row = format!("SELECT COUNT(*) FROM workers WHERE pid = {holder_pid}");
    while db.count(&worker_row) > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(3 + 12),
            "the killed daemon's worker row is still there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemons.remove(holder);
    for daemon in daemons {
        daemon.stop();
    }
}

/// Calls the admin API of the daemon on `port`.
fn api(port: u16, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let (status, _, body) = request(port, method, path, &headers, body).unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, value)
}

fn count(send: &Value, state: &str) -> usize {
    send["counts"][state].as_u64().unwrap_or(0) as usize
}

/// Polls the send through the daemon on `port` until `until` holds (or 30 s pass).
fn wait_send(port: u16, token: &str, id: i64, until: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, send) = api(port, "GET", &format!("/admin/api/sends/{id}"), token, "");
        assert_eq!(status, 200, "{send}");
        if until(&send) {
            return send;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited 30 s: {send}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_send_started_on_one_daemon_is_paused_resumed_and_cancelled_from_another() {
    let Some(db) = Database::create("sends") else {
        return;
    };
    const READERS: usize = 40;
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    run(&site, &db, &["ingest"]);
    let csv = site.dir.path().join("readers.csv");
    let mut text = String::from("email,regions,cadence,timezone\n");
    for i in 0..READERS {
        text.push_str(&format!("reader{i:02}@example.org,riverton,daily,UTC\n"));
    }
    std::fs::write(&csv, text).unwrap();
    run(
        &site,
        &db,
        &[
            "subscribers",
            "import",
            csv.to_str().unwrap(),
            "--confirmed",
        ],
    );
    let token = run(&site, &db, &["admin", "token", "create", "desk"])
        .trim()
        .to_string();
    // Both daemons deliver, paced to a few messages a second, one row per claim.
    let paced = [
        ("HERALD__SMTP__RATE_PER_SECOND", "3"),
        ("HERALD__DELIVER__BATCH_SIZE", "1"),
    ];
    let a = Instance::start(&site, &db, "a", &paced);
    let b = Instance::start(&site, &db, "b", &paced);

    let (status, send) = api(
        a.port,
        "POST",
        "/admin/api/sends",
        &token,
        r#"{"region": "riverton"}"#,
    );
    assert_eq!(status, 202, "{send}");
    let id = send["id"].as_i64().unwrap();
    // The other daemon lists it and follows its progress.
    let (status, list) = api(b.port, "GET", "/admin/api/sends", &token, "");
    assert_eq!(status, 200, "{list}");
    assert!(
        list["sends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id),
        "{list}"
    );
    smtp.wait_for(2, Duration::from_secs(20));

    let (status, paused) = api(
        b.port,
        "POST",
        &format!("/admin/api/sends/{id}/pause"),
        &token,
        "",
    );
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    // What was out with either daemon finishes; then nothing more goes out, from
    // either.
    let held = wait_send(a.port, &token, id, |s| {
        s["state"] == "paused"
            && count(s, "sending") + count(s, "queued") + count(s, "deferred") == 0
    });
    let before = smtp.messages().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.messages().len(), before, "mail went out while paused");
    assert_eq!(count(&held, "sent"), before, "{held}");
    assert!(count(&held, "paused") > 0, "{held}");

    let (status, resumed) = api(
        b.port,
        "POST",
        &format!("/admin/api/sends/{id}/resume"),
        &token,
        "",
    );
    assert_eq!(status, 200, "{resumed}");
    smtp.wait_for(before + 2, Duration::from_secs(20));
    let (status, cancelled) = api(
        b.port,
        "POST",
        &format!("/admin/api/sends/{id}/cancel"),
        &token,
        "",
    );
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let end = wait_send(a.port, &token, id, |s| {
        count(s, "sending") + count(s, "queued") + count(s, "deferred") + count(s, "paused") == 0
    });
    let sent = smtp.messages().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtp.messages().len(), sent, "mail went out after cancel");
    assert_eq!(count(&end, "sent"), sent, "{end}");
    assert!(count(&end, "cancelled") > 0, "{end}");
    assert_eq!(
        count(&end, "sent") + count(&end, "cancelled"),
        READERS,
        "{end}"
    );
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for (rcpt, _) in smtp.messages() {
        *copies.entry(rcpt.trim().to_string()).or_default() += 1;
    }
    assert!(
        copies.values().all(|n| *n == 1),
        "a reader got two: {copies:?}"
    );
    a.stop();
    b.stop();
}

#[test]
fn sign_ups_sent_to_two_daemons_at_once_count_against_one_limit() {
    let Some(db) = Database::create("signup_limit") else {
        return;
    };
    let site = Site::new(free_port());
    run(&site, &db, &["migrate"]);
    let a = Instance::start(&site, &db, "a", &[]);
    let b = Instance::start(&site, &db, "b", &[]);
    // `signup.ip_limit` is 5 an hour; 16 sign-ups from one address, half to each
    // daemon, all at once.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let port = if i % 2 == 0 { a.port } else { b.port };
            std::thread::spawn(move || {
                let mut client = WebClient::new(port);
                client
                    .sign_up(
                        &format!("reader{i}@example.org"),
                        &[("riverton", "daily")],
                        "UTC",
                    )
                    .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (accepted, refused),
        (5, 11),
        "statuses {statuses:?}: the limit is one for the site, not one per daemon"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM rate_limit_hits WHERE scope = 'signup-ip'"),
        5
    );
    a.stop();
    b.stop();
}
