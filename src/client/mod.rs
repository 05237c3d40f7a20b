//! Who a request comes from: the [`ClientExtractor`] trait and the built-in extractors.
//!
//! - [`ApiKey`] (the default): a header, then a query parameter.
//! - [`ClientIp`]: the peer's IP address, or the client's behind trusted proxies, with IPv6
//!   clients bucketed by network prefix.
//! - Any closure `Fn(&http::request::Parts) -> Option<String>`.
//!
//! A [`Bypass`] list names clients that are never limited (their requests are still decided
//! and reported, like [shadow mode](crate::LayerBuilder::shadow)).

use crate::Refusal;
use std::borrow::Cow;
use std::net::IpAddr;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;

mod bypass;
mod ip;

pub use bypass::Bypass;
pub use ip::ClientIp;

/// The identity of a client: opaque bytes, and the IP address when the identity is one. Two
/// identities are equal when their bytes are (they name the same bucket).
#[derive(Debug, Clone)]
pub struct ClientId<'a> {
    bytes: Bytes<'a>,
    ip: Option<IpAddr>,
}

impl PartialEq for ClientId<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ClientId<'_> {}

/// An identity's bytes: borrowed or owned, or an address's text kept inline (no allocation).
#[derive(Debug, Clone)]
enum Bytes<'a> {
    Cow(Cow<'a, [u8]>),
    Inline([u8; INLINE], u8),
}

/// Room for the longest address text: an IPv6 network with its prefix length.
const INLINE: usize = 48;

impl<'a> ClientId<'a> {
    /// A client named by bytes (an API key, a tenant, a user id).
    pub fn from_bytes(bytes: impl Into<Cow<'a, [u8]>>) -> Self {
        Self {
            bytes: Bytes::Cow(bytes.into()),
            ip: None,
        }
    }

    /// A client named by an IP address (or the network of an IPv6 prefix), in text form.
    pub fn from_ip(ip: IpAddr, text: String) -> Self {
        Self {
            bytes: Bytes::Cow(Cow::Owned(text.into_bytes())),
            ip: Some(ip),
        }
    }

    /// A client named by an IPv4 address, written without allocating or formatting machinery
    /// (the most common client of all: this runs for every request keyed by IP).
    pub(crate) fn from_ipv4(ip: std::net::Ipv4Addr) -> ClientId<'static> {
        let mut buf = [0u8; INLINE];
        let mut len = 0;
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            // Digit by digit: a copy of a length known only here is a call to `memcpy`.
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        ClientId {
            bytes: Bytes::Inline(buf, len as u8),
            ip: Some(IpAddr::V4(ip)),
        }
    }

    /// A client named by `ip`, its text written by `text` without allocating.
    pub(crate) fn from_ip_display(ip: IpAddr, text: impl std::fmt::Display) -> ClientId<'static> {
        use std::io::Write as _;
        let mut buf = [0u8; INLINE];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        if write!(cursor, "{text}").is_err() {
            return ClientId::from_ip(ip, text.to_string());
        }
        let len = cursor.position() as u8;
        ClientId {
            bytes: Bytes::Inline(buf, len),
            ip: Some(ip),
        }
    }

    /// The identity's bytes, as they go into the bucket key.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Cow(bytes) => bytes,
            Bytes::Inline(buf, len) => &buf[..usize::from(*len)],
        }
    }

    /// The client's IP address, when the identity is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl<'a> From<&'a str> for ClientId<'a> {
    fn from(text: &'a str) -> Self {
        Self::from_bytes(text.as_bytes())
    }
}

impl<'a> From<&'a [u8]> for ClientId<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Self::from_bytes(bytes)
    }
}

impl From<String> for ClientId<'static> {
    fn from(text: String) -> Self {
        Self::from_bytes(text.into_bytes())
    }
}

impl From<Vec<u8>> for ClientId<'static> {
    fn from(bytes: Vec<u8>) -> Self {
        Self::from_bytes(bytes)
    }
}

/// Finds the client a request comes from.
///
/// The identity is opaque bytes; any bytes are safe (see `key`). Implemented by
/// [`ApiKey`] (the default), [`ClientIp`], and closures
/// `Fn(&http::request::Parts) -> Option<String>`, where `None` or an empty string answers
/// `400 Bad Request`:
///
/// ```
/// use tollgate::TollgateLayer;
///
/// let layer = TollgateLayer::builder()
///     .capacity(10)
///     .period(std::time::Duration::from_secs(10))
///     .client_extractor(|parts: &http::request::Parts| {
///         parts.headers.get("x-tenant")?.to_str().ok().map(str::to_owned)
///     })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub trait ClientExtractor: Send + Sync + 'static {
    /// The client's identity, or why the request carries none.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] when the request does not say who sent it; the layer answers
    /// `400 Bad Request` (gRPC: `INVALID_ARGUMENT`) with its message.
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, Refusal>;
}

