//! What the `http` action may reach: an address classifier, the per-pool egress [`Policy`],
//! and the DNS resolver that applies it to every address a request connects to.
//!
//! By default a request may not reach loopback, link-local (the cloud metadata address
//! 169.254.169.254 among them), private, shared (CGNAT), unique-local, unspecified, multicast,
//! reserved or documentation addresses, nor their IPv4-mapped, NAT64 and 6to4 IPv6 forms
//! ([`default_denied`]), nor the operator's `http_deny` entries and the NATS servers' hosts
//! (the cluster's own service addresses). A pool's `http_allow` entries win over all of these,
//! so an operator can let one pool reach one internal service.
//!
//! The check applies to the addresses actually connected to: [`Resolver`] resolves a host name
//! and hands the connector only the allowed addresses, so a name that resolves to a public
//! address when checked and to a private one when connected (DNS rebinding) never gets through.
//! The connector does not resolve IP literals, so [`Policy::check_url`] checks those, for the
//! first request and for each redirect.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// The name of the range a request may not reach by default, or `None` when it may.
/// IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`)
/// addresses are judged by the IPv4 address they carry.
pub fn default_denied(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => denied_v6(v6),
    }
}

/// IPv4 ranges that are not the public internet (RFC 6890 and its successors).
const DENIED_V4: [(u32, u8, &str); 15] = [
    (0x0000_0000, 8, "this network (0.0.0.0/8)"),
    (0x0a00_0000, 8, "private (10.0.0.0/8)"),
    (0x6440_0000, 10, "shared address space (100.64.0.0/10)"),
    (0x7f00_0000, 8, "loopback (127.0.0.0/8)"),
    (0xa9fe_0000, 16, "link-local (169.254.0.0/16)"),
    (0xac10_0000, 12, "private (172.16.0.0/12)"),
    (0xc000_0000, 24, "IETF protocol assignments (192.0.0.0/24)"),
    (0xc000_0200, 24, "documentation (192.0.2.0/24)"),
    (0xc058_6300, 24, "6to4 relay (192.88.99.0/24)"),
    (0xc0a8_0000, 16, "private (192.168.0.0/16)"),
    (0xc612_0000, 15, "benchmarking (198.18.0.0/15)"),
    (0xc633_6400, 24, "documentation (198.51.100.0/24)"),
    (0xcb00_7100, 24, "documentation (203.0.113.0/24)"),
    (0xe000_0000, 4, "multicast (224.0.0.0/4)"),
    (0xf000_0000, 4, "reserved and broadcast (240.0.0.0/4)"),
];

/// IPv6 ranges that are not the public internet, besides those that carry an IPv4 address.
const DENIED_V6: [(u128, u8, &str); 9] = [
    (0, 128, "unspecified (::)"),
    (1, 128, "loopback (::1)"),
    (0, 96, "IPv4-compatible (::/96)"),
    (0x0064_ff9b_0001 << 80, 48, "local NAT64 (64:ff9b:1::/48)"),
    (0x0100 << 112, 64, "discard (100::/64)"),
    (
        0x2001_0000 << 96,
        23,
        "IETF protocol assignments (2001::/23)",
    ),
    (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32)"),
    (0xfc00 << 112, 7, "unique-local (fc00::/7)"),
    (0xfe80 << 112, 9, "link-local or site-local (fe80::/9)"),
];

const MULTICAST_V6: (u128, u8) = (0xff00 << 112, 8);
const NAT64: (u128, u8) = (0x0064_ff9b << 96, 96);
const SIX_TO_FOUR: (u128, u8) = (0x2002 << 112, 16);

/// Whether the `width`-bit `address` is in `network`/`length`.
fn within(address: u128, (network, length): (u128, u8), width: u32) -> bool {
    let shift = width.saturating_sub(u32::from(length));
    // Shifting by the whole width (a /0) leaves nothing to compare.
    address.checked_shr(shift).unwrap_or(0) == network.checked_shr(shift).unwrap_or(0)
}

fn denied_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let address = u128::from(u32::from(ip));
    DENIED_V4
        .iter()
        .find(|(network, length, _)| within(address, (u128::from(*network), *length), 32))
        .map(|(_, _, name)| *name)
}

