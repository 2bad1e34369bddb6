//! Delivery through SMTP faults, against a small scripted SMTP server in the test:
//! each fault ends in the right state with the right attempt count, and a retried
//! message keeps its Message-ID.

mod support;

use std::time::Duration;

use support::fault_smtp::{FaultServer, Greeting, Tx};
use support::{Run, Site, parse_email};

/// Short timeouts and a one-second retry so tests see several attempts quickly.
fn run(site: &Site, args: &[&str]) -> Run {
    let output = site
        .command(args)
        .env("HERALD__SMTP__TIMEOUT", "1s")
        .env("HERALD__SMTP__CONNECTIONS", "1")
        .env("HERALD__DELIVER__RETRY_BASE", "1s")
        .output()
        .unwrap();
    Run(output)
}

fn setup(server: &FaultServer, readers: &[&str]) -> Site {
    let site = Site::new(server.port);
    site.run(&["ingest"]).ok();
    for reader in readers {
        site.add_confirmed(reader, "cedar-falls");
    }
    site
}

/// (state, attempts, stored Message-ID as it appears in the header, last error).
fn row(site: &Site, email: &str) -> (String, u32, String, String) {
    let rows = site.sql(&format!(
        "SELECT d.state, d.attempts, d.message_id, COALESCE(d.last_error, '') FROM deliveries d
         JOIN subscribers s ON s.id = d.subscriber_id WHERE s.email = '{email}'"
    ));
    assert_eq!(rows.len(), 1, "one row for {email}");
    let hex = &rows[0][2];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    (
        rows[0][0].clone(),
        rows[0][1].parse().unwrap(),
        format!("<{uuid}@test.example>"),
        rows[0][3].clone(),
    )
}

/// Waits out the one-second retry delay, then delivers again.
fn retry(site: &Site) -> Run {
    std::thread::sleep(Duration::from_millis(2_100));
    run(site, &["deliver", "--until-empty"])
}

fn assert_retried_and_sent(server: &FaultServer, site: &Site, email: &str, error_has: &str) {
    let (state, attempts, _, error) = row(site, email);
    assert_eq!(
        (state.as_str(), attempts),
        ("deferred", 1),
        "after the fault: {error}"
    );
    assert!(
        error.contains(error_has),
        "last error {error:?} should mention {error_has:?}"
    );
    retry(site).ok();
    let (state, attempts, message_id, _) = row(site, email);
    assert_eq!((state.as_str(), attempts), ("sent", 2));
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1, "exactly one copy accepted");
    let header = parse_email(&accepted[0])
        .header("Message-ID")
        .unwrap()
        .to_string();
    assert_eq!(
        header, message_id,
        "the retry reuses the planned Message-ID"
    );
}

#[test]
fn busy_greeting_421_is_deferred_then_sent() {
    let server = FaultServer::start(vec![Greeting::Busy], vec![]);
    let site = setup(&server, &["ada@example.org"]);
    let first = run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    assert!(
        first.stderr().contains("could not be delivered"),
        "{}",
        first.stderr()
    );
    assert_retried_and_sent(&server, &site, "ada@example.org", "421");
}

