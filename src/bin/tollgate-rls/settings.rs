//! envoyproxy/ratelimit's environment settings, with its defaults, and tollgate's own.

use std::collections::HashMap;
use std::time::Duration;

use tollgate::envoy::{HeaderNames, Runtime, ServiceSettings, Settings as Decide, StoreFailure};

/// Settings the peer has and this service does not (yet): named in one warning at start.
const UNSUPPORTED: &[&str] = &[
    "USE_STATSD",
    "STATSD_HOST",
    "STATSD_PORT",
    "USE_DOG_STATSD",
    "USE_PROMETHEUS",
    "PROMETHEUS_ADDR",
    "PROMETHEUS_PATH",
    "PROMETHEUS_MAPPER_YAML",
    "BACKEND_TYPE",
    "MEMCACHE_HOST_PORT",
    "MEMCACHE_SRV",
    "CONFIG_TYPE",
    "CONFIG_GRPC_XDS_SERVER_URL",
    "CONFIG_GRPC_XDS_NODE_ID",
    "GRPC_SERVER_USE_TLS",
    "GRPC_SERVER_TLS_CERT",
    "GRPC_SERVER_TLS_KEY",
    "GRPC_CLIENT_TLS_CACERT",
    "GRPC_UDS",
    "REDIS_TLS",
    "REDIS_TLS_CACERT",
    "REDIS_TLS_CLIENT_CERT",
    "REDIS_TLS_CLIENT_KEY",
    "REDIS_SENTINEL_AUTH",
    "REDIS_PERSECOND",
    "REDIS_PERSECOND_URL",
    "REDIS_PIPELINE_WINDOW",
    "REDIS_PIPELINE_LIMIT",
    "LOCAL_CACHE_SIZE_IN_BYTES",
    "TRACING_ENABLED",
    "FORCE_START_WITHOUT_INITIAL_CONFIG",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
];

/// Where Redis is, as `REDIS_TYPE` and `REDIS_URL` say (with `REDIS_AUTH` in the URLs).
#[derive(Clone, PartialEq, Eq)]
pub enum Redis {
    /// `REDIS_URL` unset: counters in this process.
    None,
    /// One server: its URL.
    Single(String),
    /// Cluster nodes: their URLs.
    Cluster(Vec<String>),
    /// A primary behind sentinels: the sentinels' URLs, the master's name, and `REDIS_AUTH`
    /// for the primary (user, possibly empty, and password), as the peer uses it.
    Sentinel(Vec<String>, String, Option<(String, String)>),
}

/// Names where Redis is, never its password.
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Single(_) => f.write_str("Single(..)"),
            Self::Cluster(nodes) => write!(f, "Cluster({} nodes)", nodes.len()),
            Self::Sentinel(sentinels, master, _) => {
                write!(f, "Sentinel({} sentinels, {master:?})", sentinels.len())
            }
        }
    }
}

/// Every setting the service reads.
#[derive(Debug)]
pub struct Settings {
    pub http: String,
    pub grpc: String,
    pub debug: String,
    pub runtime: Runtime,
    pub redis: Redis,
    pub service: ServiceSettings,
    pub timeout: Duration,
    pub log_level: String,
    pub log_json: bool,
    /// The unsupported settings that are set.
    pub unsupported: Vec<&'static str>,
}

/// The environment's variables.
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(vars.into_iter().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A boolean as Go's `strconv.ParseBool` reads one.
    fn boolean(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(other) => Err(format!(
                "{name}: `{other}` is not a boolean (true or false)"
            )),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| format!("{name}: `{value}` is not a valid number")),
        }
    }

    fn address(&self, host: &str, port: &str, default_port: u16) -> Result<String, String> {
        let host = self.string(host, "0.0.0.0");
        let port: u16 = self.number(port, default_port)?;
        Ok(match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        })
    }
}

