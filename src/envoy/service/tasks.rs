//! The background work of the service's leases, which a shutdown waits for.

use std::sync::Arc;

/// The lease calls and give-backs under way in the background, of every configuration's
/// leases: a shutdown waits for them.
#[derive(Default)]
pub(super) struct Tasks {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Tasks {
    pub(super) fn spawn(
        self: &Arc<Self>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        use std::sync::atomic::Ordering;
        self.running.fetch_add(1, Ordering::SeqCst);
        let tasks = Arc::clone(self);
        tokio::spawn(async move {
            task.await;
            if tasks.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                tasks.idle.notify_waiters();
            }
        });
    }

    /// Until no task runs.
    pub(super) async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}
