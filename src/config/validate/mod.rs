//! Turns a [`RawConfig`] into a typed [`Config`], collecting every problem
//! with the line and field it belongs to.

mod catalogue;
mod leaks;
mod webhooks;

use super::raw::*;
use super::*;
use crate::config::Underscores;
use std::collections::HashSet;
use toml::Spanned;

/// Collects problems while walking the raw config.
pub(super) struct Checker<'a> {
    text: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    pub(super) fn problem<T>(&mut self, at: Option<&Spanned<T>>, field: impl Into<String>, msg: impl Into<String>) {
        self.problem_at(at.map(Spanned::span), field, msg);
    }

    /// [`Checker::problem`] at a span chosen among several fields.
    fn problem_at(&mut self, at: Option<std::ops::Range<usize>>, field: impl Into<String>, msg: impl Into<String>) {
        let line = at.map(|s| line_at(self.text, s.start));
        self.problems.push(ConfigProblem { line, field: field.into(), message: msg.into() });
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, field: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.problem(Some(s), field, "must be greater than zero");
                    default
                }
                Err(e) => {
                    self.problem(Some(s), field, e);
                    default
                }
            },
        }
    }

    fn positive(&mut self, v: &Option<Spanned<i64>>, field: &str, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) if *s.get_ref() > 0 => *s.get_ref() as u64,
            Some(s) => {
                self.problem(Some(s), field, "must be a whole number greater than zero");
                default
            }
        }
    }

    fn socket(&mut self, v: &Option<Spanned<String>>, field: &str, default: &str) -> SocketAddr {
        let fallback = || default.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        match v {
            None => fallback(),
            Some(s) => s.get_ref().parse().unwrap_or_else(|_| {
                self.problem(Some(s), field, format!("`{}` is not an address like 127.0.0.1:8080", s.get_ref()));
                fallback()
            }),
        }
    }

    fn choice<T: Copy>(&mut self, v: &Option<Spanned<String>>, field: &str, options: &[(&str, T)], default: T) -> T {
        let Some(s) = v else { return default };
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == s.get_ref().as_str()) {
            return *t;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.problem(Some(s), field, format!("`{}` is not one of {}", s.get_ref(), names.join(", ")));
        default
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// Resolves `p` against the folder of the config file.
fn relative_to(config: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

pub(super) fn validate(path: &Path, text: &str) -> Result<Config, ConfigError> {
    // Through serde_path_to_error: toml's own error names a field without
    // the tables it sits in (`permision`, not `routes[3].permision`).
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let at = e.path().to_string();
        let e = e.into_inner();
        let line = e.span().map(|s| line_at(text, s.start));
        ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem {
                line,
                field: field_of_parse_error(&at, e.message()),
                message: e.message().trim().to_string(),
            }],
        }
    })?;
    let mut c = Checker { text, problems: Vec::new() };

    let server = server(&mut c, path, &raw.server);
    let admin = AdminConfig {
        listen: c.socket(&raw.admin.listen, "admin.listen", DEFAULT_ADMIN_LISTEN),
        token_env: raw.admin.token_env.clone().unwrap_or_else(|| DEFAULT_ADMIN_TOKEN_ENV.into()),
        tokens: admin_tokens(&mut c, &raw.admin.tokens),
        allowed_hosts: allowed_hosts(&mut c, &raw.admin.allowed_hosts),
    };
    let store = store(&mut c, path, &raw.store);
    let rate_limit = rate_limit(&mut c, &raw.rate_limit, &store);
    let keys = keys(&mut c, &raw.keys);
    let plans = plans(&mut c, &raw.plans);
    let stream_pause = c.duration(&raw.realtime.idle_timeout, "realtime.idle_timeout", DEFAULT_STREAM_PAUSE);
    if stream_pause.is_zero() || stream_pause > MAX_STREAM_PAUSE {
        c.problem(raw.realtime.idle_timeout.as_ref(), "realtime.idle_timeout", "must be from 1ms to 24h");
    }
    let upstreams = upstreams(&mut c, path, &raw.upstreams);
    let catalogue = catalogue::catalogue(&mut c, &raw.modules);
    let cors = cors(&mut c, raw.cors.as_ref());
    let log_format = c.choice(&raw.log.format, "log.format", &LogFormat::CHOICES, LogFormat::Text);
    let tracing = raw.tracing.as_ref().and_then(|t| tracing(&mut c, path, t));
    // An upstream refused above is reported once: routes naming it are not.
    let declared: HashSet<&str> = raw.upstreams.iter().map(|u| u.name.get_ref().as_str()).collect();
    let routes = catalogue::routes(&mut c, &raw.routes, (&upstreams, &declared), &catalogue, cors.is_some());
    let roles = catalogue::roles(&mut c, &raw.roles, &catalogue);
    let leaks = leaks::leaks(&mut c, path, &raw.leaks);
    let webhooks = webhooks::webhooks(&mut c, path, &raw.webhooks);
    let events = webhooks::events_table(&mut c, &raw.events);
    let failed_credentials = raw.abuse.failed_credentials.as_ref().and_then(|f| failed_credentials(&mut c, f));
    let per_key_connections = c.positive(&raw.realtime.per_key_connections, "realtime.per_key_connections", 10);

    if !c.problems.is_empty() {
        return Err(ConfigError { file: path.to_path_buf(), problems: c.problems });
    }
    Ok(Config {
        source: path.to_path_buf(),
        server,
        admin,
        store,
        rate_limit,
        keys,
        plans,
        upstreams,
        catalogue,
        routes,
        roles,
        cors,
        log_format,
        tracing,
        leaks,
        webhooks,
        events,
        failed_credentials,
        realtime: crate::config::Realtime {
            per_key_connections: u32::try_from(per_key_connections).unwrap_or(u32::MAX),
            idle_timeout: stream_pause,
        },
    })
}

