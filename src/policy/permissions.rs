//! The permission catalogue declared in the config, and matching of a
//! route's permission against what a key was granted (`module.*`, `*`).

use serde::Serialize;
use std::collections::HashSet;

/// One permission of a module.
#[derive(Debug, Clone, Serialize)]
pub struct Permission {
    pub id: String,
    pub label: String,
}

/// A module of the backend's API ("List Management").
#[derive(Debug, Clone, Serialize)]
pub struct Module {
    pub id: String,
    pub name: String,
    pub permissions: Vec<Permission>,
}

/// Every declared module and permission.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    modules: Vec<Module>,
    permission_ids: HashSet<String>,
}

impl Catalogue {
    /// Indexes the modules.
    pub fn new(modules: Vec<Module>) -> Catalogue {
        let permission_ids = modules.iter().flat_map(|m| m.permissions.iter().map(|p| p.id.clone())).collect();
        Catalogue { modules, permission_ids }
    }

    /// Modules in config order, for `GET /modules` and the console.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Whether a concrete permission id is declared.
    pub fn is_declared(&self, id: &str) -> bool {
        self.permission_ids.contains(id)
    }

    /// Whether a role or key may be granted `grant`: a declared id,
    /// `module.*` of a declared module, or `*`.
    pub fn check_grant(&self, grant: &str) -> Result<(), String> {
        if grant == "*" || self.is_declared(grant) {
            return Ok(());
        }
        if let Some(module) = grant.strip_suffix(".*") {
            if self.modules.iter().any(|m| m.id == module) {
                return Ok(());
            }
            return Err(format!("`{grant}` names no declared module"));
        }
        Err(format!("permission `{grant}` is not declared in [[modules]]"))
    }
}

/// Whether one grant covers the required permission.
pub fn grant_covers(grant: &str, required: &str) -> bool {
    if grant == "*" || grant == required {
        return true;
    }
    match grant.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => required.starts_with(prefix),
        _ => false,
    }
}

/// Whether any of the grants covers the required permission.
pub fn permits<'a>(mut grants: impl Iterator<Item = &'a String>, required: &str) -> bool {
    grants.any(|g| grant_covers(g, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalogue() -> Catalogue {
        Catalogue::new(vec![Module {
            id: "lists".into(),
            name: "List Management".into(),
            permissions: vec![
                Permission { id: "lists.create".into(), label: "Add New List".into() },
                Permission { id: "lists.view".into(), label: "View List".into() },
            ],
        }])
    }

    #[test]
    fn grants() {
        let c = catalogue();
        assert!(c.check_grant("lists.view").is_ok());
        assert!(c.check_grant("lists.*").is_ok());
        assert!(c.check_grant("*").is_ok());
        assert!(c.check_grant("lists.fly").is_err());
        assert!(c.check_grant("contacts.*").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(grant_covers("*", "lists.view"));
        assert!(grant_covers("lists.*", "lists.view"));
        assert!(grant_covers("lists.view", "lists.view"));
        assert!(!grant_covers("lists.*", "listsx.view"));
        assert!(!grant_covers("lists.view", "lists.create"));
        assert!(!grant_covers("contacts.*", "lists.view"));
        let g = ["contacts.view".to_string(), "lists.*".to_string()];
        assert!(permits(g.iter(), "lists.create"));
        assert!(!permits(g.iter(), "broadcasts.send"));
    }
}
