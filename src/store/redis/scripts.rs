//! The Lua scripts as sent to Redis, the command of one decision and its reply.

use std::sync::LazyLock;

use crate::algorithm::{MAX_SUFFIX_LEN, Observation, decide_observed};
use crate::limit::MAX_NAME_LEN;
use crate::store::push_bucket_key;
use crate::{Algorithm, Decision, Limit, MAX_LIMITS};

/// The script of limits that all use one algorithm, as sent to Redis: the algorithm's
/// `lua/<algorithm>.lua` followed by `lua/decide.lua`.
pub fn script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::TokenBucket => TOKEN_BUCKET_SCRIPT,
        Algorithm::FixedWindow => FIXED_WINDOW_SCRIPT,
        Algorithm::SlidingWindow => SLIDING_WINDOW_SCRIPT,
        Algorithm::SlidingLog => SLIDING_LOG_SCRIPT,
    }
}

const TOKEN_BUCKET_SCRIPT: &str = concat!(
    include_str!("../../../lua/token_bucket.lua"),
    include_str!("../../../lua/decide.lua")
);
const FIXED_WINDOW_SCRIPT: &str = concat!(
    include_str!("../../../lua/fixed_window.lua"),
    include_str!("../../../lua/decide.lua")
);
const SLIDING_WINDOW_SCRIPT: &str = concat!(
    include_str!("../../../lua/sliding_window.lua"),
    include_str!("../../../lua/decide.lua")
);
const SLIDING_LOG_SCRIPT: &str = concat!(
    include_str!("../../../lua/sliding_log.lua"),
    include_str!("../../../lua/decide.lua")
);
/// The script of limits of different algorithms: all four, `lua/mixed.lua` and
/// `lua/decide.lua`.
pub const MIXED_SCRIPT: &str = concat!(
    include_str!("../../../lua/token_bucket.lua"),
    include_str!("../../../lua/fixed_window.lua"),
    include_str!("../../../lua/sliding_window.lua"),
    include_str!("../../../lua/sliding_log.lua"),
    include_str!("../../../lua/mixed.lua"),
    include_str!("../../../lua/decide.lua")
);

/// The five scripts, each with its SHA1 computed once per process: one per algorithm, in
/// the order of [`Algorithm::ALL`], then the mixed one.
static SCRIPTS: LazyLock<[redis::Script; 5]> = LazyLock::new(|| all().map(redis::Script::new));

/// The text of each of the five scripts.
pub(super) fn all() -> [&'static str; 5] {
    [
        script_source(Algorithm::ALL[0]),
        script_source(Algorithm::ALL[1]),
        script_source(Algorithm::ALL[2]),
        script_source(Algorithm::ALL[3]),
        MIXED_SCRIPT,
    ]
}

/// The script that decides a request under `limits`: its algorithm's if they share one,
/// else the mixed one.
pub fn script_for(limits: &[Limit]) -> &'static redis::Script {
    let first = limits
        .first()
        .map_or(Algorithm::TokenBucket, Limit::algorithm);
    if limits.iter().all(|l| l.algorithm() == first) {
        let i = Algorithm::ALL
            .iter()
            .position(|&a| a == first)
            .expect("every algorithm is in ALL");
        &SCRIPTS[i]
    } else {
        &SCRIPTS[4]
    }
}

/// The call `evalsha` (made by `evalsha()`) with the script's text instead of its SHA1:
/// `EVAL`, for a server that lacks the script. Built only then, from the command's own
/// arguments.
pub(super) fn eval(evalsha: &redis::Cmd, script: &redis::Script) -> redis::Cmd {
    let i = SCRIPTS
        .iter()
        .position(|s| std::ptr::eq(s, script))
        .expect("one of the five scripts");
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
/// straight from one reused buffer.
pub(super) fn evalsha(
    script: &redis::Script,
    key: &str,
    limits: &[Limit],
    cost: u64,
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
    for limit in limits {
        cmd.arg(limit.algorithm().code());
        match limit.algorithm() {
            // The increment and the burst, in microseconds; the cost for the record.
            Algorithm::TokenBucket => cmd
                .arg(cost.saturating_mul(limit.interval_us()))
                .arg(limit.window_us())
                .arg(cost),
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                cmd.arg(limit.window_ms()).arg(limit.capacity()).arg(cost)
            }
            Algorithm::SlidingLog => cmd.arg(limit.window_us()).arg(limit.capacity()).arg(cost),
        };
    }
    cmd
}

/// Turns the script's reply into a decision (see `lua/decide.lua`).
pub(super) fn parse_reply(reply: &redis::Value, limits: &[Limit], cost: u64) -> Option<Decision> {
    use redis::Value::{Array, Int};
    let mut observed = [Observation::TokenBucket { full_after: 0 }; MAX_LIMITS];
    let observed = observed.get_mut(..limits.len())?;
    let allowed = match (reply, limits) {
        (Int(packed), [limit]) => {
            let (allowed, seen) = Observation::from_packed(limit, *packed)?;
            observed[0] = seen;
            allowed
        }
        (Array(values), _) => {
            let mut values = values.iter().map(|v| match v {
                Int(i) => u64::try_from(*i).ok(),
                _ => None,
            });
            let allowed = match values.next()?? {
                0 => false,
                1 => true,
                _ => return None,
            };
            for (limit, seen) in limits.iter().zip(observed.iter_mut()) {
                *seen = Observation::read(limit.algorithm(), &mut values)?;
            }
            if values.next().is_some() {
                return None;
            }
            allowed
        }
        _ => return None,
    };
    Some(decide_observed(limits, observed, allowed, cost))
}
