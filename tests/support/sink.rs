//! Postfix's `smtp-sink` as the SMTP server of a test: it answers DATA after a delay (so
//! many messages are in flight at once) and dumps every transaction to a folder, which
//! [`received`] counts per recipient.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Sink {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn smtp_sink(port: u16) -> Sink {
    // Wait before answering DATA (a second unless HERALD_CRASH_SINK_DELAY says more),
    // so many messages are in flight at once.
    let delay = std::env::var("HERALD_CRASH_SINK_DELAY").unwrap_or_else(|_| "1".into());
    smtp_sink_waiting(port, &delay)
}

/// `smtp-sink` answering DATA after `delay` whole seconds ("0": at once; smtp-sink
/// itself takes no `-w 0`).
pub fn smtp_sink_waiting(port: u16, delay: &str) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let program = if std::path::Path::new("/usr/sbin/smtp-sink").exists() {
        "/usr/sbin/smtp-sink"
    } else {
        "smtp-sink"
    };
    let mut command = Command::new(program);
    command.args(["-u", "nobody", "-m", "512"]);
    if delay != "0" {
        command.args(["-w", delay]);
    }
    let child = command
        .arg("-d")
        .arg(format!("{}/m.", dir.path().display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("1024")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Postfix smtp-sink must be installed (Debian package postfix)");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "smtp-sink did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sink { child, dir }
}

/// Copies received per recipient, from smtp-sink's dump files. smtp-sink also dumps
/// transactions whose client vanished mid-DATA; a mail server never delivers those, so
/// only dumps that hold the whole message (its closing MIME boundary) count.
pub fn received(sink: &Sink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut partial = 0;
    for entry in std::fs::read_dir(sink.dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        let boundary = text
            .split("boundary=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(|b| format!("--{b}--"));
        if !boundary.is_some_and(|b| text.contains(&b)) {
            partial += 1;
            continue;
        }
        if let Some(line) = text.lines().find(|l| l.starts_with("X-Rcpt-Args:")) {
            let rcpt = line["X-Rcpt-Args:".len()..]
                .trim()
                .trim_matches(['<', '>'])
                .to_string();
            *counts.entry(rcpt).or_insert(0) += 1;
        }
    }
    if partial > 0 {
        println!("{partial} partial transactions (client killed mid-DATA) not counted");
    }
    counts
}

/// When each whole message arrived (its dump file's last write), oldest first.
pub fn arrivals(sink: &Sink) -> Vec<std::time::SystemTime> {
    let mut times: Vec<_> = std::fs::read_dir(sink.dir.path())
        .unwrap()
        .filter_map(|entry| entry.ok()?.metadata().ok()?.modified().ok())
        .collect();
    times.sort();
    times
}

/// Copies received per recipient once the sink has caught up: smtp-sink may write the
/// last transactions of a run a moment after the client saw their replies. Waits until
/// at least `expected` copies are in and the count has held still for half a second,
/// or `within` has passed.
pub fn received_settled(sink: &Sink, expected: usize, within: Duration) -> HashMap<String, usize> {
    let start = Instant::now();
    let mut last = received(sink);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = received(sink);
        let total: usize = now.values().sum();
        let settled = now == last && total >= expected;
        if settled || start.elapsed() > within {
            return now;
        }
        last = now;
    }
}