fn denied_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return denied_v4(v4).map(|_| "an IPv4-mapped form of a denied IPv4 address");
    }
    let address = u128::from(ip);
    if within(address, NAT64, 128) {
        let v4 = Ipv4Addr::from(u32::try_from(address & 0xffff_ffff).unwrap_or(0));
        return denied_v4(v4).map(|_| "a NAT64 form of a denied IPv4 address");
    }
    if within(address, SIX_TO_FOUR, 128) {
        let v4 = Ipv4Addr::from(u32::try_from((address >> 80) & 0xffff_ffff).unwrap_or(0));
        return denied_v4(v4).map(|_| "a 6to4 form of a denied IPv4 address");
    }
    if within(address, MULTICAST_V6, 128) {
        return Some("multicast (ff00::/8)");
    }
    DENIED_V6
        .iter()
        .find(|(network, length, _)| within(address, (*network, *length), 128))
        .map(|(_, _, name)| *name)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Addresses and host names, from `http_allow` or `http_deny` entries: a CIDR (`10.0.0.0/8`),
/// an address (`127.0.0.1`, `::1`), a host name (`api.internal`) or every name under a domain
/// (`*.svc.cluster.local`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
    domains: Vec<String>,
}

impl Rules {
    /// Parses `entries`, saying which one is wrong and why.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> anyhow::Result<Self> {
        let mut rules = Self::default();
        for entry in entries {
            rules.add(entry.as_ref())?;
        }
        Ok(rules)
    }

    fn add(&mut self, entry: &str) -> anyhow::Result<()> {
        let entry = entry.trim();
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let Ok(network) = bare.parse::<IpNet>() {
            self.networks.push(network.trunc());
        } else if let Ok(address) = bare.parse::<IpAddr>() {
            self.networks.push(IpNet::from(address));
        } else if let Some(domain) = entry.strip_prefix("*.") {
            self.domains.push(host_name(domain, entry)?);
        } else {
            self.hosts.push(host_name(entry, entry)?);
        }
        Ok(())
    }

    /// Adds the host of each of the comma-separated `urls` (the NATS servers'), as a name and,
    /// when it is one, as an address.
    pub fn add_hosts_of(&mut self, urls: &str) {
        for url in urls.split(',') {
            let url = url.trim();
            let url = if url.contains("://") {
                url.to_owned()
            } else {
                format!("nats://{url}")
            };
            let Ok(url) = Url::parse(&url) else { continue };
            match url.host() {
                // `nats://` is not a special scheme: an IPv4 address stays a "domain".
                Some(url::Host::Domain(name)) => match name.parse::<IpAddr>() {
                    Ok(address) => self.add_address(address),
                    Err(_) => self.hosts.push(normal_name(name)),
                },
                Some(url::Host::Ipv4(v4)) => self.add_address(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => self.add_address(IpAddr::V6(v6)),
                None => {}
            }
        }
    }

    /// Adds one address (a host of the cluster's, as resolved when the worker starts).
    pub fn add_address(&mut self, ip: IpAddr) {
        let network = IpNet::from(canonical(ip));
        if !self.networks.contains(&network) {
            self.networks.push(network);
        }
    }

    /// The host names among the entries (to resolve the cluster's hosts when the worker starts).
    pub fn host_names(&self) -> &[String] {
        &self.hosts
    }

    fn has_address(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|network| network.contains(&ip))
    }

    fn has_name(&self, name: &str) -> bool {
        let name = normal_name(name);
        self.hosts.contains(&name)
            || self.domains.iter().any(|domain| {
                name.strip_suffix(domain.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            })
    }
}

fn normal_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn host_name(name: &str, entry: &str) -> anyhow::Result<String> {
    let name = normal_name(name);
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
        "{entry:?} is not a CIDR (10.0.0.0/8), an address (127.0.0.1), a host name \
         (api.internal) or a domain's names (*.svc.cluster.local)"
    );
    Ok(name)
}

/// Why a request was refused, for the worker's log; the step's error says only
/// `egress_denied` and the host its URL named.
#[derive(Debug, Clone, thiserror::Error)]
#[error("egress_denied: {host} ({reason})")]
pub struct Denied {
    pub host: String,
    pub reason: String,
}