impl Settings {
    /// Reads `env`.
    ///
    /// # Errors
    ///
    /// A value that does not parse, naming its variable.
    pub fn read(env: &Env) -> Result<Self, String> {
        let runtime = Runtime {
            root: env
                .string("RUNTIME_ROOT", "/srv/runtime_data/current")
                .into(),
            subdirectory: env.string("RUNTIME_SUBDIRECTORY", ""),
            appdirectory: env.string("RUNTIME_APPDIRECTORY", "config"),
            watch_root: env.boolean("RUNTIME_WATCH_ROOT", true)?,
            ignore_dotfiles: env.boolean("RUNTIME_IGNOREDOTFILES", false)?,
            merge: env.boolean("MERGE_DOMAIN_CONFIG", false)?,
        };
        let ratio: f32 = env.number("NEAR_LIMIT_RATIO", 0.8)?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "NEAR_LIMIT_RATIO: `{ratio}` is not between 0 and 1"
            ));
        }
        let headers = env
            .boolean("LIMIT_RESPONSE_HEADERS_ENABLED", false)?
            .then(|| HeaderNames {
                limit: env.string("LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
                remaining: env.string("LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
                reset: env.string("LIMIT_RESET_HEADER", "RateLimit-Reset"),
            });
        let store_failure = match env.get("TOLLGATE_FAIL_MODE").unwrap_or("error") {
            "error" | "" => StoreFailure::Error,
            "open" => StoreFailure::Open,
            "closed" => StoreFailure::Closed,
            other => {
                return Err(format!(
                    "TOLLGATE_FAIL_MODE: `{other}` is not error, open or closed"
                ));
            }
        };
        let service = ServiceSettings {
            decide: Decide {
                shadow_mode: env.boolean("SHADOW_MODE", false)?,
                quota_mode: env.boolean("QUOTA_MODE", false)?,
                near_limit_ratio: ratio,
            },
            key_prefix: env.string("CACHE_KEY_PREFIX", ""),
            expiration_jitter_max_s: env.number("EXPIRATION_JITTER_MAX_SECONDS", 300)?,
            store_failure,
            headers,
            stop_increment_when_over: env
                .boolean("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", false)?,
            dynamic_metadata: env.boolean("RESPONSE_DYNAMIC_METADATA", false)?,
            leases: env.boolean("TOLLGATE_LEASES", false)?,
        };
        if service.leases && service.stop_increment_when_over {
            return Err(
                "TOLLGATE_LEASES: not with STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, which \
                decides each request on all its counters at once"
                    .to_owned(),
            );
        }
        let timeout_ms: u64 = env.number("TOLLGATE_STORE_TIMEOUT_MS", 1_000)?;
        if timeout_ms == 0 {
            return Err("TOLLGATE_STORE_TIMEOUT_MS: must be more than 0".to_owned());
        }
        let unsupported = UNSUPPORTED
            .iter()
            .copied()
            .filter(|name| env.get(name).is_some_and(|v| !v.is_empty() && v != "false"))
            .collect();
        Ok(Self {
            http: env.address("HOST", "PORT", 8080)?,
            grpc: env.address("GRPC_HOST", "GRPC_PORT", 8081)?,
            debug: env.address("DEBUG_HOST", "DEBUG_PORT", 6070)?,
            runtime,
            redis: redis(env)?,
            service,
            timeout: Duration::from_millis(timeout_ms),
            log_level: log_level(&env.string("LOG_LEVEL", "WARN"))?,
            log_json: env
                .string("LOG_FORMAT", "text")
                .eq_ignore_ascii_case("json"),
            unsupported,
        })
    }
}

/// `LOG_LEVEL`, one of the peer's (logrus) levels, as the `tracing` level it logs at:
/// `panic` and `fatal`, which `tracing` does not have, log errors.
fn log_level(level: &str) -> Result<String, String> {
    match level.to_ascii_lowercase().as_str() {
        "panic" | "fatal" | "error" => Ok("error".to_owned()),
        "warn" | "warning" => Ok("warn".to_owned()),
        level @ ("info" | "debug" | "trace") => Ok(level.to_owned()),
        _ => Err(format!(
            "LOG_LEVEL: {level:?} is not a level (trace, debug, info, warn, error, fatal, panic)"
        )),
    }
}

