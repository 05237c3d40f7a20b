//! The Lua scripts as sent to Redis, and the command of one decision (its reply: `reply.rs`).

use std::sync::LazyLock;

use crate::algorithm::MAX_SUFFIX_LEN;
use crate::limit::MAX_NAME_LEN;
use crate::store::push_bucket_key;
use crate::{Algorithm, Limit};

/// The script of limits that all use one algorithm, as sent to Redis: the algorithm's
/// `lua/<algorithm>.lua` followed by `lua/decide.lua`.
pub(crate) fn script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => TOKEN_BUCKET_SCRIPT,
        Algorithm::FixedWindow => FIXED_WINDOW_SCRIPT,
        Algorithm::SlidingWindow => SLIDING_WINDOW_SCRIPT,
        Algorithm::SlidingLog => SLIDING_LOG_SCRIPT,
        Algorithm::Concurrency => CONCURRENCY_SCRIPT,
    }
}

/// What every decision script starts with: its observe functions may write back a bucket the
/// clock stepped back from (the peek script says `true`).
macro_rules! decide {
    ($($file:literal),*) => {
        concat!(
            "local read_only = false\n",
            $(include_str!(concat!("../../../lua/", $file)),)*
            include_str!("../../../lua/decide.lua")
        )
    };
}

const TOKEN_BUCKET_SCRIPT: &str = decide!("token_bucket.lua");
const FIXED_WINDOW_SCRIPT: &str = decide!("fixed_window.lua");
const SLIDING_WINDOW_SCRIPT: &str = decide!("sliding_window.lua");
const SLIDING_LOG_SCRIPT: &str = decide!("sliding_log.lua");
const CONCURRENCY_SCRIPT: &str = decide!("concurrency.lua");
/// The script of limits of different algorithms: every algorithm's, `lua/mixed.lua` and
/// `lua/decide.lua`.
pub(crate) const MIXED_SCRIPT: &str = decide!(
    "token_bucket.lua",
    "fixed_window.lua",
    "sliding_window.lua",
    "sliding_log.lua",
    "concurrency.lua",
    "mixed.lua"
);

/// Every algorithm's functions and `lua/mixed.lua`, after `local read_only = ...`, then `$end`.
macro_rules! every_algorithm {
    ($read_only:literal, $end:literal) => {
        concat!(
            $read_only,
            include_str!("../../../lua/token_bucket.lua"),
            include_str!("../../../lua/fixed_window.lua"),
            include_str!("../../../lua/sliding_window.lua"),
            include_str!("../../../lua/sliding_log.lua"),
            include_str!("../../../lua/concurrency.lua"),
            include_str!("../../../lua/mixed.lua"),
            include_str!(concat!("../../../lua/", $end))
        )
    };
}

/// [`Limiter::peek`](crate::Limiter::peek): read-only (so it may run on a replica), every
/// algorithm's observe function, and `lua/peek.lua`.
const PEEK_SCRIPT: &str = every_algorithm!(
    "#!lua flags=no-writes\nlocal read_only = true\n",
    "peek.lua"
);
/// Every put-back ([`Store::put_back`](crate::store::Store::put_back)): `lua/put_back.lua`.
const PUT_BACK_SCRIPT: &str = include_str!("../../../lua/put_back.lua");
/// [`Limiter::charge`](crate::Limiter::charge): every algorithm's observe and take functions,
/// and `lua/charge.lua`.
const CHARGE_SCRIPT: &str = every_algorithm!("local read_only = false\n", "charge.lua");
/// A leased policy's decision that lends ([`Store::lease`](crate::store::Store::lease)): every
/// algorithm's observe and take functions, and `lua/lease.lua`.
const LEASE_SCRIPT: &str = every_algorithm!("local read_only = false\n", "lease.lua");

/// The scripts other than the deciding ones, by their place in [`SCRIPTS`].
#[derive(Clone, Copy)]
pub(super) enum Other {
    Peek = 6,
    /// Every put-back: `lua/put_back.lua`.
    PutBack = 7,
    Charge = 8,
    /// Renews this instance's slots in one bucket: `lua/renew.lua`.
    Renew = 9,
    /// One token-bucket limit alone: `lua/token_bucket_one.lua`.
    TokenBucketOne = 10,
    /// Several token-bucket limits: `lua/token_bucket_many.lua`.
    TokenBucketMany = 11,
    /// A decision that lends: `lua/lease.lua`.
    Lease = 12,
    /// Several fixed-window limits: `lua/fixed_window_many.lua`.
    FixedWindowMany = 13,
    /// Sliding-window limits alone (one or several): `lua/sliding_window_many.lua`.
    SlidingWindowMany = 14,
    /// One fixed-window limit alone: `lua/fixed_window_one.lua`.
    FixedWindowOne = 15,
    /// An Envoy service counter added to with a lease: `lua/counter_lend.lua`.
    CounterLend = 16,
    /// A lease of an Envoy service counter given back: `lua/counter_return.lua`.
    CounterReturn = 17,
}

/// The scripts, each with its SHA1 computed once per process: one per algorithm, in the
/// order of [`Algorithm::ALL`], the mixed one, then the [`Other`] ones.
static SCRIPTS: LazyLock<[redis::Script; 18]> = LazyLock::new(|| all().map(redis::Script::new));

