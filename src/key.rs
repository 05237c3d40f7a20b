//! Who and what is limited: client identity, the endpoint, and the bucket key.
//!
//! What users read about it is `docs/keys.md`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Arc;

use http::request::Parts;
use percent_encoding::{AsciiSet, CONTROLS, percent_encode};
use sha2::{Digest, Sha256};

use crate::ConfigError;
use crate::algorithm::MAX_SUFFIX_LEN;
use crate::limit::MAX_NAME_LEN;

/// No bucket key is longer than this many bytes.
pub(crate) const MAX_KEY_LEN: usize = 512;

/// Longest key prefix, in bytes.
pub(crate) const MAX_PREFIX_LEN: usize = 64;
/// Longest encoded client component before it is hashed.
const MAX_CLIENT_LEN: usize = 128;
/// Longest encoded method component before it is hashed.
const MAX_METHOD_LEN: usize = 24;
/// Longest encoded path component before it is hashed.
const MAX_PATH_LEN: usize = 180;
/// A hashed component: `#` and 64 hex digits of SHA-256.
const HASHED_LEN: usize = 65;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// Every bound together stays under MAX_KEY_LEN: prefix ":{" client ":" method ":" path "}:" name
// and the algorithm's suffix, where a component is at most its bound or, hashed, HASHED_LEN.
const _: () = assert!(
    MAX_PREFIX_LEN
        + 2
        + max(MAX_CLIENT_LEN, HASHED_LEN)
        + 1
        + max(MAX_METHOD_LEN, HASHED_LEN)
        + 1
        + max(MAX_PATH_LEN, HASHED_LEN)
        + 2
        + MAX_NAME_LEN
        + MAX_SUFFIX_LEN
        <= MAX_KEY_LEN
);

/// Bytes that are escaped in a key component: controls, space, non-ASCII (always), and the
/// characters the key layout and the hashed form use.
const ESCAPED: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b':')
    .add(b'{')
    .add(b'}')
    .add(b'#');

/// The route template axum matched for a request (so `/users/1` and `/users/2` share a
/// bucket), if it matched one.
pub(crate) fn route_template(parts: &Parts) -> Option<&str> {
    parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str)
}

/// The method as a bucket key names it: `HEAD` as `GET` (a server answers it with its `GET`
/// handler, so it spends the same budget), every other standard method as itself, and any
/// other method as `OTHER`: a client that invents methods adds no bucket and no key.
pub(crate) fn key_method(method: &http::Method) -> &'static str {
    use http::Method;
    // Matched as methods, not as text: a standard method is one byte to compare.
    match *method {
        Method::GET | Method::HEAD => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The endpoint component of the requests that match no route and share one bucket per
/// client and method ([`UnmatchedPaths::Shared`]). A normalized path starts with `/`, so it
/// never meets this one.
pub(crate) const SHARED_ENDPOINT: &str = "*";

/// A function that names the endpoint of a normalized path ([`UnmatchedPaths::Normalize`]).
pub(crate) type PathNormalizer = dyn Fn(&str) -> Option<String> + Send + Sync;

/// How the requests that match no route template are keyed under the default policy: axum's
/// `404` and `405`, and every request of a server that does not say which route it matched
/// (hyper, tonic). (Requests under a rule share the rule's bucket anyway.)
#[derive(Clone, Default)]
pub(crate) enum UnmatchedPaths {
    /// One bucket per client and method, whatever the path (the default): a client cannot
    /// multiply its budget, or the keys in the store, by varying the path.
    #[default]
    Shared,
    /// One bucket per client, method and normalized path. A client can then multiply its
    /// budget (and the keys in the store) by sending paths that do not exist: only for a
    /// server whose every path is an endpoint, or one that refuses unknown paths before the
    /// limit.
    PerPath,
    /// The endpoint a function names for the normalized path (`Some`), or the shared bucket
    /// (`None`): for a server that knows its own paths, like a gRPC server's
    /// `/package.Service/Method`.
    Normalize(Arc<PathNormalizer>),
}

impl UnmatchedPaths {
    /// [`UnmatchedPaths::Normalize`] with `f`.
    pub(crate) fn normalize<F>(f: F) -> Self
    where
        F: Fn(&str) -> Option<String> + Send + Sync + 'static,
    {
        Self::Normalize(Arc::new(f))
    }

    /// The endpoint of a request that matched no route, from its normalized `path`.
    pub(crate) fn endpoint<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match self {
            Self::Shared => Cow::Borrowed(SHARED_ENDPOINT),
            Self::PerPath => Cow::Borrowed(path),
            Self::Normalize(f) => match f(path) {
                Some(endpoint) => Cow::Owned(endpoint),
                None => Cow::Borrowed(SHARED_ENDPOINT),
            },
        }
    }
}

