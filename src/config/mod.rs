//! Configuration: `raw` is the file as serde reads it, `validate` turns it
//! into the typed [`Config`] below, refusing anything wrong with a message
//! that names the file, line and field. The running gateway keeps its
//! `Config` inside one `ArcSwap` (see [`crate::state`]), so a reload is atomic
//! and a bad file keeps the old config.

mod duration;
mod raw;
mod validate;

pub use duration::parse_duration;

use crate::keys::model::Env;
use crate::policy::permissions::Catalogue;
use crate::policy::routes::RouteTable;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where `keygate` looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "gateway.toml";
/// Default data listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener: loopback only, so nothing is exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";
/// Environment variable holding the admin API bearer token.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "KEYGATE_ADMIN_TOKEN";
/// Default SQLite file.
pub const DEFAULT_SQLITE_PATH: &str = "keygate.db";
/// Requests per minute of a key with neither its own limit nor a plan.
pub const DEFAULT_PER_MINUTE: u32 = 60;
/// Prefix of generated tokens.
pub const DEFAULT_BRAND: &str = "kg";
/// Largest request head (request line plus headers) a client may send.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields one request may carry.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Largest request body forwarded (1 GiB); bodies are streamed, never buffered.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// Time a client has to send a whole request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause allowed between two chunks of a request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in flight and no traffic is closed after this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long requests in flight get to finish after a shutdown signal.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Open client connections a node accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time the upstream has to answer with a response head (else 504).
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to open a TCP connection to the upstream (else 502).
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Safety-net lifetime of a cached key; changes are pushed or polled sooner.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Lifetime of a cached "no such key" answer.
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// How often the SQLite change sequence is polled.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a key lookup may take on the request path before 503 (SQLite).
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for Redis, where a slow answer means a sick server.
pub const DEFAULT_REDIS_STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest a rate-limit call to Redis may take before the fallback applies.
pub const DEFAULT_REDIS_LIMITER_TIMEOUT: Duration = Duration::from_millis(50);
/// How often `lastUsed` and usage counts are written to the store.
pub const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from (relative paths inside it are resolved
    /// against that file's folder).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub rate_limit: RateLimitConfig,
    pub keys: KeysConfig,
    /// Plans by name.
    pub plans: BTreeMap<String, Plan>,
    pub upstreams: Vec<Upstream>,
    pub catalogue: Catalogue,
    pub routes: RouteTable,
    pub roles: Vec<RoleSeed>,
    /// `[cors]`, if browsers on other origins may call.
    pub cors: Option<crate::policy::cors::CorsPolicy>,
    /// `[log] format`.
    pub log_format: LogFormat,
    /// `[tracing]`, if spans are exported.
    pub tracing: Option<TracingConfig>,
    /// `[leaks]`.
    pub leaks: LeaksConfig,
    /// `[[webhooks]]`.
    pub webhooks: Vec<Webhook>,
    /// `[events]`.
    pub events: EventsConfig,
    /// `[abuse] failed_credentials`: 401s a minute an address may have
    /// before it is blocked, and for how long.
    pub failed_credentials: Option<GuardPolicy>,
    /// `[realtime]`: long-lived connections.
    pub realtime: Realtime,
}

/// `[realtime]`, checked.
#[derive(Debug, Clone, Copy)]
pub struct Realtime {
    /// Event streams and WebSockets one key may hold open on a node.
    pub per_key_connections: u32,
    /// The longest pause in an event stream, and the longest a WebSocket
    /// may carry no frame either way.
    pub idle_timeout: Duration,
}

/// `[abuse] failed_credentials`, checked: what the failed-credential
/// guard (`ratelimit::guard`) enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardPolicy {
    /// 401s a minute an address may have; one more blocks it.
    pub per_minute: u32,
    pub block_for_ms: i64,
}

/// How long an address that guessed too often is blocked, by default.
pub const DEFAULT_BLOCK_FOR: Duration = Duration::from_secs(15 * 60);

/// `[events]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsConfig {
    /// How long before a key's expiry each `key.expiring` is sent, longest first.
    pub expiry_notice: Vec<Duration>,
    /// Percentages of a quota window at which `quota.threshold` is sent, ascending.
    pub quota_thresholds: Vec<u8>,
    pub credits_low: CreditsLow,
    /// How often expiries are looked for.
    pub check_interval: Duration,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            expiry_notice: vec![Duration::from_secs(7 * 86_400), Duration::from_secs(86_400)],
            quota_thresholds: vec![80, 100],
            credits_low: CreditsLow::Percent(10),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// Below what balance `credits.low` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditsLow {
    /// A share of the key's refill amount (keys without a refill: never).
    Percent(u8),
    Units(u64),
}

