//! Lease bookkeeping: which claimed rows this worker holds, under which claim, and
//! until when. A row is sent only under a lease that still holds, and the leases of
//! held rows are renewed well before they run out, so a live worker's rows are never
//! claimed by another, and a worker cut off from the database for a whole lease stops
//! sending the rows it can no longer vouch for.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::domain::{DeliveryId, Timestamp};
use crate::store::{Lease, LeaseOwner, Store};

/// The rows this worker holds, each with the number of its latest claim and how long
/// its lease is known to hold. A renewer extends the leases while the rows wait and
/// while they are sent; a sender transmits only under a lease that still holds, so a
/// row whose lease lapsed (the database was out of reach) is left to whoever claims it
/// next instead of going out twice.
pub(super) struct Holdings {
    owner: LeaseOwner,
    rows: std::sync::Mutex<std::collections::HashMap<DeliveryId, Held>>,
    claims: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    claim: u64,
    valid_until: Timestamp,
}

impl Holdings {
    pub(super) fn new(owner: LeaseOwner) -> Holdings {
        Holdings {
            owner,
            rows: Default::default(),
            claims: Default::default(),
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<DeliveryId, Held>> {
        self.rows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a new claim of `id`; any older claim of the same row is void.
    pub(super) fn hold(&self, id: DeliveryId, valid_until: Timestamp) -> u64 {
        let claim = self.claims.fetch_add(1, Ordering::Relaxed);
        self.rows().insert(id, Held { claim, valid_until });
        claim
    }

    /// Whether this claim of `id` still holds its lease now.
    pub(super) fn holds(&self, id: DeliveryId, claim: u64) -> bool {
        self.rows()
            .get(&id)
            .is_some_and(|held| held.claim == claim && held.valid_until >= Timestamp::now())
    }

    /// Whether this worker holds any claim of `id`.
    pub(super) fn is_held(&self, id: DeliveryId) -> bool {
        self.rows().contains_key(&id)
    }

    /// Forgets this claim of `id` (its outcome is committed, or it was given up).
    pub(super) fn forget(&self, id: DeliveryId, claim: u64) {
        let mut rows = self.rows();
        if rows.get(&id).is_some_and(|held| held.claim == claim) {
            rows.remove(&id);
        }
    }

    fn snapshot(&self) -> Vec<(DeliveryId, u64)> {
        self.rows().iter().map(|(id, h)| (*id, h.claim)).collect()
    }

    /// Extends the leases of the held rows; rows the database says are no longer ours
    /// are marked lapsed so no sender transmits them.
    pub(super) async fn renew(&self, store: &Store, lease: Duration) {
        let held = self.snapshot();
        if held.is_empty() {
            return;
        }
        let until = Timestamp::now() + lease.max(Duration::from_secs(1));
        let ids: Vec<DeliveryId> = held.iter().map(|(id, _)| *id).collect();
        let lease = Lease {
            owner: self.owner,
            until,
        };
        match store.renew_leases(&ids, lease).await {
            Ok(renewed) => {
                let renewed: std::collections::HashSet<DeliveryId> = renewed.into_iter().collect();
                let mut rows = self.rows();
                for (id, claim) in held {
                    if let Some(h) = rows.get_mut(&id).filter(|h| h.claim == claim) {
                        h.valid_until = if renewed.contains(&id) {
                            until
                        } else {
                            Timestamp::from_unix(0)
                        };
                    }
                }
            }
            // The leases run on as they were; senders stop once they lapse.
            Err(e) => tracing::warn!(error = %e, "could not renew delivery leases"),
        }
    }
}

/// Renews the leases of `holdings` every third of `lease`, for as long as it runs.
pub(super) async fn renew_forever(holdings: &Holdings, store: &Store, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        holdings.renew(store, lease).await;
    }
}
