//! Header rewriting for forwarded requests and returned responses.

use crate::config::Underscores;
use crate::http1::FieldLines;
use crate::keys::model::{ApiKey, KeyLookup};
use http::header::HeaderName;
use http::HeaderValue;
use std::net::IpAddr;

/// Prefix of the identity headers only keygate may set.
pub const IDENTITY_PREFIX: &str = "x-keygate-";

/// What becomes of a client's header line on its way to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Forwarded as sent (unless the client's `Connection` names it).
    Pass,
    /// Can carry a key: kept on public routes, dropped on keyed ones.
    Credential,
    /// Never forwarded: hop-by-hop, written by keygate itself, or a claim
    /// only keygate may make to the upstream.
    Drop,
}

/// The fate of a header name as `http` stores it (lowercase).
///
/// Dropped besides the hop-by-hop fields: the framing and `Host`, which
/// keygate writes itself; every `X-Forwarded-*` and the other client-address
/// claims (`Forwarded`, `X-Real-IP`, ...), which a backend would believe;
/// keygate's identity headers; and the overrides some frameworks honour to
/// run another method or path than the one keygate checked.
pub fn fate(name: &str) -> Fate {
    match name {
        // A handshake's subprotocols may carry the key: the rest are
        // passed on by `Outgoing::set_websocket`.
        "authorization" | "x-api-key" | "sec-websocket-protocol" => Fate::Credential,
        "host" | "expect" | "content-length" | "transfer-encoding" => Fate::Drop,
        "forwarded" | "x-real-ip" | "true-client-ip" | "x-client-ip" | "client-ip" | "x-cluster-client-ip" => Fate::Drop,
        "x-http-method-override" | "x-method-override" | "x-http-method" | "x-original-method" => Fate::Drop,
        "x-original-url" | "x-rewrite-url" => Fate::Drop,
        // Written by keygate: the id and trace context it settled on.
        "x-request-id" | "traceparent" | "tracestate" => Fate::Drop,
        _ if name.starts_with("x-forwarded-")
            || name.starts_with(IDENTITY_PREFIX)
            || crate::http1::HOP_BY_HOP.contains(&name) =>
        {
            Fate::Drop
        }
        _ => Fate::Pass,
    }
}

/// Whether a request asks to become a WebSocket: an `Upgrade` field naming
/// `websocket` among its protocols, with or without `Connection: upgrade`
/// (an `Upgrade` the `Connection` field does not name is ambiguous, and
/// refused alike). Other upgrades (`h2c`) are hop-by-hop fields a server
/// may ignore: they are dropped and the request served as it is.
pub fn asks_websocket(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::UPGRADE).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|p| {
            let protocol = p.trim_ascii();
            let name = protocol.split(|b| *b == b'/').next().unwrap_or(protocol);
            name.eq_ignore_ascii_case(b"websocket")
        })
    })
}

/// With `underscore_headers = "reject"`: the refusal for a head with a
/// name containing `_`.
pub fn refuse_underscores(headers: &http::HeaderMap) -> Result<(), String> {
    match headers.keys().find(|n| n.as_str().as_bytes().contains(&b'_')) {
        Some(name) => Err(format!("the header name `{name}` contains `_`, which this gateway refuses")),
        None => Ok(()),
    }
}

/// The fate of a client's header line under `underscores`.
///
/// A name with a run of `-` (`Transfer---Encoding`, `Content--Length`)
/// that is a framing, identity or credential field once the run is one
/// `-` is dropped: some backends and proxies collapse the run and would
/// read it as the field it imitates.
pub fn fate_of(name: &HeaderName, underscores: Underscores) -> Fate {
    let text = name.as_str();
    let bytes = text.as_bytes();
    let (underscore, run) = separators(bytes);
    if !underscore && !run {
        return fate(text);
    }
    if underscore && underscores != Underscores::Allow {
        return Fate::Drop;
    }
    // What a lenient reader takes the name for: `_` as `-` (when allowed
    // through), each run of separators as one `-`.
    let mut read_as = String::with_capacity(text.len());
    for c in text.chars().map(|c| if c == '_' { '-' } else { c }) {
        if !(c == '-' && read_as.ends_with('-')) {
            read_as.push(c);
        }
    }
    match fate(&read_as) {
        Fate::Pass => Fate::Pass,
        // An allowed `_` look-alike meets the fate of the field it imitates.
        imitated if !run => imitated,
        _ => Fate::Drop,
    }
}

