//! The route table: `METHOD /path/{param}/*` patterns mapped to the
//! permission they need and the upstream they forward to. Anything that
//! matches no route is refused (deny by default).

use http::Method;
use std::collections::HashMap;

/// What the limiter does when Redis cannot be asked (`on_redis_error`, in
/// `[rate_limit]` or on a route). Here, beside the routes that may set it,
/// so that the route table needs nothing of the config that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisErrorPolicy {
    /// Each node enforces limit / `nodes_hint` on its own.
    Local,
    Deny,
    Allow,
}

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
    /// A trailing `*`: zero or more segments.
    Rest,
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// The pattern as written (`POST /api/lists`): the `route` metrics label.
    pub pattern: String,
    /// `None` matches every method.
    method: Option<Method>,
    segments: Vec<Segment>,
    pub permission: Option<String>,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub public: bool,
    /// Overrides `rate_limit.on_redis_error` for this route.
    pub on_redis_error: Option<RedisErrorPolicy>,
    /// Whether `[cors]` applies: keygate answers preflights and sets the
    /// CORS fields of every answer.
    pub cors: bool,
    /// Units a request takes from every window and from credits.
    pub cost: u32,
    /// An extra per-minute limit per key (or owner) on this route alone.
    pub per_minute: Option<u32>,
    /// Client addresses refused on this route (403 `ip_denied`) before
    /// any key is looked at.
    pub deny: Option<Box<super::ip::DenyList>>,
    /// Its permission, its own limit and the key's windows are tried, not
    /// enforced, on this route.
    pub shadow: bool,
    /// The answer field (lower case) in which the upstream reports what a
    /// request really cost; settled against what was charged up front.
    pub cost_header: Option<Box<str>>,
    /// Whether a WebSocket handshake may pass (else it is refused, 400
    /// `upgrade_not_allowed`).
    pub websocket: bool,
}

/// The methods a route may name: RFC 9110's and PATCH, upper case.
const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Whether a route may name `m` (upper case).
pub fn is_known_method(m: &str) -> bool {
    KNOWN_METHODS.contains(&m)
}

impl Route {
    /// Compiles a pattern like `GET /api/lists/{id}` or `* /api/public/*`.
    pub fn new(
        pattern: &str,
        permission: Option<String>,
        upstream: usize,
        public: bool,
        on_redis_error: Option<RedisErrorPolicy>,
    ) -> Result<Route, String> {
        let mut parts = pattern.split_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("`{pattern}` must be `METHOD /path`, e.g. `GET /api/lists/{{id}}`"));
        };
        // Any token is a valid method on the wire, so a typo (`GIT`) would
        // make a route that never matches: only the methods of RFC 9110 and
        // PATCH (RFC 5789) are accepted, or `*` for all.
        let method = match method {
            "*" | "ANY" => None,
            m if KNOWN_METHODS.contains(&m) => {
                Some(Method::from_bytes(m.as_bytes()).map_err(|_| format!("`{m}` is not an HTTP method"))?)
            }
            m => {
                return Err(format!(
                    "`{m}` is not an HTTP method keygate routes (one of {}, or * for any)",
                    KNOWN_METHODS.join(", ")
                ))
            }
        };
        if !path.starts_with('/') {
            return Err(format!("path `{path}` must start with '/'"));
        }
        let raw: Vec<&str> = path[1..].split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let seg = if *s == "*" {
                if i + 1 != raw.len() {
                    return Err(format!("`*` may only end a pattern, in `{path}`"));
                }
                Segment::Rest
            } else if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                Segment::Param
            } else if s.contains(['{', '}', '*', '%']) || *s == "." || *s == ".." {
                return Err(format!("segment `{s}` of `{path}` is neither a literal, a {{param}} nor a trailing *"));
            } else {
                Segment::Literal((*s).to_string())
            };
            segments.push(seg);
        }
        Ok(Route {
            pattern: pattern.split_whitespace().collect::<Vec<_>>().join(" "),
            method,
            segments,
            permission,
            upstream,
            public,
            on_redis_error,
            cors: false,
            cost: 1,
            per_minute: None,
            deny: None,
            shadow: false,
            cost_header: None,
            websocket: false,
        })
    }

    /// Whether the route answers `m` (GET routes answer HEAD too).
    pub fn method_matches(&self, m: &Method) -> bool {
        match &self.method {
            None => true,
            Some(own) => own == m || (*own == Method::GET && *m == Method::HEAD),
        }
    }

    /// How specific a match is: literal beats `{param}` beats `*`, segment
    /// by segment, packed two bits a segment from the top so that integer
    /// order is the lexicographic order of the segment kinds.
    fn rank(&self, path: &[&str]) -> Option<u64> {
        let mut rank = 0u64;
        let code = |i: usize, c: u64| if i < 31 { c << (62 - 2 * i) } else { 0 };
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest => return Some(rank | code(i, 1)),
                Segment::Literal(l) => {
                    if path.get(i)? != l {
                        return None;
                    }
                    rank |= code(i, 3);
                }
                Segment::Param => {
                    path.get(i)?;
                    rank |= code(i, 2);
                }
            }
        }
        (self.segments.len() == path.len()).then_some(rank)
    }

    /// The path of an all-literal pattern (`None` when it has a parameter or `*`).
    fn literal_path(&self) -> Option<String> {
        let mut out = String::new();
        for seg in &self.segments {
            let Segment::Literal(l) = seg else { return None };
            out.push('/');
            out.push_str(l);
        }
        Some(if out.is_empty() { "/".into() } else { out })
    }
}

