//! Shared helpers for integration tests: a scratch folder with its own config and
//! SQLite file, the real `herald` binary, and a real SMTP server process.

#![allow(dead_code)]

pub mod days;
pub mod dovecot;
pub mod fault_smtp;

pub mod feed_server;
pub mod sink;
pub mod web;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (templates, demo feeds).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The instant every test site's clock reads when the site is made, whatever the time
/// of day, weekday or date the tests run at: Wednesday 13 January 2027, 15:00 in Los
/// Angeles (the demo regions' zone). The default schedule cannot fire during a test from
/// here: the 07:00 daily slot of every zone the tests use is either more than
/// `schedule.max_lateness` (6 h) past (Los Angeles 15:00, New York 18:00, UTC 23:00,
/// Berlin 00:00) or hours ahead (Kolkata 04:30), the weekly slot falls on Mondays, no
/// DST change is near, and Los Angeles is outside the default quiet hours. A test that
/// needs another instant says so with [`Site::with_clock`].
pub const PINNED_CLOCK: &str = "2027-01-13T23:00:00Z";

/// Unix seconds of an RFC 3339 instant.
pub fn epoch(instant: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(instant)
        .unwrap_or_else(|e| panic!("{instant}: {e}"))
        .timestamp()
}

/// The `HERALD_TEST_CLOCK_OFFSET` that makes a `herald` process's clock read
/// [`PINNED_CLOCK`] now, for tests that run herald without a [`Site`].
pub fn pinned_clock_offset() -> i64 {
    epoch(PINNED_CLOCK) - system_now()
}

/// The system clock as Unix seconds (only to pin sites' clocks from).
fn system_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A scratch installation: its own folder, config file and database.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub smtp_port: u16,
    pub http_port: u16,
    /// Seconds added to the system clock for every `herald` process of this site
    /// (`HERALD_TEST_CLOCK_OFFSET`), so its clock read [`PINNED_CLOCK`] when the site
    /// was made and runs on from there, the same in every command.
    clock_offset: i64,
    extra: String,
    regions: String,
    /// `http.public_url`; `http://127.0.0.1:{http_port}` unless a test names another.
    public_url: Option<String>,
}

impl Site {
    /// A site with the demo regions and feeds, sending over SMTP to `smtp_port`.
    pub fn new(smtp_port: u16) -> Site {
        let feeds = repo().join("config/feeds");
        let regions = format!(
            r#"
[[regions]]
slug = "cascadia"
name = "Across Cascadia"
timezone = "America/Los_Angeles"
feeds = ["file://{f}/cascadia.xml"]

[[regions]]
slug = "riverton"
name = "Riverton"
parent = "cascadia"
timezone = "America/Los_Angeles"
feeds = ["file://{f}/riverton.atom"]

[[regions]]
slug = "cedar-falls"
name = "Cedar Falls"
parent = "cascadia"
timezone = "America/Los_Angeles"
feeds = ["file://{f}/cedar-falls.json"]
"#,
            f = feeds.display()
        );
        let site = Site {
            dir: tempfile::tempdir().unwrap(),
            smtp_port,
            http_port: free_port(),
            clock_offset: epoch(PINNED_CLOCK) - system_now(),
            extra: String::new(),
            regions,
            public_url: None,
        };
        site.write_config();
        site
    }

    /// Pins this site's clock to read `instant` (RFC 3339) now, instead of
    /// [`PINNED_CLOCK`].
    pub fn with_clock(mut self, instant: &str) -> Site {
        self.clock_offset = epoch(instant) - system_now();
        self
    }

    /// The site's clock now, as Unix seconds: what its `herald` processes read.
    pub fn now(&self) -> i64 {
        system_now() + self.clock_offset
    }

    /// Replaces the regions block (e.g. to add a broken feed).
    pub fn with_regions(mut self, regions: &str) -> Site {
        self.regions = regions.to_string();
        self.write_config();
        self
    }

    /// Sets `http.public_url`, the address links in emails start with (e.g. an https
    /// one, which list mail needs for one-click unsubscribe).
    pub fn with_public_url(mut self, url: &str) -> Site {
        self.public_url = Some(url.to_string());
        self.write_config();
        self
    }

