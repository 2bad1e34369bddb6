//! Metrics for `GET /metrics`, in the Prometheus text format (version 0.0.4).
//!
//! Two sources, kept apart on purpose. What the ledger knows (deliveries by state and
//! kind, queue depth and oldest age per lane, readers by state) is read from the
//! database at scrape time, so those numbers are the same whichever daemon answers
//! and survive restarts. What only this process saw (SMTP replies by class, feed polls
//! by result, the send latency from claim to final reply) lives in [`METRICS`], counted
//! since the process started, as Prometheus counters expect.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::domain::{DeliveryKind, DeliveryState, SendState, SubscriberState, Timestamp};

/// This process's counters and histogram.
pub static METRICS: Metrics = Metrics::new();

/// Upper bounds (seconds) of the send-latency buckets: from a local relay's
/// milliseconds to a row that waited minutes behind a pace.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A class of SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx: accepted.
    Success,
    /// 4xx: try again later.
    Transient,
    /// 5xx: refused.
    Permanent,
}

impl ReplyClass {
    const ALL: [ReplyClass; 3] = [
        ReplyClass::Success,
        ReplyClass::Transient,
        ReplyClass::Permanent,
    ];

    /// The class of a three-digit reply code; `None` for anything else.
    pub fn of(code: u16) -> Option<ReplyClass> {
        match code / 100 {
            2 => Some(ReplyClass::Success),
            4 => Some(ReplyClass::Transient),
            5 => Some(ReplyClass::Permanent),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ReplyClass::Success => "2xx",
            ReplyClass::Transient => "4xx",
            ReplyClass::Permanent => "5xx",
        }
    }
}

/// How one feed poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// Read and stored (whether or not anything was new).
    Ok,
    /// `304 Not Modified`: nothing to read.
    NotModified,
    /// The feed failed (fetch, parse, or a refused address).
    Failed,
}

impl PollResult {
    const ALL: [PollResult; 3] = [PollResult::Ok, PollResult::NotModified, PollResult::Failed];

    fn label(self) -> &'static str {
        match self {
            PollResult::Ok => "ok",
            PollResult::NotModified => "not_modified",
            PollResult::Failed => "failed",
        }
    }
}

/// A histogram with fixed buckets, updated without locks.
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }
}

