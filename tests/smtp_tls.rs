//! Encrypted and authenticated relays with the real binary and a real SMTP server
//! (aiosmtpd): STARTTLS and implicit TLS with a private certificate authority named in
//! `smtp.ca_file`, AUTH with the configured user, and the refusals an operator must
//! see: a wrong password, a certificate nobody vouches for, a CA file that is no CA file.

mod support;

use std::time::Duration;

use support::{Site, SmtpServer, TestCertificates, parse_email};

const READERS: [&str; 3] = ["ada@example.org", "bo@example.org", "cy@example.net"];

fn site_with_readers(smtp: &SmtpServer) -> Site {
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for email in READERS {
        site.add_confirmed(email, "riverton");
    }
    site
}

/// `herald send` with the relay settings given as environment overrides.
fn send(site: &Site, settings: &[(&str, &str)]) -> support::Run {
    herald(site, &["send", "--region", "riverton", "--yes"], settings)
}

/// A command with `[smtp]` settings given as environment overrides, and retries due a
/// second after a failure.
fn herald(site: &Site, args: &[&str], settings: &[(&str, &str)]) -> support::Run {
    let mut command = site.command(args);
    command.env("HERALD__DELIVER__RETRY_BASE", "1s");
    for (key, value) in settings {
        command.env(format!("HERALD__SMTP__{}", key.to_ascii_uppercase()), value);
    }
    support::Run(command.output().unwrap())
}

fn states(site: &Site) -> Vec<(String, String)> {
    site.sql("SELECT state, COALESCE(last_error, '') FROM deliveries ORDER BY id")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect()
}

/// An aiosmtpd server presenting the test authority's certificate in `mode`
/// (`--starttls` or `--tls`), with the account `herald:s3cret` when `auth` is set.
fn relay(certs: &TestCertificates, mode: &str, auth: bool) -> SmtpServer {
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let mut args = vec![mode, cert, key];
    if auth {
        args.extend(["--auth", "herald:s3cret"]);
    }
    SmtpServer::start_with(&args)
}

/// The `[smtp]` settings that log in as `herald` with `password` over `tls`, trusting
/// the test authority.
fn login<'a>(
    certs: &'a TestCertificates,
    tls: &'a str,
    password: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("tls", tls),
        ("ca_file", certs.ca.to_str().unwrap()),
        ("username", "herald"),
        ("password", password),
    ]
}

#[test]
fn starttls_with_auth_delivers_every_digest() {
    let certs = TestCertificates::new();
    // The server refuses mail before STARTTLS and before AUTH.
    let smtp = relay(&certs, "--starttls", true);
    let site = site_with_readers(&smtp);

    let run = send(&site, &login(&certs, "starttls", "s3cret")).ok();
    assert!(run.stdout().contains("3 sent"), "{}", run.stdout());
    let messages = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(messages.len(), 3);
    for (_, raw) in &messages {
        let email = parse_email(raw);
        assert!(email.header("List-Unsubscribe").is_some());
        assert_eq!(email.parts.len(), 2);
    }
}

#[test]
fn implicit_tls_delivers_every_digest() {
    let certs = TestCertificates::new();
    let smtp = relay(&certs, "--tls", true);
    let site = site_with_readers(&smtp);

    let run = send(&site, &login(&certs, "tls", "s3cret")).ok();
    assert!(run.stdout().contains("3 sent"), "{}", run.stdout());
    assert_eq!(smtp.wait_for(3, Duration::from_secs(10)).len(), 3);
}

