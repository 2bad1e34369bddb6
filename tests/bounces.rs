//! Bounces and complaints that come back after the relay accepted a message: VERP
//! envelope senders on every email, the relays' signed webhooks, and a send after them.

mod support;

use std::time::Duration;

use herald::bounces::{BounceAddresses, reader_from_unsubscribe_address, verp_token_from_address};
use herald::config::{BounceAddress, BouncesConfig};
use herald::tokens::Signer;
use support::{Site, SmtpServer, parse_email};

/// The site secret of every test site (tests/support).
const SECRET: &[u8] = b"integration-test-secret";

const BOUNCES: &str = r#"
[bounces]
address = "bounces@bounce.test.example"
"#;

fn addresses() -> BounceAddresses {
    let config = BouncesConfig {
        address: Some(BounceAddress {
            local: "bounces".into(),
            domain: "bounce.test.example".into(),
        }),
        soft_limit: 3,
        sns_cert_hosts: vec![],
        mailgun_signing_key: None,
        imap: None,
        poll_interval: std::time::Duration::from_secs(60),
    };
    BounceAddresses::new(&config, &Signer::new(SECRET)).unwrap()
}

/// A site with three confirmed Riverton readers and its feeds ingested.
fn site_with_readers(smtp: &SmtpServer, extra: &str) -> Site {
    let site = Site::new(smtp.port)
        .with_public_url("https://news.test.example")
        .with_extra(extra);
    site.run(&["ingest"]).ok();
    for email in ["ada@example.org", "bo@example.org", "cy@example.net"] {
        site.add_confirmed(email, "riverton");
    }
    site
}

#[test]
fn every_email_goes_out_from_a_verp_address_naming_its_row() {
    let smtp = SmtpServer::start();
    let site = site_with_readers(&smtp, BOUNCES);
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(messages.len(), 3);
    let senders = smtp.envelope_senders();
    let addresses = addresses();
    let mut rows = Vec::new();
    for ((rcpt, raw), sender) in messages.iter().zip(&senders) {
        assert!(
            sender.starts_with("bounces+") && sender.ends_with("@bounce.test.example"),
            "{sender}"
        );
        let row = verp_token_from_address(&addresses, sender)
            .unwrap_or_else(|| panic!("{sender} names no row"));
        let stored = site.sql(&format!(
            "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE d.id = {}",
            row.get()
        ));
        assert_eq!(
            stored[0][0],
            rcpt.trim(),
            "the token names this reader's row"
        );
        rows.push(row);
        let email = parse_email(raw);
        assert_eq!(
            email.header("From"),
            Some("\"Test News\" <news@test.example>")
        );
        let unsubscribe = email.header("List-Unsubscribe").unwrap();
        let (https, mailto) = unsubscribe.split_once(", ").unwrap();
        assert!(https.starts_with("<https://news.test.example/unsubscribe?token="));
        let mailto = mailto
            .strip_prefix("<mailto:")
            .and_then(|m| m.strip_suffix('>'))
            .unwrap();
        let reader = reader_from_unsubscribe_address(&addresses, mailto).unwrap();
        let owner = site.sql(&format!(
            "SELECT email FROM subscribers WHERE id = {}",
            reader.reader.get()
        ));
        assert_eq!(owner[0][0], rcpt.trim());
    }
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), 3, "each email names its own row");
    // A token changed by one character names nothing.
    assert_eq!(
        verp_token_from_address(&addresses, &senders[0].replace("bounces+", "bounces+x")),
        None
    );
}

#[test]
fn without_a_bounce_address_the_envelope_sender_is_the_from_address() {
    let smtp = SmtpServer::start();
    let site = site_with_readers(&smtp, "");
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(messages.len(), 3);
    assert_eq!(smtp.envelope_senders(), vec!["news@test.example"; 3]);
    for (_, raw) in &messages {
        let email = parse_email(raw);
        let unsubscribe = email.header("List-Unsubscribe").unwrap();
        assert!(!unsubscribe.contains("mailto:"), "{unsubscribe}");
    }
}

