//! The admin API's route table: the one list the dispatcher, the OpenAPI
//! document's test and the docs all follow.

use crate::config::Scopes;

/// Every admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ListKeys,
    CreateKey,
    GetKey,
    EditKey,
    EnableKey,
    DisableKey,
    RotateKey,
    DeleteKey,
    KeyUsage,
    KeyCredits,
    UsageReport,
    VerifyAndCharge,
    ExportKeys,
    ImportKeys,
    ExportRoles,
    ImportRoles,
    ListRoles,
    CreateRole,
    GetRole,
    EditRole,
    DeleteRole,
    Modules,
    AuditLog,
    Session,
    Verify,
    ReportLeaks,
    ListEvents,
    ListDeliveries,
    ListBlocks,
    RemoveBlock,
    OpenApi,
    Metrics,
    Healthz,
    Readyz,
}

/// Method, path pattern (`{id}` is one segment) and endpoint.
pub const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("GET", "/api-keys", Endpoint::ListKeys),
    // Before `/api-keys/{id}`: the first pattern that matches wins (a key
    // id always starts with `key_`, so neither word is one).
    ("GET", "/api-keys/export", Endpoint::ExportKeys),
    ("POST", "/api-keys/import", Endpoint::ImportKeys),
    ("POST", "/api-keys", Endpoint::CreateKey),
    ("GET", "/api-keys/{id}", Endpoint::GetKey),
    ("PATCH", "/api-keys/{id}", Endpoint::EditKey),
    ("DELETE", "/api-keys/{id}", Endpoint::DeleteKey),
    ("POST", "/api-keys/{id}/enable", Endpoint::EnableKey),
    ("POST", "/api-keys/{id}/disable", Endpoint::DisableKey),
    ("POST", "/api-keys/{id}/rotate", Endpoint::RotateKey),
    ("GET", "/api-keys/{id}/usage", Endpoint::KeyUsage),
    ("POST", "/api-keys/{id}/credits", Endpoint::KeyCredits),
    ("GET", "/usage", Endpoint::UsageReport),
    ("POST", "/v1/keys/verify", Endpoint::VerifyAndCharge),
    ("GET", "/api-roles", Endpoint::ListRoles),
    ("GET", "/api-roles/export", Endpoint::ExportRoles),
    ("POST", "/api-roles/import", Endpoint::ImportRoles),
    ("POST", "/api-roles", Endpoint::CreateRole),
    ("GET", "/api-roles/{id}", Endpoint::GetRole),
    ("PATCH", "/api-roles/{id}", Endpoint::EditRole),
    ("DELETE", "/api-roles/{id}", Endpoint::DeleteRole),
    ("GET", "/modules", Endpoint::Modules),
    ("GET", "/audit-log", Endpoint::AuditLog),
    ("GET", "/events", Endpoint::ListEvents),
    ("GET", "/webhooks/deliveries", Endpoint::ListDeliveries),
    ("GET", "/blocks", Endpoint::ListBlocks),
    ("DELETE", "/blocks/{id}", Endpoint::RemoveBlock),
    ("GET", "/session", Endpoint::Session),
    ("POST", "/verify", Endpoint::Verify),
    ("POST", "/v1/leaks", Endpoint::ReportLeaks),
    ("GET", "/openapi.json", Endpoint::OpenApi),
    ("GET", "/metrics", Endpoint::Metrics),
    ("GET", "/healthz", Endpoint::Healthz),
    ("GET", "/readyz", Endpoint::Readyz),
];

impl Endpoint {
    /// The scope a token needs for this endpoint (`None`: open, no token).
    pub fn scope(self) -> Option<Scopes> {
        use Endpoint::*;
        match self {
            OpenApi | Metrics | Healthz | Readyz => None,
            // Any valid token may ask who it is.
            Session => Some(Scopes::default()),
            ListKeys | GetKey | KeyUsage | UsageReport | ListRoles | GetRole | Modules | AuditLog | ListEvents
            | ListDeliveries | ListBlocks => Some(Scopes::READ),
            CreateKey | EditKey | EnableKey | DisableKey | RotateKey | DeleteKey | KeyCredits | CreateRole | EditRole
            | DeleteRole | RemoveBlock => Some(Scopes::WRITE),
            Verify | VerifyAndCharge => Some(Scopes::VERIFY),
            ReportLeaks => Some(Scopes::LEAKS),
            // An export holds every key's hashes; an import replaces keys whole.
            ExportKeys | ImportKeys | ExportRoles | ImportRoles => Some(Scopes::ADMIN),
        }
    }
}

/// Why no endpoint was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    /// The path exists with other methods.
    MethodNotAllowed,
}

fn matches(pattern: &str, path: &str) -> Option<Option<String>> {
    let (mut ps, mut xs) = (pattern.split('/'), path.split('/'));
    let mut id = None;
    loop {
        match (ps.next(), xs.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(x)) if !x.is_empty() => id = Some(x.to_string()),
            (Some(p), Some(x)) if p == x => {}
            _ => return None,
        }
    }
}

/// The endpoint for a request, and its `{id}` if the pattern has one.
pub fn resolve(method: &str, path: &str) -> Result<(Endpoint, Option<String>), Miss> {
    let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    let mut path_known = false;
    for (m, pattern, endpoint) in ROUTES {
        if let Some(id) = matches(pattern, path) {
            if *m == method || (*m == "GET" && method == "HEAD") {
                return Ok((*endpoint, id));
            }
            path_known = true;
        }
    }
    Err(if path_known { Miss::MethodNotAllowed } else { Miss::NotFound })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves() {
        assert_eq!(resolve("GET", "/api-keys"), Ok((Endpoint::ListKeys, None)));
        assert_eq!(resolve("GET", "/api-keys/"), Ok((Endpoint::ListKeys, None)));
        assert_eq!(resolve("POST", "/api-keys/key_1/rotate"), Ok((Endpoint::RotateKey, Some("key_1".into()))));
        assert_eq!(resolve("PUT", "/api-keys/key_1"), Err(Miss::MethodNotAllowed));
        assert_eq!(resolve("GET", "/api-keys/key_1/nope"), Err(Miss::NotFound));
        assert_eq!(resolve("GET", "/nope"), Err(Miss::NotFound));
        assert_eq!(resolve("GET", "/api-keys/export"), Ok((Endpoint::ExportKeys, None)));
        assert_eq!(resolve("POST", "/api-roles/import"), Ok((Endpoint::ImportRoles, None)));
    }
}