/// The full path of the field a parse error is about (`at`, from
/// serde_path_to_error, already ends with an unknown field's name), or the
/// name in the message ("unknown field `x`") at the top level.
fn field_of_parse_error(at: &str, msg: &str) -> String {
    // `Spanned` fields add a private segment of toml's to the path.
    let at = at.replace(".$__serde_spanned_private_value", "");
    match at.as_str() {
        "." | "" => match msg.strip_prefix("unknown field") {
            Some(rest) => rest.split('`').nth(1).unwrap_or("(syntax)").to_string(),
            None => "(syntax)".into(),
        },
        _ => at,
    }
}

/// `[abuse] failed_credentials`: a positive count, a span of at most a day.
fn failed_credentials(c: &mut Checker, raw: &Spanned<crate::config::raw::RawFailedCredentials>) -> Option<GuardPolicy> {
    let f = raw.get_ref();
    let per_minute = match u32::try_from(*f.per_minute.get_ref()) {
        Ok(n) if n > 0 => n,
        _ => {
            c.problem(Some(&f.per_minute), "abuse.failed_credentials.per_minute", "must be a whole number, 1 or more");
            return None;
        }
    };
    let block_for = c.duration(&f.block_for, "abuse.failed_credentials.block_for", DEFAULT_BLOCK_FOR);
    if block_for > Duration::from_secs(86_400) {
        c.problem(f.block_for.as_ref(), "abuse.failed_credentials.block_for", "must be at most 1d");
    }
    Some(GuardPolicy { per_minute, block_for_ms: block_for.as_millis() as i64 })
}

/// Networks of a `deny` list, each checked.
fn deny_entries(c: &mut Checker, field: &str, raw: &[Spanned<String>]) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        match crate::policy::ip::parse_cidr(entry.get_ref()) {
            Ok(net) => out.push(net),
            Err(e) => c.problem(Some(entry), format!("{field}[{i}]"), e),
        }
    }
    out
}

/// `server.deny` and the lines of `server.deny_file` (read now: a reload
/// reads it again).
fn server_deny(c: &mut Checker, path: &Path, raw: &RawServer) -> Option<Box<crate::policy::ip::DenyList>> {
    let mut nets = deny_entries(c, "server.deny", &raw.deny);
    if let Some(file) = &raw.deny_file {
        let full = relative_to(path, file.get_ref());
        let read = std::fs::read_to_string(&full).map_err(|e| e.to_string()).and_then(|t| crate::policy::ip::parse_deny_file(&t));
        match read {
            Ok(more) => nets.extend(more),
            Err(e) => c.problem(Some(file), "server.deny_file", format!("{}: {e}", full.display())),
        }
    }
    let list = crate::policy::ip::DenyList::new(&nets);
    (!list.is_empty()).then(|| Box::new(list))
}

