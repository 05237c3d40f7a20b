use std::net::{IpAddr, SocketAddr};

use http::request::Parts;
use ipnet::{IpNet, Ipv6Net};

use super::{ClientExtractor, ClientId};
use crate::ConfigError;
use crate::Refusal;

/// Which header the trusted proxies in front of the service write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ForwardedHeader {
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
/// `into_make_service_with_connect_info::<SocketAddr>()`) or a `SocketAddr` extension (a hyper server inserts the peer's per connection; see
/// `examples/hyper.rs`); a
/// request with neither is answered `400` naming what is missing.
///
/// # Behind a proxy
///
/// The left part of `X-Forwarded-For` is whatever the client sent: never trust it. With no
/// trusted proxies ([`ClientIp::peer`]), the headers are ignored. With
/// [`ClientIp::behind_proxies`], the headers are read only when the peer itself is a trusted
/// proxy, from the right, skipping trusted proxies; the first other entry is the client. Name
/// the header your proxies write ([`ClientIp::forwarded`] for `Forwarded`): a header they do not write is
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

    /// Reads the standard `Forwarded` header (RFC 7239: `Forwarded: for=client, for=proxy1`)
    /// instead of `X-Forwarded-For`: for proxies that write it.
    pub fn forwarded(self) -> Self {
        self.header(ForwardedHeader::Forwarded)
    }

    /// Reads `header` (default `X-Forwarded-For`).
    fn header(mut self, header: ForwardedHeader) -> Self {
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
            IpAddr::V4(v4) => ClientId::from_ipv4(v4),
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
                    // An empty `for=` names no one: the element as written names the client,
                    // never an empty identity.
                    None if node.is_empty() => return Hop::Token(element),
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
    fn extract<'a>(&self, parts: &'a Parts) -> Result<ClientId<'a>, Refusal> {
        let peer = peer_addr(parts).ok_or_else(|| {
            Refusal::bad_request(
                "client address unknown: serve with ConnectInfo<SocketAddr> or add the peer SocketAddr as an extension",
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
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    parts.extensions.get::<SocketAddr>().map(SocketAddr::ip)
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
        p.extensions.insert::<SocketAddr>(peer.parse().unwrap());
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
        // An empty `for=` names no one: the element as written is the identity, never "".
        let fwd = [("forwarded", r#"for=1.2.3.4, for="";proto=https"#)];
        assert_eq!(from("10.0.0.2:1", &fwd, &e), r#"for="";proto=https"#);
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
                .insert::<SocketAddr>("10.0.0.2:1".parse().unwrap());
            assert!(!e.extract(&p).unwrap().as_bytes().is_empty(), "{xff}");
        }
        let p = parts(http::Request::get("/"));
        let err = e.extract(&p).unwrap_err();
        assert!(err.message().contains("ConnectInfo"), "{err}");
    }

    #[tokio::test]
    async fn a_request_without_a_peer_address_gets_a_400_that_says_how_to_serve() {
        let builder = crate::TollgateLayer::builder().client_extractor(ClientIp::peer());
        let request = http::Request::get("/").body(()).unwrap();
        let (status, _, body) = super::super::tests::answer(builder, request).await;
        assert_eq!(status, http::StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            r#"{"error":"client address unknown: serve with ConnectInfo<SocketAddr> or add the peer SocketAddr as an extension"}"#
        );
    }

    #[tokio::test]
    async fn a_spoofed_forwarding_header_from_an_untrusted_peer_changes_nothing() {
        let layer = crate::TollgateLayer::builder()
            .client_extractor(ClientIp::behind_proxies(["10.0.0.0/8"]).unwrap())
            .capacity(1)
            .period(std::time::Duration::from_secs(60))
            .build()
            .unwrap();
        let mut statuses = Vec::new();
        for spoof in ["1.2.3.4", "5.6.7.8, 10.0.0.1", "garbage"] {
            let mut request = http::Request::get("/")
                .header("x-forwarded-for", spoof)
                .header("forwarded", format!("for={spoof}"))
                .body(())
                .unwrap();
            let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
            request.extensions_mut().insert(peer);
            statuses.push(crate::testing::status(&layer, request).await);
        }
        // One client, the peer: its first request passes, the others are limited.
        assert_eq!(
            statuses,
            [
                http::StatusCode::OK,
                http::StatusCode::TOO_MANY_REQUESTS,
                http::StatusCode::TOO_MANY_REQUESTS
            ]
        );
    }
}

/// Property tests: whatever peer and forwarding headers a request has, [`ClientIp`] names the
/// peer, or behind trusted proxies the first hop from the right that is not one, and never
/// panics.
#[cfg(test)]
mod props {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    const TRUSTED: [&str; 3] = ["10.0.0.0/8", "fd00::/8", "192.0.2.1"];

    fn trusted() -> ClientIp {
        ClientIp::behind_proxies(TRUSTED).unwrap()
    }

    fn is_trusted(ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.octets()[0] == 10 || v4 == Ipv4Addr::new(192, 0, 2, 1),
            IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
        }
    }

    /// Any address: IPv4, IPv6, IPv4-mapped IPv6, often a trusted proxy's.
    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
            any::<[u8; 15]>().prop_map(|o| {
                let mut octets = [0xfd; 16];
                octets[1..].copy_from_slice(&o);
                IpAddr::from(octets)
            }),
            Just(IpAddr::from([192, 0, 2, 1])),
        ]
    }

    /// The identity of an address: IPv4 (also mapped) as it is, IPv6 as its network of
    /// `prefix` bits.
    fn identity(ip: IpAddr, prefix: u8) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                format!("{}/{prefix}", Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// One entry of a forwarding header, as the generator knows it.
    #[derive(Debug, Clone)]
    enum Hop {
        /// An address, spelled with a port (`Some`) or without.
        Addr(IpAddr, Option<u16>),
        /// Not an address: `unknown` or an obfuscated identifier.
        Token(String),
        /// A `Forwarded` element without `for=` (`proto=https`).
        NoFor,
    }

    fn hop() -> impl Strategy<Value = Hop> {
        prop_oneof![
            6 => (ip(), prop::option::of(any::<u16>())).prop_map(|(ip, port)| Hop::Addr(ip, port)),
            1 => prop_oneof![Just("unknown".to_owned()), "_[A-Za-z0-9._-]{1,8}"].prop_map(Hop::Token),
            1 => Just(Hop::NoFor),
        ]
    }

    /// `hop` as an `X-Forwarded-For` entry.
    fn xff(hop: &Hop) -> Option<String> {
        Some(match hop {
            Hop::Addr(IpAddr::V4(v4), Some(port)) => format!("{v4}:{port}"),
            Hop::Addr(IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
            Hop::Addr(ip, None) => ip.to_string(),
            Hop::Token(token) => token.clone(),
            Hop::NoFor => return None,
        })
    }

    /// `hop` as a `Forwarded` element (RFC 7239: quoted when it has a port or is IPv6), with
    /// other parameters around it, `for` in any case.
    fn forwarded(hop: &Hop, style: u8) -> String {
        let node = match hop {
            Hop::Addr(IpAddr::V4(v4), None) if style.is_multiple_of(2) => v4.to_string(),
            Hop::Addr(IpAddr::V4(v4), None) => format!("\"{v4}\""),
            Hop::Addr(IpAddr::V4(v4), Some(port)) => format!("\"{v4}:{port}\""),
            Hop::Addr(IpAddr::V6(v6), None) => format!("\"[{v6}]\""),
            Hop::Addr(IpAddr::V6(v6), Some(port)) => format!("\"[{v6}]:{port}\""),
            Hop::Token(token) => token.clone(),
            Hop::NoFor => return "proto=https;by=10.0.0.1".to_owned(),
        };
        let name = ["for", "For", "FOR"][usize::from(style) % 3];
        match style % 4 {
            0 => format!("{name}={node}"),
            1 => format!("proto=https;{name}={node}"),
            2 => format!("{name}={node};by=\"[fd00::1]\";host=\"a,b\""),
            _ => format!("by=10.0.0.1 ; {name}={node} ;proto=http"),
        }
    }

    /// Header lines of `which` header spelling `hops`, a new line after a hop whose style is
    /// 200 or more.
    fn lines(which: ForwardedHeader, hops: &[Hop], styles: &[u8]) -> Vec<String> {
        let mut lines = vec![String::new()];
        for (i, hop) in hops.iter().enumerate() {
            let style = styles.get(i).copied().unwrap_or(0);
            let entry = match which {
                ForwardedHeader::XForwardedFor => match xff(hop) {
                    Some(entry) => entry,
                    None => continue,
                },
                _ => forwarded(hop, style),
            };
            let line = lines.last_mut().unwrap();
            if !line.is_empty() {
                line.push_str([",", ", ", " ,  "][usize::from(style) % 3]);
            }
            line.push_str(&entry);
            if style >= 200 {
                lines.push(String::new());
            }
        }
        lines.retain(|l| !l.is_empty());
        lines
    }

    fn request(peer: Option<SocketAddr>, headers: &[(&str, &[u8])]) -> Option<Parts> {
        let mut req = http::Request::get("/");
        for (name, value) in headers {
            req = req.header(*name, http::HeaderValue::from_bytes(value).ok()?);
        }
        let mut parts = req.body(()).ok()?.into_parts().0;
        if let Some(peer) = peer {
            parts.extensions.insert(peer);
        }
        Some(parts)
    }

    fn text(id: &ClientId<'_>) -> String {
        String::from_utf8_lossy(id.as_bytes()).into_owned()
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn without_trusted_proxies_any_headers_give_the_peer(
            peer in ip(),
            port in any::<u16>(),
            xff in super::super::props::header_bytes(),
            fwd in super::super::props::header_bytes(),
            prefix in 1u8..=128,
        ) {
            let p = request(
                Some(SocketAddr::new(peer, port)),
                &[("x-forwarded-for", &xff), ("forwarded", &fwd)],
            )
            .unwrap();
            let peer_only = ClientIp::peer().ipv6_prefix(prefix).unwrap();
            let headers = [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded];
            for e in headers.map(|h| peer_only.clone().header(h)) {
                let id = e.extract(&p).unwrap();
                prop_assert_eq!(text(&id), identity(peer, prefix));
                prop_assert_eq!(id.ip(), Some(peer.to_canonical()));
            }
            // Trusted proxies, but the peer is not one: its headers are its own words.
            if !is_trusted(peer) {
                let id = trusted().ipv6_prefix(prefix).unwrap().extract(&p).unwrap();
                prop_assert_eq!(text(&id), identity(peer, prefix));
            }
        }

        #[test]
        fn behind_trusted_proxies_the_client_is_the_first_untrusted_hop_from_the_right(
            peer in ip(),
            hops in prop::collection::vec(hop(), 0..6),
            styles in prop::collection::vec(any::<u8>(), 6),
            spoof in prop::collection::vec(hop(), 0..3),
        ) {
            for which in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
                let other = match which {
                    ForwardedHeader::XForwardedFor => ForwardedHeader::Forwarded,
                    _ => ForwardedHeader::XForwardedFor,
                };
                let name = |h| match h {
                    ForwardedHeader::XForwardedFor => "x-forwarded-for",
                    _ => "forwarded",
                };
                let ours = lines(which, &hops, &styles);
                let theirs = lines(other, &spoof, &styles);
                let headers: Vec<(&str, &[u8])> = ours
                    .iter()
                    .map(|l| (name(which), l.as_bytes()))
                    .chain(theirs.iter().map(|l| (name(other), l.as_bytes())))
                    .collect();
                let p = request(Some(SocketAddr::new(peer, 1)), &headers).unwrap();
                let id = trusted().header(which).extract(&p).unwrap();
                // The oracle: from the right, past trusted proxies; every hop trusted: the
                // leftmost; an untrusted peer: the peer, whatever the headers say.
                let mut expected = (identity(peer, 64), Some(peer.to_canonical()));
                if is_trusted(peer) {
                    for hop in hops.iter().rev() {
                        match hop {
                            Hop::NoFor => {}
                            Hop::Addr(ip, _) if is_trusted(*ip) => {
                                expected = (identity(*ip, 64), Some(ip.to_canonical()));
                            }
                            Hop::Addr(ip, _) => {
                                expected = (identity(*ip, 64), Some(ip.to_canonical()));
                                break;
                            }
                            Hop::Token(token) => {
                                expected = (token.clone(), None);
                                break;
                            }
                        }
                    }
                }
                prop_assert_eq!(text(&id), expected.0, "{:?}", headers);
                prop_assert_eq!(id.ip(), expected.1);
                // A trusted proxy is named only when every hop is one.
                if id.ip().is_some_and(is_trusted) {
                    prop_assert!(
                        !is_trusted(peer) || hops.iter().all(|h| match h {
                            Hop::Addr(ip, _) => is_trusted(*ip),
                            Hop::Token(_) => false,
                            Hop::NoFor => true,
                        }),
                        "{:?}", headers
                    );
                }
            }
        }

        #[test]
        fn any_forwarding_header_gives_the_peer_or_an_entry_of_it(
            peer in prop::option::of(ip()),
            header in prop::sample::select(vec![
                ForwardedHeader::XForwardedFor,
                ForwardedHeader::Forwarded,
            ]),
            fragments in prop::collection::vec(
                prop_oneof![
                    3 => ip().prop_map(|ip| ip.to_string()),
                    1 => prop::sample::select(vec![
                        ",", ", ", ";", "for=", "For=\"", "\"", "\\", "[", "]", ":", ":443",
                        "unknown", "_x", " ", "\t", "=", "proto=https",
                    ])
                    .prop_map(str::to_owned),
                    1 => "[\\x20-\\x7e\\u{80}-\\u{10ffff}]{1,3}",
                ],
                0..12,
            ),
            breaks in prop::collection::vec(any::<bool>(), 12),
        ) {
            let mut lines = vec![String::new()];
            for (fragment, &br) in fragments.iter().zip(&breaks) {
                lines.last_mut().unwrap().push_str(fragment);
                if br {
                    lines.push(String::new());
                }
            }
            let name = match header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                _ => "forwarded",
            };
            let headers: Vec<(&str, &[u8])> =
                lines.iter().map(|l| (name, l.as_bytes())).collect();
            let p = request(peer.map(|ip| SocketAddr::new(ip, 9)), &headers).unwrap();
            let id = match (trusted().header(header).extract(&p), peer) {
                (Ok(id), Some(_)) => id,
                (Err(e), None) => {
                    prop_assert!(
                        e.message().contains("ConnectInfo<SocketAddr>")
                            && e.message().contains("SocketAddr as an extension"),
                        "{e}"
                    );
                    return Ok(());
                }
                (got, _) => return Err(TestCaseError::fail(format!("{got:?} for {peer:?}"))),
            };
            let peer = peer.unwrap();
            prop_assert!(!id.as_bytes().is_empty(), "{lines:?}");
            if !is_trusted(peer) || id.ip() == Some(peer.to_canonical()) {
                prop_assert_eq!(text(&id), identity(peer, 64));
                return Ok(());
            }
            match id.ip() {
                // An address: some piece of the header spells it.
                Some(ip) => {
                    let spelled = lines.iter().any(|l| {
                        (0..l.len()).any(|a| {
                            (a + 1..=l.len()).any(|b| {
                                l.get(a..b)
                                    .and_then(|s| s.parse::<IpAddr>().ok())
                                    .is_some_and(|parsed| parsed.to_canonical() == ip)
                            })
                        })
                    });
                    prop_assert!(spelled, "{ip} is not in {lines:?}");
                    prop_assert_eq!(text(&id), identity(ip, 64));
                }
                // A token: a piece of the header, as it is.
                None => {
                    let token = id.as_bytes();
                    prop_assert!(
                        lines.iter().any(|l| l.as_bytes().windows(token.len()).any(|w| w == token)),
                        "{:?} is not in {lines:?}", text(&id)
                    );
                }
            }
        }

        #[test]
        fn any_ipv6_prefix_is_accepted_or_named(len in any::<u8>(), a in any::<u128>(), b in any::<u128>()) {
            match ClientIp::peer().ipv6_prefix(len) {
                Ok(e) => {
                    prop_assert!((1..=128).contains(&len));
                    // Two addresses share a bucket exactly when their first `len` bits agree
                    // (mapped IPv4 addresses aside, which count as IPv4).
                    let (a, b) = (Ipv6Addr::from(a), Ipv6Addr::from(b | (1 << 127)));
                    let id = |ip: Ipv6Addr| {
                        let p = request(Some(SocketAddr::new(IpAddr::V6(ip), 1)), &[]).unwrap();
                        e.extract(&p).unwrap().as_bytes().to_vec()
                    };
                    let mask = u128::MAX << (128 - u32::from(len));
                    let same = u128::from(a) & mask == u128::from(b) & mask;
                    prop_assume!(a.to_ipv4_mapped().is_none());
                    prop_assert_eq!(id(a) == id(b), same);
                    prop_assert_eq!(id(a), identity(IpAddr::V6(a), len).into_bytes());
                }
                Err(err) => {
                    prop_assert!(len == 0 || len > 128);
                    let err = err.to_string();
                    prop_assert!(err.contains("ipv6_prefix") && err.contains(&len.to_string()), "{err}");
                }
            }
        }

        #[test]
        fn any_trusted_proxy_entry_is_a_network_or_named_in_the_error(
            entry in prop_oneof![
                ".{0,20}",
                "[0-9./: a-f]{0,20}",
                (ip(), prop::option::of(0u8..=140)).prop_map(|(ip, len)| match len {
                    Some(len) => format!("{ip}/{len}"),
                    None => ip.to_string(),
                }),
            ],
            probe in ip(),
        ) {
            match ClientIp::behind_proxies([&entry]) {
                Ok(e) => {
                    // A network of the entry's address; the address itself is trusted.
                    let net: IpNet = entry.trim().parse().or_else(|_| {
                        entry.trim().parse::<IpAddr>().map(IpNet::from)
                    }).unwrap();
                    prop_assert!(e.trusts(net.addr()));
                    prop_assert_eq!(e.trusts(probe), net.contains(&probe));
                }
                Err(err) => {
                    let err = err.to_string();
                    prop_assert!(err.contains("trusted_proxies"), "{err}");
                    prop_assert!(err.contains(&format!("{:?}", entry.trim())), "{err}");
                }
            }
        }
    }
}
