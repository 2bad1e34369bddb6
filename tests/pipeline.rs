//! End to end with the real binary: a feed in, digests out over a real SMTP server,
//! every delivery recorded; the second send delivers nothing.

mod support;

use std::time::Duration;

use support::{Run, Site, SmtpServer, parse_email};

#[test]
fn feed_to_digests_over_smtp_with_every_delivery_recorded() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port).with_public_url("https://news.test.example");

    let ingest = site.run(&["ingest"]).ok();
    assert!(ingest.stdout().contains("riverton"), "{}", ingest.stdout());
    assert!(ingest.stdout().contains("0 failed"), "{}", ingest.stdout());

    for email in ["ada@example.org", "Bo@Example.ORG", "cy@example.net"] {
        site.add_confirmed(email, "riverton");
    }
    // A pending reader must get nothing.
    site.run(&[
        "subscribers",
        "add",
        "pending@example.org",
        "--region",
        "riverton",
    ])
    .ok();

    let send = site.run(&["send", "--region", "riverton", "--yes"]).ok();
    assert!(send.stdout().contains("3 sent"), "{}", send.stdout());

    let messages = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(messages.len(), 3, "exactly three digests arrive");
    let mut recipients: Vec<String> = messages.iter().map(|(r, _)| r.trim().to_string()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["ada@example.org", "bo@example.org", "cy@example.net"]
    );

    let mut message_ids = Vec::new();
    for (_, raw) in &messages {
        let email = parse_email(raw);
        let content_type = email.header("Content-Type").unwrap();
        assert!(
            content_type.starts_with("multipart/alternative"),
            "{content_type}"
        );
        assert_eq!(email.parts.len(), 2);
        assert!(
            email.parts[0].0.starts_with("text/plain"),
            "text/plain comes first"
        );
        assert!(email.parts[1].0.starts_with("text/html"));
        let message_id = email.header("Message-ID").unwrap();
        assert!(
            message_id.starts_with('<') && message_id.ends_with("@test.example>"),
            "{message_id}"
        );
        message_ids.push(message_id.to_string());
        let unsubscribe = email.header("List-Unsubscribe").unwrap();
        assert!(
            unsubscribe.starts_with("<https://news.test.example/unsubscribe?token="),
            "{unsubscribe}"
        );
        assert_eq!(
            email.header("List-Unsubscribe-Post"),
            Some("List-Unsubscribe=One-Click")
        );
        assert!(email.header("List-Id").unwrap().contains("test.example>"));
        let (text, html) = (&email.parts[0].1, &email.parts[1].1);
        for title in [
            "Water main break closes Front Street",
            "Holiday lights parade returns",
        ] {
            assert!(text.contains(title), "text part lacks {title:?}:\n{text}");
            assert!(html.contains(title), "html part lacks {title:?}");
        }
        for part in [text, html] {
            assert!(
                part.contains("1 Test Street"),
                "postal address in every part"
            );
            assert!(
                part.contains("/unsubscribe?token="),
                "unsubscribe link in every part"
            );
        }
    }
    message_ids.sort();
    message_ids.dedup();
    assert_eq!(message_ids.len(), 3, "every message has its own Message-ID");

    // Every row is sent, with the server's reply and the Message-ID stored.
    let rows =
        site.sql("SELECT state, attempts, smtp_reply, message_id FROM deliveries ORDER BY id");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row[0], "sent");
        assert_eq!(row[1], "1");
        assert!(row[2].starts_with("250"), "reply stored: {row:?}");
        assert_eq!(row[3].len(), 32);
    }

    // The same send again delivers nothing new.
    let again = site.run(&["send", "--region", "riverton", "--yes"]).ok();
    assert!(again.stdout().contains("queued 0"), "{}", again.stdout());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smtp.messages().len(), 3, "a second send delivers nothing");
    assert_eq!(site.sql("SELECT COUNT(*) FROM deliveries")[0][0], "3");

    let status = site.run(&["status"]).ok();
    assert!(
        status.stdout().contains("sent        3"),
        "{}",
        status.stdout()
    );
}

