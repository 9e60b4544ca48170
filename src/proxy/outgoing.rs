//! The head of a forwarded request, described rather than rewritten: the
//! client's headers as received, which of them go on, and what keygate
//! adds. The HTTP/1.1 client writes it out line by line, so forwarding
//! costs no header-map inserts or removals
//! (docs/decisions/004-header-lines-not-maps.md).

use super::headers::{connection_named, fate_of, Fate};
use crate::config::Underscores;
use crate::http1::FieldLines;
use crate::http1::RequestHead;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_KEYGATE_SHADOW: HeaderName = HeaderName::from_static("x-keygate-shadow");

/// A request head on its way to an upstream. It borrows the client's
/// head rather than taking it: every request's future holds it while the
/// upstream answers, and moves it at each await.
///
/// The client's header lines never frame the forwarded message: the
/// HTTP/1.1 client writes the framing itself from the body it sends.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin-form `/path?query`, built from the normalised path.
    pub target: String,
    /// The upstream's own `Host`, written first.
    pub host: Option<HeaderValue>,
    client: &'a HeaderMap,
    /// Names the client's `Connection` header lists: hop-by-hop as well,
    /// unless keygate writes or checks them (see [`Fate`]).
    connection_named: Vec<HeaderName>,
    /// The client's `Host`, found on the same walk.
    client_host: Option<&'a HeaderValue>,
    strip_credentials: bool,
    underscores: Underscores,
    /// `X-Forwarded-For`, `-Proto` and `-Host`, set on every forwarded
    /// request: fields of their own, so that none costs an allocation.
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<&'static str>,
    forwarded_host: Option<HeaderValue>,
    /// The rarer fields keygate adds (trace context, shadow, subprotocols).
    added: Vec<(HeaderName, HeaderValue)>,
    request_id: Option<&'a crate::correlation::RequestId>,
    identity: Option<&'a FieldLines>,
    upgrade: Option<&'static str>,
}