fn server(c: &mut Checker, path: &Path, raw: &RawServer) -> ServerConfig {
    let environment = c.choice(&raw.environment, "server.environment", &[("live", Env::Live), ("test", Env::Test)], Env::Live);
    let mut trusted_proxies = Vec::new();
    for (i, p) in raw.trusted_proxies.iter().enumerate() {
        match crate::policy::ip::parse_cidr(p.get_ref()) {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => c.problem(Some(p), format!("server.trusted_proxies[{i}]"), e),
        }
    }
    let tls = raw.tls.as_ref().and_then(|t| {
        let cert_path = relative_to(path, t.cert.get_ref());
        let key_path = relative_to(path, t.key.get_ref());
        match crate::tls::load_server_config(&cert_path, &key_path) {
            Ok(server_config) => Some(TlsSettings { cert_path, key_path, server_config }),
            Err(crate::tls::TlsError::Cert(e)) => {
                c.problem(Some(&t.cert), "server.tls.cert", e);
                None
            }
            Err(crate::tls::TlsError::Key(e)) => {
                c.problem(Some(&t.key), "server.tls.key", e);
                None
            }
        }
    });
    let deny = server_deny(c, path, raw);
    let max_header_bytes = c.positive(&raw.max_header_bytes, "server.max_header_bytes", DEFAULT_MAX_HEADER_BYTES as u64) as usize;
    if max_header_bytes < 8192 {
        c.problem(raw.max_header_bytes.as_ref(), "server.max_header_bytes", "must be at least 8192");
    }
    ServerConfig {
        listen: c.socket(&raw.listen, "server.listen", DEFAULT_LISTEN),
        environment,
        trusted_proxies,
        tls,
        max_header_bytes: max_header_bytes.max(8192),
        max_headers: c.positive(&raw.max_headers, "server.max_headers", DEFAULT_MAX_HEADERS as u64) as usize,
        max_body_bytes: c.positive(&raw.max_body_bytes, "server.max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        header_read_timeout: c.duration(&raw.header_read_timeout, "server.header_read_timeout", DEFAULT_HEADER_READ_TIMEOUT),
        body_read_timeout: c.duration(&raw.body_read_timeout, "server.body_read_timeout", DEFAULT_BODY_READ_TIMEOUT),
        idle_timeout: c.duration(&raw.idle_timeout, "server.idle_timeout", DEFAULT_IDLE_TIMEOUT),
        drain_timeout: c.duration(&raw.drain_timeout, "server.drain_timeout", DEFAULT_DRAIN_TIMEOUT),
        max_connections: c.positive(&raw.max_connections, "server.max_connections", DEFAULT_MAX_CONNECTIONS as u64) as usize,
        workers: c.positive(&raw.workers, "server.workers", default_workers() as u64).min(1024) as usize,
        underscore_headers: c.choice(
            &raw.underscore_headers,
            "server.underscore_headers",
            &[("drop", Underscores::Drop), ("reject", Underscores::Reject), ("allow", Underscores::Allow)],
            Underscores::Drop,
        ),
        deny,
    }
}

/// One worker per core.
fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn store(c: &mut Checker, path: &Path, raw: &RawStore) -> StoreConfig {
    let is_redis = c.choice(&raw.backend, "store.backend", &[("sqlite", false), ("redis", true)], false);
    let backend = if is_redis {
        match &raw.url {
            Some(u) => StoreBackend::Redis(redis_target(c, u, "store.url", raw.cluster)),
            None => {
                c.problem(raw.backend.as_ref(), "store.url", "backend \"redis\" needs store.url");
                StoreBackend::Redis(RedisTarget { url: String::new(), cluster: false })
            }
        }
    } else {
        StoreBackend::Sqlite { path: relative_to(path, raw.path.as_deref().unwrap_or(DEFAULT_SQLITE_PATH)) }
    };
    let default_timeout = if is_redis { DEFAULT_REDIS_STORE_TIMEOUT } else { DEFAULT_STORE_TIMEOUT };
    StoreConfig {
        backend,
        poll_interval: c.duration(&raw.poll_interval, "store.poll_interval", DEFAULT_POLL_INTERVAL),
        timeout: c.duration(&raw.timeout, "store.timeout", default_timeout),
    }
}

/// Checks `redis://` and `rediss://` (TLS) seed URLs.
fn redis_target(c: &mut Checker, url: &Spanned<String>, field: &str, cluster: bool) -> RedisTarget {
    let seeds = crate::config::redis_seeds(url.get_ref());
    if seeds.is_empty() {
        c.problem(Some(url), field, "is empty");
    }
    if seeds.len() > 1 && !cluster {
        c.problem(Some(url), field, "several URLs are only allowed with cluster = true");
    }
    for seed in &seeds {
        let scheme_ok = seed.starts_with("redis://") || seed.starts_with("rediss://");
        if !scheme_ok || ::redis::parse_redis_url(seed).is_none() {
            c.problem(Some(url), field, format!("`{seed}` is not a redis:// or rediss:// URL"));
        } else if seed.contains("#insecure") {
            c.problem(
                Some(url),
                field,
                "`#insecure` (TLS without checking the certificate) is refused; trust the server's CA instead (SSL_CERT_FILE)",
            );
        }
    }
    RedisTarget { url: url.get_ref().clone(), cluster }
}

/// `[plans]`: `name = 10` (per minute) or a table of windows.
fn plans(c: &mut Checker, raw: &BTreeMap<String, Spanned<toml::Value>>) -> BTreeMap<String, Plan> {
    const WINDOWS: [&str; 4] = ["per_minute", "per_hour", "per_day", "per_month"];
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let field = format!("plans.{name}");
        let whole = |v: &toml::Value| v.as_integer().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0);
        let mut plan = Plan::default();
        match value.get_ref() {
            toml::Value::Integer(_) => match whole(value.get_ref()) {
                Some(n) => plan.per_minute = NonZeroU32::new(n),
                None => c.problem(Some(value), field, "must be a whole number of requests per minute, 1 or more"),
            },
            toml::Value::Table(t) => {
                for (k, v) in t {
                    if k == "max_in_flight" {
                        match whole(v) {
                            Some(n) => plan.max_in_flight = NonZeroU32::new(n),
                            None => c.problem(Some(value), format!("{field}.{k}"), "must be a whole number, 1 or more"),
                        }
                        continue;
                    }
                    if k == "shadow" {
                        match v.as_bool() {
                            Some(on) => plan.shadow = on,
                            None => c.problem(Some(value), format!("{field}.shadow"), "must be true or false"),
                        }
                        continue;
                    }
                    let slot = match k.as_str() {
                        "per_minute" => None,
                        "per_hour" => Some(&mut plan.quota.per_hour),
                        "per_day" => Some(&mut plan.quota.per_day),
                        "per_month" => Some(&mut plan.quota.per_month),
                        _ => {
                            let msg =
                                format!("unknown field `{k}`, expected one of {}, max_in_flight, shadow", WINDOWS.join(", "));
                            c.problem(Some(value), format!("{field}.{k}"), msg);
                            continue;
                        }
                    };
                    match (whole(v), slot) {
                        (None, _) => c.problem(Some(value), format!("{field}.{k}"), "must be a whole number, 1 or more"),
                        (Some(n), None) => plan.per_minute = NonZeroU32::new(n),
                        (Some(n), Some(slot)) => *slot = Some(n),
                    }
                }
            }
            _ => c.problem(
                Some(value),
                field,
                "must be requests per minute (`free = 10`) or a table of per_minute, per_hour, per_day, per_month",
            ),
        }
        out.insert(name.clone(), plan);
    }
    out
}

