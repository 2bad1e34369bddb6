//! The daemon under attack and under faults, as an operator would meet them: more slow
//! connections than it has descriptors, clients that send nothing or trickle their
//! requests, and a stage whose passes fail until an operator fixes the cause.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::feed_server::{FeedServer, Reply};
use support::{Daemon, Site, SmtpServer, http, request};

const FEED: &str = "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>Town</title>\
    <item><guid>a</guid><link>https://news.test.example/a</link><title>Story A</title></item>\
    </channel></rss>";

/// A feed on a local server that notes the instant of every poll.
fn polled_feed() -> (FeedServer, Arc<Mutex<Vec<Instant>>>) {
    let feeds = FeedServer::start();
    let polls = Arc::new(Mutex::new(Vec::new()));
    feeds.route_with("/feed.xml", {
        let polls = polls.clone();
        move |_| {
            polls.lock().unwrap().push(Instant::now());
            Reply::ok("application/rss+xml", FEED)
        }
    });
    (feeds, polls)
}

/// A site whose one region polls `feed_url` every second.
fn site_polling(smtp: &SmtpServer, feed_url: &str, extra: &str) -> Site {
    Site::new(smtp.port)
        .with_regions(&format!(
            "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\ntimezone = \"America/Los_Angeles\"\n\
             feeds = [{{ url = \"{feed_url}\", interval = \"1s\" }}]\n"
        ))
        .with_extra(&format!(
            "[ingest]\nallow_private = true\ntimeout = \"1s\"\n\n{extra}"
        ))
}

/// `/readyz`: (status, body).
fn readyz(site: &Site) -> (u16, String) {
    http(site.http_port, "GET", "/readyz", "").unwrap_or((0, String::new()))
}

/// Waits until `/readyz` satisfies `want`, or panics with the last answer.
fn wait_readyz(site: &Site, timeout: Duration, want: impl Fn(u16, &str) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = readyz(site);
        if want(status, &body) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "/readyz did not change within {timeout:?}: {status}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Holds `count` connections to the port, each sending the start of a request and then
/// one more header line a second, and opens a new one whenever the server closes one:
/// what a slow-connection attack does.
struct Attacker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, u64)>>,
}

impl Attacker {
    fn start(port: u16, count: usize) -> Attacker {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                let mut conns: Vec<Option<(TcpStream, Instant)>> =
                    (0..count).map(|_| None).collect();
                let (mut opened, mut cut) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    for slot in conns.iter_mut() {
                        match slot {
                            None => {
                                if let Ok(mut stream) =
                                    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                                {
                                    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n");
                                    stream.set_nonblocking(true).unwrap();
                                    *slot = Some((stream, Instant::now()));
                                    opened += 1;
                                }
                            }
                            Some((stream, last)) => {
                                let mut buf = [0u8; 256];
                                match stream.read(&mut buf) {
                                    Ok(0) => {
                                        *slot = None;
                                        cut += 1;
                                    }
                                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                        if last.elapsed() >= Duration::from_secs(1) {
                                            let _ = stream.write(b"X-Slow: 1\r\n");
                                            *last = Instant::now();
                                        }
                                    }
                                    Ok(_) => {}
                                    Err(_) => {
                                        *slot = None;
                                        cut += 1;
                                    }
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (opened, cut)
            }
        });
        Attacker {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops, returning (connections opened, connections the server closed).
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn more_slow_connections_than_descriptors_silence_neither_the_pages_nor_the_feeds() {
    const LIMIT: u64 = 256;
    let smtp = SmtpServer::start();
    let (feeds, polls) = polled_feed();
    let site = site_polling(&smtp, &feeds.url("/feed.xml"), "");
    let mut command = site.command(&["daemon"]);
    // systemd gives services a soft limit; here soft and hard are both low, so herald
    // cannot raise it and must budget what it has.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Daemon::start_command(&site, command);
    wait_readyz(&site, Duration::from_secs(20), |status, _| status == 200);

    let attacker = Attacker::start(site.http_port, 300);
    std::thread::sleep(Duration::from_secs(2));
    let attack_began = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..8 {
        let start = Instant::now();
        let (status, body) = http(site.http_port, "GET", "/", "").expect("the page answers");
        let took = start.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<form"), "the sign-up page");
        assert!(
            took < Duration::from_secs(1),
            "a normal reader waited {took:?} for the sign-up page"
        );
        slowest = slowest.max(took);
        std::thread::sleep(Duration::from_secs(1));
    }
    let attack_window = (attack_began, Instant::now());
    let (opened, cut) = attacker.stop();
    assert!(
        opened > LIMIT,
        "the attack held more connections than herald has descriptors ({opened})"
    );
    assert!(cut > 0, "herald closed slow connections to make room");

    // The feed (polled every second) kept being polled through the attack.
    let polls = polls.lock().unwrap().clone();
    let during: Vec<Instant> = polls
        .iter()
        .copied()
        .filter(|t| *t >= attack_window.0 && *t <= attack_window.1)
        .collect();
    assert!(
        during.len() >= 4,
        "{} polls in {:?} of attack",
        during.len(),
        attack_window.1 - attack_window.0
    );
    let widest_gap = during
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest_gap < Duration::from_secs(4),
        "polls stalled for {widest_gap:?} during the attack"
    );
    wait_readyz(&site, Duration::from_secs(10), |status, _| status == 200);
    eprintln!(
        "attack: {opened} connections opened, {cut} closed by herald; slowest page {slowest:?}; {} polls, widest gap {widest_gap:?}",
        during.len()
    );
    daemon.stop();
}

/// Reads from `stream` until the server closes it (or `within` passes): what it sent.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match stream.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), String::from_utf8_lossy(&seen).into())),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((start.elapsed(), String::from_utf8_lossy(&seen).into())),
        }
    }
    None
}