impl<'a> Outgoing<'a> {
    /// The client's head; with `strip_credentials`, every header that can
    /// carry a key stays behind.
    pub fn new(
        method: &'a Method,
        target: String,
        client: &'a HeaderMap,
        strip_credentials: bool,
        underscores: Underscores,
    ) -> Outgoing<'a> {
        // One walk for both fields: a lookup by name hashes it each time.
        let mut connection = Vec::new();
        let mut client_host = None;
        for (name, value) in client {
            if *name == header::CONNECTION {
                connection.extend(connection_named(value));
            } else if *name == header::HOST && client_host.is_none() {
                client_host = Some(value);
            }
        }
        Outgoing {
            method,
            target,
            host: None,
            client,
            connection_named: connection,
            client_host,
            strip_credentials,
            underscores,
            forwarded_for: None,
            forwarded_proto: None,
            forwarded_host: None,
            added: Vec::new(),
            request_id: None,
            identity: None,
            upgrade: None,
        }
    }

    /// The client's own `Host` (the first, if it sent several).
    pub fn client_host(&self) -> Option<&'a HeaderValue> {
        self.client_host
    }

    /// `X-Forwarded-For`, `-Proto` and `-Host`. The chain is the one the
    /// client address was read from: with `believed` (the peer is a
    /// trusted proxy) every `X-Forwarded-For` line the client sent, in
    /// order, then the peer; otherwise the peer alone, since nothing the
    /// client said about addresses was believed.
    pub fn set_forwarded(&mut self, peer: &HeaderValue, tls: bool, host: Option<HeaderValue>, believed: bool) {
        let prior: Vec<&[u8]> = if believed {
            self.client.get_all(&X_FORWARDED_FOR).iter().map(|v| v.as_bytes().trim_ascii()).filter(|v| !v.is_empty()).collect()
        } else {
            Vec::new()
        };
        self.forwarded_for = if prior.is_empty() {
            Some(peer.clone())
        } else {
            let mut joined = Vec::with_capacity(prior.iter().map(|p| p.len() + 2).sum::<usize>() + peer.len());
            for p in prior {
                joined.extend_from_slice(p);
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(peer.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).ok()
        };
        self.forwarded_proto = Some(if tls { "https" } else { "http" });
        self.forwarded_host = host;
    }

    /// `X-Request-Id` and, when the client sent a valid one, its trace
    /// context.
    pub fn set_correlation(
        &mut self,
        request_id: &'a crate::correlation::RequestId,
        trace: Option<(HeaderValue, Option<HeaderValue>)>,
    ) {
        self.request_id = Some(request_id);
        if let Some((parent, state)) = trace {
            self.added.push((crate::correlation::TRACEPARENT, parent));
            if let Some(state) = state {
                self.added.push((crate::correlation::TRACESTATE, state));
            }
        }
    }

    /// `X-Keygate-Shadow: <code>`: what a rule in shadow mode would have
    /// refused this request with. (A client's own `X-Keygate-*` never passes.)
    pub fn set_shadow(&mut self, code: &'static str) {
        self.added.push((X_KEYGATE_SHADOW, HeaderValue::from_static(code)));
    }

    /// A WebSocket handshake: `Upgrade: websocket` goes on, and the
    /// subprotocols but one that carries a key (`keygate.token.<token>`).
    pub fn set_websocket(&mut self) {
        self.upgrade = Some("websocket");
        if !self.strip_credentials {
            return;
        }
        let kept: Vec<&[u8]> =
            crate::credentials::subprotocols(self.client).filter(|e| !crate::credentials::is_key_entry(e)).collect();
        let value = HeaderValue::from_bytes(&kept.join(&b", "[..]));
        if let (false, Ok(value)) = (kept.is_empty(), value) {
            self.added.push((header::SEC_WEBSOCKET_PROTOCOL, value));
        }
    }

    /// The key's `X-Keygate-*` fields (see `KeyLookup::identity`).
    pub fn set_identity(&mut self, fields: &'a FieldLines) {
        self.identity = Some(fields);
    }

    /// Whether a client header goes on as sent. `Connection` can only
    /// take away what would otherwise pass: never the framing, `Host`,
    /// the forwarding and identity headers keygate writes, nor a public
    /// route's credentials.
    fn passes(&self, name: &HeaderName) -> bool {
        match fate_of(name, self.underscores) {
            Fate::Pass => !self.connection_named.contains(name),
            Fate::Credential => !self.strip_credentials,
            Fate::Drop => false,
        }
    }
}

