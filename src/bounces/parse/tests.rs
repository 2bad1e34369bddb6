use super::*;

const AT: Timestamp = Timestamp::from_unix(1_800_000_000);

fn bounce() -> BounceAddress {
    BounceAddress::new("bounces@news.example.org").unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces")
        .join(name);
    std::fs::read(&path).unwrap()
}

fn parse(raw: &[u8]) -> Result<Vec<BounceReport>, Unparsed> {
    parse_mail(raw, &bounce(), AT)
}

#[test]
fn a_hard_bounce_names_its_recipient_token_and_original() {
    let reports = parse(&fixture("hard.eml")).unwrap();
    assert_eq!(
        reports,
        vec![BounceReport {
            source: BounceSource::Imap,
            source_id: "20270113230210.8C1D1C0456@mx.example.com".into(),
            kind: BounceKind::Hard,
            verp_token: Some("hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa".into()),
            original_message_id: Some(
                "6f1c2a7e-0d4b-4c8e-9f51-1a2b3c4d5e6f@news.example.org".into()
            ),
            recipient: Some("gone.reader@example.com".into()),
            diagnostic: Some(
                "550 5.1.1 <gone.reader@example.com>: Recipient address rejected: User unknown"
                    .into()
            ),
            at: AT,
        }]
    );
}

