//! The whole way round, against real servers: herald sends a digest to a real SMTP
//! server (aiosmtpd) with VERP envelope senders; the bounces, the complaint, the mail
//! unsubscribe and a garbage mail a relay would send back to those addresses are put in
//! a real IMAP mailbox (Debian's Dovecot, started by the test); the bounce mailbox reads
//! them into the site's real store with the recorder the daemon uses, each once however
//! often it polls, soft bounces on days the test chooses; and the next send skips every
//! reader that suppressed or unsubscribed. The daemon's own mailbox stage is checked
//! with the real binary.

mod support;

use std::time::Duration;

use herald::bounces::imap::UNPARSED_KEYWORD;
use herald::bounces::mailbox::{Mailbox, PollSummary};
use herald::bounces::{BounceAddresses, StoreRecorder};
use herald::config::{Config, PathBase};
use herald::domain::Timestamp;
use support::dovecot::{Dovecot, PASSWORD};
use support::{Site, SmtpServer, epoch, parse_email};

const HARD: &str = "hard@example.org";
const SOFT: &str = "soft@example.org";
const COMPLAINS: &str = "complains@example.org";
const LEAVES: &str = "leaves@example.net";
const KEPT: &str = "kept@example.net";
const READERS: [&str; 5] = [HARD, SOFT, COMPLAINS, LEAVES, KEPT];

/// What herald sent one reader.
struct Sent {
    verp: String,
    message_id: String,
    headers: String,
    mailto: String,
}

/// A site whose emails go out with VERP to `smtp`, its bounce mailbox `dovecot` (the
/// mailbox's URL and password are given to the daemon only, in its environment, as an
/// operator would).
fn site(smtp: &SmtpServer, dovecot: &Dovecot) -> Site {
    let site = Site::new(smtp.port)
        .with_public_url("https://news.test.example")
        .with_extra(&format!(
            "[bounces]\naddress = \"bounces@news.example.org\"\nimap_ca_file = \"{}\"\npoll_interval = \"1s\"\n",
            dovecot.certificates.ca.display()
        ));
    site.run(&["ingest"]).ok();
    for email in READERS {
        site.run(&[
            "subscribers",
            "add",
            email,
            "--region",
            "riverton",
            "--region",
            "cedar-falls",
            "--confirmed",
        ])
        .ok();
    }
    site
}

/// Sends the Riverton digest and reads back what each reader was sent.
fn send_digest(site: &Site, smtp: &SmtpServer) -> std::collections::HashMap<String, Sent> {
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(READERS.len(), Duration::from_secs(20));
    assert_eq!(messages.len(), READERS.len());
    let senders = smtp.envelope_senders();
    messages
        .iter()
        .zip(senders)
        .map(|((rcpt, raw), verp)| {
            assert!(
                verp.starts_with("bounces+") && verp.ends_with("@news.example.org"),
                "{verp}"
            );
            let email = parse_email(raw);
            let unsubscribe = email.header("List-Unsubscribe").unwrap();
            let mailto = unsubscribe
                .split(", ")
                .find_map(|l| l.strip_prefix("<mailto:"))
                .and_then(|m| m.strip_suffix('>'))
                .unwrap()
                .to_string();
            let raw = raw.replace("\r\n", "\n");
            let headers = raw.split("\n\n").next().unwrap().replace('\n', "\r\n");
            let sent = Sent {
                verp,
                message_id: email.header("Message-ID").unwrap().to_string(),
                headers,
                mailto,
            };
            (rcpt.trim().to_string(), sent)
        })
        .collect()
}

/// A delivery status notification for `sent`, as a relay's MTA writes one: to the VERP
/// address, the recipient's status and the returned headers.
fn dsn(id: &str, sent: &Sent, recipient: &str, action: &str, status: &str, diag: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\n\
         Delivered-To: {verp}\r\n\
         From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n\
         To: {verp}\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Message-ID: <{id}@mx.example.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\
         \r\n\
         --B\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         Your message could not be delivered.\r\n\
         \r\n\
         --B\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; mx.example.com\r\n\
         \r\n\
         Final-Recipient: rfc822; {recipient}\r\n\
         Action: {action}\r\n\
         Status: {status}\r\n\
         Diagnostic-Code: smtp; {diag}\r\n\
         \r\n\
         --B\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\r\n\
         \r\n\
         --B--\r\n",
        verp = sent.verp,
        headers = sent.headers,
    )
    .into_bytes()
}

/// An ARF spam complaint from a mailbox provider's feedback loop about `sent`.
fn complaint(sent: &Sent, recipient: &str) -> Vec<u8> {
    format!(
        "From: Feedback Loop <fbl@mx.example.com>\r\n\
         To: {verp}\r\n\
         Subject: FW: abuse report\r\n\
         Message-ID: <arf-1@mx.example.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"B\"\r\n\
         \r\n\
         --B\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         This is an email abuse report.\r\n\
         \r\n\
         --B\r\n\
         Content-Type: message/feedback-report\r\n\
         \r\n\
         Feedback-Type: abuse\r\n\
         User-Agent: ExampleFBL/1.0\r\n\
         Version: 1\r\n\
         Original-Mail-From: <{verp}>\r\n\
         Original-Rcpt-To: <{recipient}>\r\n\
         \r\n\
         --B\r\n\
         Content-Type: message/rfc822\r\n\
         \r\n\
         {headers}\r\n\
         \r\n\
         (body removed)\r\n\
         \r\n\
         --B--\r\n",
        verp = sent.verp,
        headers = sent.headers,
    )
    .into_bytes()
}

