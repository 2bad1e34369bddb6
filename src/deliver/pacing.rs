//! Pacing: a global messages-per-second limit and per-recipient-domain limits from
//! config, both held for the whole site, and an adaptive slow-down for domains that
//! answer with throttling replies, which each process keeps for itself.
//!
//! A configured rate is a budget in the database (`Store::book_rate_budget`) shared by
//! every process: a process books a short run of send times (about a tenth of a second's
//! worth, at least one) and hands them to its senders one by one. Several processes
//! interleave their runs, so together they send no faster than the configured rate
//! whatever their number, including ones that are idle. A send time a sender comes to
//! more than one interval late is dropped rather than spent late, so a stalled process
//! cannot release a burst afterwards: over any window of `w` seconds the site sends at
//! most `rate × w + 2` messages paced by one budget (clocks of different hosts agreeing).
//! With no rate configured nothing is booked and nothing waits.
//!
//! While the database does not answer a booking, the process books from a budget of
//! its own at the full rate and says so; the commit gate lets at most one unrecorded
//! message per connection out while the database is away, which bounds what that adds.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::Store;

/// Message pacing: the site-wide global and per-domain budgets, and this process's
/// adaptive slow-down for domains that answer with throttling replies.
pub(super) struct Pacing {
    global: Option<Budget>,
    configured: BTreeMap<String, Budget>,
    domains: Mutex<HashMap<String, DomainPace>>,
}

/// One domain's adaptive pace in this process: `interval` between messages (zero =
/// unpaced); a throttle doubles it, each success shrinks it by a tenth. A configured
/// rate is its budget's business, not this.
struct DomainPace {
    interval: Duration,
    next: Instant,
}

/// Slowest pace a throttled domain is pushed to.
const MAX_DOMAIN_INTERVAL: Duration = Duration::from_secs(30);

/// How much sending time a process books from a budget at once.
const BOOKING: Duration = Duration::from_millis(100);

/// Most send times booked at once, however high the rate.
const MAX_BOOKED: u32 = 1_000;

impl Pacing {
    /// Pacing at `global_rate` messages per second (0 = none) and the `domains`' rates,
    /// booked in `store` so that they hold across every process on it; without a store,
    /// in this process alone.
    pub(super) fn new(
        global_rate: f64,
        domains: &BTreeMap<String, f64>,
        store: Option<Store>,
    ) -> Pacing {
        Pacing {
            global: Budget::new("global".into(), global_rate, store.clone()),
            configured: domains
                .iter()
                .filter_map(|(domain, rate)| {
                    Budget::new(format!("domain:{domain}"), *rate, store.clone())
                        .map(|budget| (domain.clone(), budget))
                })
                .collect(),
            domains: Mutex::new(Default::default()),
        }
    }

    /// Waits until a message to `domain` may go: this process's slow-down for the
    /// domain, then the domain's budget, then the global one.
    pub(super) async fn wait(&self, domain: &str) {
        let at = {
            let mut domains = self.domains.lock().await;
            match domains.get_mut(domain) {
                Some(pace) if !pace.interval.is_zero() => {
                    let at = pace.next.max(Instant::now());
                    pace.next = at + pace.interval;
                    Some(at)
                }
                _ => None,
            }
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        if let Some(budget) = self.configured.get(domain) {
            budget.wait().await;
        }
        if let Some(budget) = &self.global {
            budget.wait().await;
        }
    }

    /// Whether a message to `domain` goes out without waiting for any pace.
    pub(super) async fn unpaced(&self, domain: &str) -> bool {
        self.global.is_none()
            && !self.configured.contains_key(domain)
            && self
                .domains
                .lock()
                .await
                .get(domain)
                .is_none_or(|pace| pace.interval.is_zero())
    }

    pub(super) async fn throttled(&self, domain: &str) {
        let mut domains = self.domains.lock().await;
        let pace = domains
            .entry(domain.to_string())
            .or_insert_with(|| DomainPace {
                interval: Duration::ZERO,
                next: Instant::now(),
            });
        pace.interval = (pace.interval * 2)
            .max(Duration::from_millis(250))
            .min(MAX_DOMAIN_INTERVAL);
        tracing::warn!(domain, interval = ?pace.interval, "throttled by the server; slowing down");
    }

    pub(super) async fn success(&self, domain: &str) {
        let mut domains = self.domains.lock().await;
        if let Some(pace) = domains.get_mut(domain)
            && !pace.interval.is_zero()
        {
            pace.interval = pace.interval.mul_f64(0.9);
            if pace.interval < Duration::from_millis(5) {
                pace.interval = Duration::ZERO;
            }
        }
    }
}

/// One rate: send times booked from its row in the database, a run at a time.
struct Budget {
    /// Its row in `rate_budgets`.
    name: String,
    /// Time between two messages.
    interval: Duration,
    /// Send times booked at once.
    run: u32,
    /// Where the budget is shared; `None` keeps it in this process.
    store: Option<Store>,
    booked: Mutex<Booked>,
}

/// The send times this process has booked and not yet handed out: `left` of them,
/// `interval` apart from `next`.
struct Booked {
    next: Instant,
    left: u32,
    /// Where this process's own budget stands (used without a store, or while the
    /// database does not answer).
    own_next: Instant,
}

impl Budget {
    /// A budget of `rate` messages per second, or none for a rate of zero.
    fn new(name: String, rate: f64, store: Option<Store>) -> Option<Budget> {
        if !(rate > 0.0 && rate.is_finite()) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate).max(Duration::from_micros(1));
        let run = ((BOOKING.as_secs_f64() * rate).ceil() as u32).clamp(1, MAX_BOOKED);
        let now = Instant::now();
        Some(Budget {
            name,
            interval,
            run,
            store,
            booked: Mutex::new(Booked {
                next: now,
                left: 0,
                own_next: now,
            }),
        })
    }

