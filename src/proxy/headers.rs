//! Header rewriting for forwarded requests and returned responses.

use crate::keys::model::ApiKey;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// Prefix of the identity headers only keygate may set.
pub const IDENTITY_PREFIX: &str = "x-keygate-";

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and the classic list). Names
/// are built once: parsing a name on every request shows in the profile.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Identity headers keygate adds to forwarded requests.
pub const X_KEYGATE_KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
pub const X_KEYGATE_OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
pub const X_KEYGATE_ROLE: HeaderName = HeaderName::from_static("x-keygate-role");
pub const X_KEYGATE_ENV: HeaderName = HeaderName::from_static("x-keygate-env");

/// Removes hop-by-hop headers, including every header `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass finds what is there (usually nothing, or `Connection`
    // alone); only those names are looked up again to be removed.
    let mut present: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) {
            present.push(name.clone());
        }
    }
    if present.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                present.push(name);
            }
        }
    }
    for name in present {
        headers.remove(name);
    }
}

/// Removes every client-sent `X-Keygate-*` header.
pub fn remove_identity_headers(headers: &mut HeaderMap) {
    if !headers.keys().any(|n| n.as_str().starts_with(IDENTITY_PREFIX)) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| n.as_str().starts_with(IDENTITY_PREFIX)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The client address as an `X-Forwarded-For` entry, built once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_string())).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (appended), `-Proto` and `-Host`.
pub fn set_forwarded(headers: &mut HeaderMap, peer: &HeaderValue, tls: bool, host: Option<&HeaderValue>) {
    // Several XFF lines from the client collapse into the first one plus us:
    // only the right-most entries are ever believed.
    let prior = headers.remove(&X_FORWARDED_FOR).filter(|p| !p.as_bytes().trim_ascii().is_empty());
    let xff = match prior {
        None => Some(peer.clone()),
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + peer.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
        }
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
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
    fn hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn identity_headers_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-keygate-key-id", HeaderValue::from_static("forged"));
        h.insert("X-Keygate-Meta-Plan", HeaderValue::from_static("forged"));
        h.insert("x-keygatex", HeaderValue::from_static("kept"));
        remove_identity_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
        set_forwarded(
            &mut h,
            &peer_value("127.0.0.1".parse().unwrap()),
            true,
            Some(&HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
    }

    #[test]
    fn metadata_names() {
        assert_eq!(metadata_header_name("default_optin_mailing").unwrap().as_str(), "x-keygate-meta-default-optin-mailing");
    }
}
