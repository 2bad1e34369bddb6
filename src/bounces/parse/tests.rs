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
            verp_token: Some("d1001.kX9q_2Zt".into()),
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
    assert_eq!(r.verp_token.as_deref(), Some("d2002.Zz0-abc"));
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
    assert_eq!(r.verp_token.as_deref(), Some("d3003.Qw3r_ty"));
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
    assert_eq!(r.verp_token.as_deref(), Some("s4004.Un5ub_x"));
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
    // A tag that is not a plausible token is not taken either.
    let raw = String::from_utf8(fixture("hard.eml"))
        .unwrap()
        .replace("d1001.kX9q_2Zt", "d1001 <evil>");
    assert_eq!(parse(raw.as_bytes()).unwrap()[0].verp_token, None);
}

#[test]
fn a_verp_address_is_not_an_unsubscribe_address_and_back() {
    let b = bounce();
    assert_eq!(
        b.verp_token("BOUNCES+abc@News.Example.org").as_deref(),
        Some("abc")
    );
    assert_eq!(b.unsubscribe_token("bounces+abc@news.example.org"), None);
    assert_eq!(
        b.unsubscribe_token("bounces+Unsubscribe-xyz@news.example.org")
            .as_deref(),
        Some("xyz")
    );
    assert_eq!(
        b.verp_token("bounces+unsubscribe-xyz@news.example.org"),
        None
    );
    assert_eq!(
        b.unsubscribe_token("bounces+unsubscribe-@news.example.org"),
        None
    );
    assert_eq!(b.verp_token("bounces@news.example.org"), None);
    assert_eq!(b.verp_token("other+abc@news.example.org"), None);
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
    let b = bounce();
    let verp = b.verp_address("d7.Ab-_=");
    assert_eq!(verp, "bounces+d7.Ab-_=@news.example.org");
    assert_eq!(b.verp_token(&verp).as_deref(), Some("d7.Ab-_="));
    assert_eq!(b.unsubscribe_token(&verp), None);
    let mailto = b.unsubscribe_address("s7.Xy");
    assert_eq!(mailto, "bounces+unsubscribe-s7.Xy@news.example.org");
    assert_eq!(b.unsubscribe_token(&mailto).as_deref(), Some("s7.Xy"));
    assert_eq!(b.verp_token(&mailto), None);
}
