//! Graceful shutdown: one small handle passed to every long-running task.

use std::time::Duration;

use tokio::sync::watch;

/// Fires the shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    /// Tells every task to stop taking new work.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

/// A task's view of shutdown: check it between units of work, or await it.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A new shutdown signal and the trigger that fires it.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown begins (never, if the trigger is dropped unfired).
    pub async fn triggered(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|fired| *fired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `duration`, or less if shutdown begins meanwhile.
    pub async fn sleep(&self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.triggered() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn firing_wakes_sleepers_early() {
        let (trigger, shutdown) = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.sleep(Duration::from_secs(3600)).await }
        });
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_triggered());
    }
}