/// Whether a header name holds a `_`, and whether it holds `--`, in one
/// pass of words: it is asked of every header name of every request (the
/// cost is in BENCHMARKS.md, issue 25). Words overlap by at least a byte,
/// so no pair falls between two.
fn separators(bytes: &[u8]) -> (bool, bool) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const DASHES: u64 = 0x2d2d_2d2d_2d2d_2d2d;
    const UNDERSCORES: u64 = 0x5f5f_5f5f_5f5f_5f5f;
    // The top bit of each byte of `word` equal to the byte of `pattern`
    // (exactly: no carry crosses a byte).
    let equal = |word: u64, pattern: u64| {
        let x = word ^ pattern;
        !(((x & LOW7) + LOW7) | x | LOW7)
    };
    let look = |word: u64| {
        let dashes = equal(word, DASHES);
        (equal(word, UNDERSCORES) != 0, dashes & (dashes << 8) != 0)
    };
    let either = |(a, b): (bool, bool), (c, d): (bool, bool)| (a || c, b || d);
    let n = bytes.len();
    if n < 4 {
        return (bytes.contains(&b'_'), bytes.windows(2).any(|w| w == b"--"));
    }
    if n < 8 {
        // The first four bytes and the last four overlap (the zero bytes
        // above them match neither).
        let word = |at: usize| u64::from(u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]));
        return either(look(word(0)), look(word(n - 4)));
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let mut found = look(word(n - 8));
    let mut at = 0;
    while at + 8 < n {
        found = either(found, look(word(at)));
        at += 7;
    }
    found
}

/// Identity headers keygate adds to forwarded requests.
pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const X_KEYGATE_OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
pub const X_KEYGATE_ROLE: HeaderName = HeaderName::from_static("x-keygate-role");
pub const X_KEYGATE_ENV: HeaderName = HeaderName::from_static("x-keygate-env");

/// The header names a `Connection` value lists (lowercase): hop-by-hop
/// for this message, whatever they are called.
pub fn connection_named(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    value.to_str().unwrap_or("").split(',').filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
}

/// The client address as an `X-Forwarded-For` entry, built once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_string())).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The `X-Keygate-*` headers that tell the upstream who is calling: key
/// id, owner, role, environment and one header per metadata entry.
pub fn identity(key: &ApiKey) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(4 + key.metadata.len());
    if let Ok(v) = HeaderValue::from_str(&key.key_id) {
        out.push((X_KEYGATE_KEY_ID, v));
    }
    if let Some(v) = text_value(&key.owner) {
        out.push((X_KEYGATE_OWNER, v));
    }
    if let Some(v) = key.role.as_deref().and_then(text_value) {
        out.push((X_KEYGATE_ROLE, v));
    }
    out.push((X_KEYGATE_ENV, HeaderValue::from_static(key.env.as_str())));
    for (name, value) in &key.metadata {
        if let (Some(n), Some(v)) = (metadata_header_name(name), text_value(value)) {
            out.push((n, v));
        }
    }
    out
}

/// The identity fields of a resolved key as forwarded head lines,
/// rendered once per cached lookup.
pub fn identity_lines(lookup: &KeyLookup) -> &FieldLines {
    lookup.identity(|key| {
        let fields = identity(key);
        FieldLines::render(fields.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())))
    })
}

/// `default_optin_mailing` -> `x-keygate-meta-default-optin-mailing`.
pub fn metadata_header_name(key: &str) -> Option<HeaderName> {
    let name = format!("{IDENTITY_PREFIX}meta-{}", key.to_ascii_lowercase().replace('_', "-"));
    HeaderName::from_bytes(name.as_bytes()).ok()
}

