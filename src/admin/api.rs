//! Admin API handlers: each turns a request into one `Manager` call (the
//! same code the CLI runs) and its result into the JSON envelope.

use super::input;
use super::routes::Endpoint;
use super::{error, ok};
use crate::body::Body;
use crate::events::{Delivery, DeliveryQuery, EventQuery, StoredEvent};
use crate::keys::model::KeyStatus;
use crate::manage::{json_lines, role_json, ManageError, Manager, SECRET_WARNING};
use crate::store::KeyQuery;
use http::{Response, StatusCode};
use serde_json::{json, Value};

/// Entries a list answers with unless `per_page` says otherwise.
pub const DEFAULT_PER_PAGE: u64 = 20;
/// The most `per_page` may ask for.
pub const MAX_PER_PAGE: u64 = 200;

/// Maps a refused operation to its status, code and (for bad input) field.
pub fn refusal(e: ManageError) -> Response<Body> {
    let (status, code) = match &e {
        ManageError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        ManageError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        ManageError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        ManageError::RoleInUse { .. } => (StatusCode::CONFLICT, "role_in_use"),
        ManageError::VersionConflict { .. } => (StatusCode::PRECONDITION_FAILED, "version_conflict"),
        ManageError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
    };
    let mut body = crate::envelope::failure(code, e.to_string());
    match &e {
        ManageError::Invalid { field, .. } => body["field"] = field.as_str().into(),
        ManageError::VersionConflict { current, .. } => body["currentVersion"] = (*current).into(),
        _ => {}
    }
    let mut resp = crate::error::json_response(status, &body);
    if let ManageError::VersionConflict { current, .. } = &e {
        with_etag(&mut resp, *current);
    }
    resp
}

/// `ETag: "N"`: the version a later `If-Match` names.
fn with_etag(resp: &mut Response<Body>, version: u64) {
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(http::header::ETAG, v);
    }
}

/// The answer for one key or role: its JSON and its `ETag`.
fn record(data: Value, version: u64) -> Response<Body> {
    let mut resp = ok(StatusCode::OK, data, json!({}));
    with_etag(&mut resp, version);
    resp
}

/// What an admin request asked, beyond its endpoint.
pub struct Asked<'a> {
    pub id: Option<String>,
    pub query: &'a str,
    pub body: &'a [u8],
    pub accept: Option<&'a str>,
    /// The version `If-Match` names.
    pub if_match: Option<u64>,
}

/// Whether an endpoint takes `If-Match`: the changes of one key or role.
fn takes_if_match(endpoint: Endpoint) -> bool {
    use Endpoint::*;
    matches!(endpoint, EditKey | EnableKey | DisableKey | RotateKey | DeleteKey | KeyCredits | EditRole | DeleteRole)
}

/// `page` (from 1) and `per_page` of a query string.
fn paging(query: &str) -> Result<(u64, u64), ManageError> {
    let number = |name: &str, default: u64, max: u64| -> Result<u64, ManageError> {
        match query_param(query, name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| ManageError::Invalid {
                field: name.into(),
                message: format!("must be a whole number from 1 to {max}"),
            }),
        }
    };
    Ok((number("page", 1, u64::from(u32::MAX))?, number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?))
}

/// One query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    crate::credentials::form_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// `limit` of an events listing (default 100).
fn limit(query: &str) -> Result<usize, ManageError> {
    let max = crate::manage::MAX_LISTED;
    match query_param(query, "limit") {
        None => Ok(100),
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| ManageError::Invalid {
            field: "limit".into(),
            message: format!("must be a whole number from 1 to {max}"),
        }),
    }
}

fn page_meta(total: u64, page: u64, per_page: u64) -> Value {
    json!({ "total": total, "page": page, "perPage": per_page })
}

fn with_secret(m: &Manager<'_>, key: &crate::keys::model::ApiKey, secret: &str) -> Value {
    let mut data = m.key_json(key);
    data["apiKey"] = secret.into();
    data
}

