//! Plain counters ([`Store::count`](crate::store::Store::count)): `INCRBY` then `EXPIRE` for
//! each, pipelined. On one server (or a primary behind sentinels) every counter of a call goes
//! in one pipeline, one round trip. On a cluster each counter's pair goes in a pipeline of its
//! own, all sent at once: envoyproxy/ratelimit's keys carry no hash tag, so the counters of
//! one request are in slots of their own, and a pipeline may not cross slots.
//!
//! With leases ([`Store::count_lending`](crate::store::Store::count_lending)) each counter is
//! one `EVALSHA` of `lua/counter_lend.lua`, atomic on its key, all sent at once (on one
//! connection they go out together, as a pipeline would).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use redis::Value;

use super::RedisStore;
use super::connection::Conn;
use super::scripts::{self, Other};
use crate::StoreError;
use crate::store::{Counter, CounterLease, CounterLent, StoreCall};

/// One call's reply.
type Reply<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// One pipeline's replies.
type Replies = Reply<Vec<Value>, redis::RedisError>;

impl RedisStore {
    pub(super) fn count_with(&self, counters: &[Counter]) -> StoreCall<Vec<u64>> {
        if counters.is_empty() {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        }
        let pair = |pipe: &mut redis::Pipeline, counter: &Counter| {
            pipe.cmd("INCRBY").arg(&counter.key).arg(counter.hits);
            pipe.cmd("EXPIRE")
                .arg(&counter.key)
                .arg(counter.expire_s.max(1))
                .ignore();
        };
        let Some(conn) = self.link.connection() else {
            return Box::pin(std::future::ready(Err(super::no_primary().into())));
        };
        let pipes: Vec<redis::Pipeline> = match &conn {
            #[cfg(feature = "cluster")]
            Conn::Cluster(_) => counters
                .iter()
                .map(|counter| {
                    let mut pipe = redis::pipe();
                    pair(&mut pipe, counter);
                    pipe
                })
                .collect(),
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for counter in counters {
                    pair(&mut pipe, counter);
                }
                vec![pipe]
            }
        };
        let link = std::sync::Arc::clone(&self.link);
        Box::pin(async move {
            let replies: Vec<Replies> = pipes
                .into_iter()
                .map(|pipe| {
                    let mut conn = conn.clone();
                    Box::pin(async move { conn.query_pipe(&pipe).await }) as Replies
                })
                .collect();
            let replies = match all(replies).await {
                Ok(replies) => {
                    link.succeeded();
                    replies
                }
                Err(error) => {
                    link.failed();
                    return Err(error.into());
                }
            };
            replies
                .iter()
                .flatten()
                .map(|value| match value {
                    // A counter someone else made negative counts as 0.
                    Value::Int(n) => Ok((*n).max(0) as u64),
                    other => Err(StoreError::Reply(format!("{other:?}"))),
                })
                .collect()
        })
    }
}

impl RedisStore {
    pub(super) fn lend_counts(&self, leases: &[CounterLease]) -> StoreCall<Vec<CounterLent>> {
        let script = scripts::other(Other::CounterLend);
        let calls: Vec<Reply<CounterLent, StoreError>> = leases
            .iter()
            .map(|lease| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash())
                    .arg(1)
                    .arg(&lease.counter.key)
                    .arg(lease.counter.hits)
                    .arg(lease.extra)
                    .arg(lease.limit)
                    .arg(lease.counter.expire_s.max(1));
                self.send(cmd, Some(script), |reply| match reply {
                    Value::Array(values) => match values.as_slice() {
                        [Value::Int(value), Value::Int(lent)] => Some(CounterLent {
                            value: (*value).max(0) as u64,
                            lent: (*lent).max(0) as u64,
                        }),
                        _ => None,
                    },
                    _ => None,
                })
            })
            .collect();
        Box::pin(all(calls))
    }

    pub(super) fn uncount_with(&self, counters: &[Counter]) -> StoreCall<()> {
        let script = scripts::other(Other::CounterReturn);
        let calls: Vec<Reply<(), StoreError>> = counters
            .iter()
            .map(|counter| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(script.get_hash())
                    .arg(1)
                    .arg(&counter.key)
                    .arg(counter.hits);
                self.send(cmd, Some(script), |reply| {
                    matches!(reply, Value::Int(1)).then_some(())
                })
            })
            .collect();
        Box::pin(async move { all(calls).await.map(drop) })
    }
}

/// Every call's reply, in order, polled together; the first error.
async fn all<T, E>(mut calls: Vec<Reply<T, E>>) -> Result<Vec<T>, E> {
    let mut done: Vec<Option<T>> = calls.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (call, slot) in calls.iter_mut().zip(done.iter_mut()) {
            if slot.is_some() {
                continue;
            }
            match call.as_mut().poll(cx) {
                Poll::Ready(Ok(values)) => *slot = Some(values),
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    })
    .await?;
    Ok(done.into_iter().flatten().collect())
}