fn rate_limit(c: &mut Checker, raw: &RawRateLimit, store: &StoreConfig) -> RateLimitConfig {
    let default_per_minute = match &raw.default_per_minute {
        None => NonZeroU32::new(DEFAULT_PER_MINUTE),
        Some(n) => u32::try_from(*n.get_ref()).ok().and_then(NonZeroU32::new).or_else(|| {
            c.problem(Some(n), "rate_limit.default_per_minute", "must be a whole number, 1 or more");
            None
        }),
    }
    .unwrap_or(NonZeroU32::MIN);
    let algorithm = c.choice(
        &raw.algorithm,
        "rate_limit.algorithm",
        &[("fixed_window", Algorithm::FixedWindow), ("sliding_window", Algorithm::SlidingWindow)],
        Algorithm::FixedWindow,
    );
    let use_redis = c.choice(&raw.backend, "rate_limit.backend", &[("local", false), ("redis", true)], false);
    let backend = if use_redis {
        let target = match (&raw.url, &store.backend) {
            (Some(u), _) => redis_target(c, u, "rate_limit.url", raw.cluster.unwrap_or(false)),
            (None, StoreBackend::Redis(target)) => target.clone(),
            (None, StoreBackend::Sqlite { .. }) => {
                c.problem(raw.backend.as_ref(), "rate_limit.url", "backend \"redis\" needs rate_limit.url (or a redis store)");
                RedisTarget { url: String::new(), cluster: false }
            }
        };
        LimiterBackend::Redis(target)
    } else {
        LimiterBackend::Local
    };
    let on_redis_error = redis_policy(c, &raw.on_redis_error, "rate_limit.on_redis_error").unwrap_or(RedisErrorPolicy::Local);
    let nodes_hint = c.positive(&raw.nodes_hint, "rate_limit.nodes_hint", 1);
    RateLimitConfig {
        default_per_minute,
        algorithm,
        backend,
        ietf_headers: raw.ietf_headers.unwrap_or(true),
        on_redis_error,
        nodes_hint: u32::try_from(nodes_hint).ok().and_then(NonZeroU32::new).unwrap_or(NonZeroU32::MIN),
        redis_timeout: c.duration(&raw.redis_timeout, "rate_limit.redis_timeout", DEFAULT_REDIS_LIMITER_TIMEOUT),
        scope: c.choice(
            &raw.scope,
            "rate_limit.scope",
            &[("key", LimitScope::Key), ("owner", LimitScope::Owner)],
            LimitScope::Key,
        ),
        shadow: raw.shadow,
        max_in_flight: raw.max_in_flight.as_ref().and_then(|n| {
            let limit = u32::try_from(*n.get_ref()).ok().and_then(NonZeroU32::new);
            if limit.is_none() {
                c.problem(Some(n), "rate_limit.max_in_flight", "must be a whole number, 1 or more");
            }
            limit
        }),
        slot_ttl: {
            let ttl = c.duration(&raw.slot_ttl, "rate_limit.slot_ttl", DEFAULT_SLOT_TTL);
            if !(MIN_SLOT_TTL..=MAX_SLOT_TTL).contains(&ttl) {
                c.problem(raw.slot_ttl.as_ref(), "rate_limit.slot_ttl", "must be from 3s to 1h");
            }
            ttl
        },
    }
}

