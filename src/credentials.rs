//! Finding the API key in a request, and removing it before the request is
//! forwarded. Looked for, in order: `Authorization: Bearer`, `X-API-Key`,
//! `Authorization: Basic` (the password is the key), `?api_token=`; and,
//! in a WebSocket handshake (a browser cannot set its headers), a
//! `keygate.token.<token>` entry of `Sec-WebSocket-Protocol`.

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use std::borrow::Cow;

/// Name of the query parameter that may carry the key.
pub const QUERY_PARAM: &str = "api_token";
/// Name of the header that may carry the key.
pub const API_KEY_HEADER: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Where the token was found (for logs and metrics; never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bearer,
    ApiKeyHeader,
    Basic,
    Query,
    Subprotocol,
}

/// The `Sec-WebSocket-Protocol` entry that carries a key: `keygate.token.<token>`.
pub const SUBPROTOCOL_PREFIX: &str = "keygate.token.";

/// The entries of `Sec-WebSocket-Protocol` fields, as listed.
pub fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// Whether a subprotocol entry carries a key.
pub fn is_key_entry(entry: &[u8]) -> bool {
    entry.len() >= SUBPROTOCOL_PREFIX.len()
        && entry[..SUBPROTOCOL_PREFIX.len()].eq_ignore_ascii_case(SUBPROTOCOL_PREFIX.as_bytes())
}

/// A presented token, borrowed from the request where it stands as sent
/// (no copy per request), decoded where it does not (Basic, query).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential<'a> {
    pub token: Cow<'a, str>,
    pub source: Source,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("source", &self.source).finish_non_exhaustive()
    }
}

/// Why no usable credential could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("the request carries two different API keys")]
    Ambiguous,
}

fn decode_basic(value: &str) -> Result<String, CredentialError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| CredentialError::Malformed("the Basic credentials are not valid base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::Malformed("the Basic credentials are not UTF-8"))?;
    match text.split_once(':') {
        Some((_, password)) if !password.is_empty() => Ok(password.to_string()),
        _ => Err(CredentialError::Malformed("Basic credentials must be user:key with the API key as password")),
    }
}

/// Splits `Scheme rest` case-insensitively on the scheme.
fn scheme<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    // `split_once(' ')` compared to `name`, as bytes: `name` holds no
    // space, so its length is where the first space must be.
    let bytes = value.as_bytes();
    let named = bytes.get(name.len()) == Some(&b' ') && bytes[..name.len()].eq_ignore_ascii_case(name.as_bytes());
    named.then(|| value.get(name.len() + 1..)).flatten().map(str::trim)
}

/// Every `api_token` value in a query string.
fn query_tokens(query: &str) -> Vec<String> {
    form_pairs(query).filter(|(k, _)| k == QUERY_PARAM).map(|(_, v)| v).collect()
}

/// The percent-decoded `name=value` pairs of a query string.
pub fn form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_component(k), decode_component(v))
    })
}

fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(h), Some(l)) => (*h as char).to_digit(16).zip((*l as char).to_digit(16)),
            _ => None,
        };
        match (bytes[i], escaped) {
            (_, Some((h, l))) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as forwarded (`None` if nothing is left). Dropped:
/// `_method`, which frameworks (Laravel, Symfony, Rails' middleware) honour
/// as the method to run instead of the one keygate checked; and, with
/// `strip_credentials`, every parameter whose name a backend could read as
/// `api_token` ([`names_api_token`]). Parameters are cut at `;` as well as
/// `&`, since some servers split there too. A query with nothing to drop
/// is passed on as it came.
pub fn forwarded_query(query: &str, strip_credentials: bool) -> Option<Cow<'_, str>> {
    let dropped = |param: &str| names_a_dropped_parameter(param, strip_credentials);
    let params = || query.split(['&', ';']).filter(|p| !p.is_empty());
    if !params().any(dropped) {
        return (!query.is_empty()).then_some(Cow::Borrowed(query));
    }
    // Rebuilt with each kept parameter after the separator that preceded it.
    let mut kept = String::with_capacity(query.len());
    let mut rest = query;
    while !rest.is_empty() {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (param, after) = rest.split_at(end);
        if !param.is_empty() && !dropped(param) {
            if !kept.is_empty() {
                kept.push(separator_before(query, rest));
            }
            kept.push_str(param);
        }
        rest = after.get(1..).unwrap_or("");
    }
    (!kept.is_empty()).then_some(Cow::Owned(kept))
}

