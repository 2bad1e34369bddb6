//! Supervision of the daemon's stages (ingest, plan, deliver, HTTP): each runs as its
//! own task under a supervisor that restarts it with backoff when it fails or panics,
//! and stops the process (exit 1, for the service manager to restart) when it keeps
//! failing. Every stage reports its successful passes to [`Health`], which `/readyz`
//! reads: a stage whose last good pass is older than its limit makes herald not ready.
//!
//! A daemon must never go on silently without one of its stages: a panic in the feed
//! poller used to end that task for good while the process kept answering "ready".

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shutdown::{Shutdown, Trigger};

/// How a failing stage is restarted.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// The wait before the first restart; it doubles with each failure in a row.
    pub first_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
    /// Failures in a row (without a good pass between them) after which herald stops.
    pub give_up_after: u32,
}

impl Default for RestartPolicy {
    /// 1 s, 2 s, 4 s … up to a minute; the tenth failure in a row, about five minutes
    /// after the first, stops the process.
    fn default() -> Self {
        RestartPolicy {
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            give_up_after: 10,
        }
    }
}

impl RestartPolicy {
    /// The wait before restarting after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.max_backoff)
    }
}

/// The stages' health, shared by the supervisors and `/readyz`.
#[derive(Clone, Default)]
pub struct Health {
    stages: Arc<Mutex<Vec<StageState>>>,
}

/// One stage as its supervisor knows it.
struct StageState {
    name: &'static str,
    overdue_after: Duration,
    registered: Instant,
    last_ok: Option<Instant>,
    passes: u64,
    restarts: u64,
    last_error: Option<String>,
}

/// A stage's handle for reporting good passes.
#[derive(Clone)]
pub struct Beat {
    health: Health,
    index: usize,
}

/// What `/readyz` shows of one stage.
#[derive(Debug, Clone)]
pub struct StageStatus {
    /// `ingest`, `plan`, `deliver` or `http`.
    pub name: &'static str,
    /// Time since the last good pass (`None`: none yet).
    pub since_ok: Option<Duration>,
    /// The limit past which the stage is overdue.
    pub overdue_after: Duration,
    /// Whether the stage is overdue (counted from start-up until its first pass).
    pub overdue: bool,
    /// Restarts so far.
    pub restarts: u64,
    /// Why it last failed, if it ever did.
    pub last_error: Option<String>,
}

impl Health {
    /// Registers a stage that is overdue once its last good pass is older than
    /// `overdue_after`.
    pub fn register(&self, name: &'static str, overdue_after: Duration) -> Beat {
        let mut stages = self.lock();
        stages.push(StageState {
            name,
            overdue_after,
            registered: Instant::now(),
            last_ok: None,
            passes: 0,
            restarts: 0,
            last_error: None,
        });
        Beat {
            health: self.clone(),
            index: stages.len() - 1,
        }
    }

    /// Every registered stage, in registration order.
    pub fn statuses(&self) -> Vec<StageStatus> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|stage| {
                let since =
                    now.saturating_duration_since(stage.last_ok.unwrap_or(stage.registered));
                StageStatus {
                    name: stage.name,
                    since_ok: stage.last_ok.map(|t| now.saturating_duration_since(t)),
                    overdue_after: stage.overdue_after,
                    overdue: since > stage.overdue_after,
                    restarts: stage.restarts,
                    last_error: stage.last_error.clone(),
                }
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StageState>> {
        // A panic while holding this lock cannot leave a half-written entry behind
        // (every update is one assignment), so a poisoned lock is still usable.
        self.stages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Beat {
    /// Records a good pass of the stage.
    pub fn ok(&self) {
        let mut stages = self.health.lock();
        let stage = &mut stages[self.index];
        stage.last_ok = Some(Instant::now());
        stage.passes += 1;
    }

    fn passes(&self) -> u64 {
        self.health.lock()[self.index].passes
    }

    fn failed(&self, error: &str) {
        let mut stages = self.health.lock();
        let stage = &mut stages[self.index];
        stage.restarts += 1;
        stage.last_error = Some(error.to_string());
    }
}

/// Runs stages, restarts them when they fail, and stops the process when one keeps
/// failing.
#[derive(Clone)]
pub struct Supervisor {
    health: Health,
    shutdown: Shutdown,
    stop: Arc<Trigger>,
    gave_up: Arc<AtomicBool>,
    policy: RestartPolicy,
}

impl Supervisor {
    /// A supervisor that fires `stop` (the daemon's shutdown) when a stage gives up.
    pub fn new(
        health: Health,
        shutdown: Shutdown,
        stop: Arc<Trigger>,
        policy: RestartPolicy,
    ) -> Supervisor {
        Supervisor {
            health,
            shutdown,
            stop,
            gave_up: Arc::new(AtomicBool::new(false)),
            policy,
        }
    }

    /// Whether a stage failed too often in a row and stopped the process.
    pub fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::SeqCst)
    }

    /// Runs the stage `name` until shutdown: `run` is one life of it, which reports good
    /// passes through its [`Beat`] and returns `Ok` only once shutdown has begun. An
    /// error or a panic is logged with its cause, and the stage is started again after
    /// the policy's backoff.
    pub fn spawn<F, Fut, E>(
        &self,
        name: &'static str,
        overdue_after: Duration,
        run: F,
    ) -> JoinHandle<()>
    where
        F: Fn(Beat) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let beat = self.health.register(name, overdue_after);
        let this = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let passes_before = beat.passes();
                let error = match tokio::spawn(run(beat.clone())).await {
                    Ok(Ok(())) => return,
                    Ok(Err(error)) => format!("{error:#}"),
                    Err(joined) if joined.is_panic() => {
                        format!("panicked: {}", panic_message(joined.into_panic()))
                    }
                    Err(joined) => joined.to_string(),
                };
                if this.shutdown.is_triggered() {
                    tracing::error!(stage = name, %error, "the stage stopped with an error during shutdown");
                    return;
                }
                // A life that made progress starts the count again.
                if beat.passes() > passes_before {
                    failures = 0;
                }
                failures += 1;
                beat.failed(&error);
                if failures >= this.policy.give_up_after {
                    tracing::error!(
                        stage = name, %error, failures,
                        "the stage keeps failing; stopping herald so that its service manager restarts it"
                    );
                    this.gave_up.store(true, Ordering::SeqCst);
                    this.stop.fire();
                    return;
                }
                let wait = this.policy.backoff(failures);
                tracing::error!(
                    stage = name, %error, failures, restart_in = ?wait,
                    "the stage failed; restarting it"
                );
                this.shutdown.sleep(wait).await;
                if this.shutdown.is_triggered() {
                    return;
                }
            }
        })
    }
}