/// Hex HMAC-SHA256 of `timestamp` and `token` with `key`: Mailgun's signature.
fn mailgun_signature(key: &str, timestamp: i64, token: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn mailgun_body(key: &str, timestamp: i64, token: &str, event: serde_json::Value) -> String {
    serde_json::json!({
        "signature": {
            "timestamp": timestamp.to_string(),
            "token": token,
            "signature": mailgun_signature(key, timestamp, token),
        },
        "event-data": event,
    })
    .to_string()
}

/// A throwaway RSA certificate made with the openssl command, and what signs with it.
struct SnsSigner {
    dir: tempfile::TempDir,
}

impl SnsSigner {
    fn new() -> SnsSigner {
        let dir = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
            ])
            .args([
                "-subj",
                "/CN=sns.test.example",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .current_dir(dir.path())
            .output()
            .expect("the openssl command must be installed");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        SnsSigner { dir }
    }

    fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("cert.pem")).unwrap()
    }

    /// The message with its `Signature`, as SNS signs it (version 1: SHA-1, 2: SHA-256).
    fn sign(&self, mut message: serde_json::Value) -> serde_json::Value {
        use base64::Engine;
        let version = message["SignatureVersion"].as_str().unwrap().to_string();
        let fields: &[&str] = if message["Type"] == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut text = String::new();
        for field in fields {
            if let Some(value) = message[*field].as_str() {
                text.push_str(&format!("{field}\n{value}\n"));
            }
        }
        let input = self.dir.path().join("input.txt");
        std::fs::write(&input, text).unwrap();
        let digest = if version == "1" { "-sha1" } else { "-sha256" };
        let signed = std::process::Command::new("openssl")
            .args([
                "dgst",
                digest,
                "-sign",
                "key.pem",
                "-out",
                "sig.bin",
                "input.txt",
            ])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let signature = std::fs::read(self.dir.path().join("sig.bin")).unwrap();
        message["Signature"] = base64::engine::general_purpose::STANDARD
            .encode(signature)
            .into();
        message
    }
}

