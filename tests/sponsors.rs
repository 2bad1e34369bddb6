//! Sponsor slots through the real binary and aiosmtpd: a reader of a town gets the
//! town's sponsor on its dates and the state's on the others, once per digest, in both
//! parts; a reader of another state gets none; hostile sponsor text arrives escaped; and
//! `herald sponsors report` counts from the ledger what the SMTP server received.

mod support;

use std::time::Duration;

use support::days::{deliver_on_day, ingest_on_day, parts, run_on_day};
use support::{PINNED_CLOCK, Site, SmtpServer, epoch};

const STATE_LABEL: &str = "Sponsored by Cascadia Credit Union";
const TOWN_LABEL: &str = "Sponsored by <script>alert(1)</script> Hardware & Co";

/// Writes each region's feed with two stories of `day`, plus the earlier days'.
fn write_feeds(dir: &std::path::Path, day: i64) {
    let pinned = epoch(PINNED_CLOCK);
    for region in ["cascadia", "riverton", "mesa"] {
        let mut items = String::new();
        for d in 0..=day {
            for n in 0..2 {
                let published =
                    chrono::DateTime::from_timestamp(pinned + d * 86_400 - 3_600 + n * 60, 0)
                        .unwrap()
                        .to_rfc2822();
                items.push_str(&format!(
                    "<item><guid>{region}-{d}-{n}</guid><title>{region} day {d} story {n}</title>
                     <link>https://{region}.example/{d}/{n}</link><pubDate>{published}</pubDate>
                     </item>\n"
                ));
            }
        }
        std::fs::write(
            dir.join(format!("{region}.xml")),
            format!(
                "<?xml version=\"1.0\"?><rss version=\"2.0\"><channel><title>{region}</title>
                 <link>https://{region}.example/</link>{items}</channel></rss>"
            ),
        )
        .unwrap();
    }
}

