//! Cross-origin requests from browsers (the Fetch standard's CORS): which
//! origins may call, which preflights keygate answers itself, and which
//! fields an answer carries. CORS only tells a browser what its page may
//! read; it grants nothing: a request still needs its key.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use std::time::Duration;

/// A checked `[cors]` table.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    origins: Origins,
    methods: Vec<Method>,
    /// Lowercase; `None` for `*` (whatever a preflight asks for).
    headers: Option<Vec<HeaderName>>,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
}

#[derive(Debug, Clone)]
enum Origins {
    Any,
    Listed(Vec<OriginPattern>),
}

/// `https://app.example.com` exactly, or `https://*.example.com` for any
/// subdomain (not the bare domain).
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    Exact(String),
    Subdomains { scheme: String, suffix: String },
}

/// The `[cors]` settings as written, before checking.
#[derive(Debug, Default)]
pub struct CorsSettings<'a> {
    pub origins: Vec<&'a str>,
    pub methods: Option<Vec<&'a str>>,
    pub headers: Option<Vec<&'a str>>,
    pub expose: Option<Vec<&'a str>>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

/// Methods allowed when `allowed_methods` is not given.
pub const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// Request headers allowed when `allowed_headers` is not given: the ways
/// to send a key, a body's type, and the request id.
pub const DEFAULT_HEADERS: [&str; 4] = ["authorization", "content-type", "x-api-key", "x-request-id"];
/// Response headers a page may read when `expose_headers` is not given.
pub const DEFAULT_EXPOSE: [&str; 8] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-credits-remaining",
    "ratelimit",
    "ratelimit-policy",
    "retry-after",
    "x-request-id",
];
/// How long a browser may cache a preflight answer by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// Which setting is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsProblem {
    pub field: &'static str,
    pub index: Option<usize>,
    pub message: String,
}

fn problem(field: &'static str, index: Option<usize>, message: impl Into<String>) -> CorsProblem {
    CorsProblem { field, index, message: message.into() }
}

/// A preflight's question: may `method` (with `headers`) be sent?
#[derive(Debug)]
pub struct Preflight<'a> {
    pub origin: &'a HeaderValue,
    pub method: Method,
    headers: Option<&'a HeaderValue>,
}

impl<'a> Preflight<'a> {
    /// An `OPTIONS` request with `Origin` and `Access-Control-Request-Method`.
    pub fn of(method: &Method, headers: &'a HeaderMap) -> Option<Preflight<'a>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let asked = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let method = Method::from_bytes(asked.as_bytes()).ok()?;
        Some(Preflight { origin, method, headers: headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) })
    }
}

/// Why a preflight gets no permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method(Method),
    Header(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Origin => write!(f, "this origin may not call this route from a browser"),
            Refusal::Method(m) => write!(f, "method {m} is not allowed from a browser"),
            Refusal::Header(h) => write!(f, "request header `{h}` is not allowed from a browser"),
        }
    }
}

/// Fields to set on a response.
pub type Fields = Vec<(HeaderName, HeaderValue)>;