#[test]
fn slow_and_silent_clients_are_cut_off_while_others_are_answered() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let mut command = site.command(&["daemon"]);
    command
        .env("HERALD__HTTP__HEADER_TIMEOUT", "1s")
        .env("HERALD__HTTP__IDLE_TIMEOUT", "1s")
        .env("HERALD__HTTP__BODY_TIMEOUT", "1s")
        .env("HERALD__HTTP__REQUEST_TIMEOUT", "3s");
    let daemon = Daemon::start_command(&site, command);
    let port = site.http_port;
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    let limit = Duration::from_secs(6);

    // Connects and sends nothing.
    let mut silent = connect();
    // Sends its head a byte at a time, never idle for long.
    let mut trickler = connect();
    let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let trickle = std::thread::spawn(move || {
        let start = Instant::now();
        for byte in head.iter().cycle() {
            if trickler.write_all(&[*byte]).is_err() {
                return Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    });
    // Sends a whole head announcing a body, then only part of it.
    let mut unfinished = connect();
    unfinished
        .write_all(
            b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail=a",
        )
        .unwrap();
    // Keeps a connection open after one answered request.
    let mut kept_alive = connect();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();

    // Meanwhile a reader is answered.
    let (status, _) = http(port, "GET", "/", "").unwrap();
    assert_eq!(status, 200);

    let (after, _) = read_until_closed(&mut silent, limit).expect("a silent connection is closed");
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}, before its idle time"
    );
    let (_, answer) =
        read_until_closed(&mut unfinished, limit).expect("an unfinished body is cut off");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "an unfinished body gets 408: {answer}"
    );
    let (_, answer) =
        read_until_closed(&mut kept_alive, limit).expect("an idle keep-alive is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cut = trickle.join().unwrap();
    assert!(
        cut.is_some_and(|t| t < Duration::from_secs(8)),
        "a trickled head is cut off although bytes keep coming ({cut:?})"
    );

    // A body that trickles in is cut off too, however busy it looks.
    let mut slow_body = connect();
    slow_body
        .write_all(
            b"POST /subscribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 400\r\n\r\n",
        )
        .unwrap();
    let start = Instant::now();
    let mut answer = String::new();
    while start.elapsed() < limit {
        if slow_body.write_all(b"a").is_err() {
            break;
        }
        slow_body
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 4096];
        match slow_body.read(&mut buf) {
            Ok(n) if n > 0 => {
                answer = String::from_utf8_lossy(&buf[..n]).into();
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    let (status, _) = http(port, "GET", "/", "").unwrap();
    assert_eq!(status, 200, "the site still answers");
    daemon.stop();
}

#[test]
fn a_failing_stage_turns_readyz_red_restarts_and_recovers_once_the_cause_is_gone() {
    let smtp = SmtpServer::start();
    let (feeds, polls) = polled_feed();
    let site = site_polling(&smtp, &feeds.url("/feed.xml"), "");
    let daemon = Daemon::start(&site);
    wait_readyz(&site, Duration::from_secs(20), |status, body| {
        status == 200 && body.contains("ingest: ok")
    });

    // The database refuses every change to the feeds table: each ingest pass fails.
    site.sql_write(
        "CREATE TRIGGER injected_fault BEFORE UPDATE ON feeds BEGIN SELECT RAISE(ABORT, 'injected fault'); END",
    );
    let red = wait_readyz(&site, Duration::from_secs(15), |status, body| {
        status == 503 && body.contains("ingest: overdue")
    });
    // Overdue after three 1 s ticks (ingest.timeout is 1 s): 503 within a few seconds.
    assert!(red < Duration::from_secs(8), "503 only after {red:?}");
    let (_, body) = readyz(&site);
    assert!(body.contains("restart(s)"), "{body}");
    assert!(
        body.contains("injected fault"),
        "the cause is shown: {body}"
    );
    assert!(body.contains("plan: ok"), "other stages carry on: {body}");
    let (status, _) = http(site.http_port, "GET", "/", "").unwrap();
    assert_eq!(status, 200, "the pages carry on");

    site.sql_write("DROP TRIGGER injected_fault");
    let fixed = Instant::now();
    wait_readyz(&site, Duration::from_secs(30), |status, body| {
        status == 200 && body.contains("ingest: ok")
    });
    // A poll fetched before the fix may be the one recorded after it, so wait for a
    // fetch that began after the fix: polling has resumed, not merely one write.
    let resumed = Instant::now();
    while polls.lock().unwrap().iter().all(|t| *t <= fixed) {
        assert!(
            resumed.elapsed() < Duration::from_secs(15),
            "no poll since the fix: polling did not resume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let recorded = site.sql("SELECT last_error IS NULL, last_success_at FROM feeds");
    assert_eq!(recorded[0][0], "1", "{recorded:?}");
    daemon.stop();
}

#[test]
fn a_too_low_open_file_limit_stops_start_up_with_a_sentence() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let mut command = site.command(&["daemon"]);
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("open-file limit is 64") && stderr.contains("LimitNOFILE"),
        "{stderr}"
    );
    let (status, _, _) = request(site.http_port, "GET", "/healthz", &[], "").unwrap_or((
        0,
        String::new(),
        String::new(),
    ));
    assert_eq!(status, 0, "nothing listens");
}