#[test]
fn a_wrong_password_defers_every_digest_and_says_why() {
    let certs = TestCertificates::new();
    let smtp = relay(&certs, "--starttls", true);
    let site = site_with_readers(&smtp);

    let run = send(&site, &login(&certs, "starttls", "wrong"));
    assert!(!run.success(), "{}", run.stdout());
    assert!(run.stderr().contains("login"), "{}", run.stderr());
    let states = states(&site);
    assert_eq!(states.len(), 3);
    for (state, error) in &states {
        assert_eq!(state, "deferred", "{error}");
        assert!(error.contains("SMTP login"), "{error}");
    }
    assert!(smtp.messages().is_empty());

    // With the right password the same rows go out, once each.
    std::thread::sleep(Duration::from_millis(2_100));
    let right = login(&certs, "starttls", "s3cret");
    let run = herald(&site, &["deliver", "--until-empty"], &right).ok();
    assert!(run.stdout().contains("3 sent"), "{}", run.stdout());
    assert_eq!(smtp.wait_for(3, Duration::from_secs(10)).len(), 3);
}

#[test]
fn a_certificate_nobody_vouches_for_is_refused() {
    let certs = TestCertificates::new();
    let smtp = relay(&certs, "--starttls", false);
    let site = site_with_readers(&smtp);

    // Without the private authority in smtp.ca_file, only the public roots count.
    let run = send(&site, &[("tls", "starttls")]);
    assert!(!run.success(), "{}", run.stdout());
    let states = states(&site);
    assert!(
        states.iter().all(|(state, error)| state == "deferred"
            && error.contains("STARTTLS")
            && error.to_ascii_lowercase().contains("certificate")),
        "{states:?}"
    );
    assert!(
        smtp.messages().is_empty(),
        "nothing goes over an unverified session"
    );
}

#[test]
fn a_ca_file_without_a_certificate_stops_herald_at_start_up() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    let bogus = site.dir.path().join("not-a-ca.pem");
    std::fs::write(&bogus, "this is not a certificate\n").unwrap();
    let run = send(
        &site,
        &[("tls", "starttls"), ("ca_file", bogus.to_str().unwrap())],
    );
    assert!(!run.success());
    assert!(
        run.stderr().contains("smtp.ca_file") && run.stderr().contains("no PEM certificate"),
        "{}",
        run.stderr()
    );
    let missing = site.dir.path().join("missing.pem");
    let run = send(
        &site,
        &[("tls", "starttls"), ("ca_file", missing.to_str().unwrap())],
    );
    assert!(
        run.stderr().contains("smtp.ca_file") && run.stderr().contains("cannot read"),
        "{}",
        run.stderr()
    );
}

/// `herald send` in `tls` mode (`none`, `starttls`, `tls`), its log at debug level for
/// the SMTP connections: what the socket said of `TCP_NODELAY`, read back from it.
fn connection_log(site: &Site, settings: &[(&str, &str)]) -> String {
    let mut command = site.command(&["send", "--region", "riverton", "--yes"]);
    command.env("HERALD_LOG", "warn,herald::deliver::smtp=debug");
    for (key, value) in settings {
        command.env(format!("HERALD__SMTP__{}", key.to_ascii_uppercase()), value);
    }
    let run = support::Run(command.output().unwrap()).ok();
    assert!(run.stdout().contains("3 sent"), "{}", run.stdout());
    run.stderr()
}

#[test]
fn every_connection_has_tcp_nodelay_in_every_mode() {
    let certs = TestCertificates::new();
    for (mode, relay) in [
        ("none", SmtpServer::start()),
        ("starttls", relay(&certs, "--starttls", true)),
        ("tls", relay(&certs, "--tls", true)),
    ] {
        let site = site_with_readers(&relay);
        let settings: Vec<(&str, &str)> = if mode == "none" {
            vec![("tls", "none")]
        } else {
            login(&certs, mode, "s3cret").to_vec()
        };
        let log = connection_log(&site, &settings);
        let opened: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("SMTP connection opened"))
            .collect();
        assert!(!opened.is_empty(), "{mode}: no connection logged:\n{log}");
        for line in &opened {
            assert!(
                line.contains("nodelay=true"),
                "{mode}: a connection without TCP_NODELAY: {line}"
            );
        }
        assert_eq!(
            relay.wait_for(3, Duration::from_secs(10)).len(),
            3,
            "{mode}"
        );
    }
}
