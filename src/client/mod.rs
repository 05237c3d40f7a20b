//! Who a request comes from: the [`ClientExtractor`] trait and the built-in extractors.
//!
//! - [`ApiKey`] (the default): a header, then a query parameter.
//! - [`ClientIp`]: the peer's IP address, or the client's behind trusted proxies, with IPv6
//!   clients bucketed by network prefix.
//! - Any closure `Fn(&http::request::Parts) -> Option<String>`.
//!
//! A [`Bypass`] list names clients that are never limited (their requests are still decided
//! and reported, like [shadow mode](crate::Builder::shadow)).

use std::borrow::Cow;
use std::net::IpAddr;

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;

mod bypass;
mod ip;

pub use bypass::Bypass;
pub use ip::{ClientIp, ForwardedHeader, RemoteAddr};

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

/// Finds the client a request comes from.
///
/// The identity is opaque bytes; any bytes are safe (see [`key`](crate::key)). Implemented by
/// [`ApiKey`] (the default), [`ClientIp`], and closures
/// `Fn(&http::request::Parts) -> Option<String>`, where `None` or an empty string answers
/// `400 Bad Request`:
///
/// ```
/// use tollgate::RateLimitLayer;
///
/// let layer = RateLimitLayer::builder()
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
    /// A [`MissingClient`] when the request does not say who sent it; the layer answers
    /// `400 Bad Request` (gRPC: `INVALID_ARGUMENT`) with its message.
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, MissingClient>;
}

impl<F> ClientExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, MissingClient> {
        match self(parts) {
            Some(id) if !id.is_empty() => Ok(ClientId::from_bytes(id.into_bytes())),
            _ => Err(MissingClient::new("missing client identity")),
        }
    }
}

/// A request that does not say who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MissingClient {
    message: Cow<'static, str>,
}

impl MissingClient {
    /// A rejection with `message`, sent to the client in the `400` body.
    pub fn new(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message sent to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
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
    missing: MissingClient,
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
            missing: MissingClient::new(message),
        }
    }

    /// Reads only `header`, never the query string.
    pub fn header(header: HeaderName) -> Self {
        Self::new(header, None)
    }
}

impl ClientExtractor for ApiKey {
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, MissingClient> {
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
}