/// The text of each script, in the order of [`SCRIPTS`].
pub(super) fn all() -> [&'static str; 18] {
    [
        script_source(Algorithm::ALL[0]),
        script_source(Algorithm::ALL[1]),
        script_source(Algorithm::ALL[2]),
        script_source(Algorithm::ALL[3]),
        script_source(Algorithm::ALL[4]),
        MIXED_SCRIPT,
        PEEK_SCRIPT,
        PUT_BACK_SCRIPT,
        CHARGE_SCRIPT,
        include_str!("../../../lua/renew.lua"),
        include_str!("../../../lua/token_bucket_one.lua"),
        include_str!("../../../lua/token_bucket_many.lua"),
        LEASE_SCRIPT,
        include_str!("../../../lua/fixed_window_many.lua"),
        include_str!("../../../lua/sliding_window_many.lua"),
        include_str!("../../../lua/fixed_window_one.lua"),
        include_str!("../../../lua/counter_lend.lua"),
        include_str!("../../../lua/counter_return.lua"),
    ]
}

/// The script of a stamped take under `limits` (the driver, `lua/decide.lua`, which replies
/// with the time when asked): their algorithm's if they share one, else the mixed one.
pub(crate) fn stamped_script_for(limits: &[Limit]) -> &'static redis::Script {
    let first = limits
        .first()
        .map_or(Algorithm::TokenBucket, Limit::algorithm);
    if !limits.iter().all(|l| l.algorithm() == first) {
        return &SCRIPTS[Algorithm::ALL.len()];
    }
    let i = Algorithm::ALL
        .iter()
        .position(|&a| a == first)
        .expect("every algorithm is in ALL");
    &SCRIPTS[i]
}

/// The script that decides a request under `limits`: token buckets' and windows' own (one,
/// or several of one kind); else their algorithm's if they share one; else the mixed one.
pub(crate) fn script_for(limits: &[Limit]) -> &'static redis::Script {
    let first = limits
        .first()
        .map_or(Algorithm::TokenBucket, Limit::algorithm);
    if !limits.iter().all(|l| l.algorithm() == first) {
        return &SCRIPTS[Algorithm::ALL.len()];
    }
    match (first, limits.len()) {
        (Algorithm::TokenBucket, 1) => other(Other::TokenBucketOne),
        (Algorithm::TokenBucket, _) => other(Other::TokenBucketMany),
        (Algorithm::FixedWindow, 1) => other(Other::FixedWindowOne),
        (Algorithm::FixedWindow, _) => other(Other::FixedWindowMany),
        // One sliding window replies as several do (an array), so one script serves both.
        (Algorithm::SlidingWindow, _) => other(Other::SlidingWindowMany),
        _ => {
            let i = Algorithm::ALL
                .iter()
                .position(|&a| a == first)
                .expect("every algorithm is in ALL");
            &SCRIPTS[i]
        }
    }
}

/// The scripts of one algorithm alone, chosen by [`script_for`].
const OWN: [Other; 5] = [
    Other::TokenBucketOne,
    Other::TokenBucketMany,
    Other::FixedWindowOne,
    Other::FixedWindowMany,
    Other::SlidingWindowMany,
];

/// One of the other scripts.
pub(super) fn other(script: Other) -> &'static redis::Script {
    &SCRIPTS[script as usize]
}

/// The call `evalsha` (made by `evalsha()`) with the script's text instead of its SHA1:
/// `EVAL`, for a server that lacks the script. Built only then, from the command's own
/// arguments.
pub(super) fn eval(evalsha: &redis::Cmd, script: &redis::Script) -> redis::Cmd {
    let i = SCRIPTS
        .iter()
        .position(|s| std::ptr::eq(s, script))
        .expect("one of the scripts");
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(all()[i]);
    // Past the verb and the SHA1: the key count, the keys and the arguments.
    for arg in evalsha.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// `EVALSHA sha`, then the keys and arguments of `lua/decide.lua`, written once: each key
/// straight from one reused buffer. `cost` is what each limit takes: the request's cost, or
/// 1 for a limit that counts requests ([`Limit::per_request`]) when the call `decides` (a
/// decision or a peek); the units as given for a refund or a charge. A concurrency limit
/// gets the name of the slot a decision would take, `slot`, in place of the cost.
pub(super) fn evalsha(
    script: &redis::Script,
    key: &str,
    limits: &[Limit],
    cost: u64,
    decides: bool,
    slot: &str,
) -> redis::Cmd {
    // Sized once: the verb, the SHA1, the key count, then per limit its key and four numbers.
    let per_limit = key.len() + 1 + MAX_NAME_LEN + MAX_SUFFIX_LEN + 4 * 20;
    let mut cmd = redis::Cmd::with_capacity(3 + 5 * limits.len(), 64 + per_limit * limits.len());
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(limits.len());
    let mut bucket = String::with_capacity(key.len() + 1 + MAX_NAME_LEN + MAX_SUFFIX_LEN);
    for limit in limits {
        bucket.clear();
        push_bucket_key(&mut bucket, key, limit);
        cmd.arg(bucket.as_str());
    }
    // An algorithm's own script (`*_one.lua`, `*_many.lua`) knows its algorithm: its limits
    // come without the algorithm's code, and a token bucket's without the cost, which only the
    // driver records.
    let own = OWN.iter().any(|&own| std::ptr::eq(script, other(own)));
    for limit in limits {
        let cost = if decides { limit.cost_of(cost) } else { cost };
        if !own {
            cmd.arg(limit.algorithm().code());
        }
        match limit.algorithm() {
            // The increment and the burst, in microseconds; the cost for the record.
            Algorithm::TokenBucket => {
                cmd.arg(cost.saturating_mul(limit.interval_us()))
                    .arg(limit.window_us());
                if !own {
                    cmd.arg(cost);
                }
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                cmd.arg(limit.window_ms()).arg(limit.capacity()).arg(cost);
            }
            Algorithm::SlidingLog => {
                cmd.arg(limit.window_us()).arg(limit.capacity()).arg(cost);
            }
            // The lease in microseconds, the capacity, the slot.
            Algorithm::Concurrency => {
                cmd.arg(limit.window_us()).arg(limit.capacity()).arg(slot);
            }
        }
    }
    cmd
}
