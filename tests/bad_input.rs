//! Bad input gets a clear error, no panic, and loses nothing.

mod support;

use support::{Site, free_port, repo};

fn assert_no_panic(text: &str) {
    assert!(!text.contains("panicked"), "herald panicked:\n{text}");
}

#[test]
fn a_missing_and_a_malformed_feed_fail_alone() {
    let site = Site::new(free_port());
    let broken = site.dir.path().join("broken.xml");
    std::fs::write(
        &broken,
        "<rss version=\"2.0\"><channel><item><title>unclosed",
    )
    .unwrap();
    let feeds = repo().join("config/feeds");
    let site = site.with_regions(&format!(
        r#"
[[regions]]
slug = "cascadia"
name = "Across Cascadia"
feeds = ["file://{feeds}/cascadia.xml", "file://{dir}/missing.xml", "file://{broken}"]

[[regions]]
slug = "riverton"
name = "Riverton"
parent = "cascadia"
feeds = ["file://{feeds}/riverton.atom"]
"#,
        feeds = feeds.display(),
        dir = "/nonexistent-herald-dir",
        broken = broken.display(),
    ));
    let run = site.run(&["ingest"]).failed();
    let out = run.stdout();
    assert_no_panic(&run.stderr());
    assert!(out.contains("missing.xml  FAILED: cannot read"), "{out}");
    assert!(
        out.contains("broken.xml  FAILED: not a valid RSS, Atom or JSON feed"),
        "{out}"
    );
    assert!(out.contains("cascadia.xml  6 new"), "{out}");
    assert!(out.contains("riverton.atom  5 new"), "{out}");
    assert!(
        run.stderr().contains("2 feed(s) could not be ingested"),
        "{}",
        run.stderr()
    );
    // The good feeds were stored; the failures are on record for `herald status`.
    assert_eq!(site.sql("SELECT COUNT(*) FROM articles")[0][0], "10");
    let status = site.run(&["status"]).ok().stdout();
    assert!(
        status.contains("FAILING: cannot read /nonexistent-herald-dir/missing.xml"),
        "{status}"
    );
}

#[test]
fn a_dead_smtp_server_defers_every_row_and_send_says_so() {
    let site = Site::new(free_port());
    site.run(&["ingest"]).ok();
    for email in ["ada@example.org", "bo@example.org"] {
        site.add_confirmed(email, "riverton");
    }
    let run = site
        .run(&["send", "--region", "riverton", "--yes"])
        .failed();
    assert_no_panic(&run.stderr());
    let err = run.stderr();
    assert!(
        err.contains("2 email(s) could not be delivered to the SMTP server 127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.contains("Connection refused") || err.contains("cannot connect"),
        "{err}"
    );
    let rows = site.sql("SELECT state, attempts, last_error FROM deliveries");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row[0], "deferred", "{row:?}");
        assert_eq!(row[1], "1");
        assert!(row[2].contains("cannot connect to SMTP server"), "{row:?}");
    }
    // Retried later they are not duplicated: `deliver` finds nothing due yet.
    let deliver = site.run(&["deliver", "--until-empty"]).ok();
    assert!(
        deliver.stdout().contains("0 sent, 0 deferred"),
        "{}",
        deliver.stdout()
    );
    let status = site.run(&["status"]).ok().stdout();
    assert!(status.contains("deferred    2"), "{status}");
    assert!(
        status.contains("last error:") && status.contains("cannot connect"),
        "{status}"
    );
}

