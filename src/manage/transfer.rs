//! Export and import of keys and roles as JSON lines: the backup, the move
//! between SQLite and Redis, and the way to manage keys from files (GitOps).
//!
//! A key line holds every field of the key and its secrets by SHA-256 only;
//! an import restores it so the same secret keeps working. A line may carry
//! a `token` instead (an existing platform's tokens, in bulk). An import is
//! checked whole before anything is written: one bad line and nothing
//! changes. Each line is then written only if its key is still as the
//! check found it (at the same version, or absent and never deleted): a
//! line that lost to a change made since is reported as a conflict, and
//! nothing of it is written.

use super::{checked_text, dedup, from_store, invalid, role_json, CreditsInput, KeyInput, ManageError, Manager, QuotaInput};
use crate::clock;
use crate::events::EventKind;
use crate::keys::model::{self, ApiKey, Role};
use crate::keys::token::{self, TokenHash};
use crate::store::{KeyQuery, PutExpect, SecretRecord, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Errors listed before an import gives up.
const MAX_LISTED_ERRORS: usize = 20;

/// One key as a line of an export (and of an import).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub plan: Option<String>,
    /// The key's own limit (not the plan's or the default).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub last_used: Option<String>,
    #[serde(default)]
    pub usage_count: u64,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The key's own in-flight limit (not the plan's or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// The SHA-256 (hex) of the key's current secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Rotated-out secrets still in their grace period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<PreviousSecret>,
    /// A secret in clear, to import an existing platform's token (never
    /// written by an export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The key's own quotas (not its plan's).
    #[serde(default, skip_serializing_if = "QuotaLine::is_empty")]
    pub quota: QuotaLine,
    /// Present when the key spends credits: its terms and its balance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<CreditsLine>,
}

/// A key line's own quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QuotaLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u32>,
}

impl QuotaLine {
    fn is_empty(&self) -> bool {
        *self == QuotaLine::default()
    }
}

/// A key line's credits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreditsLine {
    /// The balance at the export (an import sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_interval: Option<String>,
}

fn yes() -> bool {
    true
}

/// A rotated-out secret of an export line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PreviousSecret {
    pub sha256: String,
    pub valid_until: String,
}

/// One role as a line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLine {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<String>,
}

/// An export's text: one JSON object per line, each line ended.
pub fn json_lines<T: Serialize>(items: &[T]) -> String {
    let mut text = String::new();
    for item in items {
        text.push_str(&serde_json::to_string(item).unwrap_or_default());
        text.push('\n');
    }
    text
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    pub created: usize,
    pub updated: usize,
    /// Lines not written: their key changed since the import checked it.
    pub conflicts: Vec<ImportConflict>,
}

/// A line of an import that was not written, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportConflict {
    pub line: usize,
    pub key_id: String,
    pub reason: String,
}

impl ImportSummary {
    fn conflict(&mut self, line: usize, key_id: &str, reason: String) {
        self.conflicts.push(ImportConflict { line, key_id: key_id.to_string(), reason });
    }
}

/// Why a line's conditional write found another state than the check did,
/// or `None` when the store refused it for another reason.
fn conflict_reason(expect: PutExpect, e: &StoreError) -> Option<String> {
    Some(match (expect, e) {
        (PutExpect::Version(_), StoreError::NotFound) => "deleted since the import was checked".to_string(),
        (PutExpect::Version(v), StoreError::VersionConflict { current }) => {
            format!("changed since the import was checked (version {v} then, {current} now)")
        }
        (PutExpect::Absent { .. }, StoreError::VersionConflict { current }) => {
            format!("created since the import was checked (now at version {current})")
        }
        (PutExpect::Absent { .. }, StoreError::Deleted) => {
            "this key was deleted: give recreateDeleted (--recreate-deleted) to create it again".to_string()
        }
        _ => return None,
    })
}

/// A key ready to be written, from line `line`, and the key it replaces.
struct Checked {
    line: usize,
    key: ApiKey,
    secrets: Vec<SecretRecord>,
    before: Option<ApiKey>,
    /// What the check found: the write happens only if the store still holds it.
    expect: PutExpect,
    /// The credit balance the line sets.
    balance: Option<u64>,
}

/// The lines of a file that are not blank, numbered from 1.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty())
}

/// Everything wrong with an import, line by line, as one refusal.
fn refusal(errors: Vec<String>) -> ManageError {
    let more = errors.len().saturating_sub(MAX_LISTED_ERRORS);
    let mut message = errors.into_iter().take(MAX_LISTED_ERRORS).collect::<Vec<_>>().join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    invalid("lines", format!("nothing was imported: {message}"))
}

