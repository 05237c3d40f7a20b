use std::collections::HashSet;

use ipnet::IpNet;

use super::ClientId;
use super::ip::parse_net;
use crate::ConfigError;

/// Clients that are never limited: API keys (or other identities) and IP networks.
///
/// Their requests are still decided and reported (headers, logs), like
/// [shadow mode](crate::LayerBuilder::shadow), so their usage stays visible; they are just never
/// refused.
///
/// ```
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let bypass = tollgate::Bypass::new()
///     .key("internal-batch-job")
///     .cidr("10.0.0.0/8")?;
/// # let _ = bypass;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Bypass {
    keys: HashSet<Vec<u8>>,
    nets: Vec<IpNet>,
}

impl Bypass {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Never limits the client whose identity is `key`.
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.insert(key.as_ref().to_vec());
        self
    }

    /// Never limits clients whose IP address is in `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or a
    /// single address).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `bypass` when `cidr` is not a network.
    pub fn cidr(mut self, cidr: &str) -> Result<Self, ConfigError> {
        self.nets.push(parse_net(cidr, "bypass")?);
        Ok(self)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.nets.is_empty()
    }

    /// Whether `client` is on the list.
    pub fn contains(&self, client: &ClientId<'_>) -> bool {
        self.keys.contains(client.as_bytes())
            || client
                .ip()
                .is_some_and(|ip| self.nets.iter().any(|net| net.contains(&ip.to_canonical())))
    }
}

/// Property tests: a bypass list is exactly its keys and networks, and a bad network is named.
#[cfg(test)]
mod props {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;

    /// Whether `ip` is in `net/len`, by masks.
    fn within(ip: IpAddr, net: IpAddr, len: u8) -> bool {
        let masked = |bits: u128, width: u32| {
            let keep = u32::from(len).min(width);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        };
        match (ip.to_canonical(), net) {
            (IpAddr::V4(a), IpAddr::V4(n)) => {
                masked(u32::from(a).into(), 32) == masked(u32::from(n).into(), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(n)) => masked(a.into(), 128) == masked(n.into(), 128),
            _ => false,
        }
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            any::<[u8; 2]>().prop_map(|[a, b]| IpAddr::from([10, 1, a, b])),
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(std::net::Ipv4Addr::from(o).to_ipv6_mapped())),
        ]
    }

    /// A network that is not written as IPv4-mapped IPv6.
    fn net() -> impl Strategy<Value = (IpAddr, u8)> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, len)| (IpAddr::from(o), len)),
            (any::<[u8; 2]>(), 8u8..=32)
                .prop_map(|([a, b], len)| (IpAddr::from([10, 1, a, b]), len)),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_filter("not mapped", |(o, _)| o[..12]
                    != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
                .prop_map(|(o, len)| (IpAddr::from(o), len)),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_bypass_cidr_is_a_network_or_named_in_the_error(
            cidr in prop_oneof![".{0,20}", "[0-9./: a-f]{0,20}", "[0-9.]{1,15}/[0-9]{1,3}"],
        ) {
            match Bypass::new().cidr(&cidr) {
                Ok(bypass) => prop_assert!(!bypass.is_empty()),
                Err(err) => {
                    let err = err.to_string();
                    prop_assert!(err.contains("`bypass`"), "{err}");
                    prop_assert!(err.contains(&format!("{:?}", cidr.trim())), "{err}");
                }
            }
        }

        #[test]
        fn bypass_holds_exactly_its_keys_and_networks(
            keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4),
            nets in prop::collection::vec(net(), 0..4),
            key in prop::collection::vec(any::<u8>(), 0..6),
            pick in any::<prop::sample::Index>(),
            addr in ip(),
        ) {
            let mut bypass = Bypass::new();
            for key in &keys {
                bypass = bypass.key(key);
            }
            for (net, len) in &nets {
                bypass = bypass.cidr(&format!("{net}/{len}")).unwrap();
            }
            prop_assert_eq!(bypass.is_empty(), keys.is_empty() && nets.is_empty());
            // A client named by bytes: one of the keys, or any.
            let key = if keys.is_empty() { key } else { pick.get(&keys).clone() };
            prop_assert_eq!(
                bypass.contains(&ClientId::from_bytes(&key[..])),
                keys.contains(&key)
            );
            // A client named by an address (text as it is), mapped IPv4 counting as IPv4.
            let client = ClientId::from_ip(addr, addr.to_string());
            let expected = keys.contains(&addr.to_string().into_bytes())
                || nets.iter().any(|&(net, len)| within(addr, net, len));
            prop_assert_eq!(bypass.contains(&client), expected);
        }
    }
}
