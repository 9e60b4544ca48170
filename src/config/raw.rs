//! The config file exactly as written: serde structs that refuse unknown
//! fields. Values that need checking are kept as `Spanned` so a validation
//! error can name the line they sit on. `validate/` turns these into the
//! typed [`crate::config::Config`].

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub keys: RawKeys,
    /// `name = 10` (per minute) or a table of `per_minute`, `per_hour`,
    /// `per_day`, `per_month`: read as values so each form gets its own
    /// error message.
    #[serde(default)]
    pub plans: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub modules: Vec<RawModule>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub roles: Vec<RawRole>,
    pub cors: Option<RawCors>,
    #[serde(default)]
    pub log: RawLog,
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub leaks: RawLeaks,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default)]
    pub events: RawEvents,
    #[serde(default)]
    pub abuse: RawAbuse,
    #[serde(default)]
    pub realtime: RawRealtime,
}

/// `[realtime]`: long-lived answers (event streams).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRealtime {
    pub idle_timeout: Option<Spanned<String>>,
    pub per_key_connections: Option<Spanned<i64>>,
}

/// `[abuse]`: guards against credential guessing.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAbuse {
    pub failed_credentials: Option<Spanned<RawFailedCredentials>>,
}

/// `failed_credentials = { per_minute, block_for }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailedCredentials {
    pub per_minute: Spanned<i64>,
    pub block_for: Option<Spanned<String>>,
}

/// `[events]`: when expiry notices and usage thresholds are noticed.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub expiry_notice: Option<Spanned<Vec<String>>>,
    pub quota_thresholds: Option<Spanned<Vec<i64>>>,
    /// `"10%"` of the refill, or a number of credits.
    pub credits_low: Option<Spanned<toml::Value>>,
    pub check_interval: Option<Spanned<String>>,
}

/// `[[webhooks]]`: an endpoint that hears of key lifecycle events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub name: Option<Spanned<String>>,
    pub url: Spanned<String>,
    pub secret_env: Spanned<String>,
    pub events: Option<Spanned<Vec<String>>>,
    pub timeout: Option<Spanned<String>>,
    pub retry_for: Option<Spanned<String>>,
    pub max_retry_interval: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

/// `[leaks]`: what a report of a leaked token does.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLeaks {
    pub on_leak: Option<Spanned<String>>,
    pub github: Option<RawGithubLeaks>,
}

/// `[leaks.github]`: GitHub's secret scanning partner endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithubLeaks {
    pub path: Option<Spanned<String>>,
    pub public_keys_url: Option<Spanned<String>>,
    pub public_keys_file: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub on_leak: Option<Spanned<String>>,
}

/// `[tracing]`: spans exported over OTLP/HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    pub otlp_endpoint: Spanned<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<Spanned<f64>>,
    pub ca_file: Option<Spanned<String>>,
}

/// `[log]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
}

/// `[cors]`: what browsers on other origins may do.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Spanned<Vec<String>>,
    pub allowed_methods: Option<Spanned<Vec<String>>>,
    pub allowed_headers: Option<Spanned<Vec<String>>>,
    pub expose_headers: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub allow_credentials: Option<Spanned<bool>>,
    pub max_age: Option<Spanned<String>>,
}

/// `[server]`: the data listener.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub environment: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub tls: Option<RawTls>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub body_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub workers: Option<Spanned<i64>>,
    pub underscore_headers: Option<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    pub deny_file: Option<Spanned<String>>,
}

/// `[server.tls]`: PEM files for rustls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[admin]`: the operator listener.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub tokens: Vec<RawAdminToken>,
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
}

/// `[[admin.tokens]]`: a named admin token, kept as its hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub name: Spanned<String>,
    pub sha256: Spanned<String>,
    pub scopes: Spanned<Vec<String>>,
}

/// `[store]`: where keys and roles live.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<Spanned<String>>,
    pub path: Option<String>,
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub cluster: bool,
    pub poll_interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `[rate_limit]`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub default_per_minute: Option<Spanned<i64>>,
    pub algorithm: Option<Spanned<String>>,
    pub backend: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub cluster: Option<bool>,
    pub ietf_headers: Option<bool>,
    pub on_redis_error: Option<Spanned<String>>,
    pub nodes_hint: Option<Spanned<i64>>,
    pub redis_timeout: Option<Spanned<String>>,
    pub scope: Option<Spanned<String>>,
    #[serde(default)]
    pub shadow: bool,
    pub max_in_flight: Option<Spanned<i64>>,
    pub slot_ttl: Option<Spanned<String>>,
}

/// `[keys]`: token format and cache tuning.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub brand: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    pub negative_cache_ttl: Option<Spanned<String>>,
    pub usage_flush_interval: Option<Spanned<String>>,
}

/// `[[upstreams]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub url: Spanned<String>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub client_cert: Option<RawClientCert>,
    pub server_name: Option<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub health: Option<RawHealth>,
}

/// `client_cert = { cert, key }`: keygate's certificate for mTLS upstreams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCert {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `health = { failures, eject }`: passive health checking.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub failures: Option<Spanned<i64>>,
    pub eject: Option<Spanned<String>>,
    #[serde(default)]
    pub statuses: Vec<Spanned<i64>>,
}

/// `[[modules]]`: one entry of the permission catalogue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModule {
    pub id: Spanned<String>,
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<RawPermission>,
}

/// One permission inside a module.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermission {
    pub id: Spanned<String>,
    pub label: String,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub permission: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub public: bool,
    pub on_redis_error: Option<Spanned<String>>,
    pub cors: Option<Spanned<bool>>,
    pub cost: Option<Spanned<i64>>,
    pub rate_limit: Option<Spanned<RawRouteLimit>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub shadow: bool,
    pub cost_header: Option<Spanned<String>>,
    pub websocket: Option<Spanned<bool>>,
}

/// A route's own `rate_limit = { per_minute = 5 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteLimit {
    pub per_minute: Spanned<i64>,
}

/// `[[roles]]`: seeded into the store when absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub permissions: Vec<Spanned<String>>,
}