impl CreditsLow {
    /// The balance below which a key with these terms is low.
    pub fn bound(self, refill_amount: Option<u64>) -> Option<i64> {
        match self {
            CreditsLow::Percent(p) => refill_amount.map(|r| (r.saturating_mul(u64::from(p)) / 100) as i64),
            CreditsLow::Units(n) => Some(n.min(i64::MAX as u64) as i64),
        }
    }
}

/// Longest a webhook endpoint gets to answer, by default and at most.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failing delivery is tried again before it is dead, by
/// default and at most.
pub const DEFAULT_WEBHOOK_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);
pub const MAX_WEBHOOK_RETRY_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest wait between two tries of a failing delivery, by default.
pub const DEFAULT_WEBHOOK_MAX_RETRY_INTERVAL: Duration = Duration::from_secs(3600);

/// One `[[webhooks]]` endpoint, checked.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// What its deliveries are kept under (default: its URL).
    pub name: String,
    pub to: Outbound,
    pub secret: Arc<crate::webhooks::SigningSecret>,
    /// The event types it hears of; empty: all.
    pub events: Vec<String>,
    pub timeout: Duration,
    pub retry_for: Duration,
    /// The longest wait between two tries of a failing delivery: how long
    /// an endpoint back from an outage waits at most for its backlog.
    pub max_retry_interval: Duration,
}

/// An http(s) URL keygate itself calls, checked: the URL, where to
/// connect, and (for https) how to trust the peer.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub uri: http::Uri,
    pub authority: http::uri::Authority,
    pub tls: Option<crate::http1::TlsTarget>,
}

/// Where GitHub's secret scanning reports are believed from.
pub const DEFAULT_GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// Where GitHub posts its reports, unless `[leaks.github] path` says otherwise.
pub const DEFAULT_GITHUB_LEAKS_PATH: &str = "/.well-known/keygate/github-secret-scanning";

/// `[leaks]`.
#[derive(Debug, Clone, Default)]
pub struct LeaksConfig {
    /// What a report from the admin API or the CLI does.
    pub on_leak: OnLeak,
    /// `[leaks.github]`, when GitHub's reports are taken.
    pub github: Option<GithubLeaks>,
}

/// What a reported key's leak does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnLeak {
    /// The key is disabled on every node (and audited).
    #[default]
    Disable,
    /// The key keeps working; the leak is audited for an operator to act on.
    Flag,
}

impl OnLeak {
    /// The choices, as written in the file.
    pub const CHOICES: [(&'static str, OnLeak); 2] = [("disable", OnLeak::Disable), ("flag", OnLeak::Flag)];
}

/// `[leaks.github]`, checked.
#[derive(Debug, Clone)]
pub struct GithubLeaks {
    /// The data listener's path GitHub posts to.
    pub path: String,
    pub keys: KeyListSource,
    pub on_leak: OnLeak,
}

/// Where GitHub's signing keys are read from.
#[derive(Debug, Clone)]
pub enum KeyListSource {
    /// Fetched (and fetched again when a report names a key not yet seen).
    Url(Outbound),
    /// A copy of the same JSON, for air-gapped nodes and tests: read at
    /// load (`keys`), and again when a report names a key not in it.
    File { path: PathBuf, keys: crate::leaks::SigningKeys },
}

/// One `[plans.*]` entry: the limits a key on the plan gets unless it has
/// its own. `None`: the default (per minute) or no limit (longer windows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    pub per_minute: Option<NonZeroU32>,
    pub quota: crate::keys::model::Quota,
    /// Its windows are tried, not enforced: a refusal is forwarded and
    /// told to the upstream (`X-Keygate-Shadow`).
    pub shadow: bool,
    /// Requests of a key on the plan in flight at once.
    pub max_in_flight: Option<NonZeroU32>,
}

/// The limits that apply to one key, its own beating its plan's beating
/// the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_minute: u32,
    pub quota: crate::keys::model::Quota,
}