/// The `http` action's settings, validated: what each pool may reach, redirects, timeout.
#[derive(Debug, Clone)]
pub struct Egress {
    /// `http_allow`, by pool.
    pub allow: BTreeMap<String, Rules>,
    /// `http_deny` and the NATS servers' hosts.
    pub deny: Rules,
    /// `http_max_redirects`.
    pub max_redirects: usize,
    /// `http_timeout_ms`.
    pub timeout: Duration,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            allow: BTreeMap::new(),
            deny: Rules::default(),
            max_redirects: 0,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Egress {
    /// The policy of `pool`'s steps.
    pub fn policy(&self, pool: &str) -> Policy {
        Policy {
            allow: self.allow.get(pool).cloned().unwrap_or_default(),
            deny: self.deny.clone(),
        }
    }

    /// Denies, besides the denied host names, the addresses they resolve to now (the NATS
    /// servers', say), so their IP literals are refused too. A name that does not resolve
    /// within a few seconds is skipped.
    pub async fn resolve_denied_hosts(&mut self) {
        const LOOKUP: Duration = Duration::from_secs(5);
        for name in self.deny.host_names().to_vec() {
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            match tokio::time::timeout(LOOKUP, lookup).await {
                Ok(Ok(addresses)) => addresses.for_each(|a| self.deny.add_address(a.ip())),
                Ok(Err(error)) => tracing::debug!(%name, %error, "a denied host does not resolve"),
                Err(_) => tracing::debug!(%name, "a denied host did not resolve in time"),
            }
        }
    }
}

/// What one pool's `http` steps may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The pool's `http_allow`: wins over every deny rule.
    pub allow: Rules,
    /// `http_deny` and the cluster's own hosts, on top of [`default_denied`].
    pub deny: Rules,
}

impl Policy {
    /// Refuses a URL whose host is a denied IP literal, or a host name denied as a name;
    /// other names are checked when [`Resolver`] resolves them.
    pub fn check_url(&self, url: &Url) -> Result<(), Denied> {
        let host = url.host_str().unwrap_or_default();
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check_address(host, IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check_address(host, IpAddr::V6(v6)),
            Some(url::Host::Domain(name)) => self.check_name(name).map(|_| ()),
            None => Err(denied(host, "no host".to_owned())),
        }
    }

    /// `Ok(true)` when the name is allowed as such (all its addresses are), `Ok(false)` when
    /// its addresses decide, an error when it is denied as a name.
    fn check_name(&self, name: &str) -> Result<bool, Denied> {
        if self.allow.has_name(name) {
            Ok(true)
        } else if self.deny.has_name(name) {
            Err(denied(
                name,
                "a host of the cluster's, or in http_deny".to_owned(),
            ))
        } else {
            Ok(false)
        }
    }

    fn check_address(&self, host: &str, ip: IpAddr) -> Result<(), Denied> {
        if self.allow.has_address(ip) {
            return Ok(());
        }
        if let Some(range) = default_denied(ip) {
            return Err(denied(host, format!("{ip} is {range}")));
        }
        if self.deny.has_address(ip) {
            return Err(denied(
                host,
                format!("{ip} is in http_deny or the cluster's"),
            ));
        }
        Ok(())
    }

    /// The addresses of `name` (as resolved: `resolved`) that a request may connect to; an
    /// error when there are some but none is allowed.
    pub fn filter(
        &self,
        name: &str,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Denied> {
        let whole_name = self.check_name(name)?;
        let mut allowed = Vec::new();
        let mut refused = None;
        for address in resolved {
            if whole_name {
                allowed.push(address);
                continue;
            }
            match self.check_address(name, address.ip()) {
                Ok(()) => allowed.push(address),
                Err(denied) => refused = Some(denied),
            }
        }
        match refused {
            Some(denied) if allowed.is_empty() => Err(denied),
            _ => Ok(allowed),
        }
    }
}

fn denied(host: &str, reason: String) -> Denied {
    Denied {
        host: host.to_owned(),
        reason,
    }
}

/// The `http` action's DNS resolver: the system's (`getaddrinfo`, off the runtime threads),
/// then [`Policy::filter`], so the connector only ever sees allowed addresses.
#[derive(Debug, Clone)]
pub struct Resolver {
    pub policy: Arc<Policy>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let name = name.as_str();
            // Refused as a name before any lookup, so a denied name is not even resolved.
            policy.check_name(name)?;
            let resolved = tokio::net::lookup_host((name, 0)).await?;
            let allowed = policy.filter(name, resolved)?;
            if allowed.is_empty() {
                return Err(format!("{name} has no address").into());
            }
            let addresses: Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests;
