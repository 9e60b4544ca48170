//! Key and role management: the one implementation of every operation,
//! used by the CLI and the admin API alike. Validates input against the
//! config (declared permissions, plans, CIDRs) and names the bad field.

mod apply;
mod blocks;
mod events;
mod leaks;
mod metering;
mod transfer;

pub use metering::{limits_json, CreditsInput, Live, QuotaInput, UsageReport, Verification, MAX_CREDITS};

pub use events::{delivery_status, since_ms, MAX_LISTED};
pub use leaks::{answer_github, matched, report_json, Label, LeakAction, LeakFound, Reported, MAX_REPORTED};
pub use transfer::{json_lines, ImportSummary, KeyLine, RoleLine};

use crate::clock::{self, Moment};
use crate::config::Config;
use crate::decide::{self, Ask, Cost, Decision, KeySource, Means};
use crate::error::GatewayError;
use crate::events::{EventKind, NewEvent};
use crate::keys::model::{self, ApiKey, Env, KeyStatus, Role};
use crate::keys::token::{self, TokenHash};
use crate::store::{AuditEntry, AuditPage, KeyPage, KeyQuery, Rotation, Store, StoreError, UsageSummary};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Longest expiry a key may be given, in days.
pub const MAX_EXPIRY_DAYS: u32 = 365;
/// Longest grace a rotated-out secret may keep working.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// Shown with every newly revealed secret.
pub const SECRET_WARNING: &str = "This API key will only be shown once. Please store it securely.";

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("role `{role}` is used by {keys} key(s): reassign or delete them first")]
    RoleInUse { role: String, keys: u64 },
    /// `If-Match` (or `--if-version`) named another version than the
    /// record has: nothing was changed.
    #[error("{what} is at version {current}, not the version this change was made for: read it again")]
    VersionConflict { what: String, current: u64 },
    #[error("{0}")]
    Store(StoreError),
}

fn invalid(field: &str, message: impl Into<String>) -> ManageError {
    ManageError::Invalid { field: field.into(), message: message.into() }
}

/// `value` if it is free text of at most `max` characters, else the
/// `Invalid` error for `field`.
fn checked_text(field: &str, value: String, max: usize) -> Result<String, ManageError> {
    model::validate_text(field, &value, max).map_err(|m| invalid(field, m))?;
    Ok(value)
}

/// How many times a change is made again when another change lands
/// between its read and its conditional write.
const CHANGE_TRIES: usize = 32;

/// The refusal when every try of a change met another change first.
fn too_busy(what: &str) -> ManageError {
    ManageError::Conflict(format!("{what} changed {CHANGE_TRIES} times while this change was being made: try again"))
}

/// Refuses a change made for another version than the record is at.
fn expected(what: &str, current: u64, expect: Option<u64>) -> Result<(), ManageError> {
    match expect {
        Some(want) if want != current => Err(ManageError::VersionConflict { what: what.into(), current }),
        _ => Ok(()),
    }
}

/// Whether a conditional write lost to another change and may be made
/// again: only when the caller named no version of its own.
fn retry(e: &StoreError, expect: Option<u64>) -> bool {
    matches!(e, StoreError::VersionConflict { .. }) && expect.is_none()
}

fn from_store(e: StoreError, what: &str) -> ManageError {
    match e {
        StoreError::NotFound => ManageError::NotFound(what.into()),
        StoreError::VersionConflict { current } => ManageError::VersionConflict { what: what.into(), current },
        StoreError::BalanceBound { remaining, add } => {
            let bound = if add < 0 { "below 0".to_string() } else { format!("above {MAX_CREDITS}") };
            invalid(
                "add",
                format!("would take the balance of {what} from {remaining} to {}, {bound}", remaining.saturating_add(add)),
            )
        }
        StoreError::Conflict(m) => ManageError::Conflict(m),
        StoreError::RoleInUse { keys } => ManageError::RoleInUse { role: what.into(), keys },
        other => ManageError::Store(other),
    }
}

/// Fields of a key that create and edit accept; `None` leaves a field as it is.
/// Empty strings clear optional fields (role, plan); a rate limit or expiry of 0 removes it.
#[derive(Debug, Clone, Default)]
pub struct KeyInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub role: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub rate_limit: Option<u32>,
    pub plan: Option<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub env: Option<String>,
    pub expires_in_days: Option<u32>,
    /// Unix seconds; `Some(None)` removes the expiry.
    pub expires_at: Option<Option<i64>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub enabled: Option<bool>,
    pub quota: QuotaInput,
    /// `Some(None)`: the key stops spending credits.
    pub credits: Option<Option<CreditsInput>>,
    /// Whether the key's rules are only tried (shadow mode).
    pub shadow: Option<bool>,
    /// Requests in flight at once; 0 removes the key's own limit.
    pub max_in_flight: Option<u32>,
}

