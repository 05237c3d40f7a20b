//! The load test's arguments: parsed and checked before anything is sent.

use std::net::IpAddr;
use std::time::Duration;

use hyper::Uri;

/// The longest run.
const MAX_DURATION: Duration = Duration::from_secs(600);
const MAX_CLIENTS: usize = 4096;
const MAX_KEYS: usize = 1_000_000;

pub const USAGE: &str = "\
usage: loadtest --url URL [--url URL …] [--clients N] [--duration D] [--keys K] [--check-limit C/S]
                [--redis-url URL …]

  --url URL          a loopback http:// target; repeat for several, used round-robin
  --clients N        concurrent clients, 1 to 4096 (default 16)
  --duration D       how long to send: 500ms, 10s, 2m; at most 10m (default 10s)
  --keys K           API keys key-0 … key-(K-1), 1 to 1000000 (default 100)
  --check-limit C/S  exit 1 if a key was allowed more than C + C·elapsed/S
  --redis-url URL    a loopback Redis (each node of a cluster: repeat) whose script calls
                     (EVALSHA + EVAL, from INFO commandstats) are counted into redis_calls
  --help             this text
";

pub struct Args {
    pub urls: Vec<Uri>,
    pub clients: usize,
    pub duration: Duration,
    pub keys: usize,
    /// `--check-limit C/S`: C at once, C more per S seconds.
    pub check: Option<(u64, u64)>,
    /// `--redis-url`: the servers whose script calls are counted.
    pub redis_urls: Vec<String>,
}

/// `Ok(None)` for `--help`.
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        urls: Vec::new(),
        clients: 16,
        duration: Duration::from_secs(10),
        keys: 100,
        check: None,
        redis_urls: Vec::new(),
    };
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        // `--flag value` or `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if !matches!(
            flag.as_str(),
            "--url" | "--clients" | "--duration" | "--keys" | "--check-limit" | "--redis-url"
        ) {
            return Err(format!("unknown argument {flag:?}"));
        }
        let value = inline
            .or_else(|| args.next())
            .ok_or_else(|| format!("{flag} needs a value"))?;
        // A URL is shown without its user, password or query.
        let shown = match flag.as_str() {
            "--url" | "--redis-url" => super::common::redact(&value),
            _ => value.clone(),
        };
        let bad = |why: &str| format!("{flag} {shown:?}: {why}");
        // A whole number from 1 to `max`.
        let count = |max: usize| {
            value
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(&format!("must be a whole number from 1 to {max}")))
        };
        match flag.as_str() {
            "--url" => parsed
                .urls
                .push(value.parse().map_err(|e| bad(&format!("{e}")))?),
            "--redis-url" => parsed.redis_urls.push(value),
            "--clients" => parsed.clients = count(MAX_CLIENTS)?,
            "--keys" => parsed.keys = count(MAX_KEYS)?,
            "--duration" => {
                parsed.duration = parse_duration(&value)
                    .filter(|d| !d.is_zero() && *d <= MAX_DURATION)
                    .ok_or_else(|| bad("must be like 500ms, 10s or 2m, above zero, at most 10m"))?;
            }
            _ => {
                let positive = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
                parsed.check = value
                    .split_once('/')
                    .and_then(|(c, s)| Some((positive(c)?, positive(s)?)))
                    .map(Some)
                    .ok_or_else(|| {
                        bad("must be CAPACITY/SECONDS, two positive whole numbers, like 10/10")
                    })?;
            }
        }
    }
    if parsed.urls.is_empty() {
        return Err("--url is required".to_owned());
    }
    Ok(Some(parsed))
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit): (&str, fn(u64) -> Duration) = if let Some(n) = text.strip_suffix("ms") {
        (n, Duration::from_millis)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, Duration::from_secs)
    } else {
        (text.strip_suffix('m')?, |m| {
            Duration::from_secs(m.saturating_mul(60))
        })
    };
    number.parse().ok().map(unit)
}

/// `Err(why)` unless `url` is `http://` to a loopback address. `localhost` must resolve to
/// loopback addresses only.
pub async fn check_loopback(url: &Uri) -> Result<(), String> {
    if url.scheme_str() != Some("http") {
        return Err("the scheme must be http://".to_owned());
    }
    let host = url.host().ok_or("there is no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return if ip.is_loopback() {
            Ok(())
        } else {
            Err(format!("{host} is not a loopback address"))
        };
    }
    if !host.eq_ignore_ascii_case("localhost") {
        return Err(format!("{host} is not 127.0.0.0/8, [::1] or localhost"));
    }
    let port = url.port_u16().unwrap_or(80);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    for addr in addrs {
        if !addr.ip().is_loopback() {
            return Err(format!("{host} resolves to {}, not loopback", addr.ip()));
        }
    }
    Ok(())
}