impl<F> ClientExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, Refusal> {
        match self(parts) {
            Some(id) if !id.is_empty() => Ok(ClientId::from_bytes(id.into_bytes())),
            _ => Err(Refusal::bad_request("missing client identity")),
        }
    }
}

/// A client extractor from a closure over the request's head, which names the client
/// (`None` or an empty string: the request is refused with `400`). The closure's argument
/// needs no annotation (a closure handed to
/// [`client_extractor`](crate::TollgateLayer::builder) directly does: `|parts:
/// &http::request::Parts|`), so the `http` crate need not be named:
///
/// ```
/// use std::time::Duration;
/// use tollgate::{TollgateLayer, client_fn};
///
/// // One budget per user, whom an authentication layer in front named in `x-user-id`.
/// let layer = TollgateLayer::builder()
///     .capacity(100)
///     .period(Duration::from_secs(60))
///     .client_extractor(client_fn(|parts| {
///         let user = parts.headers.get("x-user-id")?.to_str().ok()?;
///         Some(user.to_owned())
///     }))
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), tollgate::ConfigError>(())
/// ```
pub fn client_fn<F>(f: F) -> F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    f
}

/// The client is named by an API key: a request header (default `X-API-Key`), else a query
/// parameter (default `key`).
///
/// An empty value counts as missing. The header's raw bytes are used, so a key need not be
/// UTF-8; the query value is percent-decoded to bytes (`+` is a space), exactly, so two
/// different query values never name the same client. For gRPC, the header is the metadata
/// key (`x-api-key`).
#[derive(Debug, Clone)]
pub struct ApiKey {
    header: HeaderName,
    query: Option<Cow<'static, str>>,
    missing: Refusal,
}

impl Default for ApiKey {
    fn default() -> Self {
        Self::new(HeaderName::from_static("x-api-key"), Some("key"))
    }
}

impl ApiKey {
    /// Reads `header`, then the query parameter `query` when given.
    pub fn new(header: HeaderName, query: Option<&'static str>) -> Self {
        let message = match query {
            Some(q) => {
                format!("missing API key: send the {header} header or the {q:?} query parameter")
            }
            None => format!("missing API key: send the {header} header"),
        };
        Self {
            header,
            query: query.map(Cow::Borrowed),
            missing: Refusal::bad_request(message),
        }
    }

    /// Reads only `header`, never the query string.
    pub fn header(header: HeaderName) -> Self {
        Self::new(header, None)
    }
}

impl ClientExtractor for ApiKey {
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, Refusal> {
        if let Some(value) = parts
            .headers
            .get(&self.header)
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
        {
            return Ok(ClientId::from_bytes(value));
        }
        if let (Some(name), Some(query)) = (&self.query, parts.uri.query())
            && let Some(value) = query_param(query, name)
        {
            return Ok(ClientId::from_bytes(value));
        }
        Err(self.missing.clone())
    }
}

/// The first non-empty value of the query parameter `name`, percent-decoded to bytes.
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (!value.is_empty() && form_decode(key).as_ref() == name.as_bytes())
            .then(|| form_decode(value))
    })
}

