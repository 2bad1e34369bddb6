//! The admin API over HTTP against the real daemon and a real SMTP server (aiosmtpd):
//! tokens, manual sends started, paused, resumed and cancelled through it, dry runs,
//! and the reader, delivery and stats routes. Every site's clock is pinned by
//! `tests/support`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Daemon, Site, SmtpServer, request};

/// Calls the API with `token`; returns (status, head, JSON body).
fn call(
    site: &Site,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        all.push(("Authorization", auth.as_str()));
    }
    all.extend_from_slice(headers);
    let (status, head, body) = request(site.http_port, method, path, &all, body).unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, head, value)
}

/// A site with `readers` confirmed daily readers of Riverton, its feeds ingested, and
/// an admin token; returns the site and the token.
fn site_with_readers(smtp: &SmtpServer, readers: usize) -> (Site, String) {
    let site = Site::new(smtp.port);
    site.run(&["ingest"]).ok();
    for i in 0..readers {
        site.add_confirmed(&format!("reader{i:02}@example.org"), "riverton");
    }
    let token = site
        .run(&["admin", "token", "create", "desk"])
        .ok()
        .stdout();
    (site, token.trim().to_string())
}

/// Each recipient's number of messages received.
fn received(smtp: &SmtpServer) -> BTreeMap<String, usize> {
    let mut by_reader = BTreeMap::new();
    for (rcpt, _) in smtp.messages() {
        *by_reader.entry(rcpt.trim().to_string()).or_insert(0) += 1;
    }
    by_reader
}

/// Polls `GET /admin/api/sends/{id}` until `until` holds for it (or 30 s pass).
fn wait_send(site: &Site, token: &str, id: i64, until: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (status, _, send) = call(
            site,
            "GET",
            &format!("/admin/api/sends/{id}"),
            Some(token),
            &[],
            "",
        );
        assert_eq!(status, 200, "{send}");
        if until(&send) {
            return send;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited 30 s: {send}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(send: &Value, state: &str) -> i64 {
    send["counts"][state].as_i64().unwrap_or(0)
}

/// Starts a daily Riverton send; returns its JSON.
fn start_send(site: &Site, token: &str, body: &str, headers: &[(&str, &str)]) -> Value {
    let (status, _, send) = call(site, "POST", "/admin/api/sends", Some(token), headers, body);
    assert_eq!(status, 202, "{send}");
    send
}

#[test]
fn requests_without_a_live_token_get_401_and_nothing_is_sent() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 1);
    site.run(&["admin", "token", "create", "old-cms"]).ok();
    let revoked = site
        .run(&["admin", "token", "create", "leaving"])
        .ok()
        .stdout();
    let revoked = revoked.trim().to_string();
    let daemon = Daemon::start(&site);
    // The revoked token worked once...
    let (status, _, _) = call(&site, "GET", "/admin/api/stats", Some(&revoked), &[], "");
    assert_eq!(status, 200);
    site.run(&["admin", "token", "revoke", "leaving"]).ok();

    let body = r#"{"region": "riverton"}"#;
    for (who, auth) in [
        ("no token", None),
        ("a wrong token", Some("herald_not-a-real-token")),
        ("a revoked token", Some(revoked.as_str())),
    ] {
        for (method, path) in [
            ("POST", "/admin/api/sends"),
            ("GET", "/admin/api/sends"),
            ("POST", "/admin/api/sends/1/pause"),
            ("GET", "/admin/api/subscribers?email=reader00@example.org"),
            ("DELETE", "/admin/api/suppressions/reader00@example.org"),
            ("GET", "/admin/api/stats"),
        ] {
            let (status, head, value) = call(&site, method, path, auth, &[], body);
            assert_eq!(status, 401, "{who}: {method} {path}: {value}");
            assert!(
                value["error"].as_str().unwrap().contains("token")
                    || value["error"].as_str().unwrap().contains("Bearer"),
                "{value}"
            );
            assert!(
                head.to_lowercase().contains("www-authenticate: bearer"),
                "{head}"
            );
        }
    }
    assert_eq!(site.sql("SELECT COUNT(*) FROM sends")[0][0], "0");
    // The live token still works.
    let (status, _, _) = call(&site, "GET", "/admin/api/sends", Some(&token), &[], "");
    assert_eq!(status, 200);
    daemon.stop();
    assert!(smtp.messages().is_empty());
}