/// `GET /usage?owner=&keyId=&from=YYYY-MM-DD&to=YYYY-MM-DD&granularity=day|hour`:
/// `to` is included; the range is at most the retention.
async fn usage_report(m: &Manager<'_>, query: &str) -> Result<crate::manage::UsageReport, ManageError> {
    let date = |name: &str, default: i64| -> Result<i64, ManageError> {
        match query_param(query, name).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => crate::clock::parse_date(&s).ok_or_else(|| ManageError::Invalid {
                field: name.into(),
                message: format!("`{s}` is not a date like 2026-12-01"),
            }),
        }
    };
    let today = crate::clock::now_unix().div_euclid(86_400) * 86_400;
    let to = date("to", today)?;
    let from = date("from", to - 29 * 86_400)?;
    if from > to {
        return Err(ManageError::Invalid { field: "from".into(), message: "must not be after `to`".into() });
    }
    if to - from >= crate::store::USAGE_REPORT_RETENTION_DAYS * 86_400 {
        let days = crate::store::USAGE_REPORT_RETENTION_DAYS;
        return Err(ManageError::Invalid { field: "from".into(), message: format!("the range may cover at most {days} days") });
    }
    let granularity = match query_param(query, "granularity").as_deref() {
        None | Some("") | Some("day") => "day",
        Some("hour") => "hour",
        Some(other) => {
            return Err(ManageError::Invalid { field: "granularity".into(), message: format!("`{other}` is not day or hour") })
        }
    };
    let owner = query_param(query, "owner").filter(|s| !s.is_empty());
    let key_id = query_param(query, "keyId").filter(|s| !s.is_empty());
    m.usage_report(owner, key_id, (from, to + 86_400), granularity).await
}