/// `application/x-www-form-urlencoded` decoding to bytes, without replacing invalid UTF-8.
fn form_decode(s: &str) -> Cow<'_, [u8]> {
    if s.contains('+') {
        let spaced = s.replace('+', " ");
        Cow::Owned(percent_decode_str(&spaced).collect())
    } else {
        percent_decode_str(s).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer builder naming clients by their API key.
    fn api_keys() -> crate::LayerBuilder<crate::MemoryStore, ApiKey> {
        crate::TollgateLayer::builder().client_extractor(ApiKey::default())
    }

    #[test]
    fn an_ipv4_client_is_written_as_its_display() {
        let mut ips: Vec<std::net::Ipv4Addr> = vec![
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [10, 0, 100, 9].into(),
            [192, 168, 1, 10].into(),
        ];
        // Every octet value in every place.
        ips.extend((0..=255u8).map(|o| std::net::Ipv4Addr::new(o, 255 - o, o / 3, o % 10)));
        for ip in ips {
            let id = ClientId::from_ipv4(ip);
            assert_eq!(id.as_bytes(), ip.to_string().as_bytes());
            assert_eq!(id.ip(), Some(IpAddr::V4(ip)));
        }
    }

    pub(super) fn parts(req: http::request::Builder) -> Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn api_key_prefers_header_then_query() {
        let e = ApiKey::default();
        let p = parts(http::Request::get("/x?key=from-query").header("x-api-key", "from-header"));
        assert_eq!(e.extract(&p).unwrap().as_bytes(), b"from-header");
        let p = parts(http::Request::get("/x?a=1&key=b%20c"));
        assert_eq!(e.extract(&p).unwrap().as_bytes(), b"b c");
        // Query values are decoded to the exact bytes: invalid UTF-8 is not replaced.
        let p = parts(http::Request::get("/x?key=%FF+%2B"));
        assert_eq!(e.extract(&p).unwrap().as_bytes(), b"\xff +");
        let p = parts(http::Request::get("/x?key=%FE"));
        assert_eq!(e.extract(&p).unwrap().as_bytes(), b"\xfe");
        let p = parts(http::Request::get("/x?k%65y=encoded-name"));
        assert_eq!(e.extract(&p).unwrap().as_bytes(), b"encoded-name");
        let p = parts(http::Request::get("/x?key=&other=1&key").header("x-api-key", ""));
        let err = e.extract(&p).unwrap_err();
        assert!(err.message().contains("x-api-key"), "{err}");
        assert!(err.message().contains("\"key\""), "{err}");
    }

    /// Sends `request` through a layer of capacity 1 (per minute) made by `builder` and returns
    /// the status, the named headers (`""` when absent) and the body.
    pub(super) async fn answer<C: ClientExtractor>(
        builder: crate::LayerBuilder<crate::MemoryStore, C>,
        request: http::Request<()>,
    ) -> (http::StatusCode, Vec<String>, String) {
        let layer = builder
            .capacity(1)
            .period(std::time::Duration::from_secs(60))
            .build()
            .unwrap();
        crate::testing::answer(layer, request).await
    }

    const MISSING_KEY: &str =
        r#"{"error":"missing API key: send the x-api-key header or the \"key\" query parameter"}"#;

    #[tokio::test]
    async fn missing_or_empty_keys_get_a_400_that_names_what_to_send() {
        for request in [
            http::Request::get("/x"),
            http::Request::get("/x").header("x-api-key", ""),
            http::Request::get("/x?key=&other=1"),
        ] {
            let (status, headers, body) = answer(api_keys(), request.body(()).unwrap()).await;
            assert_eq!(status, http::StatusCode::BAD_REQUEST);
            assert_eq!(headers[0], "application/json");
            assert_eq!(headers[1], "", "no Retry-After: waiting does not help");
            assert_eq!(headers[2], r#""default";q=1;w=60"#);
            assert_eq!(body, MISSING_KEY);
        }
        // gRPC: trailers-only INVALID_ARGUMENT, the message percent-encoded (tonic escapes
        // spaces and quotes too; gRPC clients decode it).
        let request = http::Request::post("/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (status, headers, body) = answer(api_keys(), request).await;
        assert_eq!(status, http::StatusCode::OK);
        assert_eq!(headers[0], "application/grpc");
        assert_eq!(headers[3], "3");
        assert_eq!(
            headers[4],
            "missing%20API%20key:%20send%20the%20x-api-key%20header%20or%20the%20%22key%22%20query%20parameter"
        );
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn non_utf8_and_huge_keys_are_limited_each_on_its_own() {
        let huge = vec![b'k'; 64 * 1024];
        let mut other = huge.clone();
        *other.last_mut().unwrap() = b'j';
        let layer = api_keys;
        for key in [&b"\xff\xfe"[..], &huge, &other] {
            let value = HeaderValue::from_bytes(key).unwrap();
            let request = || {
                http::Request::get("/x")
                    .header("x-api-key", value.clone())
                    .body(())
                    .unwrap()
            };
            let layer = layer()
                .capacity(1)
                .period(std::time::Duration::from_secs(60))
                .build()
                .unwrap();
            let first = crate::testing::status(&layer, request()).await;
            let second = crate::testing::status(&layer, request()).await;
            assert_eq!(
                (first, second),
                (http::StatusCode::OK, http::StatusCode::TOO_MANY_REQUESTS)
            );
        }
    }
}

/// Property tests: whatever headers and query a request carries, [`ApiKey`] and closures give
/// the client it names or a `Refusal` that says what to send, and never panic.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::tests::parts;
    use super::*;

    /// Bytes a header value may hold (no controls but tab): empty, short and non-UTF-8, or
    /// huge.
    pub(super) fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = crate::testing::header_value_byte();
        prop_oneof![
            1 => Just(Vec::new()),
            6 => prop::collection::vec(byte.clone(), 0..40),
            1 => (byte, 1_000..70_000usize).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    /// `application/x-www-form-urlencoded` of `bytes`: letters and digits as they are, a
    /// space as `+`, the rest escaped in upper or lower case.
    fn form_encode(bytes: &[u8], upper: bool) -> String {
        bytes
            .iter()
            .map(|&b| match b {
                b if b.is_ascii_alphanumeric() => char::from(b).to_string(),
                b' ' => "+".to_owned(),
                b if upper => format!("%{b:02X}"),
                b => format!("%{b:02x}"),
            })
            .collect()
    }

    /// A query parameter: its name, its value (`None`: no `=`), and the escapes' case.
    type Param = (Vec<u8>, Option<Vec<u8>>, bool);

    fn param() -> impl Strategy<Value = Param> {
        let name = prop_oneof![
            Just(b"key".to_vec()),
            Just(b"KEY".to_vec()),
            Just(b"key ".to_vec()),
            Just(b"k".to_vec()),
            prop::collection::vec(any::<u8>(), 0..5),
        ];
        let value = prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..12));
        (name, value, any::<bool>())
    }

    fn query(params: &[Param]) -> String {
        params
            .iter()
            .map(|(name, value, upper)| match value {
                Some(value) => {
                    format!(
                        "{}={}",
                        form_encode(name, *upper),
                        form_encode(value, *upper)
                    )
                }
                None => form_encode(name, *upper),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    fn request(headers: &[Vec<u8>], query: Option<&str>) -> Option<Parts> {
        let uri = match query {
            Some(q) => format!("/x?{q}"),
            None => "/x".to_owned(),
        };
        let mut req = http::Request::get(uri);
        for value in headers {
            req = req.header("x-api-key", HeaderValue::from_bytes(value).ok()?);
        }
        Some(req.body(()).ok()?.into_parts().0)
    }

    const MISSING: &str =
        "missing API key: send the x-api-key header or the \"key\" query parameter";

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_api_key_header_or_query_gives_that_key_or_a_clear_400(
            headers in prop::collection::vec(header_bytes(), 0..4),
            params in prop::option::of(prop::collection::vec(param(), 0..5)),
        ) {
            let q = params.as_deref().map(query);
            let p = request(&headers, q.as_deref()).expect("a valid request");
            // The first header line when it is not empty, else the first non-empty `key`
            // parameter, decoded to its exact bytes.
            let expected = headers
                .first()
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| {
                    params.iter().flatten().find_map(|(name, value, _)| {
                        (name == b"key").then(|| value.clone()).flatten().filter(|v| !v.is_empty())
                    })
                });
            match (ApiKey::default().extract(&p), expected) {
                (Ok(id), Some(expected)) => {
                    prop_assert_eq!(id.as_bytes(), &expected[..]);
                    prop_assert_eq!(id.ip(), None);
                }
                (Err(e), None) => prop_assert_eq!(e.message(), MISSING),
                (got, expected) => {
                    prop_assert!(false, "got {:?}, expected {:?}", got, expected)
                }
            }
            // Reading only the header: the query never names the client.
            let header_only = ApiKey::header(http::HeaderName::from_static("x-api-key"));
            match header_only.extract(&p) {
                Ok(id) => prop_assert_eq!(Some(id.as_bytes()), headers.first().map(|v| &v[..])),
                Err(e) => {
                    prop_assert!(headers.first().is_none_or(|v| v.is_empty()));
                    prop_assert_eq!(e.message(), "missing API key: send the x-api-key header");
                }
            }
        }

        #[test]
        fn any_raw_query_gives_a_non_empty_key_or_a_clear_400(
            q in "(key=|k%65y=|key|&|=|\\+|%|%[0-9a-fA-F]{1,2}|%FF|[a-z0-9;/?:@])*",
        ) {
            let p = request(&[], Some(&q)).expect("a valid query");
            match ApiKey::default().extract(&p) {
                Ok(id) => prop_assert!(!id.as_bytes().is_empty(), "{q}"),
                Err(e) => prop_assert_eq!(e.message(), MISSING),
            }
        }

        #[test]
        fn any_closure_identity_is_used_or_a_clear_400(id in prop::option::of(".{0,20}")) {
            let p = parts(http::Request::get("/"));
            let extractor = move |_: &Parts| id.clone();
            match (extractor.extract(&p), extractor(&p)) {
                (Ok(got), Some(id)) => prop_assert_eq!(got.as_bytes(), id.as_bytes()),
                (Err(e), None) => prop_assert_eq!(e.message(), "missing client identity"),
                (Err(e), Some(id)) => {
                    prop_assert!(id.is_empty());
                    prop_assert_eq!(e.message(), "missing client identity");
                }
                (Ok(got), None) => prop_assert!(false, "{got:?} from no identity"),
            }
        }
    }
}