#[test]
fn a_send_started_through_the_api_is_done_with_the_counts_the_server_saw_and_a_key_makes_one_send()
{
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 5);
    let daemon = Daemon::start(&site);
    let key = [("Idempotency-Key", "0b7e3f0c-first-send")];
    let body = r#"{"region": "riverton", "cadence": "daily"}"#;
    let send = start_send(&site, &token, body, &key);
    let id = send["id"].as_i64().unwrap();
    assert_eq!(send["started_by"], "desk");
    assert_eq!(send["total"], 5, "{send}");
    // The same key again: the same send, nothing queued twice.
    let (status, head, again) = call(&site, "POST", "/admin/api/sends", Some(&token), &key, body);
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], id);
    assert!(
        head.to_lowercase().contains("idempotent-replayed: true"),
        "{head}"
    );
    // The same key for another request is refused with a sentence.
    let other = r#"{"region": "riverton", "dry_run": true}"#;
    let (status, _, refused) = call(&site, "POST", "/admin/api/sends", Some(&token), &key, other);
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("new key"),
        "{refused}"
    );
    assert_eq!(site.sql("SELECT COUNT(*) FROM sends")[0][0], "1");

    let done = wait_send(&site, &token, id, |s| s["state"] == "done");
    smtp.wait_for(5, Duration::from_secs(10));
    let got = received(&smtp);
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    assert_eq!(
        count(&done, "sent") as usize,
        smtp.messages().len(),
        "{done}"
    );
    assert_eq!(done["total"], 5);
    assert!(done["finished_at"].is_string(), "{done}");
    // The list shows it, and the deliveries carry the server's reply.
    let (_, _, list) = call(&site, "GET", "/admin/api/sends", Some(&token), &[], "");
    assert_eq!(list["sends"][0]["id"], id);
    let (status, _, sent) = call(
        &site,
        "GET",
        "/admin/api/deliveries?state=sent&limit=2",
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["deliveries"].as_array().unwrap().len(), 2);
    assert!(
        sent["deliveries"][0]["smtp_reply"]
            .as_str()
            .unwrap()
            .starts_with("250"),
        "{sent}"
    );
    assert_eq!(sent["deliveries"][0]["send_id"], id);
    // Done is final.
    let (status, _, value) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/pause"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 409, "{value}");
    assert!(
        value["error"].as_str().unwrap().contains("is done"),
        "{value}"
    );
    daemon.stop();
}

/// The daemon paced to two messages a second and one row per claim, so a send is still
/// going when the test steps in.
fn slow_daemon(site: &Site) -> Daemon {
    let mut command = site.command(&["daemon"]);
    command
        .env("HERALD__SMTP__RATE_PER_SECOND", "3")
        .env("HERALD__DELIVER__BATCH_SIZE", "1");
    Daemon::start_command(site, command)
}

/// Waits until none of the send's rows is out with a worker.
fn settled(site: &Site, token: &str, id: i64) -> Value {
    wait_send(site, token, id, |s| {
        count(s, "sending") == 0 && count(s, "queued") == 0 && count(s, "deferred") == 0
    })
}

#[test]
fn pause_then_resume_reaches_each_reader_exactly_once() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 10);
    let daemon = slow_daemon(&site);
    let send = start_send(&site, &token, r#"{"region": "riverton"}"#, &[]);
    let id = send["id"].as_i64().unwrap();
    smtp.wait_for(1, Duration::from_secs(10));
    let (status, _, paused) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/pause"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    assert!(count(&paused, "paused") > 0, "{paused}");
    // What was out with a worker finishes; then nothing more goes out.
    let held = settled(&site, &token, id);
    let before = smtp.messages().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(smtp.messages().len(), before, "mail went out while paused");
    assert_eq!(count(&held, "sent") as usize, before, "{held}");
    assert_eq!(count(&held, "paused") as usize, 10 - before, "{held}");
    // Pausing twice says why not.
    let (status, _, value) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/pause"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 409, "{value}");

    let (status, _, resumed) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/resume"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 200, "{resumed}");
    let done = wait_send(&site, &token, id, |s| s["state"] == "done");
    smtp.wait_for(10, Duration::from_secs(10));
    let got = received(&smtp);
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.values().all(|n| *n == 1), "a reader got two: {got:?}");
    assert_eq!(count(&done, "sent"), 10, "{done}");
    daemon.stop();
}