/// `REDIS_TYPE`, `REDIS_SOCKET_TYPE`, `REDIS_URL` and `REDIS_AUTH` as URLs.
fn redis(env: &Env) -> Result<Redis, String> {
    let Some(url) = env.get("REDIS_URL").filter(|u| !u.is_empty()) else {
        return Ok(Redis::None);
    };
    // `password` or `user:password`, percent-encoded into the URL.
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let auth = env
        .get("REDIS_AUTH")
        .filter(|a| !a.is_empty())
        .map(|auth| auth.split_once(':').unwrap_or(("", auth)))
        .map(|(user, password)| (enc(user), enc(password)));
    let tcp = |host: &str| match &auth {
        Some((user, password)) => format!("redis://{user}:{password}@{host}"),
        None => format!("redis://{host}"),
    };
    let unix = env
        .string("REDIS_SOCKET_TYPE", "unix")
        .eq_ignore_ascii_case("unix");
    match env
        .string("REDIS_TYPE", "SINGLE")
        .to_ascii_uppercase()
        .as_str()
    {
        "SINGLE" if unix => Ok(Redis::Single(match &auth {
            None => format!("redis+unix://{url}"),
            Some((user, password)) if user.is_empty() => {
                format!("redis+unix://{url}?pass={password}")
            }
            Some((user, password)) => format!("redis+unix://{url}?user={user}&pass={password}"),
        })),
        "SINGLE" => Ok(Redis::Single(tcp(url))),
        "CLUSTER" => Ok(Redis::Cluster(
            url.split(',').map(|h| tcp(h.trim())).collect(),
        )),
        "SENTINEL" => {
            let mut parts = url.split(',');
            let master = parts.next().unwrap_or_default().trim().to_owned();
            let sentinels: Vec<String> = parts.map(|h| format!("redis://{}", h.trim())).collect();
            if master.is_empty() || sentinels.is_empty() {
                return Err(
                    "REDIS_URL: with REDIS_TYPE=SENTINEL it is `master,host:port,...`".to_owned(),
                );
            }
            let auth = env
                .get("REDIS_AUTH")
                .filter(|a| !a.is_empty())
                .map(|auth| auth.split_once(':').unwrap_or(("", auth)))
                .map(|(user, password)| (user.to_owned(), password.to_owned()));
            Ok(Redis::Sentinel(sentinels, master, auth))
        }
        other => Err(format!(
            "REDIS_TYPE: `{other}` is not SINGLE, CLUSTER or SENTINEL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{Env, Redis, Settings};

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::new(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn the_peer_s_defaults() {
        let s = Settings::read(&env(&[])).unwrap();
        assert_eq!(
            (s.http.as_str(), s.grpc.as_str(), s.debug.as_str()),
            ("0.0.0.0:8080", "0.0.0.0:8081", "0.0.0.0:6070")
        );
        assert_eq!(s.runtime.root.to_str(), Some("/srv/runtime_data/current"));
        assert!(s.runtime.watch_root && !s.runtime.ignore_dotfiles && !s.runtime.merge);
        assert_eq!(s.runtime.appdirectory, "config");
        assert_eq!(s.redis, Redis::None);
        assert_eq!(s.service.expiration_jitter_max_s, 300);
        assert!((s.service.decide.near_limit_ratio - 0.8).abs() < f32::EPSILON);
        assert!(s.service.headers.is_none() && s.unsupported.is_empty());
        assert!(!s.service.stop_increment_when_over && !s.service.dynamic_metadata);
        assert_eq!(s.log_level, "warn");
    }

    #[test]
    fn redis_urls_and_bad_values() {
        let single = |vars: &[(&str, &str)]| Settings::read(&env(vars)).unwrap().redis;
        assert_eq!(
            single(&[("REDIS_URL", "/run/redis.sock"), ("REDIS_AUTH", "s3cr:t")]),
            Redis::Single("redis+unix:///run/redis.sock?user=s3cr&pass=t".into())
        );
        assert_eq!(
            single(&[
                ("REDIS_SOCKET_TYPE", "tcp"),
                ("REDIS_URL", "r:6379"),
                ("REDIS_AUTH", "p@ss")
            ]),
            Redis::Single("redis://:p%40ss@r:6379".into())
        );
        assert_eq!(
            single(&[("REDIS_TYPE", "cluster"), ("REDIS_URL", "a:1, b:2")]),
            Redis::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(
            single(&[("REDIS_TYPE", "SENTINEL"), ("REDIS_URL", "m,s1:26379")]),
            Redis::Sentinel(vec!["redis://s1:26379".into()], "m".into(), None)
        );
        let auth = [
            ("REDIS_TYPE", "SENTINEL"),
            ("REDIS_URL", "m,s1:26379"),
            ("REDIS_AUTH", "u:p@ss"),
        ];
        let sentinel = single(&auth);
        assert_eq!(
            sentinel,
            Redis::Sentinel(
                vec!["redis://s1:26379".into()],
                "m".into(),
                Some(("u".into(), "p@ss".into()))
            )
        );
        assert!(!format!("{sentinel:?}").contains("p@ss"));
        assert!(
            !format!(
                "{:?}",
                single(&[
                    ("REDIS_URL", "h:1"),
                    ("REDIS_SOCKET_TYPE", "tcp"),
                    ("REDIS_AUTH", "secret")
                ])
            )
            .contains("secret")
        );
        for (name, value) in [
            ("RUNTIME_WATCH_ROOT", "maybe"),
            ("PORT", "http"),
            ("REDIS_TYPE", "ring"),
            ("TOLLGATE_FAIL_MODE", "sometimes"),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "yes please"),
            ("RESPONSE_DYNAMIC_METADATA", "2"),
            ("TOLLGATE_LEASES", "on"),
        ] {
            let vars = [(name, value), ("REDIS_URL", "x")];
            let error = Settings::read(&env(&vars)).unwrap_err();
            assert!(error.starts_with(name), "{error}");
        }
        let s = Settings::read(&env(&[
            ("USE_STATSD", "true"),
            ("GRPC_SERVER_USE_TLS", "false"),
        ]))
        .unwrap();
        assert_eq!(s.unsupported, ["USE_STATSD"]);
        let both = [
            ("TOLLGATE_LEASES", "true"),
            ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "true"),
        ];
        let error = Settings::read(&env(&both)).unwrap_err();
        assert!(
            error.starts_with("TOLLGATE_LEASES: not with STOP_CACHE"),
            "{error}"
        );
    }
}