/// What a reader's client sends to the `List-Unsubscribe` mailto address.
fn unsubscribe_mail(sent: &Sent, from: &str) -> Vec<u8> {
    format!(
        "Delivered-To: {to}\r\n\
         From: <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: unsubscribe\r\n\
         Message-ID: <leave-1@example.net>\r\n\
         \r\n\
         unsubscribe\r\n",
        to = sent.mailto,
    )
    .into_bytes()
}

const GARBAGE: &[u8] = b"From: someone@example.com\r\nTo: bounces@news.example.org\r\n\
    Subject: hello\r\nMessage-ID: <hello@example.com>\r\n\r\nIs this the newsroom?\r\n";

fn state(site: &Site, email: &str) -> String {
    site.sql(&format!(
        "SELECT state FROM subscribers WHERE email = '{email}'"
    ))[0][0]
        .clone()
}

fn count(site: &Site, query: &str) -> i64 {
    site.sql(query)[0][0].parse().unwrap()
}

/// The site's config as the daemon reads it, with the mailbox from its environment.
fn daemon_config(site: &Site, dovecot: &Dovecot) -> Config {
    let env = [
        ("HERALD__BOUNCES__IMAP_URL".to_string(), dovecot.imaps_url()),
        (
            "HERALD__BOUNCES__IMAP_PASSWORD".to_string(),
            PASSWORD.to_string(),
        ),
    ];
    Config::load_with_env(&site.config_path(), PathBase::ConfigFolder, env).unwrap()
}

#[tokio::test]
async fn bounces_complaints_and_unsubscribes_from_the_mailbox_keep_the_list_clean() {
    let smtp = SmtpServer::start();
    let dovecot = Dovecot::start();
    let site = site(&smtp, &dovecot);
    let sent = send_digest(&site, &smtp);

    // The bounce mailbox with the daemon's recorder, on the site's own database.
    let config = daemon_config(&site, &dovecot);
    let store = herald::startup::open_store(&config).await.unwrap();
    let signer = herald::startup::signer(&config).unwrap();
    let recorder = StoreRecorder::new(
        store.clone(),
        herald::startup::bounce_policy(&config).unwrap(),
        BounceAddresses::new(&config.bounces, &signer).unwrap(),
    );
    let mailbox = Mailbox::from_config(&config.bounces).expect("the mailbox is configured");
    let day = |n: u32| {
        let at = Timestamp::from_unix(epoch(&format!("2027-01-{n}T10:00:00Z")));
        move || at
    };

    // Day one: a hard bounce, the first soft bounce, a complaint, a mail unsubscribe,
    // a garbage mail, and a report whose recipient is not its row's.
    let mails = [
        dsn(
            "hard-1",
            &sent[HARD],
            HARD,
            "failed",
            "5.1.1",
            "550 5.1.1 <hard@example.org>: Recipient address rejected: User unknown",
        ),
        dsn(
            "soft-1",
            &sent[SOFT],
            SOFT,
            "failed",
            "4.2.2",
            "452 4.2.2 Mailbox full",
        ),
        complaint(&sent[COMPLAINS], COMPLAINS),
        unsubscribe_mail(&sent[LEAVES], LEAVES),
        GARBAGE.to_vec(),
        dsn(
            "misdirected-1",
            &sent[KEPT],
            "someone.else@example.org",
            "failed",
            "5.1.1",
            "550 5.1.1 User unknown",
        ),
    ];
    dovecot.append(&mails.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let first = mailbox.poll_at(&recorder, &day(14)).await.unwrap();
    assert_eq!(
        first,
        PollSummary {
            mails: 5,
            reports: 5,
            unparsed: 1,
            unparsed_waiting: 1
        }
    );
    for _ in 0..3 {
        let again = mailbox.poll_at(&recorder, &day(14)).await.unwrap();
        assert_eq!(
            again,
            PollSummary {
                unparsed_waiting: 1,
                ..PollSummary::default()
            },
            "each mail is processed once"
        );
    }
    // The garbage mail is left unread, set aside and counted; the others are read.
    let flags = dovecot.flags();
    assert_eq!(flags.len(), mails.len());
    for (uid, flags) in &flags {
        let seen = flags.iter().any(|f| f == "\\Seen");
        let aside = flags.iter().any(|f| f == UNPARSED_KEYWORD);
        if *uid == 5 {
            assert!(!seen && aside, "the garbage mail: {flags:?}");
        } else {
            assert!(seen && !aside, "mail {uid}: {flags:?}");
        }
    }

    // `herald status`, given the mailbox as the daemon is, counts the garbage mail.
    let status = site
        .command(&["status"])
        .env("HERALD__BOUNCES__IMAP_URL", dovecot.imaps_url())
        .env("HERALD__BOUNCES__IMAP_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("bounce mailbox: 1 mail(s) herald could not read"),
        "{status}"
    );

    assert_eq!(state(&site, HARD), "suppressed");
    assert_eq!(
        site.sql(&format!(
            "SELECT d.state FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE s.email = '{HARD}'"
        ))[0][0],
        "bounced"
    );
    // Tied to the exact row: the event names the digest's Message-ID too.
    let recorded = site.sql(&format!(
        "SELECT e.message_id FROM bounce_events e JOIN subscribers s ON s.id = e.subscriber_id
         WHERE s.email = '{HARD}'"
    ));
    assert_eq!(
        recorded[0][0].trim_matches(['<', '>']),
        sent[HARD].message_id.trim_matches(['<', '>'])
    );
    assert_eq!(state(&site, COMPLAINS), "unsubscribed");
    assert_eq!(state(&site, LEAVES), "unsubscribed");
    assert_eq!(
        state(&site, SOFT),
        "confirmed",
        "one soft bounce is not enough"
    );
    assert_eq!(
        state(&site, KEPT),
        "confirmed",
        "a report naming another recipient changes nothing"
    );
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM bounce_events WHERE source_id LIKE 'misdirected%'"
        ),
        0
    );
    assert_eq!(count(&site, "SELECT COUNT(*) FROM suppressions"), 2);
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("hard bounce: 550 5.1.1"), "{listed}");
    assert!(listed.contains("complaint"), "{listed}");
    assert!(listed.contains("via imap"), "{listed}");

    // Soft bounces for the same email on two more days: suppressed only at the third.
    for (n, date) in [(2, 15), (3, 16)] {
        let mail = dsn(
            &format!("soft-{n}"),
            &sent[SOFT],
            SOFT,
            "failed",
            "4.2.2",
            "452 4.2.2 Mailbox full",
        );
        dovecot.append(&[&mail]);
        for poll in 0..2 {
            let summary = mailbox.poll_at(&recorder, &day(date)).await.unwrap();
            assert_eq!(summary.reports, usize::from(poll == 0), "day {date}");
        }
        let expected = if n < 3 { "confirmed" } else { "suppressed" };
        assert_eq!(state(&site, SOFT), expected, "after {n} soft bounce(s)");
    }
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM bounce_events WHERE kind = 'soft'"
        ),
        3
    );
    assert_eq!(count(&site, "SELECT COUNT(*) FROM suppressions"), 3);
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("soft bounces on 3 days"), "{listed}");
    store.close().await;

    // The next send reaches only the reader still subscribed and not suppressed.
    site.run(&["send", "--region", "cedar-falls", "--yes"]).ok();
    let all = smtp.wait_for(READERS.len() + 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let second: Vec<String> = smtp.messages()[READERS.len()..]
        .iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    assert_eq!(all.len(), READERS.len() + 1);
    assert_eq!(second, [KEPT]);
}