#[test]
fn mailbox_busy_450_at_rcpt_is_deferred_then_sent() {
    let server = FaultServer::start(vec![], vec![Tx::Rcpt("450 4.2.1 mailbox busy")]);
    let site = setup(&server, &["ada@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    assert_retried_and_sent(&server, &site, "ada@example.org", "450");
}

#[test]
fn throttling_454_is_retried_not_failed() {
    let server = FaultServer::start(
        vec![],
        vec![Tx::Rcpt("454 4.7.1 too many messages, slow down")],
    );
    let site = setup(&server, &["ada@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    assert_retried_and_sent(&server, &site, "ada@example.org", "454");
}

#[test]
fn connection_closed_mid_data_is_deferred_then_sent_with_the_same_message_id() {
    let server = FaultServer::start(vec![], vec![Tx::CloseMidData]);
    let site = setup(&server, &["ada@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    let (_, _, _, error) = row(&site, "ada@example.org");
    assert!(!error.is_empty());
    assert_retried_and_sent(&server, &site, "ada@example.org", "");
}

#[test]
fn a_server_slower_than_the_timeout_leaves_the_outcome_unknown_and_retries_with_the_same_id() {
    let server = FaultServer::start(vec![], vec![Tx::SlowAfterData(Duration::from_secs(6))]);
    let site = setup(&server, &["ada@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    assert_retried_and_sent(&server, &site, "ada@example.org", "timed out");
}

#[test]
fn rejected_after_data_554_bounces_once_without_suppressing() {
    let server = FaultServer::start(vec![], vec![Tx::AfterData("554 5.7.1 message refused")]);
    let site = setup(&server, &["ada@example.org"]);
    let out = run(&site, &["send", "--region", "cedar-falls", "--yes"]);
    assert!(out.stdout().contains("1 bounced"), "{}", out.stdout());
    let (state, attempts, _, error) = row(&site, "ada@example.org");
    assert_eq!((state.as_str(), attempts), ("bounced", 1));
    assert!(error.contains("554"), "{error}");
    retry(&site).ok();
    assert_eq!(
        row(&site, "ada@example.org").1,
        1,
        "a bounce is final: no second attempt"
    );
    assert_eq!(server.attempts(), 1);
    let state = site.sql("SELECT state FROM subscribers WHERE email = 'ada@example.org'");
    assert_eq!(
        state[0][0], "confirmed",
        "a policy rejection does not suppress the reader"
    );
}

/// Each reader's (state, attempts, last error), in the order their rows were planned.
fn rows(site: &Site) -> Vec<(String, u32, String)> {
    site.sql("SELECT state, attempts, COALESCE(last_error, '') FROM deliveries ORDER BY id")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].clone()))
        .collect()
}

#[test]
fn a_refusal_of_commands_sent_behind_a_final_dot_is_that_messages_outcome() {
    // One connection: the second message's MAIL, RCPT and DATA ride behind the first
    // message's final dot, and the server refuses its recipient there.
    let server = FaultServer::start(vec![], vec![Tx::Accept, Tx::Rcpt("450 4.2.1 mailbox busy")]);
    let site = setup(&server, &["ada@example.org", "bob@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]).failed();
    assert_eq!(
        server.commands_behind_a_dot(),
        1,
        "pipelined behind the dot"
    );
    let after = rows(&site);
    let sent: Vec<_> = after.iter().filter(|r| r.0 == "sent").collect();
    let deferred: Vec<_> = after.iter().filter(|r| r.0 == "deferred").collect();
    assert_eq!((sent.len(), deferred.len()), (1, 1), "{after:?}");
    assert_eq!(deferred[0].1, 1, "one attempt, the refused one");
    assert!(deferred[0].2.contains("450"), "{:?}", deferred[0].2);
    assert_eq!(server.accepted().len(), 1);
    retry(&site).ok();
    assert!(
        rows(&site).iter().all(|r| r.0 == "sent"),
        "{:?}",
        rows(&site)
    );
    assert_eq!(server.accepted().len(), 2, "each reader got one copy");
}

#[test]
fn a_message_is_recorded_sent_before_the_commands_behind_its_dot_are_answered() {
    // The second message's commands ride behind the first message's final dot, and
    // the server takes its time over their DATA. The first message's 250 has come
    // back meanwhile: its row must not wait for the second message's replies, or a
    // crash in that wait would send it again.
    let server = FaultServer::start(
        vec![],
        vec![Tx::Accept, Tx::SlowData(Duration::from_secs(3))],
    );
    let site = setup(&server, &["ada@example.org", "bob@example.org"]);
    let mut child = site
        .command(&["send", "--region", "cedar-falls", "--yes"])
        .env("HERALD__SMTP__CONNECTIONS", "1")
        .env("HERALD__SMTP__TIMEOUT", "10s")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (sent, data_replies) = loop {
        let sent = rows(&site).iter().filter(|r| r.0 == "sent").count();
        if sent > 0 || child.try_wait().unwrap().is_some() {
            break (sent, server.data_replies());
        }
        assert!(std::time::Instant::now() < deadline, "nothing was recorded");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        (sent, data_replies),
        (1, 1),
        "the first message was recorded while the second's DATA still waited"
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(
        server.commands_behind_a_dot(),
        1,
        "pipelined behind the dot"
    );
    assert!(rows(&site).iter().all(|r| r.0 == "sent" && r.1 == 1));
    assert_eq!(server.accepted().len(), 2, "each reader got one copy");
}

#[test]
fn a_rejected_message_with_commands_behind_it_leaves_the_next_one_to_a_new_session() {
    // The first message is refused after its final dot; the second message's commands,
    // already behind that dot, are abandoned with the session and sent again afresh.
    let server = FaultServer::start(vec![], vec![Tx::AfterData("554 5.7.1 message refused")]);
    let site = setup(&server, &["ada@example.org", "bob@example.org"]);
    let out = run(&site, &["send", "--region", "cedar-falls", "--yes"]);
    assert!(
        out.stdout().contains("1 sent, 0 deferred, 1 bounced"),
        "{}",
        out.stdout()
    );
    assert_eq!(
        server.commands_behind_a_dot(),
        1,
        "pipelined behind the dot"
    );
    let after = rows(&site);
    assert!(
        after.iter().all(|r| r.1 == 1),
        "no row counts the abandoned commands as an attempt: {after:?}"
    );
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(
        server.connections(),
        2,
        "a new session for the second message"
    );
}

#[test]
fn no_such_mailbox_550_5_1_1_bounces_and_suppresses_the_reader() {
    let server = FaultServer::start(vec![], vec![Tx::Rcpt("550 5.1.1 no such user here")]);
    let site = setup(&server, &["gone@example.org", "here@example.org"]);
    run(&site, &["send", "--region", "cedar-falls", "--yes"]);
    let states: Vec<(String, String)> = site
        .sql("SELECT s.email, d.state FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id ORDER BY s.email")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    // The first transaction (whichever reader it was) bounced; the other went out.
    let bounced: Vec<_> = states.iter().filter(|(_, s)| s == "bounced").collect();
    assert_eq!(bounced.len(), 1, "{states:?}");
    assert_eq!(states.iter().filter(|(_, s)| s == "sent").count(), 1);
    let suppressed = site.sql("SELECT email FROM subscribers WHERE state = 'suppressed'");
    assert_eq!(suppressed.len(), 1);
    assert_eq!(
        suppressed[0][0], bounced[0].0,
        "the bounced reader is suppressed"
    );
    // A later send does not mail them again.
    let list = site.run(&["subscribers", "list"]).ok().stdout();
    assert!(list.contains("suppressed"), "{list}");
}

#[test]
fn a_session_left_waiting_for_content_at_shutdown_is_dropped_not_sent_quit() {
    // The second message's commands ride behind the first one's final dot, so its
    // session waits for content; SIGINT arrives while the server takes its time over
    // the first. The second message is given back unsent, and its session must not
    // get QUIT, which the server would read as message content.
    let server = FaultServer::start(vec![], vec![Tx::LateAccept(Duration::from_millis(1_500))]);
    let site = setup(&server, &["ada@example.org", "bob@example.org"]);
    let send = site
        .command(&["send", "--region", "cedar-falls", "--yes"])
        .env("HERALD__SMTP__TIMEOUT", "10s")
        .env("HERALD__SMTP__CONNECTIONS", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.attempts() == 0 {
        assert!(std::time::Instant::now() < deadline, "no message started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first message's content and dot are out by now; its reply is not.
    std::thread::sleep(Duration::from_millis(500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &send.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = send.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        server.commands_behind_a_dot(),
        1,
        "pipelined behind the dot: {stdout}"
    );
    assert_eq!(server.accepted().len(), 1, "{stdout}");
    assert_eq!(
        server.quits_as_content(),
        0,
        "QUIT sent as content: {stdout}"
    );
    let after = rows(&site);
    let states: Vec<&str> = after.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(states, ["sent", "queued"], "{after:?}");
    assert_eq!(after[1].1, 0, "the message given back counts no attempt");
}