/// Whether one `name=value` parameter stays behind (see [`forwarded_query`]).
pub fn names_a_dropped_parameter(param: &str, strip_credentials: bool) -> bool {
    let name = decode_component(param.split_once('=').map_or(param, |(k, _)| k));
    let name = name.split('[').next().unwrap_or("").trim();
    name.eq_ignore_ascii_case("_method") || (strip_credentials && names_api_token(name))
}

/// The separator just before `rest`, a suffix of `query`.
fn separator_before(query: &str, rest: &str) -> char {
    let at = query.len() - rest.len();
    query[..at].chars().next_back().unwrap_or('&')
}

/// Whether a decoded parameter name reads as `api_token` to some backend:
/// case aside, and with `.`, ` `, `-`, `+` or `_` (which PHP turns into
/// `_`) anywhere or nowhere (`API_TOKEN`, `api.token`, `api token`, `apitoken`).
fn names_api_token(name: &str) -> bool {
    let mut folded = name.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase());
    b"apitoken".iter().all(|want| folded.next() == Some(*want)) && folded.next().is_none()
}

/// Reads the credential. `Ok(None)` means none was presented.
///
/// Every place is read (a malformed one is an error even when another
/// holds a key); the places must agree. The first found, in the order
/// Bearer, `X-API-Key`, Basic, query, is the one returned.
pub fn extract<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Result<Option<Credential<'a>>, CredentialError> {
    extract_from(headers, query, false)
}

/// [`extract`]; in a WebSocket `handshake`, a `keygate.token.<token>`
/// entry of `Sec-WebSocket-Protocol` is one more place, read last.
pub fn extract_from<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    handshake: bool,
) -> Result<Option<Credential<'a>>, CredentialError> {
    let mut found = Found::default();
    let mut basic = Vec::new();
    // One pass over the fields, not a lookup per name: the map is small,
    // and hashing `X-API-Key` for each request cost more than the walk.
    // `Authorization` is read first, as if looked up first: its values
    // come first, and its errors win over `X-API-Key`'s.
    let mut api_keys = Found::default();
    let mut api_key_error = None;
    for (name, value) in headers {
        if *name == AUTHORIZATION {
            let value = value.to_str().map_err(|_| CredentialError::Malformed("the Authorization header is not ASCII"))?;
            if let Some(token) = scheme(value, "Bearer") {
                if token.is_empty() {
                    return Err(CredentialError::Malformed("the Bearer token is empty"));
                }
                found.add(Cow::Borrowed(token), Source::Bearer);
            } else if let Some(encoded) = scheme(value, "Basic") {
                basic.push(decode_basic(encoded)?);
            } else {
                return Err(CredentialError::Malformed("the Authorization header must use the Bearer or Basic scheme"));
            }
        } else if *name == API_KEY_HEADER && api_key_error.is_none() {
            match value.to_str().map(str::trim) {
                Err(_) => api_key_error = Some(CredentialError::Malformed("the X-API-Key header is not ASCII")),
                Ok("") => api_key_error = Some(CredentialError::Malformed("the X-API-Key header is empty")),
                Ok(token) => api_keys.add(Cow::Borrowed(token), Source::ApiKeyHeader),
            }
        }
    }
    if let Some(e) = api_key_error {
        return Err(e);
    }
    found.merge(api_keys);
    for token in basic {
        found.add(Cow::Owned(token), Source::Basic);
    }
    if let Some(q) = query {
        for token in query_tokens(q) {
            found.add(Cow::Owned(token), Source::Query);
        }
    }
    if handshake {
        for entry in subprotocols(headers).filter(|e| is_key_entry(e)) {
            let token = std::str::from_utf8(&entry[SUBPROTOCOL_PREFIX.len()..])
                .map_err(|_| CredentialError::Malformed("the keygate.token subprotocol is not ASCII"))?;
            if token.is_empty() {
                return Err(CredentialError::Malformed("the keygate.token subprotocol is empty"));
            }
            found.add(Cow::Borrowed(token), Source::Subprotocol);
        }
    }
    if found.ambiguous {
        return Err(CredentialError::Ambiguous);
    }
    Ok(found.first)
}

