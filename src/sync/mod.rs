//! What several parts share: a turn at most once per interval (the breaker's probes, the
//! outage warnings, reopening a Redis connection), and a map sharded over locks (the memory
//! store's buckets, the deny cache).

mod every;
mod sharded;

pub(crate) use every::AtMostEvery;
pub(crate) use sharded::Sharded;