/// Whose counters a request counts in (`rate_limit.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Each key its own.
    Key,
    /// Keys with the same (non-empty) owner share every counter.
    Owner,
}

/// `[tracing]`, checked.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// Where spans are POSTed (`/v1/traces` added to a bare origin).
    pub collector: Outbound,
    pub service_name: String,
    /// Share of new traces recorded (a caller's sampled flag is followed).
    pub sample_ratio: f64,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `key=value` text, for people.
    #[default]
    Text,
    /// One JSON object per line, for Loki, Elasticsearch and the like.
    Json,
}

impl LogFormat {
    /// The choices, as written in the file.
    pub const CHOICES: [(&'static str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

    /// The format to start logging with, before the file is checked:
    /// `KEYGATE_LOG_FORMAT` if set, else `[log] format` read on its own
    /// (a file that does not parse is reported once logging runs).
    pub fn early(path: &Path) -> LogFormat {
        let pick = |name: &str| LogFormat::CHOICES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);
        if let Some(f) = std::env::var("KEYGATE_LOG_FORMAT").ok().as_deref().and_then(pick) {
            return f;
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let value: Option<toml::Table> = toml::from_str(&text).ok();
        value
            .as_ref()
            .and_then(|t| t.get("log")?.get("format")?.as_str().map(str::to_string))
            .as_deref()
            .and_then(pick)
            .unwrap_or_default()
    }
}

/// `[server]`.
#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub environment: Env,
    pub trusted_proxies: Vec<IpNet>,
    pub tls: Option<TlsSettings>,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// How long requests in flight get to finish after SIGTERM.
    pub drain_timeout: Duration,
    pub max_connections: usize,
    /// Threads serving the data listener, each with its own event loop.
    pub workers: usize,
    /// What becomes of client header names with `_` in them.
    pub underscore_headers: Underscores,
    /// Client addresses refused (403 `ip_denied`) before anything else:
    /// `deny` and the lines of `deny_file` (`None`: no list).
    pub deny: Option<Box<crate::policy::ip::DenyList>>,
}

/// `server.underscore_headers`: header names with `_`, which CGI, WSGI,
/// PHP-FPM and Rack backends read as if it were `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Not forwarded (nginx's default).
    #[default]
    Drop,
    /// The request is refused (400).
    Reject,
    /// Forwarded, except where the name with `_` read as `-` would be
    /// dropped: a look-alike of a framing, identity or credential header
    /// meets the fate of the header it imitates.
    Allow,
}

/// Loaded TLS material; loading at validation is how an unreadable file is
/// refused at start rather than at the first handshake.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// `[admin]`.
#[derive(Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The variable holding the full-scope token named `admin`.
    pub token_env: String,
    /// `[[admin.tokens]]`, by hash.
    pub tokens: Vec<AdminToken>,
    /// The `Host` values answered beside loopback (`admin.allowed_hosts`).
    pub allowed_hosts: crate::policy::hosts::AllowedHosts,
}

/// A named admin token with the scopes it grants.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub name: String,
    pub hash: crate::keys::token::TokenHash,
    pub scopes: Scopes,
}

impl AdminToken {
    /// Whether `name` may name a token of `[[admin.tokens]]`: shown in the
    /// audit log, so plain, and never `admin` (the `token_env` token's).
    pub fn check_name(name: &str) -> Result<(), String> {
        let plain = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !plain {
            return Err("must be 1-64 lowercase letters, digits, '-', '_' or '.'".into());
        }
        if name == "admin" {
            return Err("`admin` is the name of the admin.token_env token".into());
        }
        Ok(())
    }
}