/// The longest pause inside an event stream, by default and at most.
const DEFAULT_STREAM_PAUSE: Duration = Duration::from_secs(300);
const MAX_STREAM_PAUSE: Duration = Duration::from_secs(86_400);

/// How long a shared in-flight slot lives unrenewed, by default and at
/// most: renewed every third of it, it must outlast a slow renewal, and
/// a dead node's slots must come back in reasonable time.
const DEFAULT_SLOT_TTL: Duration = Duration::from_secs(30);
const MIN_SLOT_TTL: Duration = Duration::from_secs(3);
const MAX_SLOT_TTL: Duration = Duration::from_secs(3600);

pub(super) fn redis_policy(c: &mut Checker, v: &Option<Spanned<String>>, field: &str) -> Option<RedisErrorPolicy> {
    v.as_ref()?;
    let options = [("local", RedisErrorPolicy::Local), ("deny", RedisErrorPolicy::Deny), ("allow", RedisErrorPolicy::Allow)];
    Some(c.choice(v, field, &options, RedisErrorPolicy::Local))
}

fn keys(c: &mut Checker, raw: &RawKeys) -> KeysConfig {
    let brand = match &raw.brand {
        None => DEFAULT_BRAND.to_string(),
        Some(b) => {
            let ok =
                !b.get_ref().is_empty() && b.get_ref().len() <= 16 && b.get_ref().chars().all(|ch| ch.is_ascii_alphanumeric());
            if !ok {
                c.problem(Some(b), "keys.brand", "must be 1-16 ASCII letters or digits");
            }
            b.get_ref().clone()
        }
    };
    KeysConfig {
        brand,
        cache_ttl: c.duration(&raw.cache_ttl, "keys.cache_ttl", DEFAULT_CACHE_TTL),
        negative_cache_ttl: c.duration(&raw.negative_cache_ttl, "keys.negative_cache_ttl", DEFAULT_NEGATIVE_CACHE_TTL),
        usage_flush_interval: c.duration(&raw.usage_flush_interval, "keys.usage_flush_interval", DEFAULT_USAGE_FLUSH_INTERVAL),
    }
}