impl CorsPolicy {
    /// Checks the settings.
    pub fn new(s: &CorsSettings<'_>) -> Result<CorsPolicy, CorsProblem> {
        let origins = if s.origins == ["*"] {
            if s.credentials {
                return Err(problem(
                    "allow_credentials",
                    None,
                    "browsers refuse credentials with allowed_origins = [\"*\"]: list the origins",
                ));
            }
            Origins::Any
        } else {
            if s.origins.is_empty() {
                return Err(problem("allowed_origins", None, "list at least one origin, or [\"*\"]"));
            }
            let mut listed = Vec::new();
            for (i, o) in s.origins.iter().enumerate() {
                listed.push(OriginPattern::parse(o).map_err(|m| problem("allowed_origins", Some(i), m))?);
            }
            Origins::Listed(listed)
        };
        let method_names = s.methods.clone().unwrap_or_else(|| DEFAULT_METHODS.to_vec());
        let mut methods = Vec::new();
        for (i, m) in method_names.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if crate::policy::routes::is_known_method(m) => methods.push(method),
                _ => return Err(problem("allowed_methods", Some(i), format!("`{m}` is not an HTTP method"))),
            }
        }
        let headers = match &s.headers {
            Some(h) if h.as_slice() == ["*"] => None,
            given => Some(names(given.as_deref().unwrap_or(&DEFAULT_HEADERS), "allowed_headers")?),
        };
        let expose = names(s.expose.as_deref().unwrap_or(&DEFAULT_EXPOSE), "expose_headers")?;
        let joined = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        Ok(CorsPolicy {
            allow_methods: joined(methods.iter().map(Method::as_str).collect()).unwrap_or(HeaderValue::from_static("GET")),
            allow_headers: headers.as_ref().and_then(|h| joined(h.iter().map(HeaderName::as_str).collect())),
            expose: joined(expose.iter().map(HeaderName::as_str).collect()).filter(|v| !v.is_empty()),
            max_age: HeaderValue::from(s.max_age.unwrap_or(DEFAULT_MAX_AGE).as_secs()),
            origins,
            methods,
            headers,
            credentials: s.credentials,
        })
    }

    /// Whether a page of `origin` may read answers.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Listed(patterns) => {
                let Ok(origin) = origin.to_str() else { return false };
                patterns.iter().any(|p| p.matches(origin))
            }
        }
    }

    /// The answer to a preflight keygate gives itself, or why not.
    pub fn preflight(&self, pre: &Preflight<'_>) -> Result<Fields, Refusal> {
        if !self.allows(pre.origin) {
            return Err(Refusal::Origin);
        }
        if !self.methods.contains(&pre.method) {
            return Err(Refusal::Method(pre.method.clone()));
        }
        let asked = pre.headers.and_then(|v| v.to_str().ok()).unwrap_or("");
        let asked: Vec<&str> = asked.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
        if let Some(allowed) = &self.headers {
            if let Some(h) = asked.iter().find(|h| !allowed.iter().any(|a| a.as_str().eq_ignore_ascii_case(h))) {
                return Err(Refusal::Header(h.to_ascii_lowercase()));
            }
        }
        let mut out = self.origin_fields(pre.origin);
        out.push((header::ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone()));
        let allow_headers = match &self.allow_headers {
            Some(v) => Some(v.clone()),
            // `*`: whatever was asked (a literal `*` means nothing with credentials).
            None => pre.headers.cloned(),
        };
        if let Some(v) = allow_headers {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        out.push((header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()));
        out.push((
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ));
        Ok(out)
    }

    /// Fields for an actual answer to a request from `origin` (none when
    /// the origin is not allowed, but `Vary` whenever the answer depends on it).
    pub fn actual(&self, origin: Option<&HeaderValue>) -> Fields {
        let mut out = match origin {
            Some(o) if self.allows(o) => self.origin_fields(o),
            _ => Vec::new(),
        };
        if let Some(expose) = &self.expose {
            if !out.is_empty() {
                out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
            }
        }
        if matches!(self.origins, Origins::Listed(_)) {
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        out
    }

    fn origin_fields(&self, origin: &HeaderValue) -> Fields {
        let mut out = Vec::with_capacity(6);
        match self.origins {
            Origins::Any => out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"))),
            Origins::Listed(_) => out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())),
        }
        if self.credentials {
            out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        out
    }
}

fn names(list: &[&str], field: &'static str) -> Result<Vec<HeaderName>, CorsProblem> {
    list.iter()
        .enumerate()
        .map(|(i, n)| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| problem(field, Some(i), format!("`{n}` is not a header name")))
        })
        .collect()
}

