//! herald as an installed binary: copied on its own into an empty folder with a config,
//! run from `/`, it renders from the templates built into it, reads every relative path
//! in the config against the config file's folder, and lets `mail.templates_dir`
//! replace templates one file at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{SmtpServer, free_port, parse_email, pinned_clock_offset, repo};

/// An installation with nothing of the source tree: `bin/herald` and
/// `etc/herald.toml`, whose paths are all relative (to `etc/`).
struct Install {
    dir: tempfile::TempDir,
    smtp_port: u16,
    clock_offset: i64,
}

impl Install {
    fn new(smtp_port: u16, mail_extra: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::copy(env!("CARGO_BIN_EXE_herald"), dir.path().join("bin/herald")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc/feeds")).unwrap();
        std::fs::copy(
            repo().join("config/feeds/riverton.atom"),
            dir.path().join("etc/feeds/riverton.atom"),
        )
        .unwrap();
        let install = Install {
            dir,
            smtp_port,
            clock_offset: pinned_clock_offset(),
        };
        install.write_config(mail_extra);
        install
    }

    fn write_config(&self, mail_extra: &str) {
        let text = format!(
            r#"
[database]
url = "sqlite://state/herald.db"

[http]
listen = "127.0.0.1:{http}"
public_url = "http://127.0.0.1:{http}"

[mail]
from = "Installed News <news@installed.example>"
postal_address = "Installed News, 9 Far Road, Elsewhere"
transport = "smtp"
{mail_extra}

[smtp]
host = "127.0.0.1"
port = {smtp}
connections = 1
timeout = "5s"

[security]
secret_file = "keys/secret.key"

[[regions]]
slug = "riverton"
name = "Riverton"
timezone = "America/Los_Angeles"
feeds = ["file://feeds/riverton.atom"]
"#,
            http = free_port(),
            smtp = self.smtp_port,
        );
        std::fs::write(self.etc().join("herald.toml"), text).unwrap();
    }

    fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// `bin/herald --config …/etc/herald.toml ARGS…`, run from `/` with nothing of the
    /// test's environment that could point herald elsewhere.
    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(self.dir.path().join("bin/herald"));
        command
            .arg("--config")
            .arg(self.etc().join("herald.toml"))
            .args(args)
            .current_dir("/")
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_LOG")
            .env("HERALD_TEST_CLOCK_OFFSET", self.clock_offset.to_string());
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD__") {
                command.env_remove(key);
            }
        }
        command.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "herald {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn failure(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "herald {args:?} should have failed"
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }
}