impl std::fmt::Debug for UnmatchedPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Shared => "Shared",
            Self::PerPath => "PerPath",
            Self::Normalize(_) => "Normalize(..)",
        })
    }
}

/// The path rules match: axum's `OriginalUri` (the path before nested routers stripped their
/// prefix) when there is one, else the request path; normalized.
pub(crate) fn request_path(parts: &Parts) -> Cow<'_, str> {
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        return normalize_path(original.0.path());
    }
    normalize_path(parts.uri.path())
}

/// Collapses `//`, drops a trailing `/`, resolves `.` and `..`, and decodes percent-escapes of
/// unreserved characters, so that usual aliases of one path share a bucket. Idempotent.
pub(crate) fn normalize_path(path: &str) -> Cow<'_, str> {
    let clean = path.starts_with('/')
        && !path.contains('%')
        && path.split('/').skip(1).enumerate().all(|(i, seg)| {
            seg != "." && seg != ".." && (!seg.is_empty() || (i == 0 && path == "/"))
        });
    if clean {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<String> = Vec::new();
    for seg in path.split('/') {
        let seg = decode_unreserved(seg);
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986: letters, digits, `-._~`); other
/// escapes are kept, with upper-case hex digits, and a `%` that starts no escape is written
/// `%25`, so that a decoded digit never makes a new escape with it (normalizing `/%6%41` once
/// more would otherwise turn `/%6A` into `/j`). Works on bytes: any input is safe.
fn decode_unreserved(seg: &str) -> String {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| {
                Some((
                    hex,
                    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?,
                ))
            });
        match escaped {
            Some((hex, b)) => {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(b);
                } else {
                    out.push(b'%');
                    out.extend(hex.iter().map(u8::to_ascii_uppercase));
                }
                i += 3;
            }
            None if bytes[i] == b'%' => {
                out.extend_from_slice(b"%25");
                i += 1;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII bytes were added or replaced by ASCII, so the result is as valid as the input.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Checks a key prefix: 1 to 64 printable ASCII bytes, without spaces or braces (which would
/// move the Redis Cluster hash tag).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "key_prefix",
            value: prefix.to_owned(),
            reason: "must be 1 to 64 printable ASCII characters without spaces, '{' or '}'",
        })
    }
}

/// Builds the bucket key of (client, method, path) for the limit `name`.
/// What a subject is limited on, beside its client, as its key names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint<'a> {
    /// Under the default policy: the method and the route template or normalized path.
    Route {
        /// The method.
        method: &'a str,
        /// The route template, or the normalized path.
        path: &'a str,
    },
    /// Under a rule: everything the rule matches.
    Rule(&'a str),
}

/// The key that names a subject's buckets, without the limit's name:
/// `prefix:{client:METHOD:path}` or `prefix:{client:@rule}`. Each limit's bucket is this key,
/// `:` and the limit's name ([`crate::store::bucket_key`]). The one function every key comes
/// from: the HTTP layer's and [`Limiter::subject`](crate::Limiter::subject)'s. Any bytes are
/// safe; the key is at most [`MAX_KEY_LEN`] bytes with the limit's name.
pub(crate) fn subject_key(prefix: &str, client: &[u8], endpoint: Endpoint<'_>) -> String {
    let mut key = String::new();
    write_subject_key(&mut key, prefix, client, endpoint);
    key
}

/// Runs `f` with the subject key, built in a buffer this thread keeps, so that a request whose
/// key the engine does not keep allocates none. (A nested call, which never happens, would
/// only allocate a buffer of its own.)
pub(crate) fn with_subject_key<R>(
    prefix: &str,
    client: &[u8],
    endpoint: Endpoint<'_>,
    f: impl FnOnce(&str) -> R,
) -> R {
    thread_local! {
        static BUFFER: Cell<String> = const { Cell::new(String::new()) };
    }
    /// Puts the buffer back when `f` returns (or panics).
    struct Buffer(String);
    impl Drop for Buffer {
        fn drop(&mut self) {
            BUFFER.set(std::mem::take(&mut self.0));
        }
    }
    let mut key = Buffer(BUFFER.take());
    write_subject_key(&mut key.0, prefix, client, endpoint);
    f(&key.0)
}