impl OriginPattern {
    fn parse(text: &str) -> Result<OriginPattern, String> {
        let bad = || format!("`{text}` is not an origin like https://app.example.com or https://*.example.com");
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("`{text}`: write origins in lower case, as browsers send them"));
        }
        match rest.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Ok(OriginPattern::Subdomains { scheme: scheme.to_string(), suffix: format!(".{domain}") })
            }
            Some(_) => Err(bad()),
            None if rest.contains('*') => Err(bad()),
            None => Ok(OriginPattern::Exact(text.to_string())),
        }
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| {
                    !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> CorsPolicy {
        CorsPolicy::new(&CorsSettings { origins: origins.to_vec(), credentials, ..Default::default() }).unwrap()
    }

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn ask<'a>(headers: &'a mut HeaderMap, origin: &str, method: &str, asked: Option<&str>) -> Preflight<'a> {
        headers.insert(header::ORIGIN, value(origin));
        headers.insert(header::ACCESS_CONTROL_REQUEST_METHOD, value(method));
        if let Some(a) = asked {
            headers.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, value(a));
        }
        Preflight::of(&Method::OPTIONS, headers).unwrap()
    }

    fn get<'a>(fields: &'a Fields, name: &HeaderName) -> Option<&'a str> {
        fields.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.to_str().ok())
    }

    #[test]
    fn listed_origins_match_exactly_and_wildcards_only_subdomains() {
        let p = policy(&["https://app.example.com", "https://*.mail.test"], false);
        for (origin, ok) in [
            ("https://app.example.com", true),
            ("http://app.example.com", false),
            ("https://app.example.com:8443", false),
            ("https://evil-app.example.com", false),
            ("https://eu.mail.test", true),
            ("https://a.b.mail.test", true),
            ("https://mail.test", false),
            ("https://evilmail.test", false),
            ("https://x.mail.test.evil.com", false),
            ("null", false),
        ] {
            assert_eq!(p.allows(&value(origin)), ok, "{origin}");
        }
    }

    #[test]
    fn a_preflight_is_answered_for_allowed_origin_method_and_headers() {
        let p = policy(&["https://app.example.com"], true);
        let mut h = HeaderMap::new();
        let fields = p.preflight(&ask(&mut h, "https://app.example.com", "POST", Some("Authorization, content-type"))).unwrap();
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("https://app.example.com"));
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_ALLOW_CREDENTIALS), Some("true"));
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_ALLOW_METHODS), Some("GET, HEAD, POST, PUT, PATCH, DELETE"));
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_MAX_AGE), Some("600"));
        let mut h = HeaderMap::new();
        assert_eq!(p.preflight(&ask(&mut h, "https://other.example.com", "POST", None)), Err(Refusal::Origin));
        let mut h = HeaderMap::new();
        assert_eq!(p.preflight(&ask(&mut h, "https://app.example.com", "TRACE", None)), Err(Refusal::Method(Method::TRACE)));
        let mut h = HeaderMap::new();
        let refused = p.preflight(&ask(&mut h, "https://app.example.com", "GET", Some("authorization, X-Debug")));
        assert_eq!(refused, Err(Refusal::Header("x-debug".into())));
    }

    #[test]
    fn any_origin_answers_star_and_never_with_credentials() {
        let p = policy(&["*"], false);
        let fields = p.actual(Some(&value("https://anywhere.test")));
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_ALLOW_ORIGIN), Some("*"));
        assert!(get(&fields, &header::ACCESS_CONTROL_EXPOSE_HEADERS).unwrap().contains("x-ratelimit-remaining"));
        assert!(get(&fields, &header::VARY).is_none(), "the answer does not depend on the origin");
        let err = CorsPolicy::new(&CorsSettings { origins: vec!["*"], credentials: true, ..Default::default() }).unwrap_err();
        assert_eq!(err.field, "allow_credentials");
    }

    #[test]
    fn an_answer_to_another_origin_carries_only_vary() {
        let p = policy(&["https://app.example.com"], false);
        let fields = p.actual(Some(&value("https://evil.test")));
        assert_eq!(fields.len(), 1);
        assert_eq!(get(&fields, &header::VARY), Some("Origin"));
        assert_eq!(p.actual(None).len(), 1);
    }

    #[test]
    fn allowed_headers_star_echoes_what_was_asked() {
        let p = CorsPolicy::new(&CorsSettings { origins: vec!["*"], headers: Some(vec!["*"]), ..Default::default() }).unwrap();
        let mut h = HeaderMap::new();
        let fields = p.preflight(&ask(&mut h, "https://a.test", "GET", Some("x-anything"))).unwrap();
        assert_eq!(get(&fields, &header::ACCESS_CONTROL_ALLOW_HEADERS), Some("x-anything"));
    }

    #[test]
    fn bad_settings_are_named() {
        for (origins, field) in [
            (vec![], "allowed_origins"),
            (vec!["app.example.com"], "allowed_origins"),
            (vec!["https://app.example.com/"], "allowed_origins"),
            (vec!["https://App.example.com"], "allowed_origins"),
            (vec!["https://a.*.example.com"], "allowed_origins"),
        ] {
            let err = CorsPolicy::new(&CorsSettings { origins, ..Default::default() }).unwrap_err();
            assert_eq!(err.field, field);
        }
        let err = CorsPolicy::new(&CorsSettings { origins: vec!["*"], methods: Some(vec!["FETCH"]), ..Default::default() });
        assert_eq!(err.unwrap_err().field, "allowed_methods");
        let err = CorsPolicy::new(&CorsSettings { origins: vec!["*"], expose: Some(vec!["bad name"]), ..Default::default() });
        assert_eq!(err.unwrap_err().field, "expose_headers");
    }

    #[test]
    fn only_an_options_request_with_both_fields_is_a_preflight() {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, value("https://a.test"));
        assert!(Preflight::of(&Method::OPTIONS, &h).is_none(), "no Access-Control-Request-Method");
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, value("GET"));
        assert!(Preflight::of(&Method::GET, &h).is_none());
        assert!(Preflight::of(&Method::OPTIONS, &h).is_some());
    }
}
