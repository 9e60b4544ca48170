//! Which `Host` the admin listener answers. A web page can reach a
//! listener on loopback or a private address by DNS rebinding: its own
//! name, resolved again to that address, makes the admin API same-origin
//! to it. Such a request names the attacker's host, so answering only
//! loopback names and addresses and the names an operator lists reads
//! nothing to it.

use ipnet::IpNet;
use std::net::IpAddr;

/// `admin.allowed_hosts`, beside loopback which is always answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Host names, lower case, without a trailing dot.
    names: Vec<String>,
    /// Addresses and networks an IP-literal `Host` may name.
    nets: Vec<IpNet>,
}

impl AllowedHosts {
    /// Reads one entry: an address, a CIDR or a host name (no port, no
    /// wildcard).
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        if let Ok(net) = super::ip::parse_cidr(entry) {
            self.nets.push(net);
            return Ok(());
        }
        let name = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("`{entry}` is not a host name, an IP address or a CIDR (no port, no wildcard)"));
        }
        self.names.push(name);
        Ok(())
    }

    /// Whether a request naming `host` (the `Host` field or `:authority`,
    /// with its port if any) is answered. A request naming none cannot be a
    /// rebinding page's, and is.
    pub fn admits(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        let name = without_port(host.trim());
        if let Ok(ip) = name.parse::<IpAddr>() {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
                v4 => v4,
            };
            return ip.is_loopback() || self.nets.iter().any(|n| n.contains(&ip));
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || self.names.contains(&name)
    }
}

/// `example.com:9180` -> `example.com`, `[::1]:9180` -> `::1`.
fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_hosts_only() {
        let mut hosts = AllowedHosts::default();
        for entry in ["keygate-admin.ops.svc", "10.0.0.0/8", "192.0.2.7"] {
            hosts.add(entry).unwrap();
        }
        for ok in [
            "127.0.0.1:9180",
            "127.8.9.1",
            "[::1]:9180",
            "::1",
            "localhost:9180",
            "LocalHost.",
            "keygate-admin.ops.svc:9180",
            "KEYGATE-ADMIN.ops.svc.",
            "10.1.2.3:9180",
            "192.0.2.7",
            "[::ffff:10.9.9.9]:80",
        ] {
            assert!(hosts.admits(Some(ok)), "{ok}");
        }
        for refused in ["evil.example:9180", "192.0.2.8", "localhost.evil.example", "[2001:db8::1]:9180", "", "ops.svc"] {
            assert!(!hosts.admits(Some(refused)), "{refused}");
        }
        assert!(hosts.admits(None), "no Host names no rebinding page");
        assert!(!AllowedHosts::default().admits(Some("10.1.2.3")), "only loopback by default");
    }

    #[test]
    fn entries_are_names_addresses_or_networks() {
        let mut hosts = AllowedHosts::default();
        for bad in ["*.example.com", "admin:9180", "http://admin", "", "a..b", "-a.example"] {
            assert!(hosts.add(bad).is_err(), "{bad}");
        }
    }
}