/// Writes the subject key into `key`, replacing what it held.
fn write_subject_key(key: &mut String, prefix: &str, client: &[u8], endpoint: Endpoint<'_>) {
    let extra = match endpoint {
        Endpoint::Route { method, path } => method.len() + path.len(),
        Endpoint::Rule(rule) => rule.len(),
    };
    key.clear();
    key.reserve(prefix.len() + client.len() + extra + 6 + MAX_NAME_LEN);
    key.push_str(prefix);
    key.push_str(":{");
    push_component(key, client, MAX_CLIENT_LEN);
    key.push(':');
    match endpoint {
        Endpoint::Route { method, path } => {
            push_text(key, method, MAX_METHOD_LEN);
            key.push(':');
            push_text(key, path, MAX_PATH_LEN);
        }
        Endpoint::Rule(rule) => {
            // No method contains '@' (it is not a token character), so this never meets a
            // route's key; rule names are checked to need no escaping.
            key.push('@');
            key.push_str(rule);
        }
    }
    key.push('}');
    debug_assert!(key.len() + 1 + MAX_NAME_LEN + MAX_SUFFIX_LEN <= MAX_KEY_LEN);
}

/// Bytes `ESCAPED` leaves as they are: printable ASCII but the layout's characters.
const UNESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = b'!';
    while byte <= b'~' {
        table[byte as usize] = !matches!(byte, b'%' | b':' | b'{' | b'}' | b'#');
        byte += 1;
    }
    table
};

/// [`push_component`] of text: a method, a path. Most have nothing to escape (`GET`, `/`,
/// `/api/items`) and are copied whole, without the encoder's chunks.
fn push_text(key: &mut String, text: &str, max: usize) {
    if text.len() <= max && text.bytes().all(|b| UNESCAPED[usize::from(b)]) {
        key.push_str(text);
    } else {
        push_component(key, text.as_bytes(), max);
    }
}