/// The daemon reads the mailbox itself when `[bounces] imap_url` is set: a hard
/// bounce for the digest it sent suppresses the reader, a garbage mail is left unread
/// and counted in `/metrics`, and `/readyz` names the stage.
#[test]
fn the_daemon_reads_the_bounce_mailbox() {
    let smtp = SmtpServer::start();
    let dovecot = Dovecot::start();
    let site = site(&smtp, &dovecot);
    let sent = send_digest(&site, &smtp);
    let token = site
        .run(&["admin", "token", "create", "desk"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    dovecot.append(&[
        &dsn(
            "hard-1",
            &sent[HARD],
            HARD,
            "failed",
            "5.1.1",
            "550 5.1.1 User unknown",
        ),
        GARBAGE,
    ]);
    let mut command = site.command(&["daemon"]);
    command
        .env("HERALD__BOUNCES__IMAP_URL", dovecot.imaps_url())
        .env("HERALD__BOUNCES__IMAP_PASSWORD", PASSWORD);
    let daemon = support::Daemon::start_command(&site, command);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while state(&site, HARD) != "suppressed" {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not record the bounce"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Polled again and again (every second): still one event, the garbage unread.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&site, "SELECT COUNT(*) FROM bounce_events"), 1);
    let flags = dovecot.flags();
    assert!(flags[&2].iter().any(|f| f == UNPARSED_KEYWORD), "{flags:?}");
    assert!(!flags[&2].iter().any(|f| f == "\\Seen"), "{flags:?}");
    let bearer = format!("Bearer {token}");
    let (code, _, metrics) = support::request(
        site.http_port,
        "GET",
        "/metrics",
        &[("Authorization", &bearer)],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    for line in [
        "herald_bounce_mail_unparsed_total 1",
        "herald_bounce_mail_unparsed_waiting 1",
        "herald_bounce_reports{kind=\"hard\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    let (_, _, ready) = support::request(site.http_port, "GET", "/readyz", &[], "").unwrap();
    assert!(ready.contains("bounces"), "{ready}");
    daemon.stop();
}
