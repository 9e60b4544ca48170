//! Every role, held in memory and swapped whole when any role changes, so a
//! role edit reaches every request at once without touching key entries.

use crate::keys::model::{ApiKey, Role};
use crate::store::{Resolver, StoreError};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// The current set of roles, by id (ids come from operators, not clients,
/// so the fast unkeyed hash is safe).
pub struct RoleSet {
    roles: ArcSwap<HashMap<String, Arc<Role>, crate::FastHash>>,
}

impl RoleSet {
    /// Loads every role from the store.
    pub async fn load(store: &dyn Resolver) -> Result<RoleSet, StoreError> {
        let set = RoleSet { roles: ArcSwap::from_pointee(HashMap::default()) };
        set.reload(store).await?;
        Ok(set)
    }

    /// Replaces the set with the store's current roles.
    pub async fn reload(&self, store: &dyn Resolver) -> Result<(), StoreError> {
        let roles = store.list_roles().await?;
        self.roles.store(Arc::new(roles.into_iter().map(|r| (r.id.clone(), Arc::new(r))).collect()));
        Ok(())
    }

    /// A role by id.
    pub fn get(&self, id: &str) -> Option<Arc<Role>> {
        self.roles.load().get(id).cloned()
    }

    /// The key's own permissions plus its role's: what it may do.
    pub fn effective_permissions(&self, key: &ApiKey) -> Vec<String> {
        let mut out: Vec<String> =
            key.role.as_deref().and_then(|r| self.get(r)).map(|r| r.permissions.clone()).unwrap_or_default();
        for p in &key.permissions {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }

    /// Whether the key's grants cover `required`, without allocating.
    pub fn permits(&self, key: &ApiKey, required: &str) -> bool {
        if crate::policy::permissions::permits(key.permissions.iter(), required) {
            return true;
        }
        let roles = self.roles.load();
        key.role
            .as_deref()
            .and_then(|r| roles.get(r))
            .is_some_and(|role| crate::policy::permissions::permits(role.permissions.iter(), required))
    }
}