    /// Adds extra TOML sections to the config (e.g. `[ingest]`).
    pub fn with_extra(mut self, extra: &str) -> Site {
        self.extra = extra.to_string();
        self.write_config();
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("herald.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("var/herald.db")
    }

    fn write_config(&self) {
        let text = format!(
            r#"
[database]
url = "sqlite://{db}"

[http]
listen = "127.0.0.1:{http}"
public_url = "{public_url}"

[mail]
from = "Test News <news@test.example>"
postal_address = "Test News, 1 Test Street, Testville"
transport = "smtp"
outbox_dir = "{outbox}"
templates_dir = "{templates}"

[smtp]
host = "127.0.0.1"
port = {smtp}
connections = 2
timeout = "5s"

[security]
secret = "integration-test-secret"

[deliver]
drain_timeout = "5s"
{extra}
{regions}
"#,
            db = self.db_path().display(),
            http = self.http_port,
            public_url = self
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.http_port)),
            outbox = self.dir.path().join("var/outbox").display(),
            templates = repo().join("templates").display(),
            smtp = self.smtp_port,
            extra = self.extra,
            regions = self.regions,
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// A `herald` command in this site's folder with its config.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.current_dir(self.dir.path())
            .env("HERALD_CONFIG", self.config_path())
            .env("HERALD_TEST_CLOCK_OFFSET", self.clock_offset.to_string())
            .env_remove("HERALD_LOG")
            .args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD__") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs `herald ARGS…` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run herald");
        Run(output)
    }

    /// Adds `email` to `region` as a confirmed reader (`herald subscribers add`).
    pub fn add_confirmed(&self, email: &str, region: &str) {
        self.run(&[
            "subscribers",
            "add",
            email,
            "--region",
            region,
            "--confirmed",
        ])
        .ok();
    }

    /// Waits until the daemon has done every sign-up its form stored: the form answers
    /// before the work that depends on the address's state.
    pub fn wait_for_signups(&self) {
        let start = Instant::now();
        while self.sql("SELECT COUNT(*) FROM signup_requests")[0][0] != "0" {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "sign-ups stayed queued for 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens the site's SQLite file directly (read-only checks).
    pub fn sql(&self, query: &str) -> Vec<Vec<String>> {
        let output = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3,sys,json\n\
                 c=sqlite3.connect(sys.argv[1])\n\
                 print(json.dumps([[('' if v is None else str(v)) for v in r] for r in c.execute(sys.argv[2])]))",
            )
            .arg(self.db_path())
            .arg(query)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

impl Site {
    /// Runs one statement that changes the site's SQLite file (DDL included) and
    /// commits it, the way an operator with the `sqlite3` shell would, while herald may
    /// be running: to set up what the commands cannot (rows an older herald or a crash
    /// left behind, a fault).
    pub fn sql_write(&self, statement: &str) {
        let output = Command::new("python3")
            .arg("-c")
            .arg(
                "import sqlite3,sys\n\
                 c=sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)\n\
                 c.execute(sys.argv[2])",
            )
            .arg(self.db_path())
            .arg(statement)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A finished command, with helpers to assert on it.
pub struct Run(pub Output);

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.0.status.success()
    }
    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Run {
        assert!(
            self.success(),
            "command failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
    /// Panics unless the command failed.
    pub fn failed(self) -> Run {
        assert!(
            !self.success(),
            "command should have failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// A certificate authority of its own and a server certificate it signed for 127.0.0.1,
/// made with the `openssl` command for one test.
pub struct TestCertificates {
    pub dir: tempfile::TempDir,
    /// The authority's certificate (what a client trusts).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    pub fn new() -> TestCertificates {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("the openssl command must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-days", "2", "-subj", "/CN=herald test CA"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            path("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        TestCertificates {
            ca: path("ca.pem"),
            cert: path("server.pem"),
            key: path("server.key"),
            dir,
        }
    }
}

/// A real SMTP server process (Python aiosmtpd) that saves each message to a folder.
pub struct SmtpServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    _stdin: ChildStdin,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        SmtpServer::start_with(&[])
    }

    /// A server started with more of `smtp_server.py`'s options (`--starttls CERT KEY`,
    /// `--tls CERT KEY`, `--auth USER:PASSWORD`).
    pub fn start_with(options: &[&str]) -> SmtpServer {
        SmtpServer::start_on(free_port(), options)
    }

    /// A server on a port the test chose (one herald was already told to use).
    pub fn start_on(port: u16, options: &[&str]) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(repo().join("tests/support/smtp_server.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .args(options)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed (with aiosmtpd: pip install aiosmtpd)");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the aiosmtpd test server did not start (is aiosmtpd installed? pip install aiosmtpd)"
        );
        SmtpServer {
            port,
            dir,
            child,
            _stdin: stdin,
        }
    }

    /// Every message received so far, in arrival order: (recipients, raw message).
    pub fn messages(&self) -> Vec<(String, String)> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let rcpt = std::fs::read_to_string(p.with_extension("rcpt")).unwrap_or_default();
                (rcpt, std::fs::read_to_string(&p).unwrap())
            })
            .collect()
    }

    /// The envelope sender (MAIL FROM) of every message received so far, in arrival
    /// order.
    pub fn envelope_senders(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| std::fs::read_to_string(p.with_extension("from")).unwrap_or_default())
            .collect()
    }

    /// Waits until at least `n` messages arrived, or panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        let start = Instant::now();
        loop {
            let messages = self.messages();
            if messages.len() >= n || start.elapsed() > timeout {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One email, split into headers and decoded MIME parts.
pub struct Parsed {
    pub headers: Vec<(String, String)>,
    /// (content type, decoded body) of each leaf part, in order.
    pub parts: Vec<(String, String)>,
}

impl Parsed {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses headers (unfolding continuation lines) and a one-level multipart body,
/// decoding quoted-printable and base64 parts.
pub fn parse_email(raw: &str) -> Parsed {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let headers = parse_headers(head);
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(boundary) = content_type.split("boundary=").nth(1) {
        let boundary = boundary
            .trim_matches('"')
            .split(';')
            .next()
            .unwrap()
            .trim_matches('"');
        for chunk in body.split(&format!("--{boundary}")).skip(1) {
            if chunk.starts_with("--") {
                break;
            }
            let chunk = chunk.trim_start_matches('\n');
            let (part_head, part_body) = chunk.split_once("\n\n").unwrap_or((chunk, ""));
            let part_headers = parse_headers(part_head);
            let get = |n: &str| {
                part_headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            parts.push((
                get("Content-Type"),
                decode(&get("Content-Transfer-Encoding"), part_body),
            ));
        }
    }
    Parsed { headers, parts }
}

fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    headers
}

fn decode(encoding: &str, body: &str) -> String {
    match encoding.to_ascii_lowercase().as_str() {
        "quoted-printable" => {
            let joined = body.replace("=\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'='
                    && i + 2 < bytes.len()
                    && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
                {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        "base64" => {
            use base64::Engine;
            let clean: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .unwrap_or_default(),
            )
            .into_owned()
        }
        _ => body.to_string(),
    }
}

/// Waits until `path` answers HTTP 200 on 127.0.0.1:`port`.
pub fn wait_http(port: u16, path: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok((200, _)) = http(port, "GET", path, "") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// An HTTP/1.1 request with extra header lines; returns (status, head, body).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_string(), body.to_string()))
}

/// A running `herald daemon` for one site; stopped with SIGTERM (killed if dropped).
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon and waits until `/healthz` answers.
    pub fn start(site: &Site) -> Daemon {
        Daemon::start_command(site, site.command(&["daemon"]))
    }

    /// Starts `herald daemon` from a command the test prepared (extra environment, an
    /// open-file limit) and waits until `/healthz` answers.
    pub fn start_command(site: &Site, mut command: Command) -> Daemon {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald daemon");
        let daemon = Daemon { child };
        assert!(
            wait_http(site.http_port, "/healthz", Duration::from_secs(20)),
            "the daemon did not come up"
        );
        daemon
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "daemon exit status {status:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the daemon did not stop on SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
