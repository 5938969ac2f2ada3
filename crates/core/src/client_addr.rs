//! Which address a request comes from, for limits kept per client. The connection's peer, unless
//! that peer is one of the operator's reverse proxies (`trusted_proxies`): then the client is
//! the right-most `X-Forwarded-For` entry that is not a trusted proxy. Anyone can send
//! `X-Forwarded-For`, so it is believed only from a proxy that appends to it; left of the
//! right-most untrusted entry, the client could have written anything.

use std::net::IpAddr;

use axum::http::HeaderMap;

/// The parsed `trusted_proxies` setting.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Net>);

#[derive(Debug, Clone, Copy)]
struct Net {
    base: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR range like 10.0.0.0/8"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Net { base, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, unmap(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl TrustedProxies {
    /// Entries are IP addresses or CIDR ranges; the message names the first bad one.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| Net::parse(e.trim()))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = unmap(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // A proxy we trust wrote something that isn't an address: believe nothing
                // further left.
                return client;
            };
            client = unmap(ip);
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client(ip("10.0.0.5"), &xff("203.0.113.9")),
            ip("10.0.0.5")
        );

        let lb = proxies(&["10.0.0.0/8", "::1"]);
        assert_eq!(
            lb.client(ip("10.0.0.5"), &xff("203.0.113.9")),
            ip("203.0.113.9")
        );
        // The client prepended a lie; the proxy appended the truth.
        assert_eq!(
            lb.client(ip("10.0.0.5"), &xff("198.51.100.1, 203.0.113.9")),
            ip("203.0.113.9")
        );
        // Two proxies of ours in a row.
        assert_eq!(
            lb.client(ip("10.0.0.5"), &xff("203.0.113.9, 10.1.2.3")),
            ip("203.0.113.9")
        );
        // Not from the proxy: the header is the caller's own say-so.
        assert_eq!(
            lb.client(ip("192.0.2.1"), &xff("203.0.113.9")),
            ip("192.0.2.1")
        );
        // From the proxy without the header, or with garbage: the proxy itself.
        assert_eq!(lb.client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
        assert_eq!(lb.client(ip("10.0.0.5"), &xff("unknown")), ip("10.0.0.5"));
        assert_eq!(
            lb.client(ip("::1"), &xff("[2001:db8::7]:5555")),
            ip("2001:db8::7")
        );
        assert_eq!(
            lb.client(ip("::ffff:10.0.0.5"), &xff("203.0.113.9:1234")),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn entries_are_addresses_or_ranges() {
        assert!(TrustedProxies::parse(&["10.0.0.0/8".into(), "fd00::/8".into()]).is_ok());
        assert!(TrustedProxies::parse(&["0.0.0.0/0".into()]).is_ok());
        for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", "::/129"] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
        let everything = proxies(&["0.0.0.0/0"]);
        assert!(everything.trusts(ip("203.0.113.9")));
        assert!(!proxies(&["10.0.0.0/8"]).trusts(ip("11.0.0.1")));
    }
}
