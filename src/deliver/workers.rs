//! This worker among the others: its row in `workers`, a heartbeat every few seconds
//! (`deliver.worker_timeout` / 3, at most 5 s), and with each beat the claims of dead
//! workers given back to the queue. A worker that starts up beats and gives back before
//! its first claim, so the rows of a process killed a while ago go out at once rather
//! than after their lease. The claim path is untouched: the beat is its own statement,
//! a few seconds apart, whatever the send rate. Each beat also renews the leases of the
//! feeds this worker is polling (the daemon's ingest claims them as this worker).
//!
//! On Linux a worker also records which process it is (`ProcessIdentity`: the kernel's
//! boot, the pid namespace, the pid and the process's start time). With each beat, a
//! worker gives back at once the claims of workers in its own scope whose process is no
//! longer running, without waiting for `worker_timeout`: a process restarted after a
//! `kill -9` sends the killed one's rows straight away. A pid taken again by another
//! process does not pass for the old one, since its start time differs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::leases::Holdings;
use crate::config::DeliverConfig;
use crate::domain::Timestamp;
use crate::store::{Heartbeat, LeaseOwner, ProcessIdentity, Store, Worker};

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
                process: ProcessIdentity::of_this_process(),
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
        self.mark_gone_processes().await;
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

    /// Marks dead the workers of this machine and pid namespace whose process is no
    /// longer running, so the release that follows gives their claims back at once.
    async fn mark_gone_processes(&self) {
        let Some(me) = &self.worker.process else {
            return;
        };
        let gone: Vec<LeaseOwner> = match self
            .store
            .workers_in_scope(&me.scope, self.worker.owner)
            .await
        {
            Ok(workers) => workers
                .into_iter()
                .filter(|(_, process)| !process.is_running())
                .map(|(owner, _)| owner)
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the workers of this machine");
                return;
            }
        };
        if gone.is_empty() {
            return;
        }
        match self.store.mark_workers_dead(&gone).await {
            Ok(()) => tracing::info!(
                workers = gone.len(),
                "workers of this machine whose process is gone are dead now"
            ),
            Err(error) => tracing::warn!(%error, "cannot mark gone workers dead"),
        }
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

// Reading processes from `/proc` (Linux); elsewhere a worker has no identity and only
// its heartbeat tells.
impl ProcessIdentity {
    /// This process, or `None` where `/proc` cannot say.
    fn of_this_process() -> Option<ProcessIdentity> {
        let pid = std::process::id();
        Some(ProcessIdentity {
            scope: process_scope()?,
            pid,
            start: start_ticks(pid)?,
        })
    }

    /// Whether this process still runs: its pid is there and started when it did.
    fn is_running(&self) -> bool {
        start_ticks(self.pid) == Some(self.start)
    }
}

/// The kernel boot and the pid namespace this process counts pids in.
fn process_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), namespace.display()))
}

/// The start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), or `None` when no such process runs. A zombie still has its entry:
/// it counts as gone.
fn start_ticks(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Fields 4 to 21 come between the state (3) and the start time (22).
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_a_dead_child_or_another_start_does_not() {
        let me = ProcessIdentity::of_this_process().expect("Linux has /proc");
        assert!(me.is_running());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let scope = process_scope().unwrap();
        let pid = child.id();
        let them = ProcessIdentity {
            scope,
            pid,
            start: start_ticks(pid).unwrap(),
        };
        assert!(them.is_running());
        // The same pid with another start time: a later process that took the pid.
        let reused = ProcessIdentity {
            start: them.start + 1,
            ..them.clone()
        };
        assert!(!reused.is_running());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!them.is_running());
    }
}