/// Fields of a role that create and edit accept.
#[derive(Debug, Clone, Default)]
pub struct RoleInput {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
}

/// Operations over one store, checked against one config; every change is
/// written to the audit log under `actor`.
pub struct Manager<'a> {
    pub store: &'a dyn Store,
    pub config: &'a Config,
    /// Who makes the changes: `cli (<user>)` or `admin-api (<token name>@<address>)`.
    pub actor: String,
    /// The running limiter and credits, when the caller is a gateway (the
    /// admin API): live counts. Without them (the CLI) counts are read
    /// from where they are kept: the store's last flush, or Redis.
    pub meter: Option<Live<'a>>,
}

impl<'a> Manager<'a> {
    /// A manager over a store and config, without a running gateway.
    pub fn new(store: &'a dyn Store, config: &'a Config, actor: impl Into<String>) -> Manager<'a> {
        Manager { store, config, actor: actor.into(), meter: None }
    }
}

impl Manager<'_> {
    /// Records a change. The change itself has happened: a failure to audit
    /// it is logged loudly rather than reported as a failed operation.
    async fn audit(&self, action: &str, target: &str, before: Option<Value>, after: Option<Value>) {
        let entry = AuditEntry {
            at_ms: clock::now_ms(),
            actor: self.actor.clone(),
            action: action.into(),
            target: target.into(),
            before,
            after,
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(action, target, error = %e, "could not write the audit log entry");
        }
    }

    /// The audit log, newest first, optionally for one key or role.
    pub async fn audit_log(&self, target: Option<&str>, offset: u64, limit: u64) -> Result<AuditPage, ManageError> {
        self.store.list_audit(target, offset, limit).await.map_err(ManageError::Store)
    }

    /// Requests of a key over the last hour and day.
    pub async fn usage(&self, key_id: &str) -> Result<UsageSummary, ManageError> {
        self.get_key(key_id).await?;
        self.store.usage_summary(key_id, clock::now_unix()).await.map_err(ManageError::Store)
    }

    /// Creates a key; with `import`, the given token becomes its secret.
    /// Returns the key and the secret, which is shown once and never stored.
    pub async fn create_key(&self, input: KeyInput, import: Option<String>) -> Result<(ApiKey, String), ManageError> {
        if input.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(invalid("name", "is required"));
        }
        let env = match input.env.as_deref() {
            Some(e) => Env::parse(e).ok_or_else(|| invalid("env", "must be \"live\" or \"test\""))?,
            None => self.config.server.environment,
        };
        let brand = &self.config.keys.brand;
        let imported = import.is_some();
        let secret = match import {
            Some(t) => {
                token::validate_import(&t, brand).map_err(|m| invalid("token", m))?;
                t
            }
            None => token::generate(brand, env),
        };
        let mut key = ApiKey::blank(token::new_key_id(), env, token::mask(&secret, brand), clock::now_unix());
        let balance = metering::balance_to_set(&input);
        self.apply(&mut key, input).await?;
        let event = self.key_event(EventKind::KeyCreated, &key, None);
        self.store.insert_key(&key, &TokenHash::of(&secret), Some(&event)).await.map_err(|e| from_store(e, &key.key_id))?;
        if let Some(n) = balance {
            self.set_balance(&key, crate::store::CreditChange::Set(n), None).await?;
        }
        let action = if imported { "key.import" } else { "key.create" };
        self.audit(action, &key.key_id, None, Some(self.key_json(&key))).await;
        Ok((key, secret))
    }

    /// When each of a key's rotated-out secrets that still work stops
    /// working (Unix seconds), latest first; never their hashes.
    pub async fn previous_secrets(&self, key_id: &str) -> Result<Vec<i64>, ManageError> {
        let secrets = self.store.secrets_of(key_id, clock::now_unix()).await.map_err(ManageError::Store)?;
        Ok(secrets.iter().filter_map(|s| s.valid_until).collect())
    }

    /// A page of keys.
    pub async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, ManageError> {
        self.store.list_keys(query).await.map_err(ManageError::Store)
    }

    /// One key by id.
    pub async fn get_key(&self, key_id: &str) -> Result<ApiKey, ManageError> {
        self.store
            .get_key(key_id)
            .await
            .map_err(ManageError::Store)?
            .ok_or_else(|| ManageError::NotFound(format!("key `{key_id}`")))
    }

    /// Changes the given fields of a key; with `expect`, only if the key
    /// is at that version.
    pub async fn edit_key(&self, key_id: &str, input: KeyInput, expect: Option<u64>) -> Result<ApiKey, ManageError> {
        self.change_key(key_id, input, "key.edit", expect).await
    }

    /// [`Manager::write_key_change`], audited as `action`.
    async fn change_key(&self, key_id: &str, input: KeyInput, action: &str, expect: Option<u64>) -> Result<ApiKey, ManageError> {
        let (before, key) = self.write_key_change(key_id, input, expect, None).await?;
        self.audit(action, key_id, Some(self.key_json(&before)), Some(self.key_json(&key))).await;
        Ok(key)
    }

    /// Reads the key, applies `input` and writes it if the key is still at
    /// the version read (another change in between: read again and apply
    /// again), so a change never writes back a field it did not name.
    /// Returns the key before and after. The event written with it is
    /// `key.leaked` with `leak` for a leak, else `key.disabled` or
    /// `key.enabled` when that is what changed, else `key.updated`.
    async fn write_key_change(
        &self,
        key_id: &str,
        input: KeyInput,
        expect: Option<u64>,
        leak: Option<&Value>,
    ) -> Result<(ApiKey, ApiKey), ManageError> {
        let what = format!("key `{key_id}`");
        let balance = metering::balance_to_set(&input);
        for _ in 0..CHANGE_TRIES {
            let before = self.get_key(key_id).await?;
            expected(&what, before.version, expect)?;
            let mut key = before.clone();
            self.apply(&mut key, input.clone()).await?;
            let kind = match (leak, before.enabled, key.enabled) {
                (Some(_), _, _) => EventKind::KeyLeaked,
                (None, true, false) => EventKind::KeyDisabled,
                (None, false, true) => EventKind::KeyEnabled,
                (None, _, _) => EventKind::KeyUpdated,
            };
            let event = self.key_event(kind, &key, leak.map(|l| ("leak", l.clone())));
            match self.store.update_key(&key, Some(&event)).await {
                Ok(()) => key.version += 1,
                Err(e) if retry(&e, expect) => continue,
                Err(e) => return Err(from_store(e, &what)),
            }
            if let Some(n) = balance {
                self.set_balance(&key, crate::store::CreditChange::Set(n), None).await?;
            }
            return Ok((before, key));
        }
        Err(too_busy(&what))
    }

    /// Enables or disables a key.
    pub async fn set_enabled(&self, key_id: &str, enabled: bool, expect: Option<u64>) -> Result<ApiKey, ManageError> {
        let action = if enabled { "key.enable" } else { "key.disable" };
        self.change_key(key_id, KeyInput { enabled: Some(enabled), ..KeyInput::default() }, action, expect).await
    }

    /// Deletes a key: it stops working on every node, and its id is
    /// remembered so that no import brings it back unasked.
    pub async fn delete_key(&self, key_id: &str, expect: Option<u64>) -> Result<(), ManageError> {
        let what = format!("key `{key_id}`");
        for _ in 0..CHANGE_TRIES {
            let before = self.get_key(key_id).await?;
            expected(&what, before.version, expect)?;
            let event = self.key_event(EventKind::KeyDeleted, &before, None);
            match self.store.delete_key(key_id, before.version, Some(&event)).await {
                Ok(()) => {}
                Err(e) if retry(&e, expect) => continue,
                Err(e) => return Err(from_store(e, &what)),
            }
            self.audit("key.delete", key_id, Some(self.key_json(&before)), None).await;
            return Ok(());
        }
        Err(too_busy(&what))
    }

    /// Gives a key a new secret; the old one works for `grace_seconds` more.
    pub async fn rotate_key(
        &self,
        key_id: &str,
        grace_seconds: u64,
        expect: Option<u64>,
    ) -> Result<(ApiKey, String), ManageError> {
        if grace_seconds > MAX_GRACE_SECONDS {
            return Err(invalid("graceSeconds", format!("must be at most {MAX_GRACE_SECONDS}")));
        }
        let what = format!("key `{key_id}`");
        for _ in 0..CHANGE_TRIES {
            let before = self.get_key(key_id).await?;
            expected(&what, before.version, expect)?;
            let mut key = before.clone();
            let brand = &self.config.keys.brand;
            let secret = token::generate(brand, key.env);
            key.key_prefix = token::mask(&secret, brand);
            let until = clock::now_unix() + grace_seconds as i64;
            let hash = TokenHash::of(&secret);
            let event =
                self.key_event(EventKind::KeyRotated, &key, Some(("previousSecretValidUntil", clock::rfc3339(until).into())));
            let rotation = Rotation {
                key_id,
                hash: &hash,
                key_prefix: &key.key_prefix,
                old_valid_until: until,
                version: before.version,
                event: Some(&event),
            };
            match self.store.rotate_secret(&rotation).await {
                Ok(()) => key.version += 1,
                Err(e) if retry(&e, expect) => continue,
                Err(e) => return Err(from_store(e, &what)),
            }
            let mut after = self.key_json(&key);
            after["previousSecretValidUntil"] = clock::rfc3339(until).into();
            self.audit("key.rotate", key_id, Some(self.key_json(&before)), Some(after)).await;
            return Ok((key, secret));
        }
        Err(too_busy(&what))
    }

    fn check_role_permissions(&self, perms: &[String]) -> Result<(), ManageError> {
        for p in perms {
            self.config.catalogue.check_grant(p).map_err(|m| invalid("permissions", m))?;
        }
        Ok(())
    }

    /// Creates a role.
    pub async fn create_role(&self, input: RoleInput) -> Result<Role, ManageError> {
        let id = input.id.unwrap_or_default();
        model::validate_role_id(&id).map_err(|m| invalid("id", m))?;
        let permissions = dedup(input.permissions.unwrap_or_default());
        if permissions.is_empty() {
            return Err(invalid("permissions", "a role needs at least one permission"));
        }
        self.check_role_permissions(&permissions)?;
        let name = input.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| id.clone());
        let name = checked_text("name", name, model::MAX_NAME_CHARS)?;
        let description = checked_text("description", input.description.unwrap_or_default(), model::MAX_TEXT_CHARS)?;
        let role = Role { id, name, description, permissions, version: model::first_version() };
        self.store.insert_role(&role).await.map_err(|e| from_store(e, &role.id))?;
        self.audit("role.create", &role.id, None, Some(role_json(&role))).await;
        Ok(role)
    }

    /// Every role.
    pub async fn list_roles(&self) -> Result<Vec<Role>, ManageError> {
        self.store.list_roles().await.map_err(ManageError::Store)
    }

    /// One role by id.
    pub async fn get_role(&self, id: &str) -> Result<Role, ManageError> {
        self.store.get_role(id).await.map_err(ManageError::Store)?.ok_or_else(|| ManageError::NotFound(format!("role `{id}`")))
    }

    /// Changes the given fields of a role (every node sees it at once);
    /// with `expect`, only if the role is at that version.
    pub async fn edit_role(&self, id: &str, input: RoleInput, expect: Option<u64>) -> Result<Role, ManageError> {
        let what = format!("role `{id}`");
        let name = input.name.map(|n| checked_text("name", n, model::MAX_NAME_CHARS)).transpose()?;
        let description = input.description.map(|d| checked_text("description", d, model::MAX_TEXT_CHARS)).transpose()?;
        let permissions = match input.permissions {
            None => None,
            Some(perms) => {
                let perms = dedup(perms);
                if perms.is_empty() {
                    return Err(invalid("permissions", "a role needs at least one permission"));
                }
                self.check_role_permissions(&perms)?;
                Some(perms)
            }
        };
        for _ in 0..CHANGE_TRIES {
            let before = self.get_role(id).await?;
            expected(&what, before.version, expect)?;
            let mut role = before.clone();
            role.name = name.clone().unwrap_or(role.name);
            role.description = description.clone().unwrap_or(role.description);
            role.permissions = permissions.clone().unwrap_or(role.permissions);
            match self.store.update_role(&role).await {
                Ok(()) => role.version += 1,
                Err(e) if retry(&e, expect) => continue,
                Err(e) => return Err(from_store(e, &what)),
            }
            self.audit("role.edit", id, Some(role_json(&before)), Some(role_json(&role))).await;
            return Ok(role);
        }
        Err(too_busy(&what))
    }

    /// Deletes a role that no key uses.
    pub async fn delete_role(&self, id: &str, expect: Option<u64>) -> Result<(), ManageError> {
        let what = format!("role `{id}`");
        for _ in 0..CHANGE_TRIES {
            let before = self.get_role(id).await?;
            expected(&what, before.version, expect)?;
            match self.store.delete_role(id, before.version).await {
                Ok(()) => {}
                Err(e) if retry(&e, expect) => continue,
                Err(StoreError::RoleInUse { keys }) => return Err(ManageError::RoleInUse { role: id.into(), keys }),
                Err(e) => return Err(from_store(e, &what)),
            }
            self.audit("role.delete", id, Some(role_json(&before)), None).await;
            return Ok(());
        }
        Err(too_busy(&what))
    }

    /// The event a change to `key` causes.
    pub fn key_event(&self, kind: EventKind, key: &ApiKey, extra: Option<(&str, Value)>) -> NewEvent {
        NewEvent::about_key(kind, key, clock::now_ms(), extra)
    }

    /// The JSON form of a key (camelCase, masked, never a secret or hash).
    pub fn key_json(&self, key: &ApiKey) -> Value {
        let status = KeyStatus::of(key, clock::now_unix()).as_str();
        json!({
            "keyId": key.key_id,
            "name": key.name,
            "description": key.description,
            "owner": key.owner,
            "role": key.role,
            "permissions": key.permissions,
            "plan": key.plan,
            "rateLimit": self.config.limit_for(key.rate_limit, key.plan.as_deref()),
            "allowedIps": key.allowed_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "env": key.env.as_str(),
            "enabled": key.enabled,
            "status": status,
            "expiresAt": key.expires_at.map(clock::rfc3339),
            "createdAt": clock::rfc3339(key.created_at),
            "lastUsed": key.last_used.map(clock::rfc3339),
            "usageCount": key.usage_count,
            "metadata": key.metadata,
            "keyPrefix": key.key_prefix,
            "quota": metering::quota_json(&self.config.limits_for(key).quota),
            "credits": key.credits.map(|c| metering::terms_json(&c)),
            "shadow": key.shadow,
            "maxInFlight": self.config.in_flight_for(key).map(|(n, _)| n),
            "version": key.version,
        })
    }
}