#[test]
fn a_delayed_dsn_is_soft_and_takes_the_token_from_the_returned_message() {
    let reports = parse(&fixture("soft.eml")).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.kind, BounceKind::Soft);
    // `To` is the bare bounce address: the token comes from the original's Return-Path.
    assert_eq!(
        r.verp_token.as_deref(),
        Some("softaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert_eq!(r.recipient.as_deref(), Some("full.box@example.net"));
    assert_eq!(
        r.original_message_id.as_deref(),
        Some("soft-original-2002@news.example.org")
    );
    assert_eq!(r.diagnostic.as_deref(), Some("452 4.2.2 Mailbox full"));
}

#[test]
fn an_abuse_report_is_a_complaint_with_the_original_message_id() {
    let reports = parse(&fixture("complaint.eml")).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.kind, BounceKind::Complaint);
    assert_eq!(r.source_id, "arf-3003@arf.mail.example.com");
    assert_eq!(
        r.verp_token.as_deref(),
        Some("complaintaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert_eq!(r.recipient.as_deref(), Some("annoyed.reader@example.com"));
    assert_eq!(
        r.original_message_id.as_deref(),
        Some("complained-3003@news.example.org")
    );
}

#[test]
fn a_mail_to_the_unsubscribe_address_is_an_unsubscribe() {
    let reports = parse(&fixture("unsubscribe.eml")).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.kind, BounceKind::Unsubscribe);
    // The whole address, as herald wrote it, for the recorder to open.
    assert_eq!(
        r.verp_token.as_deref(),
        Some("bounces+u-unsubscribeaaaaaaaaaaaaaaaaaaaaaaaaaaaa@news.example.org")
    );
    assert_eq!(r.recipient, None);
}

#[test]
fn a_plain_mail_is_not_a_report_and_names_nobody() {
    assert_eq!(parse(&fixture("garbage.eml")), Err(Unparsed::NotAReport));
    assert_eq!(parse(b""), Err(Unparsed::NotMail));
    assert!(parse(b"\xff\xfe\x00garbage").is_err());
}

#[test]
fn a_token_is_only_taken_from_herald_s_own_bounce_domain() {
    let raw = String::from_utf8(fixture("hard.eml"))
        .unwrap()
        .replace("@news.example.org", "@elsewhere.example");
    let reports = parse(raw.as_bytes()).unwrap();
    assert_eq!(reports[0].verp_token, None);
    // A tag not spelt as herald spells a token is not taken either.
    for bad in [
        "d1001 <evil>",
        "hard.aaaa",
        "hardaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "hard1aaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let raw = String::from_utf8(fixture("hard.eml"))
            .unwrap()
            .replace("hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa", bad);
        assert_eq!(parse(raw.as_bytes()).unwrap()[0].verp_token, None, "{bad}");
    }
}

#[test]
fn a_verp_address_is_not_an_unsubscribe_address_and_back() {
    let b = bounce();
    let verp = "BOUNCES+HARDAAAAAAAAAAAAAAAAAAAAAAAAAAAA@News.Example.org";
    assert_eq!(
        verp_token(&b, verp).as_deref(),
        Some("hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    );
    assert_eq!(unsubscribe_address(&b, verp), None);
    let mailto = "mailto:bounces+U-unsubscribeaaaaaaaaaaaaaaaaaaaaaaaaaaaa@news.example.org";
    assert_eq!(
        unsubscribe_address(&b, mailto).as_deref(),
        Some("bounces+u-unsubscribeaaaaaaaaaaaaaaaaaaaaaaaaaaaa@news.example.org")
    );
    assert_eq!(verp_token(&b, mailto), None);
    assert_eq!(unsubscribe_address(&b, "bounces+u-@news.example.org"), None);
    assert_eq!(verp_token(&b, "bounces@news.example.org"), None);
    assert_eq!(
        verp_token(
            &b,
            "other+hardaaaaaaaaaaaaaaaaaaaaaaaaaaaa@news.example.org"
        ),
        None
    );
    assert!(BounceAddress::new("bounces+x@news.example.org").is_err());
    assert!(BounceAddress::new("not an address").is_err());
}

#[test]
fn each_recipient_of_a_dsn_is_a_report_of_its_own_kind() {
    let raw = "From: mailer-daemon@mx.example.com\r\n\
        To: bounces+tok1@news.example.org\r\n\
        Message-ID: <multi@mx.example.com>\r\n\
        Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
        --b\r\nContent-Type: message/delivery-status\r\n\r\n\
        Reporting-MTA: dns; mx.example.com\r\n\r\n\
        Final-Recipient: rfc822; a@example.com\r\nAction: failed\r\nStatus: 5.2.1\r\n\r\n\
        Final-Recipient: rfc822; b@example.com\r\nAction: failed\r\nStatus: 4.4.7\r\n\r\n\
        Final-Recipient: rfc822; c@example.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n\
        Final-Recipient: rfc822; d@example.com\r\nAction: failed\r\nStatus: banana\r\n\r\n\
        Final-Recipient: x400; e@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
        --b--\r\n";
    let reports = parse(raw.as_bytes()).unwrap();
    let got: Vec<_> = reports
        .iter()
        .map(|r| {
            (
                r.recipient.as_deref().unwrap(),
                r.kind,
                r.source_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a@example.com", BounceKind::Hard, "multi@mx.example.com"),
            ("b@example.com", BounceKind::Soft, "multi@mx.example.com#2"),
            ("d@example.com", BounceKind::Soft, "multi@mx.example.com#3"),
        ]
    );
}

#[test]
fn a_dsn_that_only_says_delivered_asks_nothing() {
    let raw = "From: mailer-daemon@mx.example.com\r\n\
        Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
        --b\r\nContent-Type: message/delivery-status\r\n\r\n\
        Reporting-MTA: dns; mx.example.com\r\n\r\n\
        Final-Recipient: rfc822; a@example.com\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n\
        --b--\r\n";
    assert_eq!(parse(raw.as_bytes()), Ok(vec![]));
}

#[test]
fn a_report_without_its_machine_part_says_which_is_missing() {
    let raw = "From: mailer-daemon@mx.example.com\r\n\
        Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n--b--\r\n";
    assert_eq!(
        parse(raw.as_bytes()),
        Err(Unparsed::MissingReportPart("message/delivery-status"))
    );
    let raw = raw.replace("delivery-status", "feedback-report");
    assert_eq!(
        parse(raw.as_bytes()),
        Err(Unparsed::MissingReportPart("message/feedback-report"))
    );
}

#[test]
fn a_base64_delivery_status_part_is_decoded() {
    use base64::Engine;
    let fields = "Reporting-MTA: dns; mx.example.com\r\n\r\n\
        Final-Recipient: rfc822; encoded@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n";
    let raw = format!(
        "From: mailer-daemon@mx.example.com\r\nTo: bounces+tok@news.example.org\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
         --b\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--b--\r\n",
        base64::engine::general_purpose::STANDARD.encode(fields)
    );
    let reports = parse(raw.as_bytes()).unwrap();
    assert_eq!(reports[0].recipient.as_deref(), Some("encoded@example.com"));
    assert_eq!(reports[0].kind, BounceKind::Hard);
    // Without a Message-ID, the id is a digest of the mail: the same mail, the same id.
    assert!(reports[0].source_id.starts_with("sha256:"));
    assert_eq!(
        parse(raw.as_bytes()).unwrap()[0].source_id,
        reports[0].source_id
    );
}

#[test]
fn a_feedback_report_that_is_not_abuse_asks_nothing() {
    let raw = String::from_utf8(fixture("complaint.eml"))
        .unwrap()
        .replace("Feedback-Type: abuse", "Feedback-Type: not-spam");
    assert_eq!(parse(raw.as_bytes()), Ok(vec![]));
    let raw = String::from_utf8(fixture("complaint.eml"))
        .unwrap()
        .replace("Feedback-Type: abuse", "X-Nothing: here");
    assert_eq!(parse(raw.as_bytes()), Err(Unparsed::NoFeedbackType));
}

#[test]
fn control_characters_in_a_diagnostic_are_not_kept() {
    let raw = String::from_utf8(fixture("hard.eml"))
        .unwrap()
        .replace("User unknown", "User \x1b[31munknown\x07");
    let d = parse(raw.as_bytes()).unwrap()[0]
        .diagnostic
        .clone()
        .unwrap();
    assert!(!d.chars().any(char::is_control), "{d:?}");
}

#[test]
fn the_addresses_herald_writes_are_the_ones_it_reads_back() {
    use crate::bounces::{BounceAddresses, mailto_unsubscribe_address, verp_address};
    use crate::domain::{DeliveryId, SubscriberId};
    let config = crate::config::BouncesConfig {
        address: Some(bounce()),
        soft_limit: 3,
        sns_cert_hosts: vec![],
        mailgun_signing_key: None,
        imap: None,
        poll_interval: std::time::Duration::from_secs(60),
    };
    let signer = crate::tokens::Signer::new(b"secret");
    let addresses = BounceAddresses::new(&config, &signer).unwrap();
    let policy = crate::bounces::BouncePolicy::new(&config, &signer);
    for id in [1, 7, 1234, i64::MAX] {
        // Whatever case a relay gives it back in.
        for verp in [
            verp_address(&addresses, DeliveryId::new(id)),
            verp_address(&addresses, DeliveryId::new(id)).to_uppercase(),
        ] {
            let token = verp_token(&bounce(), &verp).expect(&verp);
            assert_eq!(policy.delivery_of(&token), Some(DeliveryId::new(id)));
            assert_eq!(unsubscribe_address(&bounce(), &verp), None);
        }
        let mailto = mailto_unsubscribe_address(&addresses, SubscriberId::new(id), AT);
        let read = unsubscribe_address(&bounce(), &format!("mailto:{}", mailto.to_uppercase()));
        assert_eq!(read.as_deref(), Some(mailto.as_str()));
        let reader = crate::bounces::reader_from_unsubscribe_address(&addresses, &read.unwrap());
        assert_eq!(reader.map(|r| r.reader), Some(SubscriberId::new(id)));
        assert_eq!(verp_token(&bounce(), &mailto), None);
    }
}