#[test]
fn a_reader_of_two_regions_gets_one_email_grouped_by_region_and_no_article_twice() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    site.run(&[
        "subscribers",
        "add",
        "both@example.org",
        "--region",
        "riverton,cascadia",
        "--confirmed",
    ])
    .ok();
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    site.run(&["send", "--region", "cascadia", "--yes"]).ok();
    let messages = smtp.wait_for(2, Duration::from_secs(10));
    assert_eq!(messages.len(), 2);
    // The bridge story is in both feeds (one article, two regions): it goes out once.
    let bridge = "Ferry Street Bridge";
    let carrying: usize = messages
        .iter()
        .filter(|(_, raw)| parse_email(raw).parts[0].1.contains(bridge))
        .count();
    assert_eq!(carrying, 1, "the shared story reaches the reader once");
}

#[test]
fn dry_run_shows_recipients_and_sends_nothing() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "cedar-falls");
    let dry = site
        .run(&["send", "--region", "cedar-falls", "--dry-run"])
        .ok();
    assert!(
        dry.stdout().contains("ada@example.org  5 article(s)"),
        "{}",
        dry.stdout()
    );
    assert_eq!(site.sql("SELECT COUNT(*) FROM deliveries")[0][0], "0");
    // Without --yes and without a terminal, nothing is sent either.
    let refused = site.run(&["send", "--region", "cedar-falls"]).failed();
    assert!(refused.stderr().contains("--yes"), "{}", refused.stderr());
    assert!(smtp.messages().is_empty());
}

#[test]
fn preview_renders_without_sending() {
    let site = Site::new(1).with_public_url("https://news.test.example");
    site.run(&["ingest"]).ok();
    let text = site
        .run(&["preview", "--region", "cedar-falls", "--format", "text"])
        .ok()
        .stdout();
    assert!(text.contains("Bakers & \"Brewers\" Fair"), "{text}");
    let html = site
        .run(&["preview", "--region", "cedar-falls", "--format", "html"])
        .ok()
        .stdout();
    assert!(
        html.contains("Bakers &amp; &quot;Brewers&quot; Fair"),
        "escaped in HTML"
    );
    let eml = site
        .run(&["preview", "--region", "cedar-falls", "--format", "eml"])
        .ok()
        .stdout();
    assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert_eq!(site.sql("SELECT COUNT(*) FROM deliveries")[0][0], "0");
}

#[test]
fn file_transport_writes_eml_files() {
    let site = Site::new(1);
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "riverton");
    let mut cmd = site.command(&["send", "--region", "riverton", "--yes"]);
    cmd.env("HERALD__MAIL__TRANSPORT", "file");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outbox = site.dir.path().join("var/outbox");
    let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().collect();
    assert_eq!(files.len(), 1);
    let raw = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(raw.contains("To: ada@example.org"));
    assert_eq!(site.sql("SELECT state FROM deliveries")[0][0], "sent");
}

