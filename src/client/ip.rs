use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use ipnet::{IpNet, Ipv6Net};

use super::{ClientExtractor, ClientId, MissingClient};
use crate::ConfigError;

/// The address of the connection's peer, as a request extension, for servers that do not add
/// axum's `ConnectInfo` (a hyper server inserts it per connection; see `examples/hyper.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// Which header the trusted proxies in front of the service write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The client is named by its IP address: the connection's peer, or, behind trusted proxies,
/// the first address in `X-Forwarded-For` (or `Forwarded`) that is not a trusted proxy, walking
/// from the right.
///
/// IPv6 clients are bucketed by network, a /64 by default ([`ClientIp::ipv6_prefix`]): one
/// user usually holds a whole /64 and could otherwise rotate through 2^64 buckets. IPv4-mapped
/// IPv6 addresses count as IPv4.
///
/// The peer address comes from axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`) or a [`RemoteAddr`] extension; a
/// request with neither is answered `400` naming what is missing.
///
/// # Behind a proxy
///
/// The left part of `X-Forwarded-For` is whatever the client sent: never trust it. With no
/// trusted proxies ([`ClientIp::peer`]), the headers are ignored. With
/// [`ClientIp::behind_proxies`], the headers are read only when the peer itself is a trusted
/// proxy, from the right, skipping trusted proxies; the first other entry is the client. Name
/// the header your proxies write ([`ClientIp::header`]): a header they do not write is
/// entirely the client's. An entry that is not an address (`unknown`, an obfuscated `_id`)
/// names the client as that token.
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// The connection's peer address; forwarding headers are ignored.
    pub fn peer() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: 64,
        }
    }

    /// Behind proxies whose addresses are in `cidrs` (`10.0.0.0/8`, `fd00::/8`, or single
    /// addresses).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `trusted_proxies` and the entry that is not a network.
    pub fn behind_proxies<I, S>(cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let trusted = cidrs
            .into_iter()
            .map(|cidr| parse_net(cidr.as_ref(), "trusted_proxies"))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trusted,
            ..Self::peer()
        })
    }

    /// The header the trusted proxies write (default `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The prefix length IPv6 clients are bucketed by (default 64; 128 for single addresses).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `ipv6_prefix` when `len` is 0 or above 128.
    pub fn ipv6_prefix(mut self, len: u8) -> Result<Self, ConfigError> {
        if !(1..=128).contains(&len) {
            return Err(ConfigError::Invalid {
                field: "ipv6_prefix",
                value: len.to_string(),
                reason: "must be from 1 to 128",
            });
        }
        self.ipv6_prefix = len;
        Ok(self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    fn id(&self, ip: IpAddr) -> ClientId<'static> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientId::from_ip_display(IpAddr::V4(v4), v4),
            IpAddr::V6(v6) => {
                let net = Ipv6Net::new(v6, self.ipv6_prefix)
                    .expect("prefix checked")
                    .trunc();
                ClientId::from_ip_display(IpAddr::V6(v6), net)
            }
        }
    }

    /// Walks the forwarding header from the right, past trusted proxies.
    fn walk<'a>(&self, parts: &'a Parts, peer: IpAddr) -> Hop<'a> {
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut nearest = Hop::Ip(peer);
        let values: Vec<&[u8]> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        for value in values.iter().rev() {
            for element in split_list(value).into_iter().rev() {
                let node = match self.header {
                    ForwardedHeader::XForwardedFor => Some(element),
                    ForwardedHeader::Forwarded => forwarded_for(element),
                };
                let Some(node) = node else { continue };
                match parse_node(node) {
                    Some(ip) if self.trusts(ip.to_canonical()) => nearest = Hop::Ip(ip),
                    Some(ip) => return Hop::Ip(ip),
                    None => return Hop::Token(node),
                }
            }
        }
        // Every hop is a trusted proxy: the leftmost is the client.
        nearest
    }
}

enum Hop<'a> {
    Ip(IpAddr),
    Token(&'a [u8]),
}

impl ClientExtractor for ClientIp {
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, MissingClient> {
        let peer = peer_addr(parts).ok_or_else(|| {
            MissingClient::new(
                "client address unknown: serve with ConnectInfo<SocketAddr> or add a RemoteAddr extension",
            )
        })?;
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Ok(self.id(peer));
        }
        match self.walk(parts, peer) {
            Hop::Ip(ip) => Ok(self.id(ip)),
            Hop::Token(token) => Ok(ClientId::from_bytes(token)),
        }
    }
}

fn peer_addr(parts: &Parts) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    parts.extensions.get::<RemoteAddr>().map(|addr| addr.0.ip())
}

