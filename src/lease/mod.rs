//! Leases: fewer store calls than decisions for hot keys, never more admitted than the limit.
//!
//! Every limit of a policy marked [leased](crate::Limit::leased) (`lease = true` in a policy
//! file) is leased together. With a remote store ([`RedisStore`](crate::RedisStore)), each
//! instance counts the units asked on each key of such a policy over the last lease time. A
//! key asked for fewer than [`MIN_LEASE`] units in that time is cold: decided one request at a
//! time, exactly as without leasing. For a hot key, the call that decides a request also takes
//! a lease: up to as many more units as the key was asked for over the last lease time, never
//! more than half of what each limit holds once the request is taken (so a nearly empty bucket
//! lends nothing and each request is decided on its own again). The instance then admits the
//! key's next requests from the lease in process, with no store call, until it is spent or its
//! time is over. When half of a lease is spent, one call in the background takes the next
//! (the requests meanwhile go on spending the rest), so a steady hot key costs about one store
//! call per lease time per instance. What a lease has left when its time is over goes back
//! to the bucket (a background task looks every lease time), and
//! [`Limiter::return_leases`](crate::Limiter::return_leases) gives everything back at once
//! (call it when the process shuts down). An in-process store ([`MemoryStore`](crate::MemoryStore))
//! decides in process anyway and never leases.
//!
//! # What leasing guarantees
//!
//! Units are taken from the bucket before any request spends them, in the same atomic call
//! that decides a request, so no instance ever admits a unit the bucket did not give it:
//!
//! | algorithm | over-admission | a lease lasts | what is left goes back |
//! |---|---|---|---|
//! | token bucket | none: at most the capacity plus the refill, counted at the times units were taken; a burst measured at the times requests are admitted may be later by up to one lease time | the lease time | what is still owed: their worth less the time since they were lent (the bucket went on filling meanwhile, and what its capacity cut off would have gone to them), never more than if they had not been taken |
//! | fixed window | none: at most the capacity per window | the lease time, and never past the end of the window that lent it | to the window that lent it, while it lasts (after it, nothing is owed) |
//! | sliding window | none beyond the algorithm's own estimate: lent units count in the window that lent them, and are spent within it | as the fixed window | to the window that lent them, in its count or, once the next window began, in the previous count |
//! | sliding log | refused at build time: it records when each unit was taken | | |
//! | concurrency | refused at build time: slots are held, not spent | | |
//!
//! Under-admission: at most the unspent units of unexpired leases, per key at most the
//! number of instances × the largest lease one holds (the key's units over a lease time, at
//! most half of the bucket), and given back when the lease ends (a token bucket's less what
//! refilled meanwhile). Units that are taken and never given back come back as the bucket
//! refills or its window ends: those a process holds when it dies without
//! [`return_leases`](crate::Limiter::return_leases), those of a lease call whose answer is
//! lost (the timeout), and those of a give-back that fails (it is not retried).
//!
//! A [`reset`](crate::Limiter::reset) drops this instance's lease on the subject without
//! giving it back (the bucket is whole again). Other instances' leases were taken from the
//! old bucket: they may still spend them and give back what is left into the new one, so
//! within one lease time after a reset up to instances × their leases more may pass than the
//! fresh bucket allows.
//!
//! During a store outage an instance spends what it has leased (exactly: the units are
//! already taken), then the [fail mode](crate::FailMode) applies. The deny cache, peek and
//! refund work as before: [`Limiter::peek`](crate::Limiter::peek) counts leased units as taken,
//! and [`Limiter::leased`](crate::Limiter::leased) says how many this instance holds.
//!
//! A decision served from a lease reports the binding limit as the store last said, with the
//! units left in the lease added (`DecidedBy::Lease`).
//!
//! Memory: at most [`MAX_LEASED_KEYS`] keys are followed per limiter (about 150 bytes and the
//! key each); past that, a new key is decided without a lease until idle keys are forgotten
//! (after two lease times without a request).

mod table;

pub(crate) use table::{Grant, Leases, Serve, Unspent};
pub use table::{MAX_LEASED_KEYS, MIN_LEASE};
