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

/// Addresses refused before anything else is looked at: networks merged
/// into sorted, disjoint ranges, so a list of thousands is two binary
/// searches' work per request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl DenyList {
    pub fn new(nets: &[IpNet]) -> DenyList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                    // `::ffff:a.b.c.d/n` is an IPv4 network, as addresses compare.
                    Some(start) if n.prefix_len() >= 96 => {
                        let end = n.broadcast().to_ipv4_mapped().unwrap_or(start);
                        v4.push((u32::from(start), u32::from(end)));
                    }
                    _ => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                },
            }
        }
        DenyList { v4: merged(v4), v6: merged(v6) }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// How many disjoint ranges the list holds.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn denies(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

/// Sorted, overlapping or touching ranges joined.
fn merged<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.succ() => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], a: T) -> bool {
    let after = ranges.partition_point(|(start, _)| *start <= a);
    after > 0 && a <= ranges[after - 1].1
}

mod num_like {
    /// The next value, saturating: what "touching" means for a range end.
    pub trait Succ {
        fn succ(self) -> Self;
    }
    impl Succ for u32 {
        fn succ(self) -> u32 {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> u128 {
            self.saturating_add(1)
        }
    }
}

/// Reads a deny file: one address or CIDR a line, `#` to the end of a
/// line a comment, blank lines skipped. An error names the line.
pub fn parse_deny_file(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        out.push(parse_cidr(entry).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_deny_list_is_merged_ranges_searched_in_both_families() {
        let nets: Vec<IpNet> =
            ["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.0/120"]
                .iter()
                .map(|s| parse_cidr(s).unwrap())
                .collect();
        let list = DenyList::new(&nets);
        // 10/8 swallows 10.1/16 and touches 11/8: one range.
        assert_eq!(list.ranges(), 4);
        for denied in ["10.0.0.0", "10.255.255.255", "11.3.4.5", "192.0.2.7", "2001:db8::1", "198.51.100.9", "::ffff:10.2.3.4"] {
            assert!(list.denies(ip(denied)), "{denied}");
        }
        for allowed in ["9.255.255.255", "12.0.0.0", "192.0.2.6", "192.0.2.8", "2001:db9::", "198.51.101.0", "::1"] {
            assert!(!list.denies(ip(allowed)), "{allowed}");
        }
        assert!(DenyList::new(&[]).is_empty());
        assert!(DenyList::new(&[parse_cidr("0.0.0.0/0").unwrap()]).denies(ip("255.255.255.255")));
    }

    #[test]
    fn a_deny_file_has_comments_and_names_a_bad_line() {
        let nets = parse_deny_file("# bad hosts\n203.0.113.0/24\n\n198.51.100.7 # one host\n").unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(parse_deny_file("10.0.0.0/8\nnot-an-address\n").unwrap_err().split(':').next(), Some("line 2"));
    }

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
