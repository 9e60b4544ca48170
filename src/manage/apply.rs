//! Applying and validating the fields of a key edit or creation: every
//! refusal names the field, in the camelCase of the admin API.

use super::{checked_text, dedup, invalid, KeyInput, ManageError, Manager, MAX_EXPIRY_DAYS};
use crate::clock;
use crate::keys::model::{self, ApiKey, Env};

impl Manager<'_> {
    /// Checks `input` against the config and the store and applies it to `key`.
    pub(super) async fn apply(&self, key: &mut ApiKey, input: KeyInput) -> Result<(), ManageError> {
        if let Some(name) = input.name {
            let name = name.trim().to_string();
            if name.is_empty() {
                return Err(invalid("name", "is required"));
            }
            key.name = checked_text("name", name, model::MAX_NAME_CHARS)?;
        }
        if let Some(d) = input.description {
            key.description = checked_text("description", d, model::MAX_TEXT_CHARS)?;
        }
        if let Some(o) = input.owner {
            key.owner = checked_text("owner", o, model::MAX_TEXT_CHARS)?;
        }
        if let Some(role) = input.role {
            key.role = if role.is_empty() {
                None
            } else {
                match self.store.get_role(&role).await.map_err(ManageError::Store)? {
                    Some(_) => Some(role),
                    None => return Err(invalid("role", format!("no role `{role}` exists"))),
                }
            };
        }
        if let Some(perms) = input.permissions {
            for p in &perms {
                self.config.catalogue.check_grant(p).map_err(|m| invalid("permissions", m))?;
            }
            key.permissions = dedup(perms);
        }
        if let Some(n) = input.rate_limit {
            key.rate_limit = (n > 0).then_some(n);
        }
        if let Some(plan) = input.plan {
            key.plan = if plan.is_empty() {
                None
            } else if self.config.plans.contains_key(&plan) {
                Some(plan)
            } else {
                let known: Vec<&String> = self.config.plans.keys().collect();
                return Err(invalid("plan", format!("no plan `{plan}` in the config (known: {known:?})")));
            };
        }
        if let Some(ips) = input.allowed_ips {
            let mut nets = Vec::new();
            for ip in ips.iter().flat_map(|s| s.split([',', '\n'])).map(str::trim).filter(|s| !s.is_empty()) {
                nets.push(crate::policy::ip::parse_cidr(ip).map_err(|m| invalid("allowedIps", m))?);
            }
            key.allowed_ips = nets;
        }
        if let Some(env) = input.env {
            key.env = Env::parse(&env).ok_or_else(|| invalid("env", "must be \"live\" or \"test\""))?;
        }
        if input.expires_at.is_some() && input.expires_in_days.is_some() {
            return Err(invalid("expiresAt", "give expiresAt or expirationDays, not both"));
        }
        if let Some(at) = input.expires_at {
            if at.is_some_and(|t| t <= clock::now_unix()) {
                return Err(invalid("expiresAt", "is in the past: a key cannot be created or edited already expired"));
            }
            if let Some(t) = at {
                clock::within_bounds(t).map_err(|m| invalid("expiresAt", m))?;
            }
            key.expires_at = at;
        }
        if let Some(days) = input.expires_in_days {
            if days > MAX_EXPIRY_DAYS {
                return Err(invalid("expirationDays", format!("must be between 1 and {MAX_EXPIRY_DAYS}")));
            }
            key.expires_at = (days > 0).then(|| clock::now_unix() + i64::from(days) * 86_400);
        }
        if let Some(meta) = input.metadata {
            for (k, v) in &meta {
                model::validate_metadata(k, v).map_err(|m| invalid("metadata", m))?;
            }
            model::validate_metadata_names(meta.keys()).map_err(|m| invalid("metadata", m))?;
            key.metadata = meta;
        }
        if let Some(enabled) = input.enabled {
            key.enabled = enabled;
        }
        if let Some(shadow) = input.shadow {
            key.shadow = shadow;
        }
        if let Some(n) = input.max_in_flight {
            key.max_in_flight = (n > 0).then_some(n);
        }
        self.apply_metering(key, input.quota, input.credits)
    }
}