/// The `Subject:` of a raw email as a mail program shows it: decoded by Python's
/// `email` package under its default (RFC 6532) policy.
fn subject_as_shown(raw: &str) -> String {
    use std::io::Write;
    let mut python = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import email,email.policy,sys\n\
             m=email.message_from_bytes(sys.stdin.buffer.read(),policy=email.policy.default)\n\
             sys.stdout.write(str(m['subject']))",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    python
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_title_shaped_like_an_encoded_word_is_shown_exactly_as_written() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let feed = site.dir.path().join("riverton.xml");
    // An ASCII title that a mail program would decode into other text if written raw,
    // with a right-to-left override that would show the end of it reversed.
    std::fs::write(
        &feed,
        "<rss version=\"2.0\"><channel><title>Town</title>\
         <item><guid>drill</guid><link>https://news.test.example/drill</link>\
         <title>=?utf-8?q?Fire_drill?= at &#x202E;noon</title>\
         <description>Sirens at\u{200B} noon.</description></item></channel></rss>",
    )
    .unwrap();
    let site = site.with_regions(&format!(
        "[[regions]]\nslug = \"riverton\"\nname = \"Riverton\"\ntimezone = \"America/Los_Angeles\"\nfeeds = [\"file://{}\"]\n",
        feed.display()
    ));
    site.run(&["ingest"]).ok();
    // Three readers: the first email is rendered in full, the others from the shared
    // template of their content group; each way must write the subject the same.
    for email in ["ada@example.org", "bo@example.org", "cy@example.org"] {
        site.add_confirmed(email, "riverton");
    }
    site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let messages = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(messages.len(), 3);
    for (_, raw) in &messages {
        assert!(
            !raw.contains("Subject: Riverton daily digest: =?utf-8?q?"),
            "the literal encoded word is not written raw:\n{raw}"
        );
        assert_eq!(
            subject_as_shown(raw),
            "Riverton daily digest: =?utf-8?q?Fire_drill?= at noon"
        );
        let text = &parse_email(raw).parts[0].1;
        assert!(text.contains("=?utf-8?q?Fire_drill?= at noon"), "{text}");
        assert!(text.contains("Sirens at noon."), "{text}");
        assert!(!text.contains(['\u{202E}', '\u{200B}']), "{text}");
    }
}

#[test]
fn an_http_public_url_is_a_warning_and_its_mail_offers_no_one_click() {
    let smtp = SmtpServer::start();
    // The test sites' default public URL is http://127.0.0.1:PORT.
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "riverton");
    let send = site.run(&["send", "--region", "riverton", "--yes"]).ok();
    assert!(
        send.stderr()
            .contains("http.public_url is http://127.0.0.1:")
            && send.stderr().contains("not https"),
        "{}",
        send.stderr()
    );
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    let email = parse_email(&messages[0].1);
    assert!(
        email
            .header("List-Unsubscribe")
            .unwrap()
            .starts_with(&format!(
                "<http://127.0.0.1:{}/unsubscribe?token=",
                site.http_port
            ))
    );
    assert_eq!(email.header("List-Unsubscribe-Post"), None);

    // The daemon says so when it starts.
    let mut daemon = site
        .command(&["daemon"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(daemon.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("herald daemon started") {
            break;
        }
        line.clear();
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(seen.contains("not https"), "{seen}");

    // An https public URL: no warning, and the one-click header is back.
    let site = site.with_public_url("https://news.test.example");
    let preview = site
        .run(&["preview", "--region", "riverton", "--format", "eml"])
        .ok();
    assert!(
        !preview.stderr().contains("not https"),
        "{}",
        preview.stderr()
    );
    assert!(
        preview
            .stdout()
            .contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    );
}

#[test]
fn one_emails_log_lines_can_be_followed_by_its_delivery_id() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for email in ["ada@example.org", "bo@example.org"] {
        site.add_confirmed(email, "riverton");
    }
    let send = Run(site
        .command(&["send", "--region", "riverton", "--yes"])
        .env("HERALD_LOG", "herald::deliver=debug")
        .output()
        .expect("run herald"))
    .ok();
    let ids = site.sql("SELECT id FROM deliveries ORDER BY id");
    assert_eq!(ids.len(), 2);
    let log = send.stderr();
    for id in ids.iter().map(|row| &row[0]) {
        let scope = format!("delivery{{id={id}}}");
        let lines: Vec<&str> = log.lines().filter(|line| line.contains(&scope)).collect();
        // Claimed by the feeder, sent by a sender, recorded by the recorder: three
        // tasks, one id on each line.
        for step in ["claimed", "sent", "recorded"] {
            assert!(
                lines
                    .iter()
                    .any(|line| line.ends_with(step) || line.contains(&format!(" {step} "))),
                "no {step:?} line for {scope}:\n{log}"
            );
        }
    }
}