fn upstreams(c: &mut Checker, path: &Path, raw: &[RawUpstream]) -> Vec<Upstream> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, u) in raw.iter().enumerate() {
        let field = format!("upstreams[{i}]");
        if !seen.insert(u.name.get_ref().clone()) {
            c.problem(Some(&u.name), format!("{field}.name"), format!("upstream `{}` is declared twice", u.name.get_ref()));
        }
        let uri: http::Uri = match u.url.get_ref().parse() {
            Ok(uri) => uri,
            Err(e) => {
                c.problem(Some(&u.url), format!("{field}.url"), format!("not a URL: {e}"));
                continue;
            }
        };
        let (Some(scheme), Some(origin)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
            c.problem(Some(&u.url), format!("{field}.url"), "must be absolute, like http://127.0.0.1:9000");
            continue;
        };
        let https = scheme == http::uri::Scheme::HTTPS;
        if scheme != http::uri::Scheme::HTTP && !https {
            c.problem(Some(&u.url), format!("{field}.url"), "must start with http:// or https://");
        }
        if uri.query().is_some() {
            c.problem(Some(&u.url), format!("{field}.url"), "must not carry a query string");
        }
        if origin.as_str().contains('@') {
            c.problem(Some(&u.url), format!("{field}.url"), "must not carry a user name or password");
        }
        let targets = upstream_targets(c, &field, u, &scheme, &origin);
        let tls = if https {
            upstream_tls(c, path, &field, u, &origin)
        } else {
            for (set, key) in [
                (u.ca_file.is_some(), "ca_file"),
                (u.client_cert.is_some(), "client_cert"),
                (u.server_name.is_some(), "server_name"),
            ] {
                if set {
                    c.problem(Some(&u.url), format!("{field}.{key}"), "only applies to an https:// upstream");
                }
            }
            None
        };
        let balance = c.choice(
            &u.balance,
            &format!("{field}.balance"),
            &[("round_robin", Balance::RoundRobin), ("least_outstanding", Balance::LeastOutstanding)],
            Balance::RoundRobin,
        );
        let health = match &u.health {
            None => DEFAULT_HEALTH,
            Some(h) => Health {
                failures: c.positive(&h.failures, &format!("{field}.health.failures"), DEFAULT_HEALTH.failures.into()).min(1000)
                    as u32,
                eject: c.duration(&h.eject, &format!("{field}.health.eject"), DEFAULT_HEALTH.eject),
                statuses: {
                    let mut set = crate::config::StatusSet::NONE;
                    for (j, s) in h.statuses.iter().enumerate() {
                        match u16::try_from(*s.get_ref()).ok().filter(|n| (100..=599).contains(n)) {
                            Some(n) => set.insert(n),
                            None => {
                                c.problem(Some(s), format!("{field}.health.statuses[{j}]"), "must be an HTTP status, 100 to 599")
                            }
                        }
                    }
                    set
                },
            },
        };
        out.push(Upstream {
            name: u.name.get_ref().clone(),
            origin,
            scheme,
            base_path: uri.path().trim_end_matches('/').to_string(),
            timeout: c.duration(&u.timeout, &format!("{field}.timeout"), DEFAULT_UPSTREAM_TIMEOUT),
            connect_timeout: c.duration(
                &u.connect_timeout,
                &format!("{field}.connect_timeout"),
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            ),
            targets,
            tls,
            balance,
            health,
        });
    }
    out
}

/// Most targets one upstream may list.
pub const MAX_TARGETS: usize = 64;