/// What this process counted.
pub struct Metrics {
    smtp_replies: [AtomicU64; 3],
    feed_polls: [AtomicU64; 3],
    /// From a row's claim to the final reply to its message (or the file written).
    pub send_latency: Histogram,
    /// Unix seconds of the last reply from the SMTP server; 0 before the first.
    smtp_last_reply: AtomicI64,
    /// Whether the last attempt to open a session failed before the server answered.
    smtp_unreached: AtomicBool,
    /// Mails in the bounce mailbox this process could not read and set aside.
    bounce_mail_unparsed: AtomicU64,
    /// Set-aside mails still unread in the bounce mailbox at the last good poll; -1
    /// before one.
    bounce_mail_waiting: AtomicI64,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            smtp_replies: [const { AtomicU64::new(0) }; 3],
            feed_polls: [const { AtomicU64::new(0) }; 3],
            send_latency: Histogram::new(),
            smtp_last_reply: AtomicI64::new(0),
            smtp_unreached: AtomicBool::new(false),
            bounce_mail_unparsed: AtomicU64::new(0),
            bounce_mail_waiting: AtomicI64::new(-1),
        }
    }

    /// Notes one good poll of the bounce mailbox: `set_aside` mails it could not read,
    /// and `waiting` such mails unread in the mailbox now.
    pub fn bounce_mailbox_polled(&self, set_aside: usize, waiting: usize) {
        self.bounce_mail_unparsed
            .fetch_add(set_aside as u64, Ordering::Relaxed);
        self.bounce_mail_waiting.store(
            i64::try_from(waiting).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Mails set aside unread in the bounce mailbox at the last good poll, if there was
    /// one in this process.
    pub fn bounce_mail_waiting(&self) -> Option<i64> {
        match self.bounce_mail_waiting.load(Ordering::Relaxed) {
            n if n < 0 => None,
            n => Some(n),
        }
    }

    /// Counts one reply from the SMTP server, and notes that it was reached.
    pub fn smtp_reply(&self, code: u16) {
        self.smtp_reached();
        if let Some(class) = ReplyClass::of(code) {
            let i = ReplyClass::ALL
                .iter()
                .position(|c| *c == class)
                .unwrap_or(0);
            self.smtp_replies[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes that the SMTP server answered (a session opened), without a reply to
    /// count (the greeting and EHLO are not messages' replies).
    pub fn smtp_reached(&self) {
        self.smtp_last_reply
            .store(Timestamp::now().unix(), Ordering::Relaxed);
        self.smtp_unreached.store(false, Ordering::Relaxed);
    }

    /// Notes that opening a session failed before the server answered (refused,
    /// timed out, TLS or AUTH failed).
    pub fn smtp_unreached(&self) {
        self.smtp_unreached.store(true, Ordering::Relaxed);
    }

    /// Whether the last attempt to open a session failed, with no reply since.
    pub fn smtp_last_attempt_failed(&self) -> bool {
        self.smtp_unreached.load(Ordering::Relaxed)
    }

    /// When the SMTP server last answered, if it has since the process started.
    pub fn smtp_last_reply(&self) -> Option<Timestamp> {
        match self.smtp_last_reply.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Timestamp::from_unix(t)),
        }
    }

    /// Counts one feed poll.
    pub fn feed_poll(&self, result: PollResult) {
        let i = PollResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.feed_polls[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The priority lanes the feeder claims from, by the `priority` stored on each row.
pub fn lane_name(priority: i64) -> &'static str {
    match priority {
        0 => "signup",
        1 => "alert",
        _ => "digest",
    }
}

/// What the ledger says at scrape time.
#[derive(Debug, Clone, Default)]
pub struct LedgerSnapshot {
    /// Rows per (state, kind).
    pub deliveries: Vec<(DeliveryState, DeliveryKind, i64)>,
    /// Per lane (its priority): rows not yet final, and the creation time of the
    /// oldest of them.
    pub lanes: Vec<(i64, i64, Option<Timestamp>)>,
    /// Readers per state.
    pub readers: Vec<(SubscriberState, i64)>,
    /// Manual sends in progress (planning, sending or paused), per state.
    pub sends: Vec<(SendState, i64)>,
    /// Bounces and complaints reported after sending, and the suppression list by cause.
    pub bounces: crate::store::BounceStats,
}

const KINDS: [DeliveryKind; 4] = [
    DeliveryKind::Confirmation,
    DeliveryKind::Welcome,
    DeliveryKind::Alert,
    DeliveryKind::Digest,
];

const READER_STATES: [SubscriberState; 4] = [
    SubscriberState::Pending,
    SubscriberState::Confirmed,
    SubscriberState::Unsubscribed,
    SubscriberState::Suppressed,
];

/// The whole exposition: the ledger's numbers at `now`, then this process's.
pub fn render(ledger: &LedgerSnapshot, metrics: &Metrics, now: Timestamp) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "herald_deliveries",
        "gauge",
        "Delivery rows in the ledger, by state and kind.",
    );
    for state in DeliveryState::ALL {
        for kind in KINDS {
            let n = ledger
                .deliveries
                .iter()
                .find(|(s, k, _)| *s == state && *k == kind)
                .map_or(0, |(_, _, n)| *n);
            sample(
                &mut out,
                "herald_deliveries",
                &[("state", state.as_str()), ("kind", kind.as_str())],
                n as f64,
            );
        }
    }

    family(
        &mut out,
        "herald_queue_depth",
        "gauge",
        "Rows not yet in a final state (queued, sending, deferred, paused), by lane.",
    );
    let lanes = [0, 1, 2];
    for lane in lanes {
        let depth = ledger
            .lanes
            .iter()
            .find(|(p, _, _)| *p == lane)
            .map_or(0, |(_, n, _)| *n);
        sample(
            &mut out,
            "herald_queue_depth",
            &[("lane", lane_name(lane))],
            depth as f64,
        );
    }
    family(
        &mut out,
        "herald_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest row not yet in a final state, by lane (0 when none).",
    );
    for lane in lanes {
        let age = ledger
            .lanes
            .iter()
            .find(|(p, _, _)| *p == lane)
            .and_then(|(_, _, oldest)| *oldest)
            .map_or(0, |oldest| now.seconds_since(oldest).max(0));
        sample(
            &mut out,
            "herald_queue_oldest_age_seconds",
            &[("lane", lane_name(lane))],
            age as f64,
        );
    }

    family(&mut out, "herald_readers", "gauge", "Readers, by state.");
    for state in READER_STATES {
        let n = ledger
            .readers
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        sample(
            &mut out,
            "herald_readers",
            &[("state", state.as_str())],
            n as f64,
        );
    }

    family(
        &mut out,
        "herald_sends_in_progress",
        "gauge",
        "Manual sends not yet done or cancelled, by state.",
    );
    for state in [SendState::Planning, SendState::Sending, SendState::Paused] {
        let n = ledger
            .sends
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        sample(
            &mut out,
            "herald_sends_in_progress",
            &[("state", state.as_str())],
            n as f64,
        );
    }

    bounce_families(&mut out, &ledger.bounces);
    family(
        &mut out,
        "herald_bounce_mail_unparsed_total",
        "counter",
        "Mails in the bounce mailbox this process could not read; each is left unread, flagged $HeraldUnparsed, for a person.",
    );
    sample(
        &mut out,
        "herald_bounce_mail_unparsed_total",
        &[],
        metrics.bounce_mail_unparsed.load(Ordering::Relaxed) as f64,
    );
    if let Some(waiting) = metrics.bounce_mail_waiting() {
        family(
            &mut out,
            "herald_bounce_mail_unparsed_waiting",
            "gauge",
            "Mails set aside unread in the bounce mailbox at the last poll.",
        );
        sample(
            &mut out,
            "herald_bounce_mail_unparsed_waiting",
            &[],
            waiting as f64,
        );
    }

    family(
        &mut out,
        "herald_smtp_replies_total",
        "counter",
        "Replies from the SMTP server to messages sent by this process, by class.",
    );
    for (i, class) in ReplyClass::ALL.iter().enumerate() {
        sample(
            &mut out,
            "herald_smtp_replies_total",
            &[("class", class.label())],
            metrics.smtp_replies[i].load(Ordering::Relaxed) as f64,
        );
    }
    family(
        &mut out,
        "herald_smtp_last_reply_age_seconds",
        "gauge",
        "Seconds since the SMTP server last answered this process (-1: not yet).",
    );
    let age = metrics
        .smtp_last_reply()
        .map_or(-1, |t| now.seconds_since(t).max(0));
    sample(
        &mut out,
        "herald_smtp_last_reply_age_seconds",
        &[],
        age as f64,
    );

    family(
        &mut out,
        "herald_feed_polls_total",
        "counter",
        "Feed polls by this process, by result.",
    );
    for (i, result) in PollResult::ALL.iter().enumerate() {
        sample(
            &mut out,
            "herald_feed_polls_total",
            &[("result", result.label())],
            metrics.feed_polls[i].load(Ordering::Relaxed) as f64,
        );
    }

    let name = "herald_send_latency_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Seconds from a row's claim to the final reply to its message, in this process.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += metrics.send_latency.buckets[i].load(Ordering::Relaxed);
        sample(
            &mut out,
            &format!("{name}_bucket"),
            &[("le", &format_value(*bound))],
            cumulative as f64,
        );
    }
    cumulative += metrics.send_latency.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    sample(
        &mut out,
        &format!("{name}_bucket"),
        &[("le", "+Inf")],
        cumulative as f64,
    );
    let sum = metrics.send_latency.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    sample(&mut out, &format!("{name}_sum"), &[], sum);
    sample(&mut out, &format!("{name}_count"), &[], cumulative as f64);
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

/// Bounce and complaint reports by kind and by domain, their rates, and the
/// suppression list by cause.
fn bounce_families(out: &mut String, bounces: &crate::store::BounceStats) {
    family(
        out,
        "herald_bounce_reports",
        "gauge",
        "Bounce, complaint and unsubscribe reports recorded from the bounce mailbox and the relays' webhooks, by kind.",
    );
    for (kind, n) in &bounces.by_kind {
        sample(
            out,
            "herald_bounce_reports",
            &[("kind", kind.as_str())],
            *n as f64,
        );
    }
    family(
        out,
        "herald_bounce_reports_by_domain",
        "gauge",
        "The same reports for the recipient domains with the most of them, by domain and kind.",
    );
    for domain in &bounces.by_domain {
        for (kind, n) in &domain.by_kind {
            sample(
                out,
                "herald_bounce_reports_by_domain",
                &[("domain", &domain.domain), ("kind", kind.as_str())],
                *n as f64,
            );
        }
    }
    family(
        out,
        "herald_bounce_rate_by_domain",
        "gauge",
        "Hard and soft bounces reported per email the relay accepted, for the same domains.",
    );
    for domain in &bounces.by_domain {
        sample(
            out,
            "herald_bounce_rate_by_domain",
            &[("domain", &domain.domain)],
            domain.bounce_rate(),
        );
    }
    family(
        out,
        "herald_complaint_rate_by_domain",
        "gauge",
        "Complaints reported per email the relay accepted, for the same domains.",
    );
    for domain in &bounces.by_domain {
        sample(
            out,
            "herald_complaint_rate_by_domain",
            &[("domain", &domain.domain)],
            domain.complaint_rate(),
        );
    }
    family(
        out,
        "herald_bounce_rate",
        "gauge",
        "Hard and soft bounces reported per email the relay accepted.",
    );
    sample(out, "herald_bounce_rate", &[], bounces.bounce_rate());
    family(
        out,
        "herald_complaint_rate",
        "gauge",
        "Complaints reported per email the relay accepted.",
    );
    sample(out, "herald_complaint_rate", &[], bounces.complaint_rate());
    family(
        out,
        "herald_suppressions",
        "gauge",
        "Suppression-list entries by cause (a report's kind, or other).",
    );
    for cause in ["hard", "soft", "complaint", "other"] {
        let n = bounces
            .suppressions
            .iter()
            .find(|(c, _)| c == cause)
            .map_or(0, |(_, n)| *n);
        sample(out, "herald_suppressions", &[("cause", cause)], n as f64);
    }
}

/// A label value as the text format wants it: backslash, quote and line feed escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: whole numbers without a decimal point, others as Rust prints them
/// (the shortest text that reads back to the same number).
fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_and_counts_everything() {
        let metrics = Metrics::new();
        metrics.send_latency.observe(Duration::from_micros(500));
        metrics.send_latency.observe(Duration::from_millis(20));
        metrics.send_latency.observe(Duration::from_secs(1000));
        let text = render(
            &LedgerSnapshot::default(),
            &metrics,
            Timestamp::from_unix(0),
        );
        assert!(
            text.contains("herald_send_latency_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_latency_seconds_bucket{le=\"0.025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_latency_seconds_bucket{le=\"300\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_latency_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("herald_send_latency_seconds_sum 1000.0205\n"),
            "{text}"
        );
    }

    #[test]
    fn every_series_is_present_even_at_zero() {
        let metrics = Metrics::new();
        metrics.smtp_reply(250);
        metrics.smtp_reply(451);
        metrics.smtp_reply(999);
        metrics.feed_poll(PollResult::NotModified);
        let ledger = LedgerSnapshot {
            deliveries: vec![(DeliveryState::Sent, DeliveryKind::Digest, 7)],
            lanes: vec![(2, 4, Some(Timestamp::from_unix(100)))],
            readers: vec![(SubscriberState::Confirmed, 9)],
            sends: vec![(SendState::Paused, 2)],
            bounces: crate::store::BounceStats::default(),
        };
        let text = render(&ledger, &metrics, Timestamp::from_unix(160));
        for line in [
            "herald_deliveries{state=\"sent\",kind=\"digest\"} 7",
            "herald_deliveries{state=\"queued\",kind=\"alert\"} 0",
            "herald_queue_depth{lane=\"digest\"} 4",
            "herald_queue_depth{lane=\"signup\"} 0",
            "herald_queue_oldest_age_seconds{lane=\"digest\"} 60",
            "herald_readers{state=\"confirmed\"} 9",
            "herald_sends_in_progress{state=\"paused\"} 2",
            "herald_sends_in_progress{state=\"sending\"} 0",
            "herald_smtp_replies_total{class=\"2xx\"} 1",
            "herald_smtp_replies_total{class=\"4xx\"} 1",
            "herald_smtp_replies_total{class=\"5xx\"} 0",
            "herald_feed_polls_total{result=\"not_modified\"} 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line} missing in\n{text}"
            );
        }
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