pub(super) fn parse_net(text: &str, field: &'static str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| ConfigError::Invalid {
            field,
            value: text.to_owned(),
            reason: "must be an IP network like 10.0.0.0/8 or fd00::/8, or an IP address",
        })
}

/// Splits a comma-separated header value into trimmed elements, keeping commas inside quoted
/// strings.
fn split_list(value: &[u8]) -> Vec<&[u8]> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                elements.push(value[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(value[start..].trim_ascii());
    elements.retain(|e| !e.is_empty());
    elements
}

/// The `for=` node of one `Forwarded` element, quotes removed.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if !name.trim_ascii().eq_ignore_ascii_case(b"for") {
            return None;
        }
        let value = value[1..].trim_ascii();
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]:443`.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let node = std::str::from_utf8(node).ok()?.trim();
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::super::tests::parts;
    use super::*;

    fn from(peer: &str, headers: &[(&str, &str)], extractor: &ClientIp) -> String {
        let mut req = http::Request::get("/");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut p = parts(req);
        p.extensions.insert(RemoteAddr(peer.parse().unwrap()));
        String::from_utf8(extractor.extract(&p).unwrap().as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_headers_are_ignored() {
        let e = ClientIp::peer();
        let spoof = [("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")];
        assert_eq!(from("203.0.113.9:5000", &spoof, &e), "203.0.113.9");
    }

    #[test]
    fn walks_from_the_right_past_trusted_proxies() {
        let e = ClientIp::behind_proxies(["10.0.0.0/8", "192.0.2.1"]).unwrap();
        // The client put 1.2.3.4 on the left; the proxy appended the real peer.
        let xff = [("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.1.1.1")];
        assert_eq!(from("10.0.0.2:1", &xff, &e), "203.0.113.7");
        // Split over two header lines, with a port.
        let xff = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.7:8080"),
        ];
        assert_eq!(from("192.0.2.1:1", &xff, &e), "203.0.113.7");
        // A peer that is not a trusted proxy: its headers are the client's own.
        assert_eq!(from("198.51.100.1:1", &xff, &e), "198.51.100.1");
        // Only trusted hops: the leftmost.
        let xff = [("x-forwarded-for", "10.9.9.9, 10.1.1.1")];
        assert_eq!(from("10.0.0.2:1", &xff, &e), "10.9.9.9");
        // No header: the proxy itself.
        assert_eq!(from("10.0.0.2:1", &[], &e), "10.0.0.2");
    }

    #[test]
    fn reads_rfc_7239_forwarded() {
        let e = ClientIp::behind_proxies(["10.0.0.0/8"])
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let fwd = [(
            "forwarded",
            r#"for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https, For=10.0.0.5"#,
        )];
        assert_eq!(from("10.0.0.2:1", &fwd, &e), "2001:db8:cafe::/64");
        let fwd = [("forwarded", "for=_hidden;by=10.0.0.1, for=10.0.0.5")];
        assert_eq!(from("10.0.0.2:1", &fwd, &e), "_hidden");
        // X-Forwarded-For is not read when the proxies write Forwarded.
        let xff = [("x-forwarded-for", "1.2.3.4")];
        assert_eq!(from("10.0.0.2:1", &xff, &e), "10.0.0.2");
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let e = ClientIp::peer();
        assert_eq!(
            from("[2001:db8:1:2:aaaa::1]:1", &[], &e),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            from("[2001:db8:1:2:bbbb::9]:1", &[], &e),
            "2001:db8:1:2::/64"
        );
        assert_eq!(from("[::ffff:192.0.2.5]:1", &[], &e), "192.0.2.5");
        let e = ClientIp::peer().ipv6_prefix(128).unwrap();
        assert_eq!(from("[2001:db8::1]:1", &[], &e), "2001:db8::1/128");
        assert!(ClientIp::peer().ipv6_prefix(0).is_err());
        let err = ClientIp::behind_proxies(["10.0.0.0/33"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("trusted_proxies") && err.contains("10.0.0.0/33"),
            "{err}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let e = ClientIp::behind_proxies(["10.0.0.0/8"]).unwrap();
        for xff in ["", ",,,", "\"", "[", "[::1", "::::", "1.2.3.4:99999", "ü"] {
            let value = http::HeaderValue::from_bytes(xff.as_bytes()).unwrap();
            let mut p = parts(http::Request::get("/").header("x-forwarded-for", value));
            p.extensions
                .insert(RemoteAddr("10.0.0.2:1".parse().unwrap()));
            assert!(!e.extract(&p).unwrap().as_bytes().is_empty(), "{xff}");
        }
        let p = parts(http::Request::get("/"));
        let err = e.extract(&p).unwrap_err();
        assert!(err.message().contains("ConnectInfo"), "{err}");
    }
}
