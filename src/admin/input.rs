//! Reading admin API request bodies: JSON objects with the camelCase fields
//! of docs/interface.md, "Keys, roles and plans". Every problem names the field it is about.

use crate::manage::{CreditsInput, KeyInput, ManageError, QuotaInput, RoleInput, MAX_EXPIRY_DAYS};
use crate::store::CreditChange;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn invalid(field: &str, message: impl Into<String>) -> ManageError {
    ManageError::Invalid { field: field.into(), message: message.into() }
}

/// Parses a body into a JSON object, refusing fields not in `allowed`.
pub fn object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ManageError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| invalid("body", format!("is not valid JSON: {e}")))?
    };
    let Value::Object(map) = value else { return Err(invalid("body", "must be a JSON object")) };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        let known = match allowed {
            [] => "this request takes no fields; send an empty body or {}".to_string(),
            _ => format!("known: {}", allowed.join(", ")),
        };
        return Err(invalid(unknown, format!("is not a known field ({known})")));
    }
    Ok(map)
}

/// Absent: `None`; `null`: `Some(None)`; a string: `Some(Some(s))`.
fn string(map: &Map<String, Value>, field: &str) -> Result<Option<Option<String>>, ManageError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn strings(map: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, ManageError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(Vec::new())),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid(field, "must be an array of strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid(field, "must be an array of strings")),
    }
}

fn whole(map: &Map<String, Value>, field: &str, min: u64, max: u64) -> Result<Option<Option<u64>>, ManageError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(Some(n))),
            _ => Err(invalid(field, format!("must be a whole number from {min} to {max}"))),
        },
    }
}

/// Key fields of `POST /api-keys` and `PATCH /api-keys/{id}`.
pub fn key_input(body: &[u8]) -> Result<KeyInput, ManageError> {
    const FIELDS: &[&str] = &[
        "name",
        "description",
        "owner",
        "role",
        "permissions",
        "rateLimit",
        "plan",
        "allowedIps",
        "env",
        "expirationDays",
        "expiresAt",
        "metadata",
        "enabled",
        "shadow",
        "maxInFlight",
        "quota",
        "credits",
    ];
    let map = object(body, FIELDS)?;
    let required_text = |field: &str| -> Result<Option<String>, ManageError> {
        match string(&map, field)? {
            Some(None) => Err(invalid(field, "must be a string, not null")),
            other => Ok(other.flatten()),
        }
    };
    let metadata = match map.get("metadata") {
        None => None,
        Some(Value::Null) => Some(BTreeMap::new()),
        Some(Value::Object(m)) => Some(
            m.iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(n) => Ok((k.clone(), n.to_string())),
                    _ => Err(invalid("metadata", format!("`{k}` must be a string"))),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(invalid("metadata", "must be an object of strings")),
    };
    let expires_at = match map.get("expiresAt") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(crate::clock::parse_rfc3339(s).map_err(|m| invalid("expiresAt", m))?)),
        Some(_) => return Err(invalid("expiresAt", "must be an RFC 3339 time or null")),
    };
    let flag = |name: &str| match map.get(name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(name, "must be true or false")),
    };
    let (enabled, shadow) = (flag("enabled")?, flag("shadow")?);
    Ok(KeyInput {
        name: required_text("name")?,
        description: required_text("description")?,
        owner: required_text("owner")?,
        role: string(&map, "role")?.map(Option::unwrap_or_default),
        permissions: strings(&map, "permissions")?,
        rate_limit: whole(&map, "rateLimit", 1, u64::from(u32::MAX))?.map(|n| n.unwrap_or(0) as u32),
        plan: string(&map, "plan")?.map(Option::unwrap_or_default),
        allowed_ips: strings(&map, "allowedIps")?,
        env: required_text("env")?,
        expires_in_days: whole(&map, "expirationDays", 1, u64::from(MAX_EXPIRY_DAYS))?.map(|n| n.unwrap_or(0) as u32),
        expires_at,
        metadata,
        enabled,
        quota: quota_input(&map)?,
        credits: credits_input(&map)?,
        shadow,
        max_in_flight: whole(&map, "maxInFlight", 1, u64::from(u32::MAX))?.map(|n| n.unwrap_or(0) as u32),
    })
}