#[test]
fn cancel_stops_further_mail_and_leaves_cancelled_rows() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 10);
    let daemon = slow_daemon(&site);
    let send = start_send(&site, &token, r#"{"region": "riverton"}"#, &[]);
    let id = send["id"].as_i64().unwrap();
    smtp.wait_for(1, Duration::from_secs(10));
    let (status, _, cancelled) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/cancel"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["finished_at"].is_string());
    let end = settled(&site, &token, id);
    let sent = smtp.messages().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(smtp.messages().len(), sent, "mail went out after cancel");
    assert_eq!(count(&end, "sent") as usize, sent, "{end}");
    assert!(count(&end, "cancelled") > 0, "{end}");
    assert_eq!(count(&end, "sent") + count(&end, "cancelled"), 10, "{end}");
    assert_eq!(
        site.sql(&format!(
            "SELECT COUNT(*) FROM deliveries d JOIN editions e ON e.id = d.edition_id
             WHERE e.send_id = {id} AND d.state = 'cancelled'"
        ))[0][0],
        count(&end, "cancelled").to_string()
    );
    // Cancelled is final: nothing resumes it.
    let (status, _, value) = call(
        &site,
        "POST",
        &format!("/admin/api/sends/{id}/resume"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 409, "{value}");
    daemon.stop();
}

#[test]
fn a_dry_run_sends_nothing_and_shows_readers_per_zone_and_a_sample() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 3);
    site.run(&[
        "subscribers",
        "add",
        "kolkata@example.org",
        "--region",
        "riverton",
        "--timezone",
        "Asia/Kolkata",
        "--confirmed",
    ])
    .ok();
    let daemon = Daemon::start(&site);
    let send = start_send(
        &site,
        &token,
        r#"{"region": "riverton", "dry_run": true}"#,
        &[],
    );
    assert_eq!(send["state"], "done", "{send}");
    assert_eq!(send["dry_run"], true);
    assert_eq!(send["total"], 0, "{send}");
    assert_eq!(send["readers"], 4, "{send}");
    let zones: BTreeMap<String, i64> = send["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| {
            (
                z["zone"].as_str().unwrap().to_string(),
                z["readers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(zones["America/Los_Angeles"], 3, "{send}");
    assert_eq!(zones["Asia/Kolkata"], 1, "{send}");
    assert!(
        send["sample"]["html"].as_str().unwrap().contains("<html"),
        "{send}"
    );
    assert!(!send["sample"]["subject"].as_str().unwrap().is_empty());
    // GET shows the same report.
    let id = send["id"].as_i64().unwrap();
    let (_, _, shown) = call(
        &site,
        "GET",
        &format!("/admin/api/sends/{id}"),
        Some(&token),
        &[],
        "",
    );
    assert_eq!(shown["zones"], send["zones"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(smtp.messages().is_empty(), "a dry run sent mail");
    assert_eq!(site.sql("SELECT COUNT(*) FROM deliveries")[0][0], "0");
    daemon.stop();
}

#[test]
fn readers_suppressions_deliveries_and_stats_and_bad_requests_get_sentences() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 2);
    let daemon = Daemon::start(&site);
    let t = Some(token.as_str());

    // A test copy goes to one address and queues nothing.
    let copy = start_send(
        &site,
        &token,
        r#"{"region": "riverton", "to": "editor@example.org"}"#,
        &[],
    );
    assert_eq!(copy["state"], "done", "{copy}");
    assert!(
        copy["smtp_reply"].as_str().unwrap().starts_with("250"),
        "{copy}"
    );
    smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(
        received(&smtp).keys().collect::<Vec<_>>(),
        ["editor@example.org"]
    );

    // Bad requests: unknown fields, bad JSON, an unknown region, an oversized body.
    let big = format!(r#"{{"region": "{}"}}"#, "x".repeat(70 * 1024));
    for (body, status, words) in [
        (
            r#"{"region": "riverton", "colour": "red"}"#,
            400,
            "unknown field",
        ),
        ("{not json", 400, "region"),
        (r#"{"region": "atlantis"}"#, 422, "unknown region"),
        (
            r#"{"region": "riverton", "cadence": "hourly"}"#,
            422,
            "cadence",
        ),
        (
            r#"{"region": "riverton", "to": "not an address"}"#,
            422,
            "to:",
        ),
        (big.as_str(), 413, "larger than"),
    ] {
        let (got, _, value) = call(&site, "POST", "/admin/api/sends", t, &[], body);
        assert_eq!(got, status, "{value}");
        assert!(
            value["error"].as_str().unwrap().contains(words),
            "{words}: {value}"
        );
    }

    // One reader in full; unknown and malformed addresses.
    let (status, _, reader) = call(
        &site,
        "GET",
        "/admin/api/subscribers?email=reader00@example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 200, "{reader}");
    assert_eq!(reader["state"], "confirmed");
    assert_eq!(reader["regions"][0]["region"], "riverton");
    assert!(reader["recent_deliveries"].as_array().unwrap().is_empty());
    let (status, _, _) = call(
        &site,
        "GET",
        "/admin/api/subscribers?email=nobody@example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 404);
    let (status, _, _) = call(&site, "GET", "/admin/api/subscribers", t, &[], "");
    assert_eq!(status, 400);
    let (status, _, _) = call(
        &site,
        "GET",
        "/admin/api/subscribers?email=x&colour=red",
        t,
        &[],
        "",
    );
    assert_eq!(status, 400);

    // Erasing suppresses the address; lifting the suppression takes it off the list.
    let (status, _, erased) = call(
        &site,
        "DELETE",
        "/admin/api/subscribers/reader01@example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 200, "{erased}");
    let (status, _, value) = call(
        &site,
        "GET",
        "/admin/api/subscribers?email=reader01@example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 404);
    assert!(
        value["error"].as_str().unwrap().contains("suppressed"),
        "{value}"
    );
    let listed = site.run(&["suppressions", "list"]).ok().stdout();
    assert!(listed.contains("removed"), "{listed}");
    let (status, _, _) = call(
        &site,
        "DELETE",
        "/admin/api/suppressions/reader01%40example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 200);
    let (status, _, _) = call(
        &site,
        "DELETE",
        "/admin/api/suppressions/reader01@example.org",
        t,
        &[],
        "",
    );
    assert_eq!(status, 404);
    assert_eq!(site.sql("SELECT COUNT(*) FROM suppressions")[0][0], "0");

    // Failed rows with their reasons, and back in the queue.
    site.sql_write(
        "INSERT INTO editions (slot_key, kind, cadence, planned_at) VALUES ('old', 'digest', 'daily', 0)",
    );
    site.sql_write(
        "INSERT INTO deliveries (edition_id, subscriber_id, kind, cadence, priority, state, attempts,
             message_id, next_attempt_at, expires_at, created_at, updated_at, smtp_reply, last_error)
         SELECT e.id, s.id, 'digest', 'daily', 2, 'failed', 1, 'ffff', 0, 0, 0, 0,
                '554 5.7.1 rejected', 'the server refused it'
         FROM editions e, subscribers s WHERE e.slot_key = 'old' AND s.email = 'reader00@example.org'",
    );
    let (status, _, failed) = call(
        &site,
        "GET",
        "/admin/api/deliveries?state=failed",
        t,
        &[],
        "",
    );
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["deliveries"][0]["smtp_reply"], "554 5.7.1 rejected");
    assert_eq!(failed["deliveries"][0]["email"], "reader00@example.org");
    let (status, _, value) = call(&site, "GET", "/admin/api/deliveries?state=lost", t, &[], "");
    assert_eq!(status, 400, "{value}");
    let (status, _, value) = call(&site, "GET", "/admin/api/deliveries?limit=0", t, &[], "");
    assert_eq!(status, 400, "{value}");
    let (status, _, value) = call(
        &site,
        "POST",
        "/admin/api/deliveries/retry",
        t,
        &[],
        r#"{"all": true}"#,
    );
    assert_eq!(status, 400, "{value}");
    let (status, _, retried) = call(&site, "POST", "/admin/api/deliveries/retry", t, &[], "");
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["requeued"], 1);

    // The site's counts.
    let (status, _, stats) = call(&site, "GET", "/admin/api/stats", t, &[], "");
    assert_eq!(status, 200, "{stats}");
    let confirmed: i64 = stats["readers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["region"] == "riverton" && r["state"] == "confirmed")
        .map(|r| r["count"].as_i64().unwrap())
        .sum();
    assert_eq!(confirmed, 1, "{stats}");
    assert_eq!(stats["feeds"]["by_health"]["healthy"], 3, "{stats}");
    assert!(
        stats["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "digest")
    );
    daemon.stop();
}

#[test]
fn every_route_of_the_admin_api_is_in_its_openapi_document() {
    let source = std::fs::read_to_string(support::repo().join("src/web/admin_api.rs")).unwrap();
    let document = std::fs::read_to_string(support::repo().join("docs/admin-api.yaml")).unwrap();
    let routes: Vec<&str> = source
        .split(".route(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(routes.len() >= 12, "{routes:?}");
    for route in routes {
        assert!(
            document.contains(&format!("\n  {route}:\n")),
            "{route} is not described in docs/admin-api.yaml"
        );
    }
}

#[test]
fn sponsors_are_booked_listed_reported_and_removed_through_the_api() {
    let smtp = SmtpServer::start();
    let (site, token) = site_with_readers(&smtp, 1);
    let daemon = Daemon::start(&site);
    let (status, _, value) = call(&site, "GET", "/admin/api/sponsors", None, &[], "");
    assert_eq!(status, 401, "{value}");

    let booking = r#"{"regions": ["riverton"], "from": "2027-01-13", "to": "2027-01-13",
        "label": "Sponsored by <Riverton> Hardware", "headline": "Winter sale",
        "body": "Shovels & salt.", "link": "https://hardware.example/sale"}"#;
    let (status, _, value) = call(
        &site,
        "POST",
        "/admin/api/sponsors",
        Some(&token),
        &[],
        booking,
    );
    assert_eq!(status, 201, "{value}");
    let id = value["id"].as_i64().unwrap();
    assert_eq!(value["regions"][0], "riverton");
    assert_eq!(value["label"], "Sponsored by <Riverton> Hardware");

    // Refusals are sentences, and store nothing.
    for (body, says) in [
        (
            booking.replace("https://hardware", "http://hardware"),
            "https://",
        ),
        (booking.replace("riverton", "atlantis"), "unknown region"),
        (
            booking.replace("2027-01-13\", \"to", "13/01/2027\", \"to"),
            "YYYY-MM-DD",
        ),
        (booking.replace("\"body\"", "\"bogus\""), "bogus"),
    ] {
        let (status, _, value) = call(
            &site,
            "POST",
            "/admin/api/sponsors",
            Some(&token),
            &[],
            &body,
        );
        assert!(status == 422 || status == 400, "{status}: {value}");
        assert!(value["error"].as_str().unwrap().contains(says), "{value}");
    }
    let (_, _, value) = call(&site, "GET", "/admin/api/sponsors", Some(&token), &[], "");
    assert_eq!(value["sponsors"].as_array().unwrap().len(), 1, "{value}");

    // A send through the API carries the booking; the report counts it from the ledger.
    let send = start_send(&site, &token, r#"{"region": "riverton"}"#, &[]);
    let send_id = send["id"].as_i64().unwrap();
    wait_send(&site, &token, send_id, |s| s["state"] == "done");
    let messages = smtp.wait_for(1, Duration::from_secs(10));
    assert!(
        messages[0].1.contains("Sponsored by"),
        "the digest carries the block"
    );
    let (status, _, value) = call(
        &site,
        "GET",
        "/admin/api/sponsors/report",
        Some(&token),
        &[],
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(value["sponsors"][0]["sent"], 1, "{value}");

    let path = format!("/admin/api/sponsors/{id}");
    let (status, _, _) = call(&site, "DELETE", &path, Some(&token), &[], "");
    assert_eq!(status, 200);
    let (status, _, value) = call(&site, "DELETE", &path, Some(&token), &[], "");
    assert_eq!(status, 404, "{value}");
    daemon.stop();
}