/// `targets`: `scheme://host:port` each, the URL's scheme, no path; none
/// given means the URL's own authority.
fn upstream_targets(
    c: &mut Checker,
    field: &str,
    u: &RawUpstream,
    scheme: &http::uri::Scheme,
    origin: &http::uri::Authority,
) -> Vec<http::uri::Authority> {
    if u.targets.is_empty() {
        return vec![origin.clone()];
    }
    if u.targets.len() > MAX_TARGETS {
        c.problem(Some(&u.targets[MAX_TARGETS]), format!("{field}.targets"), format!("at most {MAX_TARGETS} targets"));
    }
    let mut out: Vec<http::uri::Authority> = Vec::new();
    for (j, t) in u.targets.iter().enumerate() {
        let at = format!("{field}.targets[{j}]");
        let parsed: Option<http::Uri> = t.get_ref().parse().ok();
        let Some((s, a)) = parsed.as_ref().and_then(|p| Some((p.scheme()?, p.authority()?))) else {
            c.problem(Some(t), at, format!("`{}` is not a URL like {scheme}://10.0.0.5:8443", t.get_ref()));
            continue;
        };
        if s != scheme {
            c.problem(Some(t), at, format!("must use the url's scheme ({scheme}://)"));
        } else if parsed.as_ref().is_some_and(|p| !matches!(p.path(), "" | "/") || p.query().is_some()) {
            c.problem(Some(t), at, "a target is an address only: the path comes from url");
        } else if a.as_str().contains('@') {
            c.problem(Some(t), at, "must not carry a user name or password");
        } else if out.contains(a) {
            c.problem(Some(t), at, format!("`{a}` is listed twice"));
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// An authority's host without the brackets of an IPv6 literal: the name a
/// certificate is checked against.
fn bare_host(a: &http::uri::Authority) -> &str {
    a.host().trim_start_matches('[').trim_end_matches(']')
}

/// `ca_file`, `client_cert` and `server_name` of an https:// upstream.
fn upstream_tls(
    c: &mut Checker,
    path: &Path,
    field: &str,
    u: &RawUpstream,
    origin: &http::uri::Authority,
) -> Option<crate::http1::TlsTarget> {
    use crate::tls::{self, TlsProblem};
    let ca = u.ca_file.as_ref().map(|f| relative_to(path, f.get_ref()));
    let cert = u.client_cert.as_ref().map(|cc| (relative_to(path, cc.cert.get_ref()), relative_to(path, cc.key.get_ref())));
    let host = bare_host(origin);
    let name = u.server_name.as_ref().map_or(host, |n| n.get_ref().as_str());
    match tls::target(ca.as_deref(), cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())), name) {
        Ok(t) => Some(t),
        Err(problem) => {
            let (at, key, msg) = match problem {
                TlsProblem::CaFile(m) => (u.ca_file.as_ref().map(|f| f.span()), "ca_file", m),
                TlsProblem::Cert(m) => (u.client_cert.as_ref().map(|cc| cc.cert.span()), "client_cert.cert", m),
                TlsProblem::Key(m) => (u.client_cert.as_ref().map(|cc| cc.key.span()), "client_cert.key", m),
                TlsProblem::ServerName(m) => (u.server_name.as_ref().map(|n| n.span()), "server_name", m),
            };
            c.problem_at(at.or(Some(u.url.span())), format!("{field}.{key}"), msg);
            None
        }
    }
}

/// `[tracing]`: an http(s) collector URL, a ratio in 0..=1.
fn tracing(c: &mut Checker, path: &Path, raw: &RawTracing) -> Option<TracingConfig> {
    let mut collector = outbound(
        c,
        path,
        (raw.otlp_endpoint.get_ref(), Some(raw.otlp_endpoint.span())),
        "tracing.otlp_endpoint",
        raw.ca_file.as_ref(),
    )?;
    if matches!(collector.uri.path(), "" | "/") {
        let scheme = collector.uri.scheme_str().unwrap_or("http");
        collector.uri = format!("{scheme}://{}/v1/traces", collector.authority).parse().ok()?;
    }
    let sample_ratio = match &raw.sample_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
        Some(r) => {
            c.problem(Some(r), "tracing.sample_ratio", "must be between 0 and 1");
            1.0
        }
    };
    Some(TracingConfig { collector, service_name: raw.service_name.clone().unwrap_or_else(|| "keygate".into()), sample_ratio })
}

/// An http(s) URL keygate calls (`field`), with the `ca_file` that may go
/// with an https one (the field beside it).
/// `at` is `None` for a default, which has no line.
fn outbound(
    c: &mut Checker,
    path: &Path,
    (url, at): (&str, Option<std::ops::Range<usize>>),
    field: &str,
    ca_file: Option<&Spanned<String>>,
) -> Option<Outbound> {
    let parsed: Option<http::Uri> = url.parse().ok();
    let Some((scheme, authority, uri)) = parsed.and_then(|u| Some((u.scheme()?.clone(), u.authority()?.clone(), u))) else {
        c.problem_at(at.clone(), field, "must be a URL like https://example.com/path");
        return None;
    };
    let https = scheme == http::uri::Scheme::HTTPS;
    if scheme != http::uri::Scheme::HTTP && !https {
        c.problem_at(at.clone(), field, "must start with http:// or https://");
        return None;
    }
    if authority.as_str().contains('@') {
        c.problem_at(at.clone(), field, "must not carry a user name or password");
        return None;
    }
    let ca_field = match field.rsplit_once('.') {
        Some((table, _)) => format!("{table}.ca_file"),
        None => "ca_file".into(),
    };
    let tls = if https {
        let ca = ca_file.map(|f| relative_to(path, f.get_ref()));
        match crate::tls::target(ca.as_deref(), None, bare_host(&authority)) {
            Ok(t) => Some(t),
            Err(e) => {
                c.problem_at(ca_file.map(Spanned::span).or(at), ca_field, e.message());
                return None;
            }
        }
    } else {
        if ca_file.is_some() {
            c.problem(ca_file, ca_field, "only applies to an https:// URL");
        }
        None
    };
    Some(Outbound { uri, authority, tls })
}