    /// Waits for the next send time this process holds.
    async fn wait(&self) {
        tokio::time::sleep_until(self.next_time().await).await;
    }

    /// Takes the next send time this process holds, booking a run when it holds none.
    /// Times already more than one interval past are dropped, not spent.
    async fn next_time(&self) -> Instant {
        {
            let mut booked = self.booked.lock().await;
            let now = Instant::now();
            while booked.left > 0 && booked.next + self.interval < now {
                booked.next += self.interval;
                booked.left -= 1;
            }
            if booked.left == 0 {
                booked.next = self.book(&mut booked.own_next).await;
                booked.left = self.run;
            }
            let at = booked.next;
            booked.next += self.interval;
            booked.left -= 1;
            at
        }
    }

    /// Books a run of send times and returns the first.
    async fn book(&self, own_next: &mut Instant) -> Instant {
        let span = self.interval * self.run;
        if let Some(store) = &self.store {
            let wall = crate::clock::now_utc().timestamp_micros();
            let now = Instant::now();
            let span_us = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
            match store.book_rate_budget(&self.name, wall, span_us).await {
                Ok(end) => {
                    let start = end.saturating_sub(span_us);
                    let ahead = Duration::from_micros(start.saturating_sub(wall).max(0) as u64);
                    return now + ahead;
                }
                Err(error) => tracing::warn!(
                    %error,
                    budget = self.name,
                    "cannot book send times from the shared rate budget; pacing this process alone at the full rate until the database answers"
                ),
            }
        }
        let start = (*own_next).max(Instant::now());
        *own_next = start + span;
        start
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    // The paced tests run on tokio's paused clock: sleeps end exactly at their deadline,
    // so the waits are checked to the millisecond whatever the machine is doing.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_domain_slows_down_and_others_do_not() {
        let pacing = Pacing::new(0.0, &[("slow.example".to_string(), 20.0)].into(), None);
        let start = tokio::time::Instant::now();
        for _ in 0..3 {
            pacing.wait("slow.example").await;
        }
        // 20/s: the third message waits two intervals of 50 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            pacing.wait("fast.example").await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "unpaced domains do not wait"
        );
        // A throttle sets an unpaced domain's interval to 250 ms: the first message after
        // it goes at once, the second waits a whole interval.
        pacing.throttled("fast.example").await;
        let start = tokio::time::Instant::now();
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        // Each success takes a tenth off the interval (the slot already booked stays).
        pacing.success("fast.example").await;
        pacing.wait("fast.example").await;
        let start = tokio::time::Instant::now();
        pacing.wait("fast.example").await;
        assert_eq!(start.elapsed(), Duration::from_millis(225));
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_rate_spaces_every_message() {
        let pacer = Budget::new("global".into(), 4.0, None).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[test]
    fn no_rate_makes_no_budget() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Budget::new("global".into(), rate, None).is_none(), "{rate}");
        }
        let pacing = Pacing::new(0.0, &Default::default(), None);
        assert!(pacing.global.is_none() && pacing.configured.is_empty());
    }

    // Two processes on one database book from the same row: together their send times
    // are never closer than one interval, on both backends.
    #[tokio::test]
    async fn processes_sharing_a_database_share_the_rate() {
        for (backend, t) in crate::store::testing::stores().await {
            let rate = 50.0;
            let interval = Duration::from_secs_f64(1.0 / rate);
            let (a, b) = (
                Budget::new("global".into(), rate, Some(t.store.clone())).unwrap(),
                Budget::new("global".into(), rate, Some(t.store.clone())).unwrap(),
            );
            let mut times = Vec::new();
            for _ in 0..20 {
                times.push(a.next_time().await);
                times.push(b.next_time().await);
            }
            times.sort();
            for pair in times.windows(2) {
                // A millisecond for reading the wall clock and the monotonic one apart.
                assert!(
                    pair[1] - pair[0] + Duration::from_millis(1) >= interval,
                    "{backend:?}: two send times {:?} apart",
                    pair[1] - pair[0]
                );
            }
            let spread = *times.last().unwrap() - times[0];
            assert!(
                spread + Duration::from_millis(1) >= interval * 39,
                "{backend:?}: {spread:?}"
            );
        }
    }
}