#[test]
fn an_invalid_address_is_refused_and_nothing_is_stored() {
    let site = Site::new(free_port());
    for bad in [
        "not-an-address",
        "two@@example.org",
        "a b@example.org",
        "x@nodot",
        "x@127.0.0.1",
        "=?utf-8?q?x?=@example.org",
        "x\u{FEFF}@example.org",
    ] {
        let run = site
            .run(&["subscribers", "add", bad, "--region", "riverton"])
            .failed();
        assert_no_panic(&run.stderr());
        assert!(
            run.stderr().contains("is not a valid email address"),
            "{}",
            run.stderr()
        );
    }
    let run = site
        .run(&[
            "subscribers",
            "add",
            "ok@example.org",
            "--region",
            "atlantis",
        ])
        .failed();
    assert!(
        run.stderr().contains("unknown region \"atlantis\""),
        "{}",
        run.stderr()
    );
    let run = site
        .run(&[
            "subscribers",
            "add",
            "ok@example.org",
            "--region",
            "riverton",
            "--timezone",
            "Mars/Base",
        ])
        .failed();
    assert!(
        run.stderr().contains("unknown time zone"),
        "{}",
        run.stderr()
    );
    assert_eq!(site.sql("SELECT COUNT(*) FROM subscribers")[0][0], "0");
}

#[test]
fn each_invalid_config_value_names_its_key_and_exits_non_zero() {
    let site = Site::new(free_port());
    let cases: [(&str, &str, &str); 7] = [
        ("HERALD__SCHEDULE__DAILY", "61 7 * * *", "schedule.daily"),
        ("HERALD__MAIL__POSTAL_ADDRESS", " ", "mail.postal_address"),
        ("HERALD__HTTP__PUBLIC_URL", "not a url", "http.public_url"),
        (
            "HERALD__SCHEDULE__MAX_LATENESS",
            "six hours",
            "schedule.max_lateness",
        ),
        ("HERALD__MAIL__FROM", "nobody", "mail.from"),
        ("HERALD__DATABASE__URL", "mysql://x", "database.url"),
        ("HERALD__SMTP__TLS", "maybe", "smtp.tls"),
    ];
    for (key, value, named) in cases {
        let out = site.command(&["status"]).env(key, value).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value} should fail");
        assert!(
            err.contains(named),
            "{key}={value}: error should name {named}:\n{err}"
        );
        assert_no_panic(&err);
    }

    let config = std::fs::read_to_string(site.config_path()).unwrap();
    let file_cases = [
        (
            "timezone = \"America/Los_Angeles\"",
            "timezone = \"Mars/Base\"",
            "regions[0].timezone",
        ),
        (
            "parent = \"cascadia\"",
            "parent = \"atlantis\"",
            "regions[1].parent",
        ),
        (
            "feeds = [\"file://",
            "feeds = [\"gopher://x\", \"file://",
            "regions[0].feeds[0]",
        ),
    ];
    for (from, to, named) in file_cases {
        let broken = config.replacen(from, to, 1);
        assert_ne!(broken, config);
        let path = site.dir.path().join("broken.toml");
        std::fs::write(&path, broken).unwrap();
        let out = site
            .command(&["--config", path.to_str().unwrap(), "status"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(named), "expected {named} in:\n{err}");
    }

    let out = site
        .command(&["--config", "/nonexistent/herald.toml", "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read config file /nonexistent/herald.toml")
    );
}

#[test]
fn a_broken_template_stops_send_before_anything_is_queued_or_sent() {
    let site = Site::new(free_port());
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "riverton");
    let templates = site.dir.path().join("templates/email");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::copy(
        repo().join("templates/email/digest.txt.j2"),
        templates.join("digest.txt.j2"),
    )
    .unwrap();
    std::fs::write(
        templates.join("digest.html.j2"),
        "{% for g in groups %}never closed",
    )
    .unwrap();
    for args in [
        &["preview", "--region", "riverton"][..],
        &["send", "--region", "riverton", "--yes"],
    ] {
        let run = site
            .command(args)
            .env(
                "HERALD__MAIL__TEMPLATES_DIR",
                site.dir.path().join("templates"),
            )
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success());
        assert!(err.contains("email/digest.html.j2 is broken"), "{err}");
        assert_no_panic(&err);
    }
    assert_eq!(
        site.sql("SELECT COUNT(*) FROM deliveries")[0][0],
        "0",
        "nothing was queued"
    );
}
