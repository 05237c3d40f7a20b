//! [`InFlight`]: the concurrency slots an allowed decision holds, freed when it is dropped.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::worker::Chore;
use super::{Core, Shared};
use crate::store::{Stamp, Store};

/// Frees slots: the limiter's store (or its local fallback), type-erased.
pub(crate) trait Releaser: Send + Sync + 'static {
    /// Frees the slot the take stamped `stamp` holds in each concurrency limit of the policy
    /// at `index` of `core` (the generation it was taken under) for `key` (and, when
    /// `untake`, puts back the take's units too), in the store or, when the decision was
    /// `local`, in the local fallback.
    fn release(&self, core: Arc<Core>, key: String, index: usize, held: Held);
}

/// How a guard's slots are held.
#[derive(Debug, Default)]
pub(crate) struct Held {
    local: bool,
    stamp: Option<Stamp>,
    untake: bool,
}

impl<St: Store> Releaser for Shared<St> {
    fn release(&self, core: Arc<Core>, key: String, index: usize, held: Held) {
        let Held {
            local,
            stamp,
            untake,
        } = held;
        if local {
            if let Some(fallback) = &core.local {
                fallback.release(index, &key);
            }
            return;
        }
        let limits = &core.policies.entry(index).limits;
        // A store that does not stamp its takes counts slots, or cannot free them at all.
        let stamp = stamp.unwrap_or_default();
        let units = if untake { stamp.cost() } else { 0 };
        let mut call = self.store.put_back(&key, limits, &stamp, units, true);
        let Some(worker) = &core.worker else {
            // An in-process store is done at once.
            if let Poll::Ready(Err(error)) =
                call.as_mut().poll(&mut Context::from_waker(Waker::noop()))
            {
                tracing::debug!(%error, "a concurrency slot was not released");
            }
            return;
        };
        // A remote one's call runs in the background, bounded as every call is. If it fails,
        // the slot's lease runs out, and units not put back are held until they refill.
        let worker = worker.clone();
        worker.run(
            Chore::PutBack,
            Box::pin(async move {
                if let Err(error) = core.patient(call).await {
                    tracing::debug!(%error, "a put-back failed");
                    core.telemetry.store_error(&error);
                }
            }),
        );
    }
}

/// The concurrency slots an allowed request holds (one in each [concurrency](
/// crate::Algorithm::Concurrency) limit of its policy): freed when this is dropped, or by
/// `InFlight::release`. The layer takes it out of an [`Outcome`](crate::Outcome) to hold the
/// slots until the response body is over.
#[must_use = "the slots are freed when this is dropped"]
pub(crate) struct InFlight {
    releaser: Option<(Arc<dyn Releaser>, Arc<Core>)>,
    key: String,
    index: usize,
    held: Held,
}

impl InFlight {
    /// Slots taken for `key` under the policy at `index` of `core`.
    pub(crate) fn new(
        releaser: Arc<dyn Releaser>,
        core: Arc<Core>,
        key: String,
        index: usize,
    ) -> Self {
        Self {
            releaser: Some((releaser, core)),
            key,
            index,
            held: Held::default(),
        }
    }

    /// A guard that puts back everything the take took, units and slots, when it has: the
    /// take of a call given up on.
    pub(crate) fn untaking(
        releaser: Arc<dyn Releaser>,
        core: Arc<Core>,
        key: String,
        index: usize,
    ) -> Self {
        let mut guard = Self::new(releaser, core, key, index);
        guard.held.untake = true;
        guard
    }

    /// The same guard, of the slots the take stamped `stamp` holds.
    pub(crate) fn stamped(mut self, stamp: Option<Stamp>) -> Self {
        self.held.stamp = stamp;
        self
    }

    /// The same slots, held in the local fallback.
    pub(crate) fn local(mut self) -> Self {
        self.held.local = true;
        self
    }

    /// Frees the slots now.
    pub(crate) fn release(self) {}

    /// Forgets the slots without freeing them: they were not taken.
    pub(crate) fn disarm(mut self) {
        self.releaser = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((releaser, core)) = self.releaser.take() {
            let key = std::mem::take(&mut self.key);
            releaser.release(core, key, self.index, std::mem::take(&mut self.held));
        }
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("policy", &self.index)
            .field("local", &self.held.local)
            .field("held", &self.releaser.is_some())
            .finish_non_exhaustive()
    }
}
