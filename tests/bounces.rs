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