/// The text a panic was raised with.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn setup(policy: RestartPolicy) -> (Supervisor, Trigger, Shutdown) {
        let (trigger, shutdown) = Shutdown::new();
        let (stop, _) = Shutdown::new();
        let supervisor =
            Supervisor::new(Health::default(), shutdown.clone(), Arc::new(stop), policy);
        (supervisor, trigger, shutdown)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_stage_is_restarted_with_growing_backoff_and_reports_its_cause() {
        let (supervisor, trigger, _) = setup(RestartPolicy::default());
        let lives = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let handle = supervisor.spawn("ingest", Duration::from_secs(3), {
            let lives = lives.clone();
            let starts = starts.clone();
            move |beat: Beat| {
                let life = lives.fetch_add(1, Ordering::SeqCst);
                starts.lock().unwrap().push(started.elapsed());
                async move {
                    if life < 3 {
                        panic!("cannot build the HTTP client");
                    }
                    loop {
                        beat.ok();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), String>(())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            lives.load(Ordering::SeqCst),
            4,
            "three panics, three restarts"
        );
        // Restarted after 1 s, then 2 s, then 4 s.
        assert_eq!(
            *starts.lock().unwrap(),
            [0, 1, 3, 7].map(Duration::from_secs).to_vec()
        );
        let status = &supervisor.health.statuses()[0];
        assert_eq!(status.restarts, 3);
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap()
                .contains("cannot build the HTTP client"),
            "{status:?}"
        );
        assert!(!status.overdue, "the fourth life passed");
        assert!(!supervisor.gave_up());
        trigger.fire();
        handle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_keeps_failing_stops_the_process() {
        let policy = RestartPolicy {
            give_up_after: 4,
            ..RestartPolicy::default()
        };
        let (trigger, shutdown) = Shutdown::new();
        let stop = Arc::new(trigger);
        let supervisor = Supervisor::new(Health::default(), shutdown.clone(), stop.clone(), policy);
        let handle = supervisor.spawn("plan", Duration::from_secs(45), |_beat: Beat| async {
            Err::<(), _>("the database is unreachable")
        });
        handle.await.unwrap();
        assert!(supervisor.gave_up());
        assert!(shutdown.is_triggered(), "the daemon's shutdown was fired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_without_a_pass_for_its_limit_is_overdue() {
        let health = Health::default();
        let beat = health.register("ingest", Duration::from_secs(9));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(health.statuses()[0].overdue, "no pass since start-up");
        beat.ok();
        assert!(!health.statuses()[0].overdue);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!health.statuses()[0].overdue);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(health.statuses()[0].overdue);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_returns_after_shutdown_is_not_restarted() {
        let (supervisor, trigger, shutdown) = setup(RestartPolicy::default());
        let lives = Arc::new(AtomicU32::new(0));
        let handle = supervisor.spawn("deliver", Duration::from_secs(90), {
            let lives = lives.clone();
            move |_beat: Beat| {
                lives.fetch_add(1, Ordering::SeqCst);
                let shutdown = shutdown.clone();
                async move {
                    shutdown.triggered().await;
                    Ok::<(), String>(())
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.fire();
        handle.await.unwrap();
        assert_eq!(lives.load(Ordering::SeqCst), 1);
        assert!(!supervisor.gave_up());
    }
}
