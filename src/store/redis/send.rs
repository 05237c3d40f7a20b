//! Sending one command: the connection of the moment, `EVAL` when Redis forgot a script, and
//! what a call tells the link about Redis's health.

use std::sync::Arc;

use redis::{ErrorKind, ServerErrorKind};

use super::connection::Link;
use super::{RedisStore, scripts};
use crate::StoreError;
use crate::store::StoreCall;

/// The error of a call made before the sentinels named a primary.
pub(super) fn no_primary() -> redis::RedisError {
    redis::RedisError::from((
        ErrorKind::Io,
        "no Redis primary known yet: asking the sentinels",
    ))
}

/// Reports a call that was sent and dropped before it finished (the layer's timeout) as a
/// failure. A call dropped before it was sent (its request was cancelled) says nothing of Redis.
struct Call {
    link: Arc<Link>,
    sent: bool,
    finished: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.sent && !self.finished {
            self.link.failed();
        }
    }
}

impl RedisStore {
    /// Sends `cmd` (an `EVALSHA` of `script`, or any command when `script` is `None`) and
    /// reads its reply with `parse`: on the shared connection, again as `EVAL` when Redis lacks
    /// the script, and telling the connection whether Redis answered.
    pub(super) fn send<T: Send + 'static>(
        &self,
        cmd: redis::Cmd,
        script: Option<&'static redis::Script>,
        parse: impl FnOnce(&redis::Value) -> Option<T> + Send + 'static,
    ) -> StoreCall<T> {
        let conn = self.link.connection();
        let mut call = Call {
            link: Arc::clone(&self.link),
            sent: false,
            finished: false,
        };
        Box::pin(async move {
            call.sent = true;
            let reply = match conn {
                Some(mut conn) => match (conn.query(&cmd).await, script) {
                    // Redis forgot the script (restart, SCRIPT FLUSH, failover): send it.
                    (Err(error), Some(script))
                        if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) =>
                    {
                        conn.query(&scripts::eval(&cmd, script)).await
                    }
                    (reply, _) => reply,
                },
                None => Err(no_primary()),
            };
            call.finished = true;
            let reply = match reply {
                Ok(reply) => {
                    call.link.succeeded();
                    reply
                }
                Err(error) => {
                    call.link.failed();
                    return Err(error.into());
                }
            };
            parse(&reply).ok_or_else(|| StoreError::Reply(format!("{reply:?}")))
        })
    }
}

impl RedisStore {
    /// A script that writes `units` to each limit's bucket and replies 1: a refund, a charge,
    /// or (a refund with the time they were lent, `lent_at`) a lease given back.
    pub(super) fn write_units(
        &self,
        script: scripts::Other,
        key: &str,
        limits: &[crate::Limit],
        units: u64,
    ) -> StoreCall<()> {
        if let Err(error) = crate::algorithm::check_limits(limits) {
            return Box::pin(std::future::ready(Err(error)));
        }
        let script = scripts::other(script);
        let evalsha = scripts::evalsha(script, key, limits, units, false, "-");
        self.send(evalsha, Some(script), |reply| {
            matches!(reply, redis::Value::Int(1)).then_some(())
        })
    }
}
