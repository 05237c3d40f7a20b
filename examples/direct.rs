//! Run with: `cargo run --example direct` (in memory), or with `REDIS_URL=redis://127.0.0.1/`
//! (and `REDIS_MODE`, `FAIL_MODE`, `STORE_TIMEOUT_MS` as for the `server` example).
//!
//! The engine without HTTP: a chat server's message loop and a job queue's consumer, limited
//! with the same buckets and the same behaviour under failure as the HTTP layer.
//!
//! - Each user may send 5 messages at once, then one more each second: the loop takes one
//!   unit per message and drops those refused, saying when to retry.
//! - Each tenant's jobs cost what they cost (LLM tokens, say), up to 1,000 an hour: a job
//!   reserves its estimate, then refunds what it did not use.
//! - `peek` says what is left without spending anything; `reset` forgives a user.
//!
//! It prints each step and exits 0; any other exit is a failure.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use http::Method;
use tollgate::{Limit, Policies, Rule, Target};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::init_tracing();
    common::exit_on_error(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let env = common::Env::load().await?;
    let policies = Policies::builder()
        .rule(Rule::new("chat", "/chat").limit(Limit::new(
            "messages",
            5,
            1,
            Duration::from_secs(1),
        )?))
        .rule(Rule::new("jobs", "/jobs").limit(Limit::fixed_window(
            "tokens",
            1_000,
            Duration::from_secs(3600),
        )?))
        .build()?;
    let limiter = env
        .limiter()
        .policies(policies)
        .key_prefix("direct-example")
        .build()?;

    // The message loop: one unit per message.
    let alice = limiter.subject("alice", Target::rule("chat"))?;
    limiter.reset(&alice).await?;
    for n in 1..=7 {
        let outcome = limiter.take(&alice, 1).await;
        match outcome.retry_after() {
            None => println!("message {n}: delivered"),
            Some(wait) => println!("message {n}: refused, retry in {} ms", wait.as_millis()),
        }
    }
    let left = limiter.peek(&alice, 1).await?;
    println!("alice may send {} more now", left[0].remaining);
    limiter.reset(&alice).await?;
    let left = limiter.peek(&alice, 1).await?;
    println!("after a reset alice may send {}", left[0].remaining);

    // The job consumer: reserve the estimate, settle to what was used (the rest goes back to
    // the window that counted it).
    let acme = limiter.subject("acme", Target::route(&Method::POST, "/jobs"))?;
    limiter.reset(&acme).await?;
    for (job, estimate, used) in [(1, 400, 120), (2, 400, 400), (3, 700, 10), (4, 400, 0)] {
        let mut outcome = limiter.take(&acme, estimate).await;
        if !outcome.is_allowed() {
            println!("job {job}: {estimate} tokens refused");
            continue;
        }
        if let Some(receipt) = outcome.receipt() {
            limiter.settle(receipt, used).await?;
        }
        let left = limiter.peek(&acme, 1).await?;
        println!(
            "job {job}: reserved {estimate}, used {used}, {} tokens left this hour",
            left[0].remaining
        );
    }
    Ok(())
}
