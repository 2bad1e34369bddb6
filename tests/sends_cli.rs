//! Manual sends from the command line: `herald send` records each send and prints its
//! id, with plain progress lines when its output is not a terminal; `herald sends`
//! lists, shows, pauses, resumes and cancels them; `herald suppressions` lists and lifts
//! entries. Against aiosmtpd, on a site whose clock `tests/support` pins.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Run, Site, SmtpServer, free_port};

fn run_with(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command: Command = site.command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    Run(command.output().unwrap())
}

/// Nothing listens there: every attempt is deferred, retried after about a second.
fn unreachable_relay() -> Vec<(&'static str, String)> {
    vec![
        ("HERALD__SMTP__PORT", free_port().to_string()),
        ("HERALD__DELIVER__RETRY_BASE", "1s".to_string()),
    ]
}

fn env_of<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn recipients(smtp: &SmtpServer) -> Vec<String> {
    let mut all: Vec<String> = smtp
        .messages()
        .into_iter()
        .map(|(rcpt, _)| rcpt.trim().to_string())
        .collect();
    all.sort();
    all
}

#[test]
fn herald_send_records_a_send_and_herald_sends_steers_it() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for reader in ["ann@example.org", "bob@example.org", "cy@example.org"] {
        site.add_confirmed(reader, "riverton");
    }

    // A dry run and a test copy are sends too; neither reaches a reader.
    let dry = site
        .run(&["send", "--region", "riverton", "--dry-run"])
        .ok();
    assert!(dry.stdout().starts_with("send 1\n"), "{}", dry.stdout());
    assert!(
        dry.stdout().contains("America/Los_Angeles: 3 reader(s)"),
        "{}",
        dry.stdout()
    );
    let copy = site
        .run(&["send", "--region", "riverton", "--to", "desk@example.org"])
        .ok();
    assert!(copy.stdout().starts_with("send 2\n"), "{}", copy.stdout());
    assert_eq!(recipients(&smtp), ["desk@example.org"]);

    // The relay is down: the send is recorded, its rows deferred.
    let relay_down = unreachable_relay();
    let failed = run_with(
        &site,
        &["send", "--region", "riverton", "--yes"],
        &env_of(&relay_down),
    )
    .failed();
    assert!(
        failed.stdout().starts_with("send 3\n"),
        "{}",
        failed.stdout()
    );
    assert!(
        failed.stdout().contains("queued 3 digest(s)"),
        "{}",
        failed.stdout()
    );
    let shown = site.run(&["sends", "show", "3"]).ok().stdout();
    assert!(shown.contains("state:       sending"), "{shown}");
    assert!(shown.contains("deferred   3"), "{shown}");

    // Paused, nothing goes out even once the relay is back.
    let paused = site.run(&["sends", "pause", "3"]).ok().stdout();
    assert!(paused.contains("send 3 paused"), "{paused}");
    std::thread::sleep(Duration::from_secs(3));
    site.run(&["deliver", "--until-empty"]).ok();
    assert_eq!(recipients(&smtp).len(), 1, "a paused send's mail went out");
    let refused = site.run(&["sends", "pause", "3"]).failed();
    assert!(
        refused
            .stderr()
            .contains("send 3 is paused, so it cannot be paused"),
        "{}",
        refused.stderr()
    );

    // Resumed, each reader gets theirs once; the send is done.
    site.run(&["sends", "resume", "3"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    site.run(&["deliver", "--until-empty"]).ok();
    smtp.wait_for(4, Duration::from_secs(10));
    assert_eq!(
        recipients(&smtp),
        [
            "ann@example.org",
            "bob@example.org",
            "cy@example.org",
            "desk@example.org"
        ]
    );
    let shown = site.run(&["sends", "show", "3"]).ok().stdout();
    assert!(shown.contains("state:       done"), "{shown}");
    assert!(shown.contains("sent       3"), "{shown}");

    // A send delivered here prints plain progress lines when not on a terminal.
    site.add_confirmed("dee@example.org", "riverton");
    let sent = site.run(&["send", "--region", "riverton", "--yes"]).ok();
    let out = sent.stdout();
    assert!(out.starts_with("send 4\n"), "{out}");
    assert!(out.contains("send 4: 1/1 (1 sent, 0 deferred)"), "{out}");
    assert!(out.contains("send 4  done"), "{out}");

    // A cancelled send leaves its unsent rows cancelled.
    site.add_confirmed("eve@example.org", "riverton");
    run_with(
        &site,
        &["send", "--region", "riverton", "--yes"],
        &env_of(&relay_down),
    )
    .failed();
    let cancelled = site.run(&["sends", "cancel", "5"]).ok().stdout();
    assert!(cancelled.contains("send 5 cancelled"), "{cancelled}");
    assert!(cancelled.contains("1 cancelled"), "{cancelled}");
    site.run(&["deliver", "--until-empty"]).ok();
    assert!(!recipients(&smtp).contains(&"eve@example.org".to_string()));
    site.run(&["sends", "resume", "5"]).failed();

    let list = site.run(&["sends", "list"]).ok().stdout();
    let states: Vec<&str> = list
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        states,
        ["cancelled", "done", "done", "done", "done"],
        "{list}"
    );
    assert!(list.contains("by cli:"), "{list}");
    site.run(&["sends", "show", "99"]).failed();
}

#[test]
fn suppressions_are_listed_with_their_reason_and_lifted_by_address() {
    let smtp = SmtpServer::start();
    let site = Site::new(smtp.port);
    site.add_confirmed("gone@example.org", "riverton");
    site.run(&["subscribers", "remove", "gone@example.org"])
        .ok();
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("removed"), "{listed}");
    assert!(
        !listed.contains("gone@example.org"),
        "the address is not kept: {listed}"
    );
    assert!(listed.contains("1 suppressed address(es)"), "{listed}");
    let lifted = site
        .run(&["suppressions", "remove", "Gone@Example.org"])
        .ok();
    assert!(
        lifted.stdout().contains("no longer suppressed"),
        "{}",
        lifted.stdout()
    );
    let again = site
        .run(&["suppressions", "remove", "gone@example.org"])
        .failed();
    assert!(
        again.stderr().contains("not on the suppression list"),
        "{}",
        again.stderr()
    );
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("0 suppressed address(es)"), "{listed}");
}