/// `[cors]`, checked whole.
fn cors(c: &mut Checker, raw: Option<&RawCors>) -> Option<crate::policy::cors::CorsPolicy> {
    use crate::policy::cors::{CorsPolicy, CorsSettings};
    let raw = raw?;
    fn list(v: &Option<Spanned<Vec<String>>>) -> Option<Vec<&str>> {
        v.as_ref().map(|l| l.get_ref().iter().map(String::as_str).collect())
    }
    let settings = CorsSettings {
        origins: raw.allowed_origins.get_ref().iter().map(String::as_str).collect(),
        methods: list(&raw.allowed_methods),
        headers: list(&raw.allowed_headers),
        expose: list(&raw.expose_headers),
        credentials: raw.allow_credentials.as_ref().is_some_and(|b| *b.get_ref()),
        max_age: raw.max_age.as_ref().map(|_| c.duration(&raw.max_age, "cors.max_age", Duration::ZERO)),
    };
    match CorsPolicy::new(&settings) {
        Ok(p) => Some(p),
        Err(e) => {
            let span = match e.field {
                "allowed_methods" => raw.allowed_methods.as_ref().map(|s| s.span()),
                "allowed_headers" => raw.allowed_headers.as_ref().map(|s| s.span()),
                "expose_headers" => raw.expose_headers.as_ref().map(|s| s.span()),
                "allow_credentials" => raw.allow_credentials.as_ref().map(|s| s.span()),
                _ => Some(raw.allowed_origins.span()),
            };
            let field = match e.index {
                Some(i) => format!("cors.{}[{i}]", e.field),
                None => format!("cors.{}", e.field),
            };
            c.problem_at(span, field, e.message);
            None
        }
    }
}

/// `admin.allowed_hosts`: host names, addresses or networks.
fn allowed_hosts(c: &mut Checker, raw: &[Spanned<String>]) -> crate::policy::hosts::AllowedHosts {
    let mut out = crate::policy::hosts::AllowedHosts::default();
    for (i, entry) in raw.iter().enumerate() {
        if let Err(e) = out.add(entry.get_ref()) {
            c.problem(Some(entry), format!("admin.allowed_hosts[{i}]"), e);
        }
    }
    out
}

/// `[[admin.tokens]]`: unique names (`admin` is the `token_env` token's),
/// 64 hex digits of SHA-256, known scopes.
fn admin_tokens(c: &mut Checker, raw: &[RawAdminToken]) -> Vec<AdminToken> {
    let mut out: Vec<AdminToken> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let field = format!("admin.tokens[{i}]");
        let name = t.name.get_ref();
        if let Err(e) = AdminToken::check_name(name) {
            c.problem(Some(&t.name), format!("{field}.name"), e);
        } else if out.iter().any(|o| o.name == *name) {
            c.problem(Some(&t.name), format!("{field}.name"), format!("token `{name}` is declared twice"));
        }
        let hash = crate::keys::token::TokenHash::from_hex(t.sha256.get_ref());
        if hash.is_none() {
            c.problem(
                Some(&t.sha256),
                format!("{field}.sha256"),
                "must be the 64 hex digits of the token's SHA-256 (`keygate admin-token new` prints it)",
            );
        }
        let mut scopes = Scopes::default();
        for s in t.scopes.get_ref() {
            match Scopes::parse(s) {
                Some(one) => scopes = scopes.union(one),
                None => c.problem(
                    Some(&t.scopes),
                    format!("{field}.scopes"),
                    format!("unknown scope `{s}` (read, write, verify, leaks or admin)"),
                ),
            }
        }
        if t.scopes.get_ref().is_empty() {
            c.problem(Some(&t.scopes), format!("{field}.scopes"), "a token needs at least one scope");
        }
        if let Some(hash) = hash {
            out.push(AdminToken { name: name.clone(), hash, scopes });
        }
    }
    out
}
