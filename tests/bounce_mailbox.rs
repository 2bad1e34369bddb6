//! The bounce mailbox against a real IMAP server (Debian's Dovecot, started by the
//! test): a hard-bounce DSN, a soft DSN, an ARF complaint, a mailto unsubscribe and a
//! garbage mail, delivered with IMAP APPEND, are each read into the right report once
//! however often the mailbox is polled; the garbage one is left unread, flagged and
//! counted. TLS is verified, STARTTLS works, and failures lose nothing.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::bounces::imap::{ImapError, ImapSettings, UNPARSED_KEYWORD};
use herald::bounces::mailbox::{Mailbox, PollError, PollSummary, RecordBounce};
use herald::bounces::parse::BounceAddress;
use herald::bounces::{BounceKind, BounceReport, BounceSource};
use herald::config::Secret;
use herald::domain::Timestamp;
use support::dovecot::{Dovecot, PASSWORD};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(support::repo().join("tests/fixtures/bounces").join(name)).unwrap()
}

fn mailbox(url: &str, password: &str, ca: Option<Vec<u8>>) -> Mailbox {
    Mailbox {
        settings: ImapSettings::from_url(url, Secret::new(password), ca, Duration::from_secs(10))
            .unwrap(),
        bounce: BounceAddress::new("bounces@news.example.org").unwrap(),
        poll_interval: Duration::from_secs(1),
    }
}

fn trusted(dovecot: &Dovecot) -> Option<Vec<u8>> {
    Some(std::fs::read(&dovecot.certificates.ca).unwrap())
}

/// A recorder that keeps what it is handed, as the store will.
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<BounceReport>>>);

impl Recorded {
    fn recorder(&self) -> impl RecordBounce + use<> {
        let kept = self.0.clone();
        move |report: BounceReport| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(report);
                Ok(())
            }
        }
    }

    fn reports(&self) -> Vec<BounceReport> {
        self.0.lock().unwrap().clone()
    }
}

fn seen(flags: &[String]) -> bool {
    flags.iter().any(|f| f == "\\Seen")
}

fn set_aside(flags: &[String]) -> bool {
    flags.iter().any(|f| f == UNPARSED_KEYWORD)
}

