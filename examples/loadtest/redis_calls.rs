//! `--redis-url`: the script calls Redis ran during the run, read from `INFO commandstats`
//! before and after (`EVALSHA` and `EVAL` calls, summed over the URLs: one per cluster node).

use std::net::IpAddr;

/// The Redis servers to count calls on.
pub struct RedisCalls {
    clients: Vec<(String, redis::Client)>,
}

impl RedisCalls {
    /// Checks each URL (a loopback `redis://` address or a `redis+unix://` socket, like the
    /// load targets) and connects to none yet. Errors show the URL without its password.
    pub fn new(urls: &[String]) -> Result<Self, String> {
        let mut clients = Vec::new();
        for url in urls {
            let shown = super::common::redact(url);
            let client = redis::Client::open(url.as_str())
                .map_err(|_| format!("--redis-url {shown:?}: not a Redis URL"))?;
            let loopback = match &client.get_connection_info().addr() {
                redis::ConnectionAddr::Tcp(host, _)
                | redis::ConnectionAddr::TcpTls { host, .. } => {
                    host == "localhost"
                        || host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                redis::ConnectionAddr::Unix(_) => true,
                // The enum is non-exhaustive: what it may name later is not known loopback.
                _ => false,
            };
            if !loopback {
                return Err(format!(
                    "--redis-url {shown:?}: only a loopback address or a unix socket is read"
                ));
            }
            clients.push((shown, client));
        }
        Ok(Self { clients })
    }

    /// `EVALSHA` + `EVAL` calls so far, summed over the servers.
    pub async fn count(&self) -> Result<u64, String> {
        let mut total = 0;
        for (shown, client) in &self.clients {
            let info: String = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut conn)
                    .await
            }
            .await
            .map_err(|e: redis::RedisError| {
                format!("--redis-url {shown:?}: INFO commandstats: {:?}", e.kind())
            })?;
            total += script_calls(&info);
        }
        Ok(total)
    }
}

/// The `calls=` of `cmdstat_evalsha` and `cmdstat_eval` in an `INFO commandstats` reply.
fn script_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().split_once(':')?;
            if !matches!(name, "cmdstat_evalsha" | "cmdstat_eval") {
                return None;
            }
            stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
