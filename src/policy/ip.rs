//! Client address and IP allowlists. `X-Forwarded-For` is believed only
//! when the connection comes from one of `server.trusted_proxies`.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Parses a CIDR, or a bare address as a single-host network.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!("`{s}` is not an IP address or CIDR (like 203.0.113.0/24 or 2001:db8::/32)")),
    }
}

/// `::ffff:a.b.c.d` compares as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Whether the peer is a trusted proxy, whose `X-Forwarded-For` is read.
pub fn believes_forwarded_for(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && is_trusted(canonical(peer), trusted)
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not itself trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !believes_forwarded_for(peer, trusted) {
        return canonical(peer);
    }
    let peer = canonical(peer);
    let mut client = peer;
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    let hops: Vec<&str> = hops.collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>().map(canonical) else {
            // An unparseable hop cannot be vouched for: stop at the last good one.
            break;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// An empty list allows every address.
pub fn allowed(ip: IpAddr, allowlist: &[IpNet]) -> bool {
    let ip = canonical(ip);
    allowlist.is_empty() || allowlist.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("203.0.113.7").unwrap().to_string(), "203.0.113.7/32");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.9, 10.0.0.2"));
        let trusted = vec![parse_cidr("10.0.0.0/8").unwrap()];
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.9"));
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &trusted), ip("192.0.2.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn spoofed_left_entries_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 198.51.100.9"));
        let trusted = vec![parse_cidr("10.0.0.0/8").unwrap()];
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.9"));
    }

    #[test]
    fn allowlists() {
        let list = vec![parse_cidr("203.0.113.0/24").unwrap()];
        assert!(allowed(ip("203.0.113.5"), &list));
        assert!(allowed(ip("::ffff:203.0.113.5"), &list));
        assert!(!allowed(ip("198.51.100.1"), &list));
        assert!(allowed(ip("198.51.100.1"), &[]));
    }
}