/// All routes, searched most-specific first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// All-literal patterns by path: the common case, found without a scan.
    literal: HashMap<String, Vec<usize>, crate::FastHash>,
    /// The other patterns by their first segment when it is a literal, so
    /// a path is only ranked against patterns that can match it...
    by_first: HashMap<String, Vec<usize>, crate::FastHash>,
    /// ...and those starting with a parameter or `*` (or empty).
    open_first: Vec<usize>,
}

impl RouteTable {
    /// A table over compiled routes (file order breaks ties).
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut literal: HashMap<String, Vec<usize>, crate::FastHash> = HashMap::default();
        let mut by_first: HashMap<String, Vec<usize>, crate::FastHash> = HashMap::default();
        let mut open_first = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if let Some(p) = r.literal_path() {
                literal.entry(p).or_default().push(i);
            }
            match r.segments.first() {
                Some(Segment::Literal(first)) => by_first.entry(first.clone()).or_default().push(i),
                _ => open_first.push(i),
            }
        }
        RouteTable { routes, literal, by_first, open_first }
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route (and its index) for a normalised path, or `None` (404 `no_route`).
    pub fn find(&self, method: &Method, path: &str) -> Option<(usize, &Route)> {
        // An all-literal match outranks every pattern with a parameter or `*`.
        let trimmed = path.trim_end_matches('/');
        let key = if trimmed.is_empty() { "/" } else { trimmed };
        if let Some(ids) = self.literal.get(key) {
            if let Some(&i) = ids.iter().find(|&&i| self.routes[i].method_matches(method)) {
                return Some((i, &self.routes[i]));
            }
        }
        // The segments on the stack (up to 16; longer paths spill over).
        let mut inline = [""; 16];
        let mut spilled = Vec::new();
        let mut count = 0;
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            if count < inline.len() {
                inline[count] = segment;
            } else {
                if spilled.is_empty() {
                    spilled.extend_from_slice(&inline);
                }
                spilled.push(segment);
            }
            count += 1;
        }
        let segments: &[&str] = if count <= inline.len() { &inline[..count] } else { &spilled };
        let same_first = segments.first().and_then(|first| self.by_first.get(*first)).map_or(&[][..], Vec::as_slice);
        let mut best: Option<(u64, usize)> = None;
        for &i in same_first.iter().chain(&self.open_first) {
            let route = &self.routes[i];
            if !route.method_matches(method) {
                continue;
            }
            if let Some(rank) = route.rank(segments) {
                // The most specific wins; between equals, the first in the file.
                if best.is_none_or(|(r, j)| rank > r || (rank == r && i < j)) {
                    best = Some((rank, i));
                }
            }
        }
        best.map(|(_, i)| (i, &self.routes[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[&str]) -> RouteTable {
        RouteTable::new(patterns.iter().map(|p| Route::new(p, Some(p.to_string()), 0, false, None).unwrap()).collect())
    }

    fn found(t: &RouteTable, m: Method, p: &str) -> Option<String> {
        t.find(&m, p).map(|(_, r)| r.pattern.clone())
    }

    #[test]
    fn patterns_indexed_by_first_segment_and_open_ones_are_both_searched() {
        let t = table(&["GET /{any}/x/{id}", "GET /api/x/{id}", "* /*", "GET /api/{kind}/1"]);
        for (method, path, want) in [
            (Method::GET, "/api/x/1", "GET /api/x/{id}"),
            (Method::GET, "/other/x/1", "GET /{any}/x/{id}"),
            (Method::GET, "/api/y/1", "GET /api/{kind}/1"),
            (Method::POST, "/api/x/1", "* /*"),
            (Method::GET, "/", "* /*"),
        ] {
            assert_eq!(found(&t, method, path).as_deref(), Some(want), "{path}");
        }
    }

    #[test]
    fn paths_longer_than_the_inline_segments_still_match() {
        let deep: String = (0..20).map(|i| format!("/s{i}")).collect();
        let pattern = format!("GET {}/{{last}}", (0..19).map(|i| format!("/s{i}")).collect::<String>());
        let t = table(&["GET /s0/*", &pattern]);
        assert_eq!(found(&t, Method::GET, &deep), Some(pattern.clone()));
        assert_eq!(found(&t, Method::GET, &format!("{deep}/more")), Some("GET /s0/*".into()));
    }

    #[test]
    fn literal_param_rest() {
        let t = table(&["GET /api/lists", "GET /api/lists/{id}", "GET /api/lists/groups", "* /static/*"]);
        assert_eq!(found(&t, Method::GET, "/api/lists"), Some("GET /api/lists".into()));
        assert_eq!(found(&t, Method::GET, "/api/lists/"), Some("GET /api/lists".into()));
        assert_eq!(found(&t, Method::GET, "/api/lists/42"), Some("GET /api/lists/{id}".into()));
        assert_eq!(found(&t, Method::GET, "/api/lists/groups"), Some("GET /api/lists/groups".into()));
        assert_eq!(found(&t, Method::HEAD, "/api/lists"), Some("GET /api/lists".into()));
        assert_eq!(found(&t, Method::POST, "/static/a/b.css"), Some("* /static/*".into()));
        assert_eq!(found(&t, Method::GET, "/static"), Some("* /static/*".into()));
    }

    #[test]
    fn specificity_beats_file_order() {
        let t = table(&["GET /api/*", "GET /api/{x}/y", "GET /api/lists/{id}", "GET /{a}/{b}/{c}"]);
        assert_eq!(found(&t, Method::GET, "/api/lists/1"), Some("GET /api/lists/{id}".into()));
        assert_eq!(found(&t, Method::GET, "/api/q/y"), Some("GET /api/{x}/y".into()));
        assert_eq!(found(&t, Method::GET, "/api/q/z"), Some("GET /api/*".into()));
        assert_eq!(found(&t, Method::GET, "/x/q/z"), Some("GET /{a}/{b}/{c}".into()));
    }

    #[test]
    fn deny_by_default() {
        let t = table(&["GET /api/lists/{id}"]);
        assert_eq!(found(&t, Method::POST, "/api/lists/1"), None);
        assert_eq!(found(&t, Method::GET, "/api/lists/1/extra"), None);
        assert_eq!(found(&t, Method::GET, "/api/lists"), None);
        assert_eq!(found(&t, Method::GET, "/"), None);
    }

    #[test]
    fn bad_patterns() {
        assert!(Route::new("/api", None, 0, false, None).is_err());
        assert!(Route::new("GET api", None, 0, false, None).is_err());
        assert!(Route::new("GET /a/*/b", None, 0, false, None).is_err());
        assert!(Route::new("GET /a/{x", None, 0, false, None).is_err());
        assert!(Route::new("G@T /a", None, 0, false, None).is_err());
    }
}
