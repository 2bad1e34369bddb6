//! Property test of the bounce parser on hostile mailbox content: truncated MIME, huge
//! headers, wrong and unknown charsets, deeply nested message/rfc822, mutated real
//! bounces. It never panics, and never reports a recipient (or a token) that the mail
//! does not contain, so a bounce cannot name a reader it is not about. Seeded, so a
//! failure names the case that reproduces it.
//!
//! `HERALD_PROPERTY_CASES=100000 cargo test --release --test bounce_property` runs
//! longer; `HERALD_PROPERTY_SEED` picks another sequence.

use std::panic::{AssertUnwindSafe, catch_unwind};

use herald::bounces::parse::{BounceAddress, parse_mail};
use herald::bounces::{BounceKind, BounceTag};
use herald::domain::Timestamp;
use mail_parser::{Message, MessageParser, PartType};

/// Fragments the mutator splices in: MIME structure, report fields, encodings.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r\n ",
    b"\0",
    b"\xff\xfe",
    b"\xc3",
    b"--B1001/mx.example.com\r\n",
    b"--B1001/mx.example.com--\r\n",
    b"--soft-1\r\n",
    b"--arf_boundary\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Content-Type: message/delivery-status\r\n\r\n",
    b"Content-Type: message/feedback-report\r\n\r\n",
    b"Content-Type: text/rfc822-headers\r\n\r\n",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"B1001/mx.example.com\"\r\n",
    b"Content-Type: multipart/mixed; boundary=\"\"\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"; charset=\"koi8-r\"",
    b"; charset=bogus-charset",
    b"; charset=utf-16",
    b"; charset=iso-2022-jp",
    b"=?utf-8?b?AAAA?=",
    b"=?x-unknown?q?=FF=FE?=",
    b"=?iso-8859-1?q?caf=E9?=",
    b"=FF=FE=\r\n",
    b"Action: failed\r\n",
    b"Action: delayed\r\n",
    b"Status: 5.1.1\r\n",
    b"Status: 4.2.2\r\n",
    b"Status: 5.9999999999999999999.1\r\n",
    b"Final-Recipient: rfc822;",
    b"Final-Recipient: x400; \xff\r\n",
    b"Original-Rcpt-To: ",
    b"Feedback-Type: abuse\r\n",
    b"Original-Envelope-Id: ",
    b"Delivered-To: bounces+",
    b"bounces+unsubscribe-",
    b"@news.example.org",
    b"<",
    b">",
    b";",
    b"\"",
    "\u{202e}\u{200b}é日本".as_bytes(),
];

fn corpus() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bounces");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    files.sort();
    files
}

/// A real bounce wrapped `depth` times in message/rfc822 parts.
fn nested(inner: &[u8], depth: usize) -> Vec<u8> {
    let mut mail = inner.to_vec();
    for level in 0..depth {
        let mut outer = format!(
            "From: mailer-daemon@mx{level}.example.com\r\n\
             To: bounces+n{level}@news.example.org\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"n{level}\"\r\n\r\n\
             --n{level}\r\nContent-Type: message/rfc822\r\n\r\n"
        )
        .into_bytes();
        outer.extend_from_slice(&mail);
        outer.extend_from_slice(format!("\r\n--n{level}--\r\n").as_bytes());
        mail = outer;
    }
    mail
}

/// A bounce with a header of `size` bytes, or `count` headers.
fn huge_headers(rng: &mut fastrand::Rng, inner: &[u8]) -> Vec<u8> {
    let mut mail = Vec::new();
    if rng.bool() {
        mail.extend_from_slice(b"X-Huge: ");
        let unit: &[u8] = [&b"a"[..], b"bounces+x@news.example.org, ", b"\r\n "][rng.usize(..3)];
        for _ in 0..rng.usize(1..40_000) {
            mail.extend_from_slice(unit);
        }
        mail.extend_from_slice(b"\r\n");
    } else {
        for i in 0..rng.usize(1..5_000) {
            mail.extend_from_slice(format!("X-Many-{i}: value {i}\r\n").as_bytes());
        }
    }
    mail.extend_from_slice(inner);
    mail
}

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.usize(..corpus.len())];
    match rng.u8(..16) {
        0 => return (0..rng.usize(..1024)).map(|_| rng.u8(..)).collect(),
        1 => return nested(base, rng.usize(1..120)),
        2 => return huge_headers(rng, base),
        _ => {}
    }
    let mut bytes = base.clone();
    for _ in 0..rng.usize(1..5) {
        let at = rng.usize(..=bytes.len());
        match rng.u8(..6) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let end = (at + rng.usize(..64)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let end = (at + rng.usize(..128)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.usize(..=bytes.len());
                bytes.splice(to..to, copy);
            }
            // Truncated MIME: a mail cut anywhere.
            3 => bytes.truncate(at),
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                bytes.splice(at..at, other[from..].iter().copied().take(512));
            }
            _ => {
                let token = TOKENS[rng.usize(..TOKENS.len())];
                bytes.splice(at..at, token.iter().copied());
            }
        }
    }
    bytes
}