/// A nested object's fields, each named `parent.field` in errors.
fn nested<'a>(
    map: &'a Map<String, Value>,
    parent: &str,
    allowed: &[&str],
) -> Result<Option<&'a Map<String, Value>>, ManageError> {
    match map.get(parent) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            if let Some(unknown) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(invalid(
                    &format!("{parent}.{unknown}"),
                    format!("is not a known field (known: {})", allowed.join(", ")),
                ));
            }
            Ok(Some(m))
        }
        Some(_) => Err(invalid(parent, "must be an object")),
    }
}

/// Names a nested field's refusal `parent.name`.
fn under(parent: &str, name: &str) -> impl FnOnce(ManageError) -> ManageError {
    let field = format!("{parent}.{name}");
    move |e| match e {
        ManageError::Invalid { message, .. } => invalid(&field, message),
        other => other,
    }
}

/// `quota: {perHour, perDay, perMonth}`; a null window (or `quota: null`)
/// goes back to the plan's.
fn quota_input(map: &Map<String, Value>) -> Result<QuotaInput, ManageError> {
    const WINDOWS: [&str; 3] = ["perHour", "perDay", "perMonth"];
    if map.get("quota") == Some(&Value::Null) {
        return Ok(QuotaInput { per_hour: Some(None), per_day: Some(None), per_month: Some(None) });
    }
    let Some(q) = nested(map, "quota", &WINDOWS)? else { return Ok(QuotaInput::default()) };
    let window = |name: &str| -> Result<Option<Option<u32>>, ManageError> {
        whole(q, name, 1, u64::from(u32::MAX)).map_err(under("quota", name)).map(|v| v.map(|n| n.map(|n| n as u32)))
    };
    Ok(QuotaInput { per_hour: window("perHour")?, per_day: window("perDay")?, per_month: window("perMonth")? })
}

/// `credits: {remaining, refillAmount, refillInterval}`, or `null` to stop
/// spending credits.
fn credits_input(map: &Map<String, Value>) -> Result<Option<Option<CreditsInput>>, ManageError> {
    if map.get("credits") == Some(&Value::Null) {
        return Ok(Some(None));
    }
    let Some(c) = nested(map, "credits", &["remaining", "refillAmount", "refillInterval"])? else { return Ok(None) };
    let max = crate::manage::MAX_CREDITS;
    let remaining = whole(c, "remaining", 0, max).map_err(under("credits", "remaining"))?.flatten();
    let refill_amount = whole(c, "refillAmount", 0, max).map_err(under("credits", "refillAmount"))?;
    let refill_interval = string(c, "refillInterval").map_err(under("credits", "refillInterval"))?;
    Ok(Some(Some(CreditsInput { remaining, refill_amount, refill_interval })))
}

/// `{"add": N}` or `{"set": N}` of `POST /api-keys/{id}/credits`, and
/// whether it may start a key spending credits (`"start": true`).
pub fn credits_change(body: &[u8]) -> Result<(CreditChange, bool), ManageError> {
    let map = object(body, &["add", "set", "start"])?;
    let start = match map.get("start") {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| invalid("start", "must be true or false"))?,
    };
    let max = crate::manage::MAX_CREDITS as i64;
    let number = |field: &str, min: i64| -> Result<Option<i64>, ManageError> {
        match map.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .filter(|n| (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| invalid(field, format!("must be a whole number from {min} to {max}"))),
        }
    };
    match (number("add", -max)?, number("set", 0)?) {
        (Some(n), None) => Ok((CreditChange::Add(n), start)),
        (None, Some(n)) => Ok((CreditChange::Set(n), start)),
        _ => Err(invalid("body", "give exactly one of `add` and `set`")),
    }
}