/// What an admin token may do: `read` (GET), `write` (changes), `verify`
/// (`POST /verify`), `leaks` (`POST /v1/leaks`: a scanner reports tokens
/// it found), or `admin` (all of them, and export and import).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub const READ: Scopes = Scopes(1);
    pub const WRITE: Scopes = Scopes(2);
    pub const VERIFY: Scopes = Scopes(4);
    pub const LEAKS: Scopes = Scopes(16);
    pub const ADMIN: Scopes = Scopes(16 | 8 | 4 | 2 | 1);
    /// Every scope name, in the order they are shown.
    pub const NAMES: [(&'static str, Scopes); 5] = [
        ("read", Scopes::READ),
        ("write", Scopes::WRITE),
        ("verify", Scopes::VERIFY),
        ("leaks", Scopes::LEAKS),
        ("admin", Scopes::ADMIN),
    ];

    pub fn parse(name: &str) -> Option<Scopes> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }

    /// Whether these scopes grant everything `needed` names.
    pub fn grants(self, needed: Scopes) -> bool {
        self.0 & needed.0 == needed.0
    }

    /// The names these scopes hold (`admin` alone when it is there).
    pub fn names(self) -> Vec<&'static str> {
        if self.grants(Scopes::ADMIN) {
            return vec!["admin"];
        }
        Self::NAMES.iter().filter(|(_, s)| *s != Scopes::ADMIN && self.grants(*s)).map(|(n, _)| *n).collect()
    }
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub poll_interval: Duration,
    /// Longest a key lookup may take on the request path (then 503).
    pub timeout: Duration,
}

/// Which store holds keys and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite { path: PathBuf },
    Redis(RedisTarget),
}

/// A Redis deployment: one server, or a cluster reached through seed URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://host:port/db`; for a cluster, seeds separated by commas.
    pub url: String,
    pub cluster: bool,
}

impl RedisTarget {
    /// `redis://a:1,redis://b:2` -> the seed URLs.
    pub fn seeds(&self) -> Vec<String> {
        redis_seeds(&self.url)
    }
}

/// The seed URLs of a comma-separated list.
pub fn redis_seeds(url: &str) -> Vec<String> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// `[rate_limit]`.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub default_per_minute: NonZeroU32,
    pub algorithm: Algorithm,
    pub backend: LimiterBackend,
    pub ietf_headers: bool,
    pub on_redis_error: RedisErrorPolicy,
    pub nodes_hint: NonZeroU32,
    /// Longest a limiter call to Redis may take before the fallback applies.
    pub redis_timeout: Duration,
    pub scope: LimitScope,
    /// Every limit is tried, not enforced.
    pub shadow: bool,
    /// Requests of one key (or owner) in flight at once, unless its plan
    /// or the key says otherwise; `None`: no such limit.
    pub max_in_flight: Option<NonZeroU32>,
    /// How long a shared in-flight slot lives unrenewed: a node killed
    /// with slots held frees them within it.
    pub slot_ttl: Duration,
}

/// How a minute's quota is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Resets on the minute.
    FixedWindow,
    /// Weighted two-window counter: no double burst at the boundary.
    SlidingWindow,
}

impl Algorithm {
    /// How a window of `period` is counted: calendar windows are always
    /// fixed (a month does not slide into the next).
    pub fn for_period(self, period: crate::clock::Period) -> Algorithm {
        if period.is_calendar() {
            Algorithm::FixedWindow
        } else {
            self
        }
    }
}

/// Where counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimiterBackend {
    Local,
    Redis(RedisTarget),
}

pub use crate::policy::routes::RedisErrorPolicy;

/// `[keys]`.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub brand: String,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub usage_flush_interval: Duration,
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// The URL's authority: every forwarded request's `Host`.
    pub origin: http::uri::Authority,
    pub scheme: http::uri::Scheme,
    /// Path prefix prepended to every forwarded path ("" for none).
    pub base_path: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Where requests go: `targets`, or the URL's own authority.
    pub targets: Vec<http::uri::Authority>,
    /// Set for `https://`: roots, client certificate, expected name.
    pub tls: Option<crate::http1::TlsTarget>,
    pub balance: Balance,
    pub health: Health,
}

/// How a request picks one of an upstream's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// The target with the fewest requests in flight (ties: round robin).
    LeastOutstanding,
}

/// Passive health checking: `failures` failed exchanges in a row take a
/// target out of rotation for `eject`. A failure is a transport failure
/// (connect, reset, timeout, a broken answer), or an answer with one of
/// `statuses` (none by default: a client can ask for a page whose answer
/// is 503, and must not eject a target by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub failures: u32,
    pub eject: Duration,
    pub statuses: StatusSet,
}

/// Default passive health settings.
pub const DEFAULT_HEALTH: Health = Health { failures: 5, eject: Duration::from_secs(10), statuses: StatusSet::NONE };

/// A set of HTTP status codes (100 to 599).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    pub const NONE: StatusSet = StatusSet([0; 10]);

    pub fn insert(&mut self, status: u16) {
        if let Some(word) = self.0.get_mut(usize::from(status / 64)) {
            *word |= 1 << (status % 64);
        }
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.get(usize::from(status / 64)).is_some_and(|w| w & (1 << (status % 64)) != 0)
    }
}