/// Everything the mail says, lower-cased: its bytes, and each part decoded (base64,
/// quoted-printable, charsets), nested messages included.
fn mail_text(raw: &[u8]) -> String {
    fn walk(message: &Message<'_>, out: &mut String, depth: usize) {
        for part in &message.parts {
            out.push_str(&String::from_utf8_lossy(part.contents()).to_lowercase());
            out.push('\n');
            if let PartType::Message(inner) = &part.body
                && depth < 200
            {
                walk(inner, out, depth + 1);
            }
        }
    }
    let mut text = String::from_utf8_lossy(raw).to_lowercase();
    // mail-parser's debug assertion (see parse.rs) may fire here too.
    let parsed = catch_unwind(AssertUnwindSafe(|| MessageParser::default().parse(raw)));
    if let Ok(Some(message)) = parsed {
        walk(&message, &mut text, 0);
    }
    text
}

#[test]
fn hostile_bounces_never_panic_nor_name_anyone_they_do_not_contain() {
    let cases: u64 = std::env::var("HERALD_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let seed: u64 = std::env::var("HERALD_PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x626f_756e_6365);
    let corpus = corpus();
    assert!(corpus.len() >= 5);
    let bounce = BounceAddress::new("bounces@news.example.org").unwrap();
    let at = Timestamp::from_unix(1_800_000_000);
    let (mut with_reports, mut with_recipient) = (0u64, 0u64);
    for case in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(case));
        let bytes = mutate(&mut rng, &corpus);
        let result = catch_unwind(AssertUnwindSafe(|| parse_mail(&bytes, &bounce, at)));
        let Ok(result) = result else {
            let path = std::env::temp_dir().join(format!("herald-bounce-property-{case}.eml"));
            std::fs::write(&path, &bytes).unwrap();
            panic!(
                "parse_mail panicked on case {case} (seed {seed}); input saved to {}",
                path.display()
            );
        };
        let Ok(reports) = result else { continue };
        if reports.is_empty() {
            continue;
        }
        with_reports += 1;
        assert!(
            reports.len() <= 50,
            "case {case}: {} reports",
            reports.len()
        );
        let text = mail_text(&bytes);
        for report in &reports {
            if let Some(recipient) = &report.recipient {
                with_recipient += 1;
                assert!(
                    text.contains(&recipient.to_lowercase()),
                    "case {case} (seed {seed}): recipient {recipient:?} is not in the mail"
                );
            }
            if let Some(token) = &report.verp_token {
                assert!(
                    text.contains(&token.to_lowercase()),
                    "case {case} (seed {seed}): token {token:?} is not in the mail"
                );
                // Spelt exactly as herald writes it: a VERP token, or for an
                // unsubscribe the whole mailto address.
                let spelt = match report.kind {
                    BounceKind::Unsubscribe => matches!(
                        BounceTag::read(&bounce, token),
                        Some(BounceTag::Unsubscribe(_))
                    ),
                    _ => BounceTag::verp_token(token).is_some(),
                };
                assert!(spelt, "case {case}: token {token:?}");
            }
            for text in [&report.diagnostic, &Some(report.source_id.clone())]
                .into_iter()
                .flatten()
            {
                assert!(!text.chars().any(char::is_control), "case {case}: {text:?}");
                assert!(text.chars().count() <= 1000, "case {case}");
            }
            assert!(!report.source_id.is_empty(), "case {case}");
            assert_eq!(report.at, at);
        }
    }
    // The mutator must keep producing bounces, or the test proves little.
    assert!(
        with_reports * 4 > cases,
        "only {with_reports} of {cases} cases gave reports"
    );
    assert!(with_recipient > 0);
}

/// The shapes named in the brief, each at its extreme, once.
#[test]
fn extreme_shapes_are_refused_or_read_without_panicking() {
    let bounce = BounceAddress::new("bounces@news.example.org").unwrap();
    let at = Timestamp::from_unix(1_800_000_000);
    let hard = corpus()
        .into_iter()
        .find(|m| String::from_utf8_lossy(m).contains("5.1.1"))
        .unwrap();
    // Nested a thousand deep: the outer DSN has no delivery-status part of its own.
    assert!(parse_mail(&nested(&hard, 1000), &bounce, at).is_err());
    // A 10 MB header line before a real bounce.
    let mut huge = b"X-Huge: ".to_vec();
    huge.resize(10 * 1024 * 1024, b'a');
    huge.extend_from_slice(b"\r\n");
    huge.extend_from_slice(&hard);
    let _ = parse_mail(&huge, &bounce, at);
    // Every prefix of a real bounce.
    for end in 0..hard.len() {
        let _ = parse_mail(&hard[..end], &bounce, at);
    }
}
