//! [`Worker`]: the limiter's background work, in one place: put-backs (slot releases,
//! settlements, refunds of calls that timed out, lease give-backs), calls left to finish,
//! leases taken for a hot key, and the lease sweep.
//!
//! One task per limiter reads one bounded queue and runs its jobs, at most a quarter of the
//! limiter's [`max_in_flight`](crate::LimiterBuilder::max_in_flight) at once, each a store
//! call bounded as decisions are (the breaker, the bound on calls in flight, the timeout). The
//! task starts on the Tokio runtime current when the limiter is built, or else at the first
//! job queued from one; from then on a job may be queued from any thread, a runtime current or
//! not. A job that cannot be queued (the queue is full, or the worker's runtime has shut down)
//! is counted in `tollgate_background_lost_total{job}` and logged once: never dropped in
//! silence.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc};

/// The most jobs waiting in a limiter's queue: a few hundred bytes each, so a full queue
/// holds about a megabyte.
pub(crate) const BACKGROUND_QUEUE: usize = 4096;

/// A job's work.
pub(crate) type Work = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a job is, as the `job` label of `tollgate_background_lost_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chore {
    // The discriminants index `Chore::ALL`.
    /// Freeing a concurrency slot, or putting back what a call that timed out took.
    PutBack = 0,
    /// Settling a reservation.
    Settle = 1,
    /// A store call whose caller went away, left to finish.
    Finish = 2,
    /// Taking or giving back a lease.
    Lease = 3,
}

impl Chore {
    #[cfg(feature = "metrics")]
    const ALL: [Chore; 4] = [Self::PutBack, Self::Settle, Self::Finish, Self::Lease];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PutBack => "put_back",
            Self::Settle => "settle",
            Self::Finish => "finish",
            Self::Lease => "lease",
        }
    }
}

enum Job {
    /// Runs once, counted until it ends ([`Worker::idle`]).
    Once(Work),
    /// Runs while the limiter lives (the lease sweep): not counted, and not under the bound.
    Always(Work),
}

/// The limiter's background worker; cloning shares it.
#[derive(Clone)]
pub(crate) struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Job>,
    /// The queue's other end, until a runtime runs the worker.
    waiting: Mutex<Option<mpsc::Receiver<Job>>>,
    started: AtomicBool,
    /// The most jobs run at once.
    at_once: usize,
    /// Jobs queued or running, and a signal when there are none.
    pending: AtomicUsize,
    idle: Notify,
    /// Whether a lost job was logged.
    logged: AtomicBool,
    #[cfg(feature = "metrics")]
    lost: std::sync::OnceLock<[metrics::Counter; 4]>,
}

impl Worker {
    /// A worker running at most `at_once` jobs at once (at least one), started at once when a
    /// runtime is current.
    pub(crate) fn new(at_once: usize) -> Self {
        let (queue, waiting) = mpsc::channel(BACKGROUND_QUEUE);
        let worker = Self {
            inner: Arc::new(Inner {
                queue,
                waiting: Mutex::new(Some(waiting)),
                started: AtomicBool::new(false),
                at_once: at_once.max(1),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                logged: AtomicBool::new(false),
                #[cfg(feature = "metrics")]
                lost: std::sync::OnceLock::new(),
            }),
        };
        worker.start();
        worker
    }

    /// Starts the worker's task on the current runtime, unless it runs or none is current.
    fn start(&self) {
        if self.inner.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(jobs) = self.inner.waiting.lock().take() else {
            return;
        };
        self.inner.started.store(true, Ordering::Release);
        // The task holds no `Worker`: it ends when the limiter and every guard are gone.
        let inner = Arc::downgrade(&self.inner);
        runtime.spawn(run(jobs, self.inner.at_once, inner));
    }

    /// Queues `work`, run once; `false` (counted and logged) when it cannot be.
    pub(crate) fn run(&self, chore: Chore, work: Work) -> bool {
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        if self.queue(chore, Job::Once(work)) {
            return true;
        }
        self.ended();
        false
    }

    /// Queues `work`, which runs while the limiter lives.
    pub(crate) fn keep_running(&self, chore: Chore, work: Work) -> bool {
        self.queue(chore, Job::Always(work))
    }

    fn queue(&self, chore: Chore, job: Job) -> bool {
        self.start();
        let error = match self.inner.queue.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(_)) => "its queue is full",
            Err(mpsc::error::TrySendError::Closed(_)) => "its runtime has shut down",
        };
        #[cfg(feature = "metrics")]
        self.inner.lost.get_or_init(|| {
            Chore::ALL.map(|job| {
                metrics::counter!(crate::telemetry::BACKGROUND_LOST_TOTAL, "job" => job.as_str())
            })
        })[chore as usize]
            .increment(1);
        if !self.inner.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                job = chore.as_str(),
                "the limiter's background worker lost a job: {error} (counted in \
                 tollgate_background_lost_total; logged once)"
            );
        }
        false
    }

    fn ended(&self) {
        self.inner.ended();
    }

    /// Waits until every job queued so far, and every one they queue, has ended.
    pub(crate) async fn idle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Inner {
    fn ended(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// The worker's task: runs each job as it comes, at most `at_once` at a time.
async fn run(mut jobs: mpsc::Receiver<Job>, at_once: usize, inner: std::sync::Weak<Inner>) {
    let room = Arc::new(Semaphore::new(at_once));
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Once(work) => {
                let Ok(permit) = Arc::clone(&room).acquire_owned().await else {
                    return;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    // Counted as ended however the job ends, even if its runtime stops it.
                    let _ended = Ended(inner);
                    work.await;
                    drop(permit);
                });
            }
            Job::Always(work) => {
                tokio::spawn(work);
            }
        }
    }
}

struct Ended(std::sync::Weak<Inner>);

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.ended();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pending", &self.inner.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
