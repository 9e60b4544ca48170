//! The data model shared by every store, the CLI and the admin API.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A key's environment: `test` keys only work on a `test` gateway and the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    Live,
    Test,
}

impl Env {
    /// The spelling used in tokens, headers and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Env::Live => "live",
            Env::Test => "test",
        }
    }

    /// Parses `live` or `test`.
    pub fn parse(s: &str) -> Option<Env> {
        match s {
            "live" => Some(Env::Live),
            "test" => Some(Env::Test),
            _ => None,
        }
    }
}

/// A key as stored: everything but the secret, which is never kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub key_id: String,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub plan: Option<String>,
    /// Requests per minute of this key alone; `None` falls back to the plan.
    pub rate_limit: Option<u32>,
    pub allowed_ips: Vec<IpNet>,
    pub env: Env,
    pub enabled: bool,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    #[serde(default)]
    pub last_used: Option<i64>,
    #[serde(default)]
    pub usage_count: u64,
    pub metadata: BTreeMap<String, String>,
    /// Masked display form of the current secret.
    pub key_prefix: String,
    /// Hour, day and month quotas of this key alone; each unset one falls
    /// back to the plan's.
    #[serde(default)]
    pub quota: Quota,
    /// Set when the key spends prepaid credits; the balance itself is kept
    /// by the store beside the key (it changes with every request).
    #[serde(default)]
    pub credits: Option<CreditTerms>,
    /// Its permissions, IP allowlist and limits are tried, not enforced:
    /// what they would refuse is forwarded with `X-Keygate-Shadow`.
    #[serde(default)]
    pub shadow: bool,
    /// Requests of this key in flight at once; `None` falls back to the
    /// plan's, then `[rate_limit]`'s.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// 1 when created, +1 with every change to the fields above (not usage,
    /// nor the credit balance): what `If-Match` compares and what every
    /// store write is conditional on.
    #[serde(default = "first_version")]
    pub version: u64,
}

/// The version of a record written before versions existed, or just created.
pub fn first_version() -> u64 {
    1
}

/// Long-period quotas: requests (units of cost) per calendar hour, day and
/// month in UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u32>,
}

/// How a key's credits come back: `refill_amount` at the start of every
/// UTC day or month (the balance is set to it, not added to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditTerms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_interval: Option<RefillInterval>,
}

impl CreditTerms {
    /// The refill, when both its amount and interval are set.
    pub fn refill(&self) -> Option<(u64, RefillInterval)> {
        Some((self.refill_amount?, self.refill_interval?))
    }
}

/// When credits are refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefillInterval {
    Day,
    Month,
}

impl RefillInterval {
    pub fn as_str(self) -> &'static str {
        match self {
            RefillInterval::Day => "day",
            RefillInterval::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<RefillInterval> {
        match s {
            "day" => Some(RefillInterval::Day),
            "month" => Some(RefillInterval::Month),
            _ => None,
        }
    }
}

impl ApiKey {
    /// A key with nothing but its identity set: enabled, no limits, no
    /// expiry, never used; create and import fill in the rest.
    pub fn blank(key_id: String, env: Env, key_prefix: String, created_at: i64) -> ApiKey {
        ApiKey {
            key_id,
            name: String::new(),
            description: String::new(),
            owner: String::new(),
            role: None,
            permissions: Vec::new(),
            plan: None,
            rate_limit: None,
            allowed_ips: Vec::new(),
            env,
            enabled: true,
            expires_at: None,
            created_at,
            last_used: None,
            usage_count: 0,
            metadata: BTreeMap::new(),
            key_prefix,
            quota: Quota::default(),
            credits: None,
            shadow: false,
            max_in_flight: None,
            version: first_version(),
        }
    }
}

/// What an operator sees of a key's state: disabled wins over expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
}

impl KeyStatus {
    pub fn of(key: &ApiKey, now: i64) -> KeyStatus {
        if !key.enabled {
            KeyStatus::Disabled
        } else if key.expires_at.is_some_and(|t| t <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "disabled" => Some(KeyStatus::Disabled),
            "expired" => Some(KeyStatus::Expired),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Disabled => "disabled",
            KeyStatus::Expired => "expired",
        }
    }
}

/// What a token lookup finds: the key and, for a secret replaced by a
/// rotation, the moment it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLookup {
    pub key: ApiKey,
    pub secret_expires_at: Option<i64>,
    /// The `X-Keygate-*` fields this key adds to forwarded requests,
    /// rendered on first use and kept as long as the cached lookup: copied
    /// as they are into every forwarded head.
    identity: OnceLock<crate::http1::FieldLines>,
}

/// Whether a resolved key may be used right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Usable,
    /// The secret presented was replaced by a rotation and its grace ran out.
    SecretRetired,
    Disabled,
    Expired,
    WrongEnvironment,
}