/// The first credential found, and whether another one differed from it.
/// (Only the first token is copied: a request carries one key, once.)
#[derive(Default)]
struct Found<'a> {
    first: Option<Credential<'a>>,
    ambiguous: bool,
}

impl<'a> Found<'a> {
    /// Adds what `later` found, as if it had been found after.
    fn merge(&mut self, later: Found<'a>) {
        self.ambiguous |= later.ambiguous;
        if let Some(c) = later.first {
            self.add(c.token, c.source);
        }
    }

    fn add(&mut self, token: Cow<'a, str>, source: Source) {
        match &self.first {
            Some(first) => self.ambiguous |= first.token != token,
            None => self.first = Some(Credential { token, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    }

    #[test]
    fn the_scheme_is_read_as_a_split_at_the_first_space() {
        fn split(v: &str) -> Option<&str> {
            v.split_once(' ').and_then(|(s, rest)| s.eq_ignore_ascii_case("Bearer").then(|| rest.trim()))
        }
        for v in ["Bearer x", "bearer  x ", "Bearer", "Bearer ", "Bearerx y", " Bearer x", "Basic x", "BEARER\tx", "Bear x", ""] {
            assert_eq!(scheme(v, "Bearer"), split(v), "{v:?}");
        }
    }

    #[test]
    fn a_handshake_may_carry_the_key_as_a_subprotocol_and_nothing_else_may() {
        let h = headers(&[("sec-websocket-protocol", "chat, keygate.token.tok5"), ("sec-websocket-protocol", "v2")]);
        assert!(extract(&h, None).unwrap().is_none(), "only a handshake reads it");
        let c = extract_from(&h, None, true).unwrap().unwrap();
        assert_eq!((&*c.token, c.source), ("tok5", Source::Subprotocol));
        let both = headers(&[("authorization", "Bearer other"), ("sec-websocket-protocol", "keygate.token.tok5")]);
        assert!(matches!(extract_from(&both, None, true), Err(CredentialError::Ambiguous)));
        let same = headers(&[("authorization", "Bearer tok5"), ("sec-websocket-protocol", "keygate.token.tok5")]);
        assert_eq!(extract_from(&same, None, true).unwrap().unwrap().source, Source::Bearer);
        let empty = headers(&[("sec-websocket-protocol", "keygate.token.")]);
        assert!(matches!(extract_from(&empty, None, true), Err(CredentialError::Malformed(_))));
        let entries: Vec<&[u8]> = subprotocols(&h).filter(|e| !is_key_entry(e)).collect();
        assert_eq!(entries, [&b"chat"[..], b"v2"]);
    }

    #[test]
    fn authorization_reads_first_whatever_order_the_fields_came_in() {
        let h = headers(&[("x-api-key", "tok1"), ("authorization", "Bearer tok1")]);
        assert_eq!(extract(&h, None).unwrap().unwrap().source, Source::Bearer);
        let h = headers(&[("x-api-key", ""), ("authorization", "Digest x")]);
        assert!(matches!(extract(&h, None), Err(CredentialError::Malformed(m)) if m.contains("Authorization")));
        let h = headers(&[("x-api-key", ""), ("authorization", "Bearer tok1")]);
        assert!(matches!(extract(&h, None), Err(CredentialError::Malformed(m)) if m.contains("X-API-Key")));
        let h = headers(&[("x-api-key", "tok1"), ("x-api-key", "tok2"), ("authorization", "Bearer tok1")]);
        assert!(matches!(extract(&h, None), Err(CredentialError::Ambiguous)));
    }

    #[test]
    fn each_place() {
        let h = headers(&[("authorization", "Bearer tok1")]);
        let c = extract(&h, None).unwrap().unwrap();
        assert_eq!((&*c.token, c.source), ("tok1", Source::Bearer));
        let h = headers(&[("authorization", "bearer tok1")]);
        let c = extract(&h, None).unwrap().unwrap();
        assert_eq!(c.token, "tok1");
        let h = headers(&[("x-api-key", "tok2")]);
        let c = extract(&h, None).unwrap().unwrap();
        assert_eq!((&*c.token, c.source), ("tok2", Source::ApiKeyHeader));
        let h = headers(&[("authorization", &basic("mail2many:tok3"))]);
        let c = extract(&h, None).unwrap().unwrap();
        assert_eq!((&*c.token, c.source), ("tok3", Source::Basic));
        let h = HeaderMap::new();
        let c = extract(&h, Some("a=1&api_token=tok4")).unwrap().unwrap();
        assert_eq!((&*c.token, c.source), ("tok4", Source::Query));
        assert_eq!(extract(&HeaderMap::new(), Some("a=1")), Ok(None));
    }

    #[test]
    fn same_token_twice_is_fine_two_are_not() {
        let h = headers(&[("authorization", "Bearer tok"), ("x-api-key", "tok")]);
        assert_eq!(extract(&h, Some("api_token=tok")).unwrap().unwrap().source, Source::Bearer);
        let h = headers(&[("authorization", "Bearer tok"), ("x-api-key", "other")]);
        assert_eq!(extract(&h, None), Err(CredentialError::Ambiguous));
        assert_eq!(extract(&headers(&[("x-api-key", "a")]), Some("api_token=b")), Err(CredentialError::Ambiguous));
    }

    #[test]
    fn malformed() {
        assert!(matches!(extract(&headers(&[("authorization", "Basic !!!")]), None), Err(CredentialError::Malformed(_))));
        assert!(matches!(
            extract(&headers(&[("authorization", &basic("nopassword"))]), None),
            Err(CredentialError::Malformed(_))
        ));
        assert!(matches!(extract(&headers(&[("authorization", "Bearer ")]), None), Err(CredentialError::Malformed(_))));
        assert!(matches!(extract(&headers(&[("authorization", "Digest x=1")]), None), Err(CredentialError::Malformed(_))));
    }

    #[test]
    fn query_stripping() {
        let keyed = |q| forwarded_query(q, true).map(Cow::into_owned);
        assert_eq!(keyed("api_token=x"), None);
        assert_eq!(keyed("a=1&api_token=x&b=2"), Some("a=1&b=2".into()));
        assert_eq!(keyed("a=1&api%5Ftoken=x"), Some("a=1".into()));
        assert_eq!(keyed("api_tokens=1"), Some("api_tokens=1".into()));
        assert_eq!(keyed("page=2&sort=name"), Some("page=2&sort=name".into()));
        assert!(matches!(forwarded_query("page=2", true), Some(Cow::Borrowed(_))), "nothing to drop: no copy");
        assert_eq!(decode_component("a%2Bb+c"), "a+b c");
        assert_eq!(decode_component("100%"), "100%");
    }

    #[test]
    fn credential_look_alikes_are_stripped() {
        for look_alike in [
            "API_TOKEN",
            "api.token",
            "api+token",
            "api%20token",
            "api_token[]",
            "api_token[0]",
            "api_token+",
            "Api-Token",
            "apitoken",
            "%61pi_token",
            "api_token%00",
        ] {
            let q = format!("a=1&{look_alike}=secret&b=2");
            assert_eq!(forwarded_query(&q, true).as_deref(), Some("a=1&b=2"), "{look_alike}");
        }
        assert_eq!(forwarded_query("a=1;api_token=secret;b=2", true).as_deref(), Some("a=1;b=2"));
        assert_eq!(forwarded_query("a=1&x=1;api_token=s&c=3", true).as_deref(), Some("a=1&x=1&c=3"));
        assert_eq!(forwarded_query("api_token=s;b=2", true).as_deref(), Some("b=2"));
        assert_eq!(forwarded_query("api_tokenx=1&my_api_token=2", true).as_deref(), Some("api_tokenx=1&my_api_token=2"));
        // A public route keeps the client's own parameters, `_method` aside.
        assert_eq!(forwarded_query("API_TOKEN=s&_method=DELETE", false).as_deref(), Some("API_TOKEN=s"));
    }

    #[test]
    fn method_overrides_are_stripped() {
        for q in ["_method=DELETE", "_METHOD=PUT", "%5Fmethod=DELETE", "_method[]=DELETE"] {
            assert_eq!(forwarded_query(q, false), None, "{q}");
        }
        assert_eq!(forwarded_query("method=email", false).as_deref(), Some("method=email"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Credential { token: "secret-token".into(), source: Source::Bearer };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