/// A role from `[[roles]]`, created in the store when absent.
#[derive(Debug, Clone)]
pub struct RoleSeed {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

/// Why a config file was refused: every problem found, each with its place.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem { line: None, field: "(file)".into(), message: format!("cannot read: {e}") }],
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        validate::validate(path, text)
    }

    /// The upstream a route forwards to.
    pub fn upstream(&self, index: usize) -> Option<&Upstream> {
        self.upstreams.get(index)
    }

    /// Requests per minute for a key with these settings.
    pub fn limit_for(&self, own: Option<u32>, plan: Option<&str>) -> u32 {
        self.per_minute(own, plan.and_then(|p| self.plans.get(p)))
    }

    /// A key's own per-minute limit, else its plan's, else the default.
    fn per_minute(&self, own: Option<u32>, plan: Option<&Plan>) -> u32 {
        own.filter(|n| *n > 0)
            .or_else(|| plan?.per_minute.map(NonZeroU32::get))
            .unwrap_or(self.rate_limit.default_per_minute.get())
    }

    /// What loads but cannot be what was meant: each plan (and the default
    /// limit) whose smallest window is below a route's cost, so that a key
    /// on it can never call that route. `(field path, message)`.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let admin = self.admin.listen.ip();
        if !admin.is_loopback() && self.admin.allowed_hosts == crate::policy::hosts::AllowedHosts::default() {
            out.push((
                "admin.allowed_hosts".to_string(),
                format!(
                    "the admin listener is on {admin}, but answers only requests naming a loopback host (421 for others): \
                     list the names and addresses Prometheus and operators use"
                ),
            ));
        }
        let default = self.rate_limit.default_per_minute.get();
        let mut limits: Vec<(String, Limits)> =
            vec![("rate_limit.default_per_minute".into(), Limits { per_minute: default, quota: Default::default() })];
        for (name, plan) in &self.plans {
            let per_minute = plan.per_minute.map_or(default, NonZeroU32::get);
            limits.push((format!("plans.{name}"), Limits { per_minute, quota: plan.quota }));
        }
        for (field, l) in limits {
            let q = l.quota;
            let windows = [("minute", Some(l.per_minute)), ("hour", q.per_hour), ("day", q.per_day), ("month", q.per_month)];
            let Some((window, smallest)) = windows.into_iter().filter_map(|(w, n)| Some((w, n?))).min_by_key(|(_, n)| *n) else {
                continue;
            };
            for route in self.routes.routes().iter().filter(|r| !r.public && r.cost > smallest) {
                out.push((
                    field.clone(),
                    format!(
                        "its smallest window ({smallest} per {window}) is below the cost of `{}` ({}): \
                         a key on it is refused that route every time",
                        route.pattern, route.cost
                    ),
                ));
            }
        }
        out
    }

    /// Every limit of a key: its own, else its plan's, else the default.
    /// How many of `key`'s requests may be in flight at once: its own
    /// limit, else its plan's, else `[rate_limit]`'s; with whether the
    /// plan set it (and is in shadow mode).
    pub fn in_flight_for(&self, key: &crate::keys::model::ApiKey) -> Option<(u32, bool)> {
        if let Some(own) = key.max_in_flight.filter(|n| *n > 0) {
            return Some((own, false));
        }
        let plan = key.plan.as_deref().and_then(|p| self.plans.get(p));
        if let Some(n) = plan.and_then(|p| p.max_in_flight) {
            return Some((n.get(), plan.is_some_and(|p| p.shadow)));
        }
        self.rate_limit.max_in_flight.map(|n| (n.get(), false))
    }

    pub fn limits_for(&self, key: &crate::keys::model::ApiKey) -> Limits {
        let plan = key.plan.as_deref().and_then(|p| self.plans.get(p));
        let (own, of_plan) = (key.quota, plan.map(|p| p.quota).unwrap_or_default());
        Limits {
            per_minute: self.per_minute(key.rate_limit, plan),
            quota: crate::keys::model::Quota {
                per_hour: own.per_hour.or(of_plan.per_hour),
                per_day: own.per_day.or(of_plan.per_day),
                per_month: own.per_month.or(of_plan.per_month),
            },
        }
    }
}