#[tokio::test]
async fn each_mail_is_read_into_its_report_once_however_often_the_mailbox_is_polled() {
    let dovecot = Dovecot::start();
    let names = [
        "hard.eml",
        "soft.eml",
        "complaint.eml",
        "unsubscribe.eml",
        "garbage.eml",
    ];
    let mails: Vec<Vec<u8>> = names.iter().map(|n| fixture(n)).collect();
    dovecot.append(&mails.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mailbox = mailbox(&dovecot.imaps_url(), PASSWORD, trusted(&dovecot));
    let recorded = Recorded::default();
    let recorder = recorded.recorder();

    let first = mailbox.poll(&recorder).await.unwrap();
    assert_eq!(
        first,
        PollSummary {
            mails: 4,
            reports: 4,
            unparsed: 1,
            unparsed_waiting: 1
        }
    );
    let reports = recorded.reports();
    let got: Vec<_> = reports
        .iter()
        .map(|r| {
            (
                r.kind,
                r.verp_token.as_deref(),
                r.recipient.as_deref(),
                r.original_message_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                BounceKind::Hard,
                Some("hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                Some("gone.reader@example.com"),
                Some("6f1c2a7e-0d4b-4c8e-9f51-1a2b3c4d5e6f@news.example.org"),
            ),
            (
                BounceKind::Soft,
                Some("softaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                Some("full.box@example.net"),
                Some("soft-original-2002@news.example.org"),
            ),
            (
                BounceKind::Complaint,
                Some("complaintaaaaaaaaaaaaaaaaaaaaaaa"),
                Some("annoyed.reader@example.com"),
                Some("complained-3003@news.example.org"),
            ),
            (
                BounceKind::Unsubscribe,
                Some("bounces+u-unsubscribeaaaaaaaaaaaaaaaaaaaaaaaaaaaa@news.example.org"),
                None,
                None,
            ),
        ]
    );
    assert!(reports.iter().all(|r| r.source == BounceSource::Imap));
    assert_eq!(
        reports[0].diagnostic.as_deref(),
        Some("550 5.1.1 <gone.reader@example.com>: Recipient address rejected: User unknown")
    );
    assert_eq!(
        reports[0].source_id,
        "20270113230210.8C1D1C0456@mx.example.com"
    );

    // The four read are marked read; the garbage one is unread, set aside, not deleted.
    let flags = dovecot.flags();
    assert_eq!(flags.len(), 5, "no mail is deleted: {flags:?}");
    for uid in 1..=4 {
        assert!(seen(&flags[&uid]), "mail {uid}: {:?}", flags[&uid]);
        assert!(!set_aside(&flags[&uid]), "mail {uid}: {:?}", flags[&uid]);
    }
    assert!(
        !seen(&flags[&5]) && set_aside(&flags[&5]),
        "{:?}",
        flags[&5]
    );

    // Polled again, and again: nothing is read twice, the garbage stays counted once.
    for _ in 0..2 {
        let again = mailbox.poll(&recorder).await.unwrap();
        assert_eq!(
            again,
            PollSummary {
                mails: 0,
                reports: 0,
                unparsed: 0,
                unparsed_waiting: 1
            }
        );
    }
    assert_eq!(recorded.reports().len(), 4);

    // A new bounce arriving later is read on the next poll, and only it.
    let later = String::from_utf8(fixture("hard.eml"))
        .unwrap()
        .replace("20270113230210.8C1D1C0456", "20270114090000.AAAA")
        .replace(
            "hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "lateraaaaaaaaaaaaaaaaaaaaaaaaaaa",
        );
    dovecot.append(&[later.as_bytes()]);
    let third = mailbox.poll(&recorder).await.unwrap();
    assert_eq!((third.mails, third.reports, third.unparsed), (1, 1, 0));
    let reports = recorded.reports();
    assert_eq!(reports.len(), 5);
    assert_eq!(
        reports[4].verp_token.as_deref(),
        Some("lateraaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert!(seen(&dovecot.flags()[&6]));
}

#[tokio::test]
async fn an_imap_url_is_upgraded_with_starttls() {
    let dovecot = Dovecot::start();
    dovecot.append(&[&fixture("complaint.eml")]);
    let mailbox = mailbox(&dovecot.starttls_url(), PASSWORD, trusted(&dovecot));
    let recorded = Recorded::default();
    // The instant each report carries is the one the caller's clock reads.
    let pinned = Timestamp::from_unix(support::epoch(support::PINNED_CLOCK));
    let summary = mailbox
        .poll_at(&recorded.recorder(), &|| pinned)
        .await
        .unwrap();
    assert_eq!((summary.mails, summary.reports), (1, 1));
    assert_eq!(recorded.reports()[0].kind, BounceKind::Complaint);
    assert_eq!(recorded.reports()[0].at, pinned);
}

/// A server (scripted here, to inject the fault) that does not offer STARTTLS: herald
/// stops, and the login and password are never sent in the clear.
#[tokio::test]
async fn a_server_that_refuses_starttls_never_sees_the_login() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        write.write_all(b"* OK IMAP4rev1 ready\r\n").await.unwrap();
        let mut lines = BufReader::new(read).lines();
        let mut heard = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let tag = line.split(' ').next().unwrap_or("").to_string();
            heard.push(line);
            write
                .write_all(format!("{tag} BAD not here\r\n").as_bytes())
                .await
                .unwrap();
        }
        heard
    });
    let url = format!("imap://bounces%40news.example.org@127.0.0.1:{port}/INBOX");
    let mailbox = mailbox(&url, PASSWORD, None);
    let recorded = Recorded::default();
    let error = mailbox.poll(&recorded.recorder()).await.unwrap_err();
    assert!(
        matches!(&error, PollError::Imap(ImapError::Refused { command, .. }) if command.starts_with("STARTTLS")),
        "{error}"
    );
    let heard = server.await.unwrap();
    assert_eq!(heard, vec!["S1 STARTTLS".to_string()]);
}

#[tokio::test]
async fn a_certificate_herald_does_not_trust_is_refused_before_logging_in() {
    let dovecot = Dovecot::start();
    dovecot.append(&[&fixture("hard.eml")]);
    let before = dovecot.log().len();
    for url in [dovecot.imaps_url(), dovecot.starttls_url()] {
        let mailbox = mailbox(&url, PASSWORD, None);
        let recorded = Recorded::default();
        let error = mailbox.poll(&recorded.recorder()).await.unwrap_err();
        assert!(
            matches!(error, PollError::Imap(ImapError::Tls { .. })),
            "{url}: {error}"
        );
        assert!(error.to_string().contains("TLS"), "{error}");
        assert!(recorded.reports().is_empty());
    }
    // Dovecot writes its log on its own time: wait for the line, within bounds.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dovecot.log()[before..].contains("unknown ca") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = dovecot.log()[before..].to_string();
    assert!(log.contains("unknown ca"), "{log}");
    assert!(!log.contains("Login: user="), "{log}");
    assert!(dovecot.flags()[&1].is_empty(), "{:?}", dovecot.flags());
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_changes_nothing() {
    let dovecot = Dovecot::start();
    dovecot.append(&[&fixture("hard.eml")]);
    let mailbox = mailbox(&dovecot.imaps_url(), "wrong", trusted(&dovecot));
    let recorded = Recorded::default();
    let error = mailbox.poll(&recorded.recorder()).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(&error, PollError::Imap(ImapError::Refused { command, .. }) if command == "LOGIN"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "the password shows: {text}");
    assert!(dovecot.flags()[&1].is_empty());
}

#[tokio::test]
async fn a_report_the_recorder_refuses_leaves_its_mail_unread_for_the_next_poll() {
    let dovecot = Dovecot::start();
    dovecot.append(&[&fixture("hard.eml"), &fixture("soft.eml")]);
    let mailbox = mailbox(&dovecot.imaps_url(), PASSWORD, trusted(&dovecot));
    let refusing = |_report: BounceReport| async { Err("the database is down".to_string()) };
    let error = mailbox.poll(&refusing).await.unwrap_err();
    assert!(
        error.to_string().contains("the database is down"),
        "{error}"
    );
    let flags = dovecot.flags();
    assert!(
        flags.values().all(|f| !seen(f) && !set_aside(f)),
        "{flags:?}"
    );

    let recorded = Recorded::default();
    let summary = mailbox.poll(&recorded.recorder()).await.unwrap();
    assert_eq!((summary.mails, summary.reports), (2, 2));
    let kinds: Vec<_> = recorded.reports().iter().map(|r| r.kind).collect();
    assert_eq!(kinds, vec![BounceKind::Hard, BounceKind::Soft]);
    assert!(dovecot.flags().values().all(|f| seen(f)));
}

/// The mailbox as an operator configures it: `[bounces]` in the file, the password in
/// `HERALD__BOUNCES__IMAP_PASSWORD`, the server's authority in `imap_ca_file` (a path
/// relative to the config file).
#[tokio::test]
async fn the_mailbox_configured_in_bounces_reads_the_server() {
    use herald::config::{Config, PathBase};
    let dovecot = Dovecot::start();
    dovecot.append(&[&fixture("hard.eml")]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&dovecot.certificates.ca, dir.path().join("imap-ca.pem")).unwrap();
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[mail]
from = "Riverton News <news@news.example.org>"
postal_address = "1 Main St, Riverton"

[bounces]
address = "bounces@news.example.org"
imap_url = "{}"
imap_ca_file = "imap-ca.pem"
poll_interval = "5s"

[[regions]]
slug = "riverton"
name = "Riverton"
timezone = "America/Los_Angeles"
"#,
            dovecot.imaps_url()
        ),
    )
    .unwrap();
    let env = [(
        "HERALD__BOUNCES__IMAP_PASSWORD".to_string(),
        PASSWORD.to_string(),
    )];
    let config = Config::load_with_env(&path, PathBase::ConfigFolder, env).unwrap();
    let mailbox = Mailbox::from_config(&config.bounces).expect("the mailbox is configured");
    assert_eq!(mailbox.poll_interval, Duration::from_secs(5));
    let recorded = Recorded::default();
    let summary = mailbox.poll(&recorded.recorder()).await.unwrap();
    assert_eq!((summary.mails, summary.reports), (1, 1));
    assert_eq!(
        recorded.reports()[0].verp_token.as_deref(),
        Some("hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );

    // Without the password the configuration is refused with the variable to set.
    let err = Config::load_with_env(&path, PathBase::ConfigFolder, Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("HERALD__BOUNCES__IMAP_PASSWORD"), "{err}");
}