fn post(site: &Site, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = support::request(
        site.http_port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .unwrap();
    (status, body)
}

fn count(site: &Site, query: &str) -> String {
    site.sql(query)[0][0].clone()
}

#[test]
fn signed_webhooks_are_applied_once_forged_ones_change_nothing_and_the_next_send_skips_them() {
    let smtp = SmtpServer::start();
    let certs = support::feed_server::FeedServer::start();
    let sns = SnsSigner::new();
    certs.route(
        "/SimpleNotificationService-test.pem",
        support::feed_server::Reply::ok("application/x-pem-file", sns.cert_pem()),
    );
    certs.route(
        "/confirm-subscription",
        support::feed_server::Reply::ok("text/xml", "<ok/>"),
    );
    let site = Site::new(smtp.port)
        .with_public_url("https://news.test.example")
        .with_extra(&format!("{BOUNCES}sns_cert_hosts = [\"127.0.0.1\"]\n"));
    site.run(&["ingest"]).ok();
    for email in [
        "ada@example.org",
        "bo@example.org",
        "cy@example.net",
        "di@example.net",
    ] {
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
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(4, Duration::from_secs(10));
    assert_eq!(messages.len(), 4);
    let senders = smtp.envelope_senders();
    let sent_to = |who: &str| {
        let at = messages
            .iter()
            .position(|(rcpt, _)| rcpt.trim() == who)
            .unwrap();
        let message_id = parse_email(&messages[at].1)
            .header("Message-ID")
            .unwrap()
            .to_string();
        (senders[at].clone(), message_id)
    };

    let token = site
        .run(&["admin", "token", "create", "desk"])
        .ok()
        .stdout()
        .trim()
        .to_string();
    let key = "mailgun-test-signing-key";
    let mut command = site.command(&["daemon"]);
    command.env("HERALD__BOUNCES__MAILGUN_SIGNING_KEY", key);
    let daemon = support::Daemon::start_command(&site, command);
    let events = "SELECT COUNT(*) FROM bounce_events";

    // Mailgun: ada's mailbox does not exist.
    let (ada_verp, _) = sent_to("ada@example.org");
    let hard = serde_json::json!({
        "id": "mg-event-1", "event": "failed", "severity": "permanent",
        "recipient": "ada@example.org", "timestamp": site.now() as f64,
        "envelope": {"sender": ada_verp},
        "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"},
    });
    // Forged first: a signature with another key, and one whose timestamp is old.
    let forged = mailgun_body("not-the-key", site.now(), "token-1", hard.clone());
    assert_eq!(post(&site, "/webhooks/mailgun", &forged).0, 401);
    let stale = mailgun_body(key, site.now() - 301, "token-1", hard.clone());
    assert_eq!(post(&site, "/webhooks/mailgun", &stale).0, 401);
    let mut tampered: serde_json::Value =
        serde_json::from_str(&mailgun_body(key, site.now(), "token-1", hard.clone())).unwrap();
    tampered["signature"]["token"] = "token-2".into();
    assert_eq!(
        post(&site, "/webhooks/mailgun", &tampered.to_string()).0,
        401
    );
    assert_eq!(
        count(&site, events),
        "0",
        "a refused webhook changes nothing"
    );
    assert_eq!(count(&site, "SELECT COUNT(*) FROM suppressions"), "0");
    // Genuine, then replayed.
    let genuine = mailgun_body(key, site.now(), "token-1", hard);
    let (status, body) = post(&site, "/webhooks/mailgun", &genuine);
    assert_eq!((status, body.contains("applied")), (200, true), "{body}");
    for _ in 0..2 {
        let (status, body) = post(&site, "/webhooks/mailgun", &genuine);
        assert_eq!((status, body.contains("duplicate")), (200, true), "{body}");
    }
    assert_eq!(count(&site, events), "1");

    // SES through SNS: the subscription is confirmed (version 1 signature) ...
    let cert_url = certs.url("/SimpleNotificationService-test.pem");
    let subscribe = sns.sign(serde_json::json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": "sns-sub-1",
        "Token": "confirm-token",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-bounces",
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": certs.url("/confirm-subscription"),
        "Timestamp": "2027-01-13T23:00:00.000Z",
        "SignatureVersion": "1",
        "SigningCertURL": cert_url,
    }));
    let (status, body) = post(&site, "/webhooks/ses", &subscribe.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(certs.requests("/confirm-subscription").len(), 1);
    // ... and bo's complaint arrives (version 2), matched by the Message-ID alone.
    let (_, bo_message_id) = sent_to("bo@example.org");
    let complaint = serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": "bo@example.org"}],
            "timestamp": "2027-01-13T23:01:00.000Z",
            "complaintFeedbackType": "abuse",
        },
        "mail": {
            "messageId": "0100018c-ses-id",
            "headers": [{"name": "Message-ID", "value": bo_message_id}],
        },
    });
    let notification = sns.sign(serde_json::json!({
        "Type": "Notification",
        "MessageId": "sns-note-1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:herald-bounces",
        "Message": complaint.to_string(),
        "Timestamp": "2027-01-13T23:01:05.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": cert_url,
    }));
    // The message changed after signing: refused.
    let mut altered = notification.clone();
    altered["Message"] = complaint
        .to_string()
        .replace("bo@example.org", "cy@example.net")
        .into();
    assert_eq!(post(&site, "/webhooks/ses", &altered.to_string()).0, 401);
    // A certificate from a host not on the list: refused before anything is fetched.
    let mut elsewhere = notification.clone();
    elsewhere["SigningCertURL"] = "https://certs.example.net/x.pem".into();
    assert_eq!(post(&site, "/webhooks/ses", &elsewhere.to_string()).0, 401);
    assert_eq!(count(&site, events), "1");
    let (status, body) = post(&site, "/webhooks/ses", &notification.to_string());
    assert_eq!((status, body.contains("applied")), (200, true), "{body}");
    let (status, body) = post(&site, "/webhooks/ses", &notification.to_string());
    assert_eq!((status, body.contains("duplicate")), (200, true), "{body}");
    assert_eq!(count(&site, events), "2");
    assert_eq!(
        certs.requests("/SimpleNotificationService-test.pem").len(),
        1,
        "fetched once"
    );

    let states = site.sql("SELECT email, state FROM subscribers ORDER BY email");
    let state = |who: &str| states.iter().find(|r| r[0] == who).unwrap()[1].clone();
    assert_eq!(state("ada@example.org"), "suppressed");
    assert_eq!(state("bo@example.org"), "unsubscribed");
    assert_eq!(state("cy@example.net"), "confirmed");
    assert_eq!(state("di@example.net"), "confirmed");
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("hard bounce: 550 5.1.1"), "{listed}");
    assert!(listed.contains("complaint"), "{listed}");
    assert!(
        listed.contains("via mailgun") && listed.contains("via ses"),
        "{listed}"
    );
    assert_eq!(
        count(
            &site,
            "SELECT d.state FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id
             WHERE s.email = 'ada@example.org'"
        ),
        "bounced"
    );
    // Reported per kind and per domain: herald status, /admin/api/stats, /metrics.
    let status = site.run(&["status"]).ok().stdout();
    assert!(
        status.contains("bounces: 1 reported after sending (1 hard, 0 soft), bounce rate 25.00%"),
        "{status}"
    );
    assert!(
        status.contains("1 complaint(s), complaint rate 25.000%"),
        "{status}"
    );
    assert!(
        status.contains("example.org")
            && status.contains(
                "1 hard, 1 complaint; bounce rate 50.00%, complaint rate 50.000% of 2 sent; \
                 2 suppressed"
            ),
        "{status}"
    );
    assert!(
        status.contains("suppressions: 1 complaint, 1 hard"),
        "{status}"
    );
    let bearer = format!("Bearer {token}");
    let (code, _, stats) = support::request(
        site.http_port,
        "GET",
        "/admin/api/stats",
        &[("Authorization", &bearer)],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let bounces = &stats["bounces"];
    assert_eq!(bounces["sent"], 4);
    assert_eq!(bounces["by_kind"]["hard"], 1);
    assert_eq!(bounces["by_kind"]["complaint"], 1);
    assert_eq!(bounces["complaint_rate"], 0.25);
    assert_eq!(bounces["by_domain"][0]["domain"], "example.org");
    assert_eq!(bounces["by_domain"][0]["suppressed"], 2);
    assert_eq!(bounces["by_domain"][0]["sent"], 2);
    assert_eq!(bounces["by_domain"][0]["bounce_rate"], 0.5);
    assert_eq!(bounces["by_domain"][0]["complaint_rate"], 0.5);
    assert_eq!(bounces["suppressions"]["hard"], 1);
    let (code, _, listed) = support::request(
        site.http_port,
        "GET",
        "/admin/api/suppressions",
        &[("Authorization", &bearer)],
        "",
    )
    .unwrap();
    assert_eq!(code, 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["count"], 2);
    let kinds: Vec<&str> = listed["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["event"]["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"hard") && kinds.contains(&"complaint"),
        "{listed}"
    );
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
        "herald_bounce_reports{kind=\"hard\"} 1",
        "herald_bounce_reports{kind=\"complaint\"} 1",
        "herald_bounce_reports_by_domain{domain=\"example.org\",kind=\"hard\"} 1",
        "herald_bounce_rate_by_domain{domain=\"example.org\"} 0.5",
        "herald_complaint_rate_by_domain{domain=\"example.org\"} 0.5",
        "herald_bounce_rate 0.25",
        "herald_complaint_rate 0.25",
        "herald_suppressions{cause=\"complaint\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    daemon.stop();

    // The next send reaches only the readers still subscribed and not suppressed.
    site.run(&["send", "--region", "cedar-falls", "--yes"]).ok();
    let all = smtp.wait_for(6, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let mut second: Vec<String> = smtp.messages()[4..]
        .iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    second.sort();
    assert_eq!(all.len(), 6);
    assert_eq!(second, ["cy@example.net", "di@example.net"]);
}

#[test]
fn sign_ups_never_confirmed_are_erased_once_their_link_expired() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.add_confirmed("kept@example.org", "riverton");
    site.run(&[
        "subscribers",
        "add",
        "waiting@example.org",
        "--region",
        "riverton",
    ])
    .ok();
    let now = site.run(&["subscribers", "purge-pending"]).ok().stdout();
    assert!(now.contains("erased 0 sign-up(s)"), "{now}");
    // Eight days on, past the seven-day confirmation link.
    let site = site.with_clock("2027-01-21T23:00:00Z");
    let later = site.run(&["subscribers", "purge-pending"]).ok().stdout();
    assert!(later.contains("erased 1 sign-up(s)"), "{later}");
    let left = site.sql("SELECT email, state FROM subscribers");
    assert_eq!(
        left,
        vec![vec![
            "kept@example.org".to_string(),
            "confirmed".to_string()
        ]]
    );
    assert_eq!(site.sql("SELECT SUM(count) FROM purged_signups")[0][0], "1");
    let status = site.run(&["status"]).ok().stdout();
    assert!(
        status.contains("sign-ups erased unconfirmed: 1"),
        "{status}"
    );
}
