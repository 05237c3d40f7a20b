use std::collections::HashSet;

use ipnet::IpNet;

use super::ClientId;
use super::ip::parse_net;
use crate::ConfigError;

/// Clients that are never limited: API keys (or other identities) and IP networks.
///
/// Their requests are still decided and reported (headers, logs), like
/// [shadow mode](crate::Builder::shadow), so their usage stays visible; they are just never
/// refused.
///
/// ```
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let bypass = tollgate::client::Bypass::new()
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