impl RequestHead for Outgoing<'_> {
    fn method(&self) -> &Method {
        self.method
    }

    fn target(&self) -> &str {
        &self.target
    }

    fn host(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }

    /// The client's fields that pass, then the forwarding ones. Loops, not
    /// a chained iterator: this runs for every forwarded request, and the
    /// iterator did not inline.
    fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in self.client {
            if self.passes(name) {
                field(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        if let Some(v) = &self.forwarded_for {
            field(X_FORWARDED_FOR.as_str().as_bytes(), v.as_bytes());
        }
        if let Some(proto) = self.forwarded_proto {
            field(X_FORWARDED_PROTO.as_str().as_bytes(), proto.as_bytes());
        }
        if let Some(v) = &self.forwarded_host {
            field(X_FORWARDED_HOST.as_str().as_bytes(), v.as_bytes());
        }
        for (name, value) in &self.added {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(id) = self.request_id {
            field(crate::correlation::REQUEST_ID.as_str().as_bytes(), id.as_bytes());
        }
    }

    fn rendered(&self) -> &FieldLines {
        static NONE: FieldLines = FieldLines::EMPTY;
        self.identity.unwrap_or(&NONE)
    }

    fn upgrade(&self) -> Option<&'static str> {
        self.upgrade
    }
}

#[cfg(test)]
mod tests {
    use super::super::headers::fate;
    use super::*;

    fn client(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn lines(out: &Outgoing) -> Vec<(String, String)> {
        let mut all = Vec::new();
        out.each_field(&mut |n, v| all.push((String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())));
        all
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
        let out = Outgoing::new(&Method::GET, "/x".into(), &h, true, Underscores::Drop);
        let names: Vec<String> = lines(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x-keygatex", "accept"]);
        // A public route keeps the client's own credentials.
        let out = Outgoing::new(&Method::GET, "/x".into(), &h, false, Underscores::Drop);
        let names: Vec<String> = lines(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["x-keygatex", "authorization", "x-api-key", "accept"]);
    }

    #[test]
    fn forwarded_for_is_the_chain_that_was_evaluated() {
        let h =
            client(&[("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", " 203.0.113.9 "), ("x-forwarded-host", "forged")]);
        let peer = super::super::headers::peer_value("127.0.0.1".parse().unwrap());
        let mut out = Outgoing::new(&Method::GET, "/x".into(), &h, true, Underscores::Drop);
        out.set_forwarded(&peer, true, Some(HeaderValue::from_static("api.example.com")), true);
        let identity = FieldLines::render([(&b"x-keygate-key-id"[..], &b"key_1"[..])]);
        out.set_identity(&identity);
        assert_eq!(out.rendered().text(), b"x-keygate-key-id: key_1\r\n");
        let want: Vec<(String, String)> = [
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9, 127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(lines(&out), want);
        // From a peer that is not a trusted proxy, the client's chain was
        // not believed and is not passed on.
        let mut out = Outgoing::new(&Method::GET, "/x".into(), &h, true, Underscores::Drop);
        out.set_forwarded(&peer, false, None, false);
        assert_eq!(lines(&out)[0], ("x-forwarded-for".to_string(), "127.0.0.1".to_string()));
    }

    #[test]
    fn connection_cannot_take_away_what_keygate_writes_or_checks() {
        let h = client(&[
            ("connection", "content-length, transfer-encoding, host, authorization, x-api-key, x-forwarded-for, x-hop"),
            ("content-length", "5"),
            ("authorization", "Bearer own"),
            ("x-api-key", "own"),
            ("x-hop", "1"),
            ("accept", "*/*"),
        ]);
        let out = Outgoing::new(&Method::POST, "/x".into(), &h, false, Underscores::Drop);
        let names: Vec<String> = lines(&out).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["authorization", "x-api-key", "accept"], "framing is keygate's to write; x-hop was named");
    }

    #[test]
    fn underscore_names_under_each_policy() {
        let h = client(&[
            ("x_keygate_owner", "forged"),
            ("x_forwarded_for", "192.0.2.1"),
            ("x_api_key", "secret"),
            ("content_length", "5"),
            ("transfer_encoding", "chunked"),
            ("x_http_method_override", "DELETE"),
            ("x_custom", "1"),
        ]);
        let names = |strip, policy| -> Vec<String> {
            lines(&Outgoing::new(&Method::GET, "/x".into(), &h, strip, policy)).into_iter().map(|(n, _)| n).collect()
        };
        assert!(names(true, Underscores::Drop).is_empty());
        assert!(names(false, Underscores::Reject).is_empty(), "refused before forwarding; dropped should one get here");
        // Allowed, each name meets the fate of the name it imitates.
        assert_eq!(names(true, Underscores::Allow), ["x_custom"]);
        assert_eq!(names(false, Underscores::Allow), ["x_api_key", "x_custom"], "a public route keeps its credentials");
    }

    #[test]
    fn request_overrides_and_address_claims_stay_behind() {
        for name in [
            "x-http-method-override",
            "x-method-override",
            "x-http-method",
            "x-original-url",
            "x-rewrite-url",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "x-client-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
        ] {
            assert_eq!(fate(name), Fate::Drop, "{name}");
        }
        assert_eq!(fate("x-forwardedx"), Fate::Pass);
        assert_eq!(fate("accept"), Fate::Pass);
    }
}