/// The JSON form of a role.
pub fn role_json(role: &Role) -> Value {
    json!({
        "id": role.id,
        "name": role.name,
        "description": role.description,
        "permissions": role.permissions,
        "version": role.version,
    })
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// What `POST /verify` says of a token: valid or not (and why), and the
/// key's identity and effective permissions when it is.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `None` when the key may be used; else the data plane's code.
    pub refusal: Option<&'static str>,
    pub key: Option<ApiKey>,
    pub permissions: Vec<String>,
}

impl Manager<'_> {
    /// Checks a token as the data plane would (checksum, store, secret,
    /// status, expiry, environment, and `permission` when given), without
    /// the IP allowlist or the rate limit, which belong to a request.
    pub async fn verify(&self, token_text: &str, permission: Option<&str>) -> Result<Verdict, ManageError> {
        Ok(self.decide(token_text, permission, None).await?.0)
    }

    /// The data plane's decision for a token, read from the store itself
    /// so that a change made a moment ago is seen, charging `cost` when
    /// given; and the verdict it makes.
    async fn decide(
        &self,
        token_text: &str,
        permission: Option<&str>,
        cost: Option<u32>,
    ) -> Result<(Verdict, Decision), ManageError> {
        let means = Means { config: self.config, keys: KeySource::Store(self.store), live: self.meter, ledger: self.store };
        let on_redis_error = self.config.rate_limit.on_redis_error;
        let cost = cost.map(|units| Cost { units, route_limit: None, on_redis_error });
        let mut decision = Decision::default();
        let ask = Ask { token: token_text, permission, client_ip: None, cost, hold: false };
        decide::decide(&means, &ask, Moment::now(), &mut decision).await;
        if let Some(failure) = decision.failure {
            return Err(ManageError::Store(failure.1));
        }
        let Some(found) = &decision.found else {
            let unknown = Verdict { refusal: Some(GatewayError::InvalidKey.code()), key: None, permissions: Vec::new() };
            return Ok((unknown, decision));
        };
        let mut permissions = found.key.permissions.clone();
        if let Some(role) = &decision.role {
            permissions.extend(role.permissions.iter().cloned());
        }
        // A limit's refusal is the verify API's `limited`, not the verdict's.
        let limited = decision.charged && decision.refusal.is_some();
        let refusal = decision.refusal.as_ref().filter(|_| !limited).map(GatewayError::code);
        Ok((Verdict { refusal, key: Some(found.key.clone()), permissions: dedup(permissions) }, decision))
    }
}
