//! Pacing: a global messages-per-second limit, per-recipient-domain limits from
//! config, and an adaptive slow-down for domains that answer with throttling replies.

use std::time::Duration;

use tokio::sync::Mutex;

/// Message pacing: a global rate, per-recipient-domain rates from config, and an
/// adaptive slow-down for domains that answer with throttling replies.
pub(super) struct Pacing {
    global: Pacer,
    configured: std::collections::BTreeMap<String, f64>,
    domains: Mutex<std::collections::HashMap<String, DomainPace>>,
}

/// One domain's pace: `interval` between messages (zero = unpaced), never faster than
/// its configured rate; a throttle doubles it, each success shrinks it by a tenth.
struct DomainPace {
    floor: Duration,
    interval: Duration,
    next: tokio::time::Instant,
}

/// Slowest pace a throttled domain is pushed to.
const MAX_DOMAIN_INTERVAL: Duration = Duration::from_secs(30);

impl Pacing {
    pub(super) fn new(
        global_rate: f64,
        domains: &std::collections::BTreeMap<String, f64>,
    ) -> Pacing {
        Pacing {
            global: Pacer::new(global_rate),
            configured: domains.clone(),
            domains: Mutex::new(Default::default()),
        }
    }

    pub(super) async fn wait(&self, domain: &str) {
        let at = {
            let mut domains = self.domains.lock().await;
            let pace = domains.entry(domain.to_string()).or_insert_with(|| {
                let floor = self
                    .configured
                    .get(domain)
                    .map(|rate| Duration::from_secs_f64(1.0 / rate))
                    .unwrap_or(Duration::ZERO);
                DomainPace {
                    floor,
                    interval: floor,
                    next: tokio::time::Instant::now(),
                }
            });
            if pace.interval.is_zero() {
                None
            } else {
                let now = tokio::time::Instant::now();
                let at = pace.next.max(now);
                pace.next = at + pace.interval;
                Some(at)
            }
        };
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        self.global.wait().await;
    }

    /// Whether a message to `domain` goes out without waiting for either pace.
    pub(super) async fn unpaced(&self, domain: &str) -> bool {
        self.global.interval.is_none()
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
        if let Some(pace) = domains.get_mut(domain) {
            pace.interval = (pace.interval * 2)
                .max(Duration::from_millis(250))
                .min(MAX_DOMAIN_INTERVAL);
            tracing::warn!(domain, interval = ?pace.interval, "throttled by the server; slowing down");
        }
    }

    pub(super) async fn success(&self, domain: &str) {
        let mut domains = self.domains.lock().await;
        if let Some(pace) = domains.get_mut(domain)
            && pace.interval > pace.floor
        {
            pace.interval = pace.interval.mul_f64(0.9).max(pace.floor);
            if pace.interval < Duration::from_millis(5) {
                pace.interval = pace.floor;
            }
        }
    }
}

/// A global messages-per-second limit shared by every slot.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate_per_second: f64) -> Pacer {
        Pacer {
            interval: (rate_per_second > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / rate_per_second)),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The paced tests run on tokio's paused clock: sleeps end exactly at their deadline,
    // so the waits are checked to the millisecond whatever the machine is doing.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_domain_slows_down_and_others_do_not() {
        let pacing = Pacing::new(0.0, &[("slow.example".to_string(), 20.0)].into());
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
        let pacer = Pacer::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }
}