/// Role fields of `POST /api-roles` and `PATCH /api-roles/{id}`.
pub fn role_input(body: &[u8], with_id: bool) -> Result<RoleInput, ManageError> {
    let fields: &[&str] =
        if with_id { &["id", "name", "description", "permissions"] } else { &["name", "description", "permissions"] };
    let map = object(body, fields)?;
    Ok(RoleInput {
        id: string(&map, "id")?.flatten(),
        name: string(&map, "name")?.flatten(),
        description: string(&map, "description")?.map(Option::unwrap_or_default),
        permissions: strings(&map, "permissions")?,
    })
}

/// `key` (required) and `permission` of `POST /verify`.
pub fn verify_input(body: &[u8]) -> Result<(String, Option<String>), ManageError> {
    let map = object(body, &["key", "permission"])?;
    let text = |field: &str| match string(&map, field)? {
        Some(None) => Err(invalid(field, "must be a string")),
        other => Ok(other.flatten()),
    };
    let key = text("key")?.ok_or_else(|| invalid("key", "is required"))?;
    Ok((key, text("permission")?))
}

/// `tokens` (required, at most [`crate::manage::MAX_REPORTED`]), `url`
/// and `source` of `POST /v1/leaks`: every token found in one place.
pub fn leaks_input(body: &[u8]) -> Result<Vec<crate::manage::Reported>, ManageError> {
    let map = object(body, &["tokens", "url", "source", "type"])?;
    let tokens = strings(&map, "tokens")?.unwrap_or_default();
    if tokens.is_empty() {
        return Err(invalid("tokens", "is required: the tokens found"));
    }
    if tokens.len() > crate::manage::MAX_REPORTED {
        return Err(invalid("tokens", format!("at most {} tokens per report", crate::manage::MAX_REPORTED)));
    }
    let text = |field: &str| -> Result<String, ManageError> {
        match string(&map, field)? {
            Some(Some(s)) => Ok(s),
            None | Some(None) => Ok(String::new()),
        }
    };
    let (url, source, kind) = (text("url")?, text("source")?, text("type")?);
    Ok(tokens
        .into_iter()
        .map(|token| crate::manage::Reported { token, kind: kind.clone(), url: url.clone(), source: source.clone() })
        .collect())
}

/// `key` (required), `permission` and `cost` (0 charges nothing) of
/// `POST /v1/keys/verify`.
pub fn verify_v1_input(body: &[u8]) -> Result<(String, Option<String>, u32), ManageError> {
    let map = object(body, &["key", "permission", "cost"])?;
    let text = |field: &str| match string(&map, field)? {
        Some(None) => Err(invalid(field, "must be a string")),
        other => Ok(other.flatten()),
    };
    let key = text("key")?.ok_or_else(|| invalid("key", "is required"))?;
    let cost = whole(&map, "cost", 0, 1_000_000)?.flatten().unwrap_or(0) as u32;
    Ok((key, text("permission")?, cost))
}

/// The version an `If-Match` header names: one strong entity tag of a
/// version number (`"3"`). Anything else (`*`, a weak tag, a list, two
/// headers) is refused rather than guessed at.
pub fn if_match(headers: &http::HeaderMap) -> Result<Option<u64>, ManageError> {
    let mut values = headers.get_all(http::header::IF_MATCH).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let refused = || invalid("If-Match", "must be one version in quotes, as the ETag gives it (like \"3\")");
    if values.next().is_some() {
        return Err(refused());
    }
    let text = value.to_str().map_err(|_| refused())?.trim();
    let digits = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).ok_or_else(refused)?;
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refused());
    }
    digits.parse().map(Some).map_err(|_| refused())
}

