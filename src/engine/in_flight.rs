//! [`InFlight`]: the concurrency slots an allowed decision holds, freed when it is dropped.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::{Core, Shared};
use crate::store::{Stamp, Store};

/// Frees slots: the limiter's store (or its local fallback), type-erased.
pub(crate) trait Releaser: Send + Sync + 'static {
    /// Frees the slot the take stamped `stamp` holds in each concurrency limit of the policy
    /// at `index` for `key`, in the store or, when the decision was `local`, in the local
    /// fallback.
    fn release(&self, key: String, index: usize, local: bool, stamp: Option<Stamp>);
}

impl<St: Store> Releaser for Shared<St> {
    fn release(&self, key: String, index: usize, local: bool, stamp: Option<Stamp>) {
        let core: &Core = &self.core;
        if local {
            if let Some(fallback) = &core.local {
                fallback.release(index, &key);
            }
            return;
        }
        let limits = &core.policies.entry(index).limits;
        // A store that does not stamp its takes counts slots, or cannot free them at all.
        let stamp = stamp.unwrap_or_default();
        let mut call = self.store.put_back(&key, limits, &stamp, 0, true);
        // An in-process store is done at once; a remote one's call runs on its own, bounded by
        // the timeout. If it fails, the slot's lease runs out.
        if let Poll::Ready(answer) = call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            if let Err(error) = answer {
                tracing::debug!(%error, "a concurrency slot was not released");
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let timeout = core.timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "a concurrency slot was not released"),
                Err(_) => tracing::debug!("a concurrency slot's release timed out"),
            }
        });
    }
}

/// The concurrency slots an allowed request holds (one in each [concurrency](
/// crate::Algorithm::Concurrency) limit of its policy): freed when this is dropped, or by
/// [`InFlight::release`]. Taken out of an [`Outcome`](crate::Outcome) with
/// [`Outcome::in_flight`](crate::Outcome::in_flight) to hold the slots longer than the
/// outcome.
#[must_use = "the slots are freed when this is dropped"]
pub struct InFlight {
    releaser: Option<Arc<dyn Releaser>>,
    key: String,
    index: usize,
    local: bool,
    /// Which slots the take holds (set when the store answers).
    stamp: Option<Stamp>,
}

impl InFlight {
    pub(crate) fn new(releaser: Arc<dyn Releaser>, key: String, index: usize) -> Self {
        Self {
            releaser: Some(releaser),
            key,
            index,
            local: false,
            stamp: None,
        }
    }

    /// The same guard, of the slots the take stamped `stamp` holds.
    pub(crate) fn stamped(mut self, stamp: Option<Stamp>) -> Self {
        self.stamp = stamp;
        self
    }

    /// The same slots, held in the local fallback.
    pub(crate) fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// Frees the slots now.
    pub fn release(self) {}

    /// Forgets the slots without freeing them: they were not taken.
    pub(crate) fn disarm(mut self) {
        self.releaser = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(releaser) = self.releaser.take() {
            let stamp = self.stamp.take();
            releaser.release(std::mem::take(&mut self.key), self.index, self.local, stamp);
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("policy", &self.index)
            .field("local", &self.local)
            .field("held", &self.releaser.is_some())
            .finish_non_exhaustive()
    }
}