/// Runs one authorised endpoint for `caller`.
pub async fn run(
    m: &Manager<'_>,
    caller: &super::Caller,
    endpoint: Endpoint,
    asked: Asked<'_>,
) -> Result<Response<Body>, ManageError> {
    let Asked { id, query, body, accept, if_match } = asked;
    let id = id.unwrap_or_default();
    if if_match.is_some() && !takes_if_match(endpoint) {
        return Err(ManageError::Invalid {
            field: "If-Match".into(),
            message: "this request changes no key or role by version".into(),
        });
    }
    let resp = match endpoint {
        Endpoint::ListKeys => {
            let (page, per_page) = paging(query)?;
            let search = query_param(query, "search").filter(|s| !s.is_empty());
            let role = query_param(query, "role");
            let status = match query_param(query, "status").filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(KeyStatus::parse(&s).ok_or_else(|| ManageError::Invalid {
                    field: "status".into(),
                    message: "must be active, disabled or expired".into(),
                })?),
            };
            let now = crate::clock::now_unix();
            let result = m
                .list_keys(&KeyQuery {
                    search,
                    role,
                    status,
                    now,
                    expiring: None,
                    offset: (page - 1) * per_page,
                    limit: per_page,
                })
                .await?;
            let data = result.keys.iter().map(|k| m.key_json(k)).collect();
            ok(StatusCode::OK, data, page_meta(result.total, page, per_page))
        }
        Endpoint::CreateKey => {
            let (key, secret) = m.create_key(input::key_input(body)?, None).await?;
            ok(StatusCode::CREATED, with_secret(m, &key, &secret), json!({ "warning": SECRET_WARNING }))
        }
        Endpoint::GetKey => {
            let key = m.get_key(&id).await?;
            let previous = m.previous_secrets(&id).await?;
            let previous: Vec<Value> = previous.iter().map(|t| json!({ "validUntil": crate::clock::rfc3339(*t) })).collect();
            let mut resp = ok(StatusCode::OK, m.key_json(&key), json!({ "previousSecrets": previous }));
            with_etag(&mut resp, key.version);
            resp
        }
        Endpoint::EditKey => {
            let mut input = input::key_input(body)?;
            if input.env.is_some() {
                return Err(ManageError::Invalid {
                    field: "env".into(),
                    message: "cannot change: the secret names its environment".into(),
                });
            }
            input.env = None;
            let key = m.edit_key(&id, input, if_match).await?;
            record(m.key_json(&key), key.version)
        }
        Endpoint::EnableKey | Endpoint::DisableKey => {
            input::object(body, &[])?;
            let key = m.set_enabled(&id, endpoint == Endpoint::EnableKey, if_match).await?;
            record(m.key_json(&key), key.version)
        }
        Endpoint::RotateKey => {
            let grace = input::grace_seconds(body)?;
            let (key, secret) = m.rotate_key(&id, grace, if_match).await?;
            let mut data = with_secret(m, &key, &secret);
            data["previousSecretValidUntil"] = crate::clock::rfc3339(crate::clock::now_unix() + grace as i64).into();
            let mut resp = ok(StatusCode::OK, data, json!({ "warning": SECRET_WARNING }));
            with_etag(&mut resp, key.version);
            resp
        }
        Endpoint::DeleteKey => {
            m.delete_key(&id, if_match).await?;
            ok(StatusCode::OK, json!({ "keyId": id, "revoked": true }), json!({}))
        }
        Endpoint::KeyUsage => {
            let key = m.get_key(&id).await?;
            let usage = m.usage(&id).await?;
            let (windows, credits) = m.key_meter(&key).await?;
            let data = json!({
                "keyId": id,
                "lastHour": usage.last_hour,
                "lastDay": usage.last_day,
                "total": key.usage_count,
                "lastUsed": key.last_used.map(crate::clock::rfc3339),
                "windows": windows,
                "credits": credits,
            });
            ok(StatusCode::OK, data, json!({}))
        }
        Endpoint::KeyCredits => {
            let (change, start) = input::credits_change(body)?;
            let credits = m.change_credits(&id, change, start, if_match).await?;
            ok(StatusCode::OK, json!({ "keyId": id, "credits": credits }), json!({}))
        }
        Endpoint::UsageReport => {
            let report = usage_report(m, query).await?;
            if accept.is_some_and(|a| a.contains("text/csv")) {
                let mut resp = Response::new(crate::body::full(report.csv()));
                resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/csv; charset=utf-8"));
                return Ok(resp);
            }
            let meta = json!({ "granularity": report.granularity, "retentionDays": crate::store::USAGE_REPORT_RETENTION_DAYS });
            ok(StatusCode::OK, report.json(), meta)
        }
        Endpoint::VerifyAndCharge => {
            let (key, permission, cost) = input::verify_v1_input(body)?;
            let v = m.verify_and_charge(&key, permission.as_deref(), cost).await?;
            let code = v.verdict.refusal.or(v.limited.as_ref().map(|e| e.code()));
            let mut data = json!({
                "valid": code.is_none(),
                "code": code,
                "keyId": v.verdict.key.as_ref().map(|k| k.key_id.clone()),
                "owner": v.verdict.key.as_ref().map(|k| k.owner.clone()),
                "permissions": v.verdict.permissions,
                "remaining": v.remaining,
            });
            if let Some(e) = &v.limited {
                if let crate::error::GatewayError::QuotaExceeded { window, .. } = e {
                    data["window"] = (*window).into();
                }
                data["retryAfter"] = e.retry_after().into();
            }
            ok(StatusCode::OK, data, json!({}))
        }
        Endpoint::ListRoles => {
            let roles = m.list_roles().await?;
            ok(StatusCode::OK, roles.iter().map(role_json).collect(), json!({ "total": roles.len() }))
        }
        Endpoint::CreateRole => {
            ok(StatusCode::CREATED, role_json(&m.create_role(input::role_input(body, true)?).await?), json!({}))
        }
        Endpoint::GetRole => {
            let role = m.get_role(&id).await?;
            record(role_json(&role), role.version)
        }
        Endpoint::EditRole => {
            let role = m.edit_role(&id, input::role_input(body, false)?, if_match).await?;
            record(role_json(&role), role.version)
        }
        Endpoint::DeleteRole => {
            m.delete_role(&id, if_match).await?;
            ok(StatusCode::OK, json!({ "id": id, "deleted": true }), json!({}))
        }
        Endpoint::Modules => {
            // The plans travel with the catalogue: the console's plan list
            // (an empty list made every edit clear the key's plan).
            let per_minute =
                |p: &crate::config::Plan| p.per_minute.map_or(m.config.rate_limit.default_per_minute.get(), |n| n.get());
            let plans: serde_json::Map<String, Value> =
                m.config.plans.iter().map(|(name, p)| (name.clone(), json!(per_minute(p)))).collect();
            let limits: serde_json::Map<String, Value> = m
                .config
                .plans
                .iter()
                .map(|(name, p)| (name.clone(), crate::manage::limits_json(per_minute(p), &p.quota)))
                .collect();
            let meta = json!({ "plans": plans, "planLimits": limits });
            ok(StatusCode::OK, serde_json::to_value(m.config.catalogue.modules()).unwrap_or_default(), meta)
        }
        Endpoint::AuditLog => {
            let (page, per_page) = paging(query)?;
            let target = query_param(query, "target").filter(|s| !s.is_empty());
            let result = m.audit_log(target.as_deref(), (page - 1) * per_page, per_page).await?;
            let data = serde_json::to_value(&result.entries).unwrap_or_default();
            ok(StatusCode::OK, data, page_meta(result.total, page, per_page))
        }
        Endpoint::ListEvents => {
            let text = |name: &str| query_param(query, name).filter(|s| !s.is_empty());
            let since = text("since").map(|s| crate::manage::since_ms("since", &s)).transpose()?;
            let limit = limit(query)?;
            let events = m.events(EventQuery { key_id: text("keyId"), kind: text("type"), since_ms: since, limit }).await?;
            let data: Vec<Value> = events.iter().map(StoredEvent::json).collect();
            ok(StatusCode::OK, data.into(), json!({ "count": events.len() }))
        }
        Endpoint::ListDeliveries => {
            let text = |name: &str| query_param(query, name).filter(|s| !s.is_empty());
            let status = text("status").map(|s| crate::manage::delivery_status(&s)).transpose()?;
            let q = DeliveryQuery { webhook: text("webhook"), status, key_id: text("keyId"), limit: limit(query)? };
            let deliveries = m.deliveries(q).await?;
            let data: Vec<Value> = deliveries.iter().map(Delivery::json).collect();
            ok(StatusCode::OK, data.into(), json!({ "count": deliveries.len() }))
        }
        Endpoint::ListBlocks => ok(StatusCode::OK, m.blocks().await?.into(), json!({})),
        Endpoint::RemoveBlock => {
            m.unblock(&id).await?;
            ok(StatusCode::OK, json!({ "address": id, "removed": true }), json!({}))
        }
        Endpoint::Session => ok(StatusCode::OK, json!({ "name": caller.name, "scopes": caller.scopes.names() }), json!({})),
        Endpoint::Verify => {
            let (key, permission) = input::verify_input(body)?;
            let verdict = m.verify(&key, permission.as_deref()).await?;
            let mut data = json!({ "valid": verdict.refusal.is_none() });
            if let Some(code) = verdict.refusal {
                data["code"] = code.into();
            }
            if let Some(k) = &verdict.key {
                data["keyId"] = k.key_id.clone().into();
                data["name"] = k.name.clone().into();
                data["owner"] = k.owner.clone().into();
                data["role"] = k.role.clone().into();
                data["env"] = k.env.as_str().into();
                data["permissions"] = verdict.permissions.clone().into();
                data["rateLimit"] = m.config.limit_for(k.rate_limit, k.plan.as_deref()).into();
                data["expiresAt"] = k.expires_at.map(crate::clock::rfc3339).into();
                data["metadata"] = serde_json::to_value(&k.metadata).unwrap_or_default();
            }
            ok(StatusCode::OK, data, json!({}))
        }
        Endpoint::ReportLeaks => {
            let reported = input::leaks_input(body)?;
            let found = m.report_leaks(&reported, m.config.leaks.on_leak).await?;
            let (data, meta) = crate::manage::report_json(&found);
            ok(StatusCode::OK, data, meta)
        }
        Endpoint::ExportKeys => ndjson(json_lines(&m.export_keys().await?)),
        Endpoint::ExportRoles => ndjson(json_lines(&m.export_roles().await?)),
        Endpoint::ImportKeys => {
            let recreate = match query_param(query, "recreateDeleted").as_deref() {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    return Err(ManageError::Invalid { field: "recreateDeleted".into(), message: "must be true or false".into() })
                }
            };
            ok(StatusCode::OK, summary(m.import_keys(utf8(body)?, recreate).await?), json!({}))
        }
        Endpoint::ImportRoles => ok(StatusCode::OK, summary(m.import_roles(utf8(body)?).await?), json!({})),
        Endpoint::OpenApi | Endpoint::Metrics | Endpoint::Healthz | Endpoint::Readyz => {
            error(StatusCode::NOT_FOUND, "not_found", "served elsewhere")
        }
    };
    Ok(resp)
}

/// An export: one JSON object per line (`application/x-ndjson`).
fn ndjson(text: String) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(text));
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    resp
}

fn summary(s: crate::manage::ImportSummary) -> Value {
    serde_json::to_value(s).unwrap_or_default()
}

fn utf8(body: &[u8]) -> Result<&str, ManageError> {
    std::str::from_utf8(body).map_err(|_| ManageError::Invalid { field: "body".into(), message: "is not UTF-8".into() })
}