/// `graceSeconds` (or `grace_seconds`) of a rotation.
pub fn grace_seconds(body: &[u8]) -> Result<u64, ManageError> {
    let map = object(body, &["graceSeconds", "grace_seconds"])?;
    let field = if map.contains_key("graceSeconds") { "graceSeconds" } else { "grace_seconds" };
    Ok(whole(&map, field, 0, crate::manage::MAX_GRACE_SECONDS)?.flatten().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_names_one_version() {
        let with = |values: &[&str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(http::header::IF_MATCH, http::HeaderValue::from_str(v).unwrap());
            }
            if_match(&h)
        };
        assert_eq!(with(&[]).unwrap(), None);
        assert_eq!(with(&["\"3\""]).unwrap(), Some(3));
        assert_eq!(with(&[" \"12\" "]).unwrap(), Some(12));
        for bad in ["3", "*", "W/\"3\"", "\"3\", \"4\"", "\"\"", "\"-1\"", "\"99999999999999999999\"", "\"1e3\""] {
            let e = with(&[bad]).unwrap_err();
            assert!(matches!(&e, ManageError::Invalid { field, .. } if field == "If-Match"), "{bad}: {e}");
        }
        assert!(with(&["\"3\"", "\"3\""]).is_err(), "two headers");
    }

    #[test]
    fn key_fields() {
        let k = key_input(
            br#"{"name":"n","rateLimit":5,"role":null,"allowedIps":["10.0.0.0/8"],"expirationDays":30,"metadata":{"a":"1"}}"#,
        )
        .unwrap();
        assert_eq!(k.name.as_deref(), Some("n"));
        assert_eq!(k.rate_limit, Some(5));
        assert_eq!(k.role.as_deref(), Some(""));
        assert_eq!(k.expires_in_days, Some(30));
        let k = key_input(br#"{"rateLimit":null,"expirationDays":null}"#).unwrap();
        assert_eq!((k.rate_limit, k.expires_in_days), (Some(0), Some(0)));
        let k = key_input(br#"{"expiresAt":"2030-01-01T12:30:00+02:00"}"#).unwrap();
        assert_eq!(k.expires_at, Some(Some(1_893_493_800)));
        assert_eq!(key_input(br#"{"expiresAt":null}"#).unwrap().expires_at, Some(None));
    }

    #[test]
    fn errors_name_the_field() {
        let field = |body: &[u8]| match key_input(body) {
            Err(ManageError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(br#"{"name":"n","colour":"red"}"#), "colour");
        assert_eq!(field(br#"{"name":5}"#), "name");
        assert_eq!(field(br#"{"expirationDays":366}"#), "expirationDays");
        assert_eq!(field(br#"{"expirationDays":0}"#), "expirationDays");
        assert_eq!(field(br#"{"rateLimit":-1}"#), "rateLimit");
        assert_eq!(field(br#"{"permissions":"lists.view"}"#), "permissions");
        assert_eq!(field(br#"{"enabled":"yes"}"#), "enabled");
        assert_eq!(field(br#"{"expiresAt":"next tuesday"}"#), "expiresAt");
        assert_eq!(field(br#"{"expiresAt":1893493800}"#), "expiresAt");
        assert_eq!(field(b"[1]"), "body");
        assert_eq!(field(b"{nope"), "body");
    }

    #[test]
    fn verify_takes_a_key_and_maybe_a_permission() {
        assert_eq!(verify_input(br#"{"key":"k"}"#).unwrap(), ("k".to_string(), None));
        assert_eq!(verify_input(br#"{"key":"k","permission":"lists.view"}"#).unwrap().1.as_deref(), Some("lists.view"));
        for (body, field) in
            [(&br#"{}"#[..], "key"), (br#"{"key":null}"#, "key"), (br#"{"key":"k","permission":5}"#, "permission")]
        {
            match verify_input(body) {
                Err(ManageError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_request_without_fields_says_so_of_an_unknown_one() {
        match object(br#"{"reason":"left"}"#, &[]) {
            Err(ManageError::Invalid { field, message }) => {
                assert_eq!(field, "reason");
                assert!(message.contains("takes no fields"), "{message}");
                assert!(!message.contains("known: )"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(object(b"", &[]).is_ok() && object(b"{}", &[]).is_ok());
    }
}