impl KeyLookup {
    /// A lookup result for `key`; `secret_expires_at` is set for a secret
    /// replaced by a rotation.
    pub fn new(key: ApiKey, secret_expires_at: Option<i64>) -> KeyLookup {
        KeyLookup { key, secret_expires_at, identity: OnceLock::new() }
    }

    /// The identity fields for the upstream (see the field), rendered by
    /// `render` on first use: what they are is the proxy's business.
    pub fn identity(&self, render: impl FnOnce(&ApiKey) -> crate::http1::FieldLines) -> &crate::http1::FieldLines {
        self.identity.get_or_init(|| render(&self.key))
    }

    /// Checks, in the contract's order: secret, status, expiry, environment.
    pub fn state(&self, now: i64, gateway_env: Env) -> KeyState {
        if self.secret_expires_at.is_some_and(|t| t <= now) {
            return KeyState::SecretRetired;
        }
        KeyState::of(&self.key, now, gateway_env)
    }
}

impl KeyState {
    /// What the key itself allows, whatever secret was presented: status,
    /// expiry, environment.
    pub fn of(key: &ApiKey, now: i64, gateway_env: Env) -> KeyState {
        match KeyStatus::of(key, now) {
            KeyStatus::Disabled => KeyState::Disabled,
            KeyStatus::Expired => KeyState::Expired,
            KeyStatus::Active if key.env != gateway_env => KeyState::WrongEnvironment,
            KeyStatus::Active => KeyState::Usable,
        }
    }
}

/// A named set of permissions that keys refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    /// As a key's: 1 when created, +1 per change.
    #[serde(default = "first_version")]
    pub version: u64,
}

/// Longest key name, as the reference platforms allow.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest description, owner or metadata value.
pub const MAX_TEXT_CHARS: usize = 500;

/// Role ids appear in URLs and headers: keep them plain.
pub fn validate_role_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("role id `{id}` must be 1-64 lowercase letters, digits, '_' or '-'"))
    }
}

/// Free text that is forwarded in headers and shown to operators must carry
/// no control characters, nor format characters (bidi overrides, zero-width
/// spaces) that make it read otherwise than it is.
pub fn validate_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!("{field} must be at most {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    if let Some(c) = value.chars().find(|c| is_format_char(*c)) {
        return Err(format!("{field} must not contain invisible format characters (found U+{:04X})", c as u32));
    }
    Ok(())
}

/// Whether `c` is of Unicode's general category Cf (format): bidi
/// controls, zero-width characters, the BOM, tags (Unicode 15.1).
pub fn is_format_char(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = c as u32;
    CF.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

/// Metadata names become `X-Keygate-Meta-<Name>` headers.
pub fn validate_metadata(key: &str, value: &str) -> Result<(), String> {
    let ok = !key.is_empty() && key.len() <= 64 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(format!("metadata name `{key}` must be 1-64 letters, digits, '_' or '-'"));
    }
    validate_text(&format!("metadata `{key}`"), value, MAX_TEXT_CHARS)
}

/// Refuses two metadata names that would be one header (`Tier` and
/// `tier`, `a_b` and `a-b`): the upstream would read two conflicting lines.
pub fn validate_metadata_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in names {
        let header = name.to_ascii_lowercase().replace('_', "-");
        if let Some(other) = seen.insert(header.clone(), name) {
            return Err(format!("metadata names `{other}` and `{name}` are the same header X-Keygate-Meta-{header}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_ids() {
        assert!(validate_role_id("read-only").is_ok());
        assert!(validate_role_id("Read Only").is_err());
        assert!(validate_role_id("").is_err());
    }

    #[test]
    fn metadata_names() {
        assert!(validate_metadata("default_optin_mailing", "42").is_ok());
        assert!(validate_metadata("bad name", "x").is_err());
        assert!(validate_metadata("ok", "line\nbreak").is_err());
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_metadata_names(&names(&["tier", "plan_id"])).is_ok());
        for clash in [&["Tier", "tier"][..], &["a_b", "a-b"], &["A_B", "a-b"]] {
            let e = validate_metadata_names(&names(clash)).unwrap_err();
            assert!(e.contains("the same header"), "{clash:?}: {e}");
        }
    }

    #[test]
    fn text_refuses_what_reads_otherwise_than_it_is() {
        assert!(validate_text("name", "Zapier – prod ✓ 日本", 100).is_ok());
        for bad in ["evil\u{202E}gpj.exe", "zero\u{200B}width", "\u{FEFF}bom", "tag\u{E0041}", "soft\u{00AD}hyphen"] {
            let e = validate_text("name", bad, 100).unwrap_err();
            assert!(e.contains("format characters"), "{bad:?}: {e}");
        }
    }
}
