//! A slot's plan killed with SIGKILL between two of its chunks, with the real binary: the
//! chunks committed before the kill stay (their digests can go out at once), and the
//! next `herald plan` plans the rest from where the killed one stopped. Every reader ends
//! with exactly one digest of the slot, and the slot has one edition, fully planned.
//! `HERALD_PLAN_CHUNKS_READERS` changes the number of readers.

mod support;

use std::time::{Duration, Instant};

use support::{Site, free_port};

fn count(site: &Site, query: &str) -> usize {
    site.sql(query)[0][0].parse().unwrap()
}

#[test]
fn a_plan_killed_between_chunks_is_finished_by_the_next_plan_and_nobody_gets_two() {
    let readers: usize = std::env::var("HERALD_PLAN_CHUNKS_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let site = Site::new(free_port());
    site.run(&["migrate"]).ok();
    site.run(&["ingest"]).ok();
    // Readers in bulk, subscribed a week before the site's clock, in UTC.
    let since = site.now() - 7 * 86_400;
    site.sql_write(&format!(
        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < {readers})
         INSERT INTO subscribers (email, state, timezone, created_at, confirmed_at, updated_at)
         SELECT 'reader' || n || '@chunks.example', 'confirmed', 'UTC', {since}, {since}, {since}
         FROM seq"
    ));
    site.sql_write(&format!(
        "INSERT INTO subscriptions (subscriber_id, region_slug, cadence, created_at)
         SELECT id, 'riverton', 'daily', {since} FROM subscribers"
    ));
    // The next 07:00 UTC after the site's clock, planned half a minute after it.
    let slot = (site.now() / 86_400 + 1) * 86_400 + 7 * 3_600;
    let at = chrono::DateTime::from_timestamp(slot + 30, 0)
        .unwrap()
        .to_rfc3339();

    let mut child = site
        .command(&["plan", "--at", &at])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let planned_at_kill = loop {
        assert!(Instant::now() < deadline, "the first chunk never committed");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the plan finished before it could be killed: raise HERALD_PLAN_CHUNKS_READERS"
        );
        let planned = count(&site, "SELECT COUNT(*) FROM deliveries");
        if planned > 0 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            break count(&site, "SELECT COUNT(*) FROM deliveries");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("killed with {planned_at_kill} of {readers} digests planned");
    assert!(
        planned_at_kill > 0 && planned_at_kill < readers,
        "the kill must land between chunks: {planned_at_kill} of {readers}"
    );
    assert_eq!(
        site.sql("SELECT plan_cursor IS NOT NULL FROM editions")[0][0],
        "1",
        "the edition is left unfinished"
    );

    let again = site.run(&["plan", "--at", &at]).ok();
    assert!(
        again.stdout().contains("the rest of a slot begun earlier"),
        "{}",
        again.stdout()
    );
    assert_eq!(count(&site, "SELECT COUNT(*) FROM editions"), 1);
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(*) FROM editions WHERE plan_cursor IS NULL"
        ),
        1,
        "the slot is fully planned"
    );
    assert_eq!(count(&site, "SELECT COUNT(*) FROM deliveries"), readers);
    assert_eq!(
        count(
            &site,
            "SELECT COUNT(DISTINCT subscriber_id) FROM deliveries"
        ),
        readers,
        "one digest per reader"
    );
    // A third plan of the same instant adds nothing.
    site.run(&["plan", "--at", &at]).ok();
    assert_eq!(count(&site, "SELECT COUNT(*) FROM deliveries"), readers);
}