/// Appends `raw` percent-encoded, or `#` and its SHA-256 when the encoding exceeds `max` bytes.
fn push_component(key: &mut String, raw: &[u8], max: usize) {
    let start = key.len();
    for chunk in percent_encode(raw, ESCAPED) {
        key.push_str(chunk);
        if key.len() - start > max {
            key.truncate(start);
            key.push('#');
            for byte in Sha256::digest(raw) {
                write!(key, "{byte:02x}").expect("writing to a String cannot fail");
            }
            debug_assert_eq!(key.len() - start, HASHED_LEN);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn key(client: &[u8], method: &str, path: &str) -> String {
        let key = subject_key("tollgate", client, Endpoint::Route { method, path });
        format!("{key}:default")
    }

    #[test]
    fn unescaped_bytes_are_the_ones_the_encoder_leaves() {
        for byte in 0..=u8::MAX {
            let encoded = percent_encode(&[byte], ESCAPED).to_string();
            assert_eq!(
                UNESCAPED[usize::from(byte)],
                encoded.as_bytes() == [byte],
                "{byte:#04x}"
            );
        }
    }

    #[test]
    fn head_counts_as_get_and_invented_methods_share_one_name() {
        let name =
            |m: &str| key_method(&http::Method::from_bytes(m.as_bytes()).unwrap()).to_owned();
        assert_eq!(name("HEAD"), "GET");
        for m in [
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(name(m), m);
        }
        for m in ["FOO", "get", "PROPFIND", "OTHER", "X-Y"] {
            assert_eq!(name(m), "OTHER", "{m}");
        }
    }

    #[test]
    fn layout_is_readable() {
        assert_eq!(
            key(b"alice", "GET", "/users/{id}"),
            "tollgate:{alice:GET:/users/%7Bid%7D}:default"
        );
        assert_eq!(
            subject_key("tollgate", b"alice", Endpoint::Rule("login")),
            "tollgate:{alice:@login}"
        );
        // A client spelling a rule key stays apart.
        assert_ne!(
            subject_key(
                "tollgate",
                b"alice:@login",
                Endpoint::Route {
                    method: "GET",
                    path: "/"
                }
            ),
            subject_key("tollgate", b"alice", Endpoint::Rule("login"))
        );
    }

    #[test]
    fn separators_in_a_client_cannot_forge_another_pair() {
        let pairs: &[(&[u8], &str, &str)] = &[
            (b"a:GET:/x", "GET", "/y"),
            (b"a", "GET", "/x:GET:/y"),
            (b"a:GET", "/x", "GET:/y"),
            (b"a}:x{", "GET", "/y"),
            (b"a%3AGET%3A%2Fx", "GET", "/y"),
            (b"#0000", "GET", "/y"),
            (b"a", "GET", "/x"),
        ];
        let keys: HashSet<String> = pairs.iter().map(|(c, m, p)| key(c, m, p)).collect();
        assert_eq!(keys.len(), pairs.len(), "{keys:#?}");
        for k in &keys {
            // One hash tag, braces only where the layout puts them.
            assert_eq!(k.matches('{').count(), 1, "{k}");
            assert_eq!(k.matches('}').count(), 1, "{k}");
        }
    }

    #[test]
    fn long_components_are_hashed_and_keys_bounded() {
        let long = vec![0xFFu8; 100_000];
        let k = key(&long, &"M".repeat(10_000), &"/p".repeat(10_000));
        assert!(k.len() <= MAX_KEY_LEN, "{}", k.len());
        assert_eq!(k.matches('#').count(), 3, "{k}");
        // Different long clients still get different keys.
        let mut other = long.clone();
        other[99_999] = 0xFE;
        assert_ne!(k, key(&other, &"M".repeat(10_000), &"/p".repeat(10_000)));
        // A client just under the bound is kept verbatim.
        let k = key(&[b'a'; MAX_CLIENT_LEN], "GET", "/");
        assert!(k.contains(&"a".repeat(MAX_CLIENT_LEN)));
    }

    #[test]
    fn non_utf8_bytes_are_escaped() {
        assert_eq!(
            key(b"\xff\x00 k", "GET", "/"),
            "tollgate:{%FF%00%20k:GET:/}:default"
        );
    }

    #[test]
    fn paths_are_normalized_without_a_template() {
        for (path, normal) in [
            ("/", "/"),
            ("/users/1", "/users/1"),
            ("//users//1/", "/users/1"),
            ("/users/./1", "/users/1"),
            ("/a/../users/1", "/users/1"),
            ("/../..", "/"),
            ("/%75sers/%31", "/users/1"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            ("/bad%zz%", "/bad%25zz%25"),
            ("/%", "/%25"),
            ("/%a\u{e9}", "/%25a\u{e9}"),
            ("/%6%41", "/%256A"),
            ("/\u{e9}%41", "/\u{e9}A"),
        ] {
            assert_eq!(normalize_path(path), normal, "{path}");
        }
    }

    #[tokio::test]
    async fn aliases_of_a_path_share_a_bucket_and_long_paths_are_limited() {
        let layer = crate::TollgateLayer::builder()
            .client_extractor(crate::ApiKey::default())
            .unmatched_paths(UnmatchedPaths::PerPath)
            .capacity(1)
            .period(std::time::Duration::from_secs(60))
            .build()
            .unwrap();
        let status = |path: String| {
            let request = http::Request::get(path)
                .header("x-api-key", "k")
                .body(())
                .unwrap();
            let layer = &layer;
            async move { crate::testing::status(layer, request).await.as_u16() }
        };
        let long = format!("/{}", "x".repeat(20_000));
        let mut got = Vec::new();
        for path in [
            "/users/1",
            "//users/./1/",
            "/a/../users/%31",
            "/%75sers/1",
            "/100%",
            "/100%25",
            &long,
            &long,
        ] {
            got.push(status(path.to_owned()).await);
        }
        assert_eq!(got, [200, 429, 429, 429, 200, 429, 200, 429]);
    }

    #[test]
    fn prefix_is_checked() {
        assert!(check_prefix("tollgate").is_ok());
        for bad in ["", "a b", "a{b", &"p".repeat(65)] {
            let err = check_prefix(bad).unwrap_err().to_string();
            assert!(err.contains("key_prefix"), "{err}");
        }
    }
}

/// Property tests: whatever a client sends, a request gets one bounded key with a single hash
/// tag, different requests never share one, and path normalization is stable.
#[cfg(test)]
mod props {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::store::bucket_key;
    use crate::{Algorithm, Limit};

    /// What names a bucket: the request's key parts and the limit.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Input {
        prefix: String,
        client: Vec<u8>,
        endpoint: Owned,
        name: String,
        algorithm: Algorithm,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    enum Owned {
        Route { method: String, path: String },
        Rule(String),
    }

    impl Input {
        fn key(&self) -> String {
            let endpoint = match &self.endpoint {
                Owned::Route { method, path } => Endpoint::Route { method, path },
                Owned::Rule(rule) => Endpoint::Rule(rule),
            };
            let key = subject_key(&self.prefix, &self.client, endpoint);
            let limit = Limit::with_algorithm(
                self.algorithm,
                &*self.name,
                10,
                None,
                Duration::from_secs(1),
            )
            .expect("generated limits are valid");
            bucket_key(&key, &limit)
        }
    }

    /// Bytes the key layout cares about, so that generated inputs often look alike.
    const TRICKY: &[u8] = b":{}%#@/aA3\xff \x00";

    /// Client bytes: anything, the layout's own characters, or far beyond every bound.
    fn client() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..48),
            3 => prop::collection::vec(prop::sample::select(TRICKY), 0..12),
            1 => (any::<u8>(), 100..3_000usize).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    /// Method or path text: anything, the layout's characters, or long.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => any::<String>(),
            3 => "[:{}%#@/aA3 é]{0,12}",
            1 => (".{1,3}", 10..1_000usize).prop_map(|(s, n)| s.repeat(n)),
        ]
    }

    /// A valid key prefix (1 to 64 printable ASCII, no braces), often the longest.
    fn prefix() -> impl Strategy<Value = String> {
        prop_oneof!["[!-z|~]{1,64}", "[!-z|~]{64}", Just("tollgate".to_owned())]
    }

    /// A valid rule or limit name (1 to 64 letters, digits, `-_.`), often the longest.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["[A-Za-z0-9._-]{1,64}", "[A-Za-z0-9._-]{64}"]
    }

    fn input() -> impl Strategy<Value = Input> {
        let endpoint = prop_oneof![
            3 => (text(), text()).prop_map(|(method, path)| Owned::Route { method, path }),
            1 => name().prop_map(Owned::Rule),
        ];
        (
            prefix(),
            client(),
            endpoint,
            name(),
            prop::sample::select(Algorithm::ALL.to_vec()),
        )
            .prop_map(|(prefix, client, endpoint, name, algorithm)| Input {
                prefix,
                client,
                endpoint,
                name,
                algorithm,
            })
    }

    /// Inputs a careless encoding would confuse with `input`: separators moved between the
    /// client, method and path; a `:` spelled `%3A`; a client spelling the hashed form of a
    /// long one; a route spelling a rule; the limit's name absorbing the algorithm's suffix.
    fn lookalikes(input: &Input) -> Vec<Input> {
        let mut out = vec![input.clone()];
        let with = |f: &dyn Fn(&mut Input)| {
            let mut other = input.clone();
            f(&mut other);
            other
        };
        if let Owned::Route { method, path } = &input.endpoint {
            // client:method:path re-split at every ':' it contains.
            let mut joined = input.client.clone();
            joined.push(b':');
            joined.extend_from_slice(method.as_bytes());
            joined.push(b':');
            joined.extend_from_slice(path.as_bytes());
            // Every ':' near the two real separators, the first and the last few, so that a
            // client of thousands of ':' stays quick.
            let real = [input.client.len(), input.client.len() + 1 + method.len()];
            let all: Vec<usize> = (0..joined.len()).filter(|&i| joined[i] == b':').collect();
            let colons: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|&(n, &i)| {
                    n < 3 || n + 3 >= all.len() || real.iter().any(|&r| i.abs_diff(r) <= 4)
                })
                .map(|(_, &i)| i)
                .collect();
            for (i, &a) in colons.iter().enumerate() {
                for &b in &colons[i + 1..] {
                    let (Ok(m), Ok(p)) = (
                        std::str::from_utf8(&joined[a + 1..b]),
                        std::str::from_utf8(&joined[b + 1..]),
                    ) else {
                        continue;
                    };
                    out.push(with(&|o| {
                        o.client = joined[..a].to_vec();
                        o.endpoint = Owned::Route {
                            method: m.to_owned(),
                            path: p.to_owned(),
                        };
                    }));
                }
            }
            // A method spelling a rule's name.
            if !method.is_empty()
                && method.len() <= 64
                && method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                out.push(with(&|o| o.endpoint = Owned::Rule(method.clone())));
            }
        }
        if let Owned::Rule(rule) = &input.endpoint {
            out.push(with(&|o| {
                o.endpoint = Owned::Route {
                    method: format!("@{rule}"),
                    path: String::new(),
                }
            }));
            out.push(with(&|o| {
                let mut client = o.client.clone();
                client.extend_from_slice(format!(":@{rule}").as_bytes());
                o.client = client;
                o.endpoint = Owned::Rule("r".into());
            }));
        }
        let spelled: Vec<u8> = input
            .client
            .iter()
            .flat_map(|&b| match b {
                b':' => b"%3A".to_vec(),
                b => vec![b],
            })
            .collect();
        out.push(with(&|o| o.client = spelled.clone()));
        let mut hashed = b"#".to_vec();
        for byte in Sha256::digest(&input.client) {
            hashed.extend_from_slice(format!("{byte:02x}").as_bytes());
        }
        out.push(with(&|o| o.client = hashed.clone()));
        for algorithm in Algorithm::ALL {
            out.push(with(&|o| o.algorithm = algorithm));
            let suffix = algorithm.key_suffix().trim_start_matches(':');
            if !suffix.is_empty() && input.name.len() < 60 {
                out.push(with(&|o| {
                    o.name = format!("{}.{suffix}", input.name);
                    o.algorithm = Algorithm::TokenBucket;
                }));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_request_key_is_bounded_with_one_hash_tag(input in input()) {
            let key = input.key();
            prop_assert!(key.len() <= MAX_KEY_LEN, "{} bytes: {key}", key.len());
            prop_assert_eq!(key.matches('{').count(), 1, "{}", key);
            prop_assert_eq!(key.matches('}').count(), 1, "{}", key);
            let head = format!("{}:{{", input.prefix);
            prop_assert!(key.starts_with(&head), "{key}");
            let tail = format!("}}:{}{}", input.name, input.algorithm.key_suffix());
            prop_assert!(key.ends_with(&tail), "{key}");
            // Printable ASCII only: whatever bytes the client sent are escaped.
            prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
        }

        #[test]
        fn different_clients_or_endpoints_never_share_a_key(
            inputs in prop::collection::vec(input(), 1..4),
        ) {
            let mut seen: HashMap<String, Input> = HashMap::new();
            for input in inputs.iter().flat_map(lookalikes) {
                let key = input.key();
                if let Some(earlier) = seen.get(&key) {
                    prop_assert_eq!(earlier, &input, "two inputs share the key {}", key);
                } else {
                    seen.insert(key, input);
                }
            }
        }

        #[test]
        fn normalize_path_is_rooted_and_idempotent(
            path in prop_oneof![
                any::<String>(),
                "[/.%a-fA-F0-9zé]{0,24}",
                "(/|//|/\\.|/\\.\\.|%2[eEfF5]|%4[1-9]|%|%%|[a-z0-9])*",
            ],
        ) {
            let once = normalize_path(&path);
            prop_assert!(once.starts_with('/'), "{path:?} -> {once:?}");
            prop_assert!(!once.contains("//"), "{path:?} -> {once:?}");
            prop_assert!(once == "/" || !once.ends_with('/'), "{path:?} -> {once:?}");
            let twice = normalize_path(&once);
            prop_assert_eq!(&twice, &once, "not idempotent from {:?}", path);
            // A normal path is returned as it is, without allocating.
            prop_assert!(matches!(twice, Cow::Borrowed(_)) || once.contains('%'), "{once:?}");
        }

        #[test]
        fn usual_aliases_of_a_path_share_its_normal_form(
            segments in prop::collection::vec("[A-Za-z0-9._~-]{1,6}", 0..5),
            spelling in prop::collection::vec(0u8..8, 0..40),
        ) {
            // The path's normal form: no empty, "." or ".." segments.
            let segments: Vec<String> =
                segments.into_iter().filter(|s| s != "." && s != "..").collect();
            let normal = if segments.is_empty() {
                "/".to_owned()
            } else {
                segments.iter().map(|s| format!("/{s}")).collect()
            };
            // Spelled with doubled slashes, "." and "x/.." segments, a trailing slash and
            // escapes of unreserved characters, as `spelling` picks.
            let mut choices = spelling.into_iter().cycle();
            let mut pick = || choices.next().unwrap_or(0);
            let mut alias = String::new();
            for segment in &segments {
                match pick() {
                    0 => alias.push_str("//"),
                    1 => alias.push_str("/./"),
                    2 => alias.push_str("/zz/../"),
                    _ => alias.push('/'),
                }
                for c in segment.chars() {
                    match pick() {
                        0 => alias.push_str(&format!("%{:02X}", c as u32)),
                        1 => alias.push_str(&format!("%{:02x}", c as u32)),
                        _ => alias.push(c),
                    }
                }
            }
            if pick() < 2 {
                alias.push('/');
            }
            prop_assert_eq!(normalize_path(&alias), normal.as_str(), "{}", alias);
        }
    }
}