#[test]
fn the_most_specific_booking_of_the_day_goes_out_once_per_digest_and_the_report_matches() {
    let smtp = SmtpServer::start();
    let feeds = tempfile::tempdir().unwrap();
    let f = feeds.path().display();
    let site = Site::new(smtp.port).with_regions(&format!(
        r#"
[[regions]]
slug = "cascadia"
name = "Across Cascadia"
timezone = "UTC"
feeds = ["file://{f}/cascadia.xml"]

[[regions]]
slug = "riverton"
name = "Riverton"
parent = "cascadia"
timezone = "UTC"
feeds = ["file://{f}/riverton.xml"]

[[regions]]
slug = "mesa"
name = "Across Mesa"
timezone = "UTC"
feeds = ["file://{f}/mesa.xml"]
"#
    ));
    for (email, region) in [
        ("town@example.org", "riverton"),
        ("state@example.org", "cascadia"),
        ("other@example.org", "mesa"),
    ] {
        site.run(&[
            "subscribers",
            "add",
            email,
            "--region",
            region,
            "--timezone",
            "UTC",
            "--confirmed",
        ])
        .ok();
    }
    // The state's booking runs all week; the town's only on the 14th, with text that
    // tries to be markup.
    let add = |args: &[&str]| {
        let mut all = vec!["sponsors", "add"];
        all.extend_from_slice(args);
        run_on_day(&site, 0, &all)
    };
    let out = add(&[
        "--region",
        "cascadia",
        "--from",
        "2027-01-13",
        "--to",
        "2027-01-20",
        "--label",
        STATE_LABEL,
        "--headline",
        "Free checking for Cascadia",
        "--body",
        "Open an account at any branch.",
        "--link",
        "https://credit-union.example/checking",
    ]);
    assert!(out.contains("booked sponsor 1"), "{out}");
    add(&[
        "--region",
        "riverton",
        "--from",
        "2027-01-14",
        "--to",
        "2027-01-14",
        "--label",
        TOWN_LABEL,
        "--headline",
        "Shovels & \"salt\" <b>sale</b>",
        "--body",
        "<img src=x onerror=alert(2)> 20% off",
        "--link",
        "https://hardware.example/sale?a=1&b=2",
        "--image",
        "https://hardware.example/logo.png",
        "--alt",
        "Riverton \"Hardware\" <logo>",
    ]);
    // Bad bookings are refused with a sentence, and nothing is stored.
    let bad = site
        .run(&[
            "sponsors",
            "add",
            "--region",
            "riverton",
            "--from",
            "2027-01-14",
            "--to",
            "2027-01-15",
            "--label",
            "x",
            "--headline",
            "y",
            "--link",
            "http://plain.example/",
        ])
        .failed();
    assert!(bad.stderr().contains("https://"), "{}", bad.stderr());
    let list = site.run(&["sponsors", "list"]).ok().stdout();
    assert!(list.contains("2 booking(s)"), "{list}");

    let mut received = Vec::new();
    for day in 0..2 {
        write_feeds(feeds.path(), day);
        // Stored ten seconds after the slot, planned twenty seconds later: the plan
        // counts what was stored before it, never a story from its own second.
        ingest_on_day(&site, day);
        let plan = run_on_day(&site, day, &["plan"]);
        assert!(plan.contains("planned 3 email(s)"), "day {day}: {plan}");
        deliver_on_day(&site, day);
        received = smtp.wait_for(3 * (day as usize + 1), Duration::from_secs(15));
        let today = &received[3 * day as usize..];
        let of = |who: &str| {
            let (_, raw) = today
                .iter()
                .find(|(to, _)| to.trim() == who)
                .unwrap_or_else(|| panic!("day {day}: nothing for {who}"));
            parts(raw)
        };
        // The state reader has the state's booking every day.
        let (text, html) = of("state@example.org");
        assert_eq!(text.matches("SPONSORED - ").count(), 1, "{text}");
        assert!(
            text.contains(&format!("SPONSORED - {STATE_LABEL}")),
            "{text}"
        );
        assert_eq!(html.matches(">Sponsored</p>").count(), 1, "{html}");
        assert!(html.contains(STATE_LABEL), "{html}");
        // The town reader: the state's on the 13th, the town's own on the 14th.
        let (text, html) = of("town@example.org");
        assert_eq!(text.matches("SPONSORED - ").count(), 1, "day {day}: {text}");
        assert_eq!(
            html.matches(">Sponsored</p>").count(),
            1,
            "day {day}: {html}"
        );
        if day == 0 {
            assert!(text.contains(STATE_LABEL), "{text}");
            assert!(!html.contains("Hardware"), "{html}");
        } else {
            assert!(
                text.contains(&format!("SPONSORED - {TOWN_LABEL}")),
                "{text}"
            );
            assert!(!text.contains(STATE_LABEL) && !html.contains(STATE_LABEL));
            // Escaped like feed text: no markup of the sponsor's survives as markup.
            for active in ["<script", "<b>", "<img src=x", "<logo>"] {
                assert!(!html.contains(active), "{active} in {html}");
            }
            assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; Hardware &amp; Co"));
            assert!(
                html.contains("&lt;img src=x onerror=alert(2)&gt; 20% off"),
                "{html}"
            );
            assert!(html.contains(
                r#"<a href="https://hardware.example/sale?a=1&amp;b=2" rel="sponsored""#
            ));
            assert!(html.contains(r#"alt="Riverton &quot;Hardware&quot; &lt;logo&gt;""#));
            assert!(
                text.contains("https://hardware.example/sale?a=1&b=2"),
                "{text}"
            );
        }
        // The sponsor comes after the top stories, before the footer.
        let block = text.find("SPONSORED - ").unwrap();
        assert!(text.rfind("story 1").unwrap() < block, "{text}");
        assert!(block < text.find("Unsubscribe:").unwrap(), "{text}");
        // Another state's reader gets no block.
        let (text, html) = of("other@example.org");
        assert!(
            !text.contains("SPONSORED") && !html.contains("Sponsored"),
            "{text}"
        );
    }

    // The report, from the ledger, matches what the server received.
    let with = |label: &str| {
        received
            .iter()
            .filter(|(_, raw)| parts(raw).0.contains(&format!("SPONSORED - {label}")))
            .count()
    };
    assert_eq!(with(STATE_LABEL), 3);
    assert_eq!(with(TOWN_LABEL), 1);
    let report = site.run(&["sponsors", "report"]).ok().stdout();
    let line = |id: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for {id}: {report}"))
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("1"),
        format!("1 {} 0 0", with(STATE_LABEL)),
        "{report}"
    );
    assert_eq!(line("2"), format!("2 {} 0 0", with(TOWN_LABEL)), "{report}");

    // Removing a booking leaves the history and stops the block.
    site.run(&["sponsors", "remove", "1"]).ok();
    assert!(
        site.run(&["sponsors", "list"])
            .ok()
            .stdout()
            .contains("1 booking(s)")
    );
    site.run(&["sponsors", "remove", "1"]).failed();
}