/// `text` without the signed tokens in links, which carry their expiry time.
fn without_tokens(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("token=") {
        out.push_str(&rest[..at + "token=".len()]);
        rest = &rest[at + "token=".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn a_copied_binary_run_from_root_sends_a_digest_from_its_built_in_templates() {
    let smtp = SmtpServer::start();
    let install = Install::new(smtp.port, "");
    assert!(!install.dir.path().join("templates").exists());

    install.ok(&["ingest"]);
    install.ok(&[
        "subscribers",
        "add",
        "ada@example.org",
        "--region",
        "riverton",
        "--confirmed",
    ]);
    install.ok(&["send", "--region", "riverton", "--yes"]);

    let messages = smtp.wait_for(1, Duration::from_secs(20));
    assert_eq!(messages.len(), 1, "one digest");
    let (rcpt, raw) = &messages[0];
    assert!(rcpt.contains("ada@example.org"), "{rcpt}");
    let email = parse_email(raw);
    let part = |kind: &str| {
        email
            .parts
            .iter()
            .find(|(content_type, _)| content_type.starts_with(kind))
            .map(|(_, body)| body.clone())
            .unwrap_or_else(|| panic!("no {kind} part in {raw}"))
    };
    let (text, html) = (part("text/plain"), part("text/html"));
    // Lines only the built-in digest templates write.
    assert!(text.contains("Daily digest"), "{text}");
    assert!(
        text.contains("You receive this because ada@example.org"),
        "{text}"
    );
    assert!(
        text.contains("Installed News, 9 Far Road, Elsewhere"),
        "{text}"
    );
    assert!(html.contains("<!doctype html>"), "{html}");

    // Every relative path was read against etc/, none against `/`.
    let etc = install.etc();
    assert!(etc.join("state/herald.db").is_file(), "the database");
    assert!(
        etc.join("keys/secret.key").is_file(),
        "the generated secret"
    );
    let status = install.ok(&["status"]);
    assert!(status.contains("sent"), "{status}");
}

#[test]
fn an_override_wins_a_missing_one_falls_back_and_a_broken_one_stops_start_up() {
    let install = Install::new(free_port(), r#"templates_dir = "look""#);
    let look = install.etc().join("look");
    std::fs::create_dir_all(look.join("email")).unwrap();
    std::fs::write(
        look.join("email/digest.txt.j2"),
        "Restyled for {{ reader_email }}\n{{ unsubscribe_url }}\n{{ postal_address }}\n",
    )
    .unwrap();
    install.ok(&["ingest"]);
    install.ok(&[
        "subscribers",
        "add",
        "ada@example.org",
        "--region",
        "riverton",
        "--confirmed",
    ]);

    let text = install.ok(&["preview", "--region", "riverton", "--format", "text"]);
    assert!(
        text.contains("\n\nRestyled for preview@"),
        "the override wins: {text}"
    );
    let html = install.ok(&["preview", "--region", "riverton", "--format", "html"]);
    assert!(
        html.contains("<!doctype html>"),
        "the missing HTML template falls back to the built-in one: {html}"
    );

    std::fs::write(
        look.join("email/digest.html.j2"),
        "<p>fine</p>\n{% for group in groups %}\nnever closed",
    )
    .unwrap();
    let err = install.failure(&["preview", "--region", "riverton"]);
    assert!(err.contains("email/digest.html.j2 is broken"), "{err}");
    assert!(err.contains("line "), "{err}");
    assert!(
        err.contains(&look.join("email/digest.html.j2").display().to_string()),
        "{err}"
    );
    std::fs::remove_file(look.join("email/digest.html.j2")).unwrap();

    std::fs::create_dir_all(look.join("web")).unwrap();
    std::fs::write(
        look.join("web/unsubscribe.html.j2"),
        "{% extends \"web/layout.html.j2\" %}\n{% block main %}\n{{ no_such_value.x }}\n{% endblock %}",
    )
    .unwrap();
    let err = install.failure(&["daemon"]);
    assert!(err.contains("web/unsubscribe.html.j2 is broken"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn templates_export_writes_the_built_in_set_and_it_renders_the_same() {
    let install = Install::new(free_port(), r#"templates_dir = "exported""#);
    let exported = install.etc().join("exported");

    // Before the export the folder is missing: every template is built in.
    install.ok(&["ingest"]);
    install.ok(&[
        "subscribers",
        "add",
        "ada@example.org",
        "--region",
        "riverton",
        "--confirmed",
    ]);
    let built_in = install.ok(&["preview", "--region", "riverton", "--format", "html"]);

    let said = install.ok(&["templates", "export", exported.to_str().unwrap()]);
    assert!(said.contains("templates; set mail.templates_dir"), "{said}");
    let repo_templates = repo().join("templates");
    assert_eq!(files_under(&exported), files_under(&repo_templates));
    for name in files_under(&repo_templates) {
        assert_eq!(
            std::fs::read_to_string(exported.join(&name)).unwrap(),
            std::fs::read_to_string(repo_templates.join(&name)).unwrap(),
            "{name}"
        );
    }
    let from_files = install.ok(&["preview", "--region", "riverton", "--format", "html"]);
    assert_eq!(without_tokens(&from_files), without_tokens(&built_in));

    let err = install.failure(&["templates", "export", exported.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn without_a_config_flag_paths_are_read_against_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let target = dir.path().join("config").join(path.file_name().unwrap());
            std::fs::create_dir_all(&target).unwrap();
            for feed in std::fs::read_dir(&path).unwrap() {
                let feed = feed.unwrap().path();
                std::fs::copy(&feed, target.join(feed.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(
                &path,
                dir.path().join("config").join(path.file_name().unwrap()),
            )
            .unwrap();
        }
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .arg("status")
        .current_dir(dir.path())
        .env_remove("HERALD_CONFIG")
        .env(
            "HERALD_TEST_CLOCK_OFFSET",
            pinned_clock_offset().to_string(),
        );
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD__") {
            command.env_remove(key);
        }
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("var/herald.db").is_file());
    assert!(!dir.path().join("config/var").exists());
}