/// A line that is not the JSON of a key or role, said without serde's
/// position inside the line (the line number is given already).
fn not_a_line(e: &serde_json::Error, what: &str) -> ManageError {
    let text = e.to_string();
    let text = text.rsplit_once(" at line ").map_or(text.as_str(), |(message, _)| message);
    ManageError::Invalid { field: format!("{what} line"), message: text.to_string() }
}

/// `line N: field: message` for an error of one line.
fn at_line(line: usize, e: ManageError) -> String {
    match e {
        ManageError::Invalid { field, message } => format!("line {line}: {field}: {message}"),
        other => format!("line {line}: {other}"),
    }
}

fn time_field(field: &str, value: &Option<String>) -> Result<Option<i64>, ManageError> {
    match value {
        None => Ok(None),
        Some(t) => clock::parse_rfc3339(t).map(Some).map_err(|m| invalid(field, m)),
    }
}

impl Manager<'_> {
    /// Every key as a line, secrets by hash only, newest first.
    pub async fn export_keys(&self) -> Result<Vec<KeyLine>, ManageError> {
        let now = clock::now_unix();
        let keys = self.store.list_keys(&KeyQuery::default()).await.map_err(ManageError::Store)?.keys;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let secrets = self.store.secrets_of(&key.key_id, now).await.map_err(ManageError::Store)?;
            let current = secrets.iter().find(|s| s.valid_until.is_none());
            let credits = match key.credits {
                None => None,
                Some(terms) => {
                    let (remaining, _) = self.credit_remaining(&key.key_id, &terms, clock::now_ms()).await?;
                    Some(CreditsLine {
                        remaining: Some(remaining.max(0) as u64),
                        refill_amount: terms.refill_amount,
                        refill_interval: terms.refill_interval.map(|i| i.as_str().to_string()),
                    })
                }
            };
            let q = key.quota;
            out.push(KeyLine {
                key_id: Some(key.key_id.clone()),
                name: key.name,
                description: key.description,
                owner: key.owner,
                role: key.role,
                permissions: key.permissions,
                plan: key.plan,
                rate_limit: key.rate_limit,
                allowed_ips: key.allowed_ips.iter().map(|n| n.to_string()).collect(),
                env: Some(key.env.as_str().to_string()),
                enabled: key.enabled,
                expires_at: key.expires_at.map(clock::rfc3339),
                created_at: Some(clock::rfc3339(key.created_at)),
                last_used: key.last_used.map(clock::rfc3339),
                usage_count: key.usage_count,
                metadata: key.metadata,
                shadow: key.shadow,
                max_in_flight: key.max_in_flight,
                key_prefix: Some(key.key_prefix),
                token_sha256: current.map(|s| s.hash.to_hex()),
                previous_secrets: secrets
                    .iter()
                    .filter_map(|s| Some(PreviousSecret { sha256: s.hash.to_hex(), valid_until: clock::rfc3339(s.valid_until?) }))
                    .collect(),
                token: None,
                quota: QuotaLine { per_hour: q.per_hour, per_day: q.per_day, per_month: q.per_month },
                credits,
            });
        }
        Ok(out)
    }

    /// Every role as a line.
    pub async fn export_roles(&self) -> Result<Vec<RoleLine>, ManageError> {
        let roles = self.store.list_roles().await.map_err(ManageError::Store)?;
        Ok(roles
            .into_iter()
            .map(|r| RoleLine { id: r.id, name: r.name, description: r.description, permissions: r.permissions })
            .collect())
    }

    /// Restores keys from JSON lines: by `keyId`, existing keys are
    /// replaced by the line and others created (a deleted key only with
    /// `recreate_deleted`). Checked whole first.
    pub async fn import_keys(&self, text: &str, recreate_deleted: bool) -> Result<ImportSummary, ManageError> {
        let (mut checked, mut errors) = (Vec::new(), Vec::new());
        let (mut ids, mut hashes) = (HashSet::new(), HashSet::new());
        for (n, text) in lines(text) {
            let result = match serde_json::from_str::<KeyLine>(text) {
                Ok(line) => self.check_key_line(n, line, recreate_deleted).await,
                Err(e) => Err(not_a_line(&e, "key")),
            };
            match result {
                Ok(c) => {
                    if !ids.insert(c.key.key_id.clone()) {
                        errors.push(format!("line {n}: keyId: `{}` appears twice in the file", c.key.key_id));
                    }
                    if c.secrets.iter().any(|s| !hashes.insert(s.hash)) {
                        errors.push(format!("line {n}: token: the same secret appears twice in the file"));
                    }
                    checked.push(c);
                }
                Err(e) => errors.push(at_line(n, e)),
            }
        }
        if !errors.is_empty() {
            return Err(refusal(errors));
        }
        let mut summary = ImportSummary::default();
        for c in checked {
            let before = c.before.as_ref().map(|k| self.key_json(k));
            let kind = if c.before.is_some() { EventKind::KeyUpdated } else { EventKind::KeyCreated };
            let event = self.key_event(kind, &c.key, None);
            let created = match self.store.put_key(&c.key, &c.secrets, c.expect, Some(&event)).await {
                Ok(created) => created,
                Err(e) => match conflict_reason(c.expect, &e) {
                    Some(reason) => {
                        summary.conflict(c.line, &c.key.key_id, reason);
                        continue;
                    }
                    None => {
                        let written = summary.created + summary.updated;
                        let e = from_store(e, &format!("key `{}`", c.key.key_id));
                        return Err(invalid(
                            "lines",
                            format!("{} ({written} line(s) before it were imported)", at_line(c.line, e)),
                        ));
                    }
                },
            };
            let mut key = c.key;
            key.version = match c.expect {
                PutExpect::Version(v) => v + 1,
                PutExpect::Absent { recreate_deleted: false } => model::first_version(),
                // A recreated key's versions go on from the deleted key's: only the store knows from where.
                PutExpect::Absent { recreate_deleted: true } => {
                    self.get_key(&key.key_id).await.map(|k| k.version).unwrap_or(key.version)
                }
            };
            if let Some(n) = c.balance {
                self.set_balance(&key, crate::store::CreditChange::Set(n as i64), None).await?;
            }
            if created {
                summary.created += 1;
            } else {
                summary.updated += 1;
            }
            self.audit("key.import", &key.key_id, before, Some(self.key_json(&key))).await;
        }
        Ok(summary)
    }

    /// One line made into a key and its secrets, checked as create would,
    /// and against the store (role, plan, who holds each secret).
    async fn check_key_line(&self, n: usize, line: KeyLine, recreate_deleted: bool) -> Result<Checked, ManageError> {
        let now = clock::now_unix();
        let brand = &self.config.keys.brand;
        let key_id = match &line.key_id {
            Some(id) => {
                let ok = id
                    .strip_prefix("key_")
                    .is_some_and(|r| !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()));
                if !ok {
                    return Err(invalid("keyId", format!("`{id}` is not a key id (key_ and 1-64 letters or digits)")));
                }
                id.clone()
            }
            None => token::new_key_id(),
        };
        let existing = self.store.get_key(&key_id).await.map_err(ManageError::Store)?;
        let mut secrets = Vec::new();
        let mut prefix = line.key_prefix.clone();
        match (&line.token, &line.token_sha256) {
            (Some(_), Some(_)) => return Err(invalid("token", "give token or tokenSha256, not both")),
            (Some(t), None) => {
                token::validate_import(t, brand).map_err(|m| invalid("token", m))?;
                secrets.push(SecretRecord { hash: TokenHash::of(t), valid_until: None });
                prefix = Some(token::mask(t, brand));
            }
            (None, Some(hex)) => {
                let hash = TokenHash::from_hex(hex).ok_or_else(|| invalid("tokenSha256", "must be 64 hex digits"))?;
                secrets.push(SecretRecord { hash, valid_until: None });
            }
            (None, None) if existing.is_some() => {
                secrets = self.store.secrets_of(&key_id, now).await.map_err(ManageError::Store)?;
            }
            (None, None) => return Err(invalid("token", "a new key needs its token or tokenSha256")),
        }
        for p in &line.previous_secrets {
            let hash =
                TokenHash::from_hex(&p.sha256).ok_or_else(|| invalid("previousSecrets", "sha256 must be 64 hex digits"))?;
            let until = time_field("previousSecrets", &Some(p.valid_until.clone()))?.unwrap_or(0);
            // As long as a rotation's grace at most: an import cannot plant
            // a second secret that outlives every rotation.
            if until > now + super::MAX_GRACE_SECONDS as i64 {
                let days = super::MAX_GRACE_SECONDS / 86_400;
                return Err(invalid("previousSecrets", format!("validUntil `{}` is more than {days} days ahead", p.valid_until)));
            }
            if until > now {
                secrets.push(SecretRecord { hash, valid_until: Some(until) });
            }
        }
        for s in &secrets {
            if let Some(holder) = self.store.key_by_hash(&s.hash).await.map_err(ManageError::Store)? {
                if holder.key.key_id != key_id {
                    return Err(invalid("token", format!("that secret already belongs to key `{}`", holder.key.key_id)));
                }
            }
        }
        let env = match &line.env {
            Some(e) => model::Env::parse(e).ok_or_else(|| invalid("env", "must be \"live\" or \"test\""))?,
            None => self.config.server.environment,
        };
        let created_at = time_field("createdAt", &line.created_at)?.or(existing.as_ref().map(|k| k.created_at)).unwrap_or(now);
        let prefix = prefix.or(existing.as_ref().map(|k| k.key_prefix.clone())).unwrap_or_else(|| "imported****".into());
        let mut key = ApiKey::blank(key_id, env, prefix, created_at);
        key.enabled = line.enabled;
        key.shadow = line.shadow;
        // A restored key keeps its expiry even when it has passed.
        key.expires_at = time_field("expiresAt", &line.expires_at)?;
        key.last_used = time_field("lastUsed", &line.last_used)?;
        key.usage_count = line.usage_count;
        let input = KeyInput {
            name: Some(line.name),
            description: Some(line.description),
            owner: Some(line.owner),
            role: Some(line.role.unwrap_or_default()),
            permissions: Some(line.permissions),
            rate_limit: Some(line.rate_limit.unwrap_or(0)),
            max_in_flight: Some(line.max_in_flight.unwrap_or(0)),
            plan: Some(line.plan.unwrap_or_default()),
            allowed_ips: Some(line.allowed_ips),
            metadata: Some(line.metadata),
            // The line says the whole key: what it leaves out is removed.
            quota: QuotaInput {
                per_hour: Some(line.quota.per_hour),
                per_day: Some(line.quota.per_day),
                per_month: Some(line.quota.per_month),
            },
            credits: Some(line.credits.as_ref().map(|c| CreditsInput {
                remaining: None,
                refill_amount: Some(c.refill_amount),
                refill_interval: Some(c.refill_interval.clone()),
            })),
            ..KeyInput::default()
        };
        self.apply(&mut key, input).await?;
        let balance = line.credits.and_then(|c| c.remaining);
        if balance.is_some_and(|n| n > super::MAX_CREDITS) {
            return Err(invalid("credits.remaining", format!("must be at most {}", super::MAX_CREDITS)));
        }
        let expect = match &existing {
            Some(k) => PutExpect::Version(k.version),
            None => PutExpect::Absent { recreate_deleted },
        };
        Ok(Checked { line: n, key, secrets, before: existing, expect, balance })
    }

    /// Restores roles from JSON lines: by `id`, existing roles are replaced
    /// by the line and others created. Checked whole first.
    pub async fn import_roles(&self, text: &str) -> Result<ImportSummary, ManageError> {
        let (mut roles, mut errors, mut ids) = (Vec::new(), Vec::new(), HashSet::new());
        for (n, text) in lines(text) {
            let result = serde_json::from_str::<RoleLine>(text)
                .map_err(|e| not_a_line(&e, "role"))
                .and_then(|line| self.check_role_line(line));
            match result {
                Ok(role) if !ids.insert(role.id.clone()) => errors.push(format!("line {n}: id: `{}` appears twice", role.id)),
                Ok(role) => roles.push((n, role)),
                Err(e) => errors.push(at_line(n, e)),
            }
        }
        if !errors.is_empty() {
            return Err(refusal(errors));
        }
        let mut summary = ImportSummary::default();
        for (n, mut role) in roles {
            let before = self.store.get_role(&role.id).await.map_err(ManageError::Store)?;
            let written = match &before {
                Some(b) => {
                    role.version = b.version;
                    self.store.update_role(&role).await
                }
                None => self.store.insert_role(&role).await,
            };
            match written {
                Ok(()) => {}
                // Another change came between the read and the write.
                Err(StoreError::VersionConflict { current }) => {
                    summary.conflict(n, &role.id, format!("changed while the import ran (now at version {current})"));
                    continue;
                }
                Err(StoreError::Conflict(_)) if before.is_none() => {
                    summary.conflict(n, &role.id, "created while the import ran".into());
                    continue;
                }
                Err(e) => return Err(invalid("lines", at_line(n, from_store(e, &format!("role `{}`", role.id))))),
            }
            if before.is_some() {
                role.version += 1;
                summary.updated += 1;
            } else {
                summary.created += 1;
            }
            self.audit("role.import", &role.id, before.as_ref().map(role_json), Some(role_json(&role))).await;
        }
        Ok(summary)
    }

    fn check_role_line(&self, line: RoleLine) -> Result<Role, ManageError> {
        model::validate_role_id(&line.id).map_err(|m| invalid("id", m))?;
        let permissions = dedup(line.permissions);
        if permissions.is_empty() {
            return Err(invalid("permissions", "a role needs at least one permission"));
        }
        self.check_role_permissions(&permissions)?;
        let name = if line.name.trim().is_empty() { line.id.clone() } else { line.name };
        Ok(Role {
            name: checked_text("name", name, model::MAX_NAME_CHARS)?,
            description: checked_text("description", line.description, model::MAX_TEXT_CHARS)?,
            id: line.id,
            permissions,
            version: model::first_version(),
        })
    }
}
