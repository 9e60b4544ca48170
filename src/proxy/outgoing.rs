//! The head of a forwarded request, described rather than rewritten: the
//! client's headers as received, which of them go on, and what keygate
//! adds. The HTTP/1.1 client writes it out line by line, so forwarding
//! costs no header-map inserts or removals (they were a tenth of keygate's
//! own instructions per request).

use super::headers::{connection_named, is_hop_by_hop, IDENTITY_PREFIX};
use crate::credentials::API_KEY_HEADER;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A request head on its way to an upstream. It borrows the client's
/// head rather than taking it: every request's future holds it while the
/// upstream answers, and moves it at each await.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin-form `/path?query`, built from the normalised path.
    pub target: String,
    /// The upstream's own `Host`, written first.
    pub host: Option<HeaderValue>,
    client: &'a HeaderMap,
    /// Names the client's `Connection` header lists: hop-by-hop as well.
    connection_named: Vec<HeaderName>,
    strip_credentials: bool,
    forwarded: Vec<(HeaderName, HeaderValue)>,
    identity: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// The client's head; with `strip_credentials`, every header that can
    /// carry a key stays behind.
    pub fn new(method: &'a Method, target: String, client: &'a HeaderMap, strip_credentials: bool) -> Outgoing<'a> {
        let connection_named = client.get_all(header::CONNECTION).iter().flat_map(connection_named).collect();
        Outgoing { method, target, host: None, client, connection_named, strip_credentials, forwarded: Vec::new(), identity: &[] }
    }

    /// `X-Forwarded-For` (the client's first value, then the peer: only
    /// the right-most entries are ever believed), `-Proto` and `-Host`.
    pub fn set_forwarded(&mut self, peer: &HeaderValue, tls: bool, host: Option<HeaderValue>) {
        let prior = self.client.get(&X_FORWARDED_FOR).filter(|p| !p.as_bytes().trim_ascii().is_empty());
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
            self.forwarded.push((X_FORWARDED_FOR, v));
        }
        self.forwarded.push((X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" })));
        if let Some(h) = host {
            self.forwarded.push((X_FORWARDED_HOST, h));
        }
    }

    /// The key's `X-Keygate-*` header lines (see `KeyLookup::identity_lines`).
    pub fn set_identity(&mut self, lines: &'a [u8]) {
        self.identity = lines;
    }

    /// The identity header lines, written after [`Outgoing::headers`].
    pub fn identity_lines(&self) -> &[u8] {
        self.identity
    }

    /// Whether the client declared a body length (kept as sent).
    pub fn declares_length(&self) -> bool {
        self.client.contains_key(header::CONTENT_LENGTH)
    }

    /// The header lines to send after `Host` and before the identity
    /// lines, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let added = self.forwarded.iter().map(|(n, v)| (n, v));
        self.client.iter().filter(|(name, _)| self.passes(name)).chain(added)
    }

    /// Whether a client header goes on as sent.
    fn passes(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        // Replaced by keygate's own; `Expect: 100-continue` was answered
        // here when the body was first read.
        let replaced = matches!(text, "host" | "expect" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host");
        let credential = self.strip_credentials && (*name == header::AUTHORIZATION || *name == API_KEY_HEADER);
        !(replaced
            || credential
            || is_hop_by_hop(name)
            || text.starts_with(IDENTITY_PREFIX)
            || self.connection_named.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn lines(out: &Outgoing) -> Vec<(String, String)> {
        out.headers().map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string())).collect()
    }

    #[test]
    fn hop_by_hop_identity_and_credentials_stay_behind() {
        let h = client(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-keygate-key-id", "forged"),
            ("x-keygate-meta-plan", "forged"),
            ("x-keygatex", "kept"),
            ("authorization", "Bearer secret"),
            ("x-api-key", "secret"),
            ("host", "api.example.com"),
            ("expect", "100-continue"),
            ("accept", "*/*"),
        ]);
        let out = Outgoing::new(&Method::GET, "/x".into(), &h, true);
        let names: Vec<String> = lines(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x-keygatex", "accept"]);
        // A public route keeps the client's own credentials.
        let out = Outgoing::new(&Method::GET, "/x".into(), &h, false);
        let names: Vec<String> = lines(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x-keygatex", "authorization", "x-api-key", "accept"]);
    }

    #[test]
    fn forwarded_for_appends_and_identity_is_kept_apart() {
        let h =
            client(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.9"), ("x-forwarded-host", "forged")]);
        let mut out = Outgoing::new(&Method::GET, "/x".into(), &h, true);
        out.set_forwarded(
            &super::super::headers::peer_value("127.0.0.1".parse().unwrap()),
            true,
            Some(HeaderValue::from_static("api.example.com")),
        );
        out.set_identity(b"x-keygate-key-id: key_1\r\n");
        assert_eq!(out.identity_lines(), b"x-keygate-key-id: key_1\r\n");
        let want: Vec<(String, String)> = [
            ("x-forwarded-for", "198.51.100.1, 127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(lines(&out), want);
    }
}