/// A header value from free text (UTF-8 goes through as obs-text bytes).
pub fn text_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_bytes(s.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_found_wherever_they_fall() {
        let alphabet = [b'a', b'-', b'_', b'z', b'0', 0x2c, 0xad, 0x2e];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let name: Vec<u8> = (0..len).map(|i| alphabet[((seed >> (i % 60)) as usize + i) % alphabet.len()]).collect();
            let naive = (name.contains(&b'_'), name.windows(2).any(|w| w == b"--"));
            assert_eq!(separators(&name), naive, "{name:?}");
        }
        for (name, run) in
            [("transfer---encoding", true), ("x-abcdef--g", true), ("abcdefg--", true), ("a-b-c-d-e-f-g-h-i", false)]
        {
            assert_eq!(separators(name.as_bytes()).1, run, "{name}");
        }
    }

    #[test]
    fn look_alikes_of_framing_and_credential_fields_are_dropped() {
        let of = |name: &str, u| fate_of(&HeaderName::from_bytes(name.as_bytes()).unwrap(), u);
        for name in ["Transfer---Encoding", "Content--Length", "X-Api--Key", "X--Forwarded--For", "Transfer-_Encoding"] {
            for u in [Underscores::Drop, Underscores::Allow] {
                assert_eq!(of(name, u), Fate::Drop, "{name} {u:?}");
            }
        }
        assert_eq!(of("X--Custom", Underscores::Drop), Fate::Pass, "a run alone is not refused");
        assert_eq!(of("X_Custom", Underscores::Allow), Fate::Pass);
        assert_eq!(of("X_Api_Key", Underscores::Allow), Fate::Credential, "an allowed `_` meets its field's fate");
        assert_eq!(of("X_Custom", Underscores::Drop), Fate::Drop);
        assert_eq!(of("Content-Length", Underscores::Drop), Fate::Drop);
    }

    #[test]
    fn metadata_names() {
        assert_eq!(metadata_header_name("default_optin_mailing").unwrap().as_str(), "x-keygate-meta-default-optin-mailing");
    }
}

/// The most an upstream may report a request cost (`cost_header`).
pub const MAX_REPORTED_COST: u32 = 1_000_000;

/// What an upstream reported a request cost: one field, a whole number
/// from 0 to [`MAX_REPORTED_COST`]; anything else is refused (ambiguous or
/// malformed), and the cost charged up front stands.
pub fn reported_cost(values: &[Vec<u8>]) -> Result<u32, &'static str> {
    let [value] = values else { return Err("the field is repeated") };
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 7 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("not a whole number");
    }
    let n = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u32>().ok()).ok_or("not a whole number")?;
    if n > MAX_REPORTED_COST {
        return Err("more than 1000000");
    }
    Ok(n)
}

#[cfg(test)]
mod reported_cost_tests {
    use super::*;

    #[test]
    fn a_websocket_upgrade_is_told_apart_from_other_upgrades() {
        let with = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::UPGRADE, v.parse().unwrap());
            }
            asks_websocket(&h)
        };
        assert!(with(&["websocket"]));
        assert!(with(&["WebSocket"]));
        assert!(with(&["h2c, websocket"]));
        assert!(with(&["h2c", "websocket/13"]));
        assert!(!with(&["h2c"]));
        assert!(!with(&["websockets"]));
        assert!(!with(&[]));
    }

    #[test]
    fn a_reported_cost_is_one_whole_number_up_to_a_million() {
        let one = |v: &str| reported_cost(&[v.as_bytes().to_vec()]);
        assert_eq!(one("500"), Ok(500));
        assert_eq!(one(" 0 "), Ok(0));
        assert_eq!(one("1000000"), Ok(1_000_000));
        for bad in ["1000001", "-1", "+5", "1.5", "", "5e2", "0x10", "99999999999999999999", "5, 6"] {
            assert!(one(bad).is_err(), "{bad:?}");
        }
        assert!(reported_cost(&[b"1".to_vec(), b"1".to_vec()]).is_err(), "two fields are ambiguous");
        assert!(reported_cost(&[]).is_err());
    }
}
