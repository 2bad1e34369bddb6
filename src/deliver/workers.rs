//! This worker among the others: its row in `workers`, a heartbeat every few seconds
//! (`deliver.worker_timeout` / 3, at most 5 s), and with each beat the claims of dead
//! workers given back to the queue. A worker that starts up beats and gives back before
//! its first claim, so the rows of a process killed a while ago go out at once rather
//! than after their lease. The claim path is untouched: the beat is its own statement,
//! a few seconds apart, whatever the send rate. Each beat also renews the leases of the
//! feeds this worker is polling (the daemon's ingest claims them as this worker).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::leases::Holdings;
use crate::config::DeliverConfig;
use crate::domain::Timestamp;
use crate::store::{Heartbeat, LeaseOwner, Store, Worker};

/// This worker's presence in the `workers` table.
pub(super) struct Presence {
    store: Store,
    worker: Worker,
    /// A worker silent for longer is dead.
    timeout: Duration,
    /// How often this worker beats.
    every: Duration,
    /// Whether this worker has registered once: registering again means another worker
    /// took it for dead (it stalled) and gave its claims back.
    registered: AtomicBool,
}

impl Presence {
    /// The presence of the worker whose claims carry `owner`.
    pub(super) fn new(store: Store, owner: LeaseOwner, deliver: &DeliverConfig) -> Presence {
        let host = hostname::get()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Presence {
            store,
            worker: Worker {
                owner,
                host,
                pid: std::process::id(),
                started_at: Timestamp::now(),
            },
            timeout: deliver.worker_timeout,
            every: deliver.heartbeat_every(),
            registered: AtomicBool::new(false),
        }
    }

    /// Beats once, then gives back the claims of workers silent for longer than the
    /// timeout. A database that does not answer is only logged: the leases stay the
    /// backstop, and the next beat tries again. Returns whether another worker had taken
    /// this one for dead (and given its claims back).
    pub(super) async fn beat(&self) -> bool {
        let mut taken_for_dead = false;
        let now = Timestamp::now();
        match self.store.worker_heartbeat(&self.worker, now).await {
            Ok(Heartbeat::Registered) if self.registered.swap(true, Ordering::Relaxed) => {
                taken_for_dead = true;
                tracing::warn!(
                    "this worker's heartbeat was late enough for another to take it for dead \
                     and give its claims back; it registered again"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot record this worker's heartbeat"),
        }
        // The feeds this worker is polling stay its own while it beats.
        if let Err(error) = self
            .store
            .renew_feed_leases(self.worker.owner, now + self.timeout)
            .await
        {
            tracing::warn!(%error, "cannot renew this worker's feed leases");
        }
        match self
            .store
            .release_dead_workers(now - self.timeout, now)
            .await
        {
            Ok(dead) if !dead.owners.is_empty() => tracing::info!(
                workers = dead.owners.len(),
                released = dead.released,
                "gave the claims of dead workers back to the queue"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot give back the claims of dead workers")
            }
        }
        taken_for_dead
    }

    /// Beats every few seconds, for as long as it runs. When another worker took this
    /// one for dead, `holdings` are renewed at once: the rows given back are found gone
    /// and no sender transmits them.
    pub(super) async fn beat_forever(&self, holdings: &Holdings, lease: Duration) {
        loop {
            tokio::time::sleep(self.every).await;
            if self.beat().await {
                holdings.renew(&self.store, lease).await;
            }
        }
    }

    /// Deletes this worker's row: it stops cleanly.
    pub(super) async fn leave(&self) {
        self.registered.store(false, Ordering::Relaxed);
        if let Err(error) = self.store.remove_worker(self.worker.owner).await {
            tracing::warn!(%error, "cannot remove this worker's row; it goes once its heartbeat is old");
        }
    }
}
