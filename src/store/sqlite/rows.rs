//! The SQLite store's schema and the mapping between rows and the model.

use super::super::*;
use crate::keys::model::Env;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

pub(super) const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS roles (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL DEFAULT '[]',
    version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    role TEXT REFERENCES roles(id),
    permissions TEXT NOT NULL DEFAULT '[]',
    plan TEXT,
    rate_limit INTEGER,
    allowed_ips TEXT NOT NULL DEFAULT '[]',
    env TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    last_used INTEGER,
    usage_count INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    key_prefix TEXT NOT NULL,
    quota TEXT NOT NULL DEFAULT '{}',
    credits TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    shadow INTEGER NOT NULL DEFAULT 0,
    max_in_flight INTEGER
);
CREATE TABLE IF NOT EXISTS tombstones (
    key_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_role ON keys(role);
CREATE TABLE IF NOT EXISTS secrets (
    token_hash BLOB PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS secrets_key ON secrets(key_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_target ON audit(target);
CREATE TABLE IF NOT EXISTS meter_windows (
    id TEXT NOT NULL,
    period TEXT NOT NULL,
    idx INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (id, period, idx)
);
CREATE TABLE IF NOT EXISTS credits (
    key_id TEXT PRIMARY KEY REFERENCES keys(key_id) ON DELETE CASCADE,
    remaining INTEGER NOT NULL,
    period INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS usage_hours (
    key_id TEXT NOT NULL,
    hour INTEGER NOT NULL,
    owner TEXT NOT NULL,
    admitted INTEGER NOT NULL,
    refused INTEGER NOT NULL,
    units INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour)
);
CREATE INDEX IF NOT EXISTS usage_hours_hour ON usage_hours(hour);
CREATE TABLE IF NOT EXISTS usage_minutes (
    key_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key_id, minute)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_key ON events(key_id, seq);
CREATE TABLE IF NOT EXISTS webhook_cursors (
    webhook TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    webhook TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_ms INTEGER,
    next_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    log TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (webhook, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries(webhook, status, seq);
CREATE TABLE IF NOT EXISTS blocks (
    address TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
";

/// Brings a database made by an earlier version up to this schema: the
/// columns added since are added (with their defaults), nothing else moves.
pub(super) fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let added = [
        ("keys", "quota", "TEXT NOT NULL DEFAULT '{}'"),
        ("keys", "credits", "TEXT"),
        ("keys", "version", "INTEGER NOT NULL DEFAULT 1"),
        ("roles", "version", "INTEGER NOT NULL DEFAULT 1"),
        ("keys", "shadow", "INTEGER NOT NULL DEFAULT 0"),
        ("usage_hours", "units", "INTEGER NOT NULL DEFAULT 0"),
        ("keys", "max_in_flight", "INTEGER"),
    ];
    for (table, name, definition) in added {
        let mut stmt = c.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let columns = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        if !columns.iter().any(|c| c == name) {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {definition}"))?;
        }
    }
    Ok(())
}

/// Changes older than this are trimmed; a gateway further behind flushes its cache.
pub(super) const CHANGE_RETENTION_SECS: i64 = 24 * 3600;
/// Per-minute usage rows kept for the console's charts.
pub(super) const USAGE_RETENTION_SECS: i64 = 8 * 24 * 3600;

pub(super) const KEY_COLUMNS: &str = "k.key_id, k.name, k.description, k.owner, k.role, k.permissions, k.plan, k.rate_limit, \
     k.allowed_ips, k.env, k.enabled, k.expires_at, k.created_at, k.last_used, k.usage_count, k.metadata, k.key_prefix, k.quota, k.credits, k.version, k.shadow, \
     k.max_in_flight";
/// The column after `KEY_COLUMNS` in a query that selects more.
pub(super) const AFTER_KEY_COLUMNS: usize = 22;
pub(super) const ROLE_COLUMNS: &str = "id, name, description, permissions, version";

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

pub(super) fn key_from_row(row: &Row) -> rusqlite::Result<ApiKey> {
    let env: String = row.get(9)?;
    Ok(ApiKey {
        key_id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        owner: row.get(3)?,
        role: row.get(4)?,
        permissions: from_json(&row.get::<_, String>(5)?)?,
        plan: row.get(6)?,
        rate_limit: row.get(7)?,
        allowed_ips: from_json(&row.get::<_, String>(8)?)?,
        env: Env::parse(&env).unwrap_or(Env::Live),
        enabled: row.get(10)?,
        expires_at: row.get(11)?,
        created_at: row.get(12)?,
        last_used: row.get(13)?,
        usage_count: row.get::<_, i64>(14)? as u64,
        metadata: from_json(&row.get::<_, String>(15)?)?,
        key_prefix: row.get(16)?,
        quota: from_json(&row.get::<_, String>(17)?)?,
        credits: row.get::<_, Option<String>>(18)?.map(|c| from_json(&c)).transpose()?,
        version: row.get::<_, i64>(19)? as u64,
        shadow: row.get(20)?,
        max_in_flight: row.get(21)?,
    })
}

pub(super) fn role_from_row(row: &Row) -> rusqlite::Result<Role> {
    Ok(Role {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        permissions: from_json(&row.get::<_, String>(3)?)?,
        version: row.get::<_, i64>(4)? as u64,
    })
}

pub(super) fn log_change(tx: &Connection, kind: &str, id: &str) -> rusqlite::Result<()> {
    tx.execute("INSERT INTO changes (kind, id, at_ms) VALUES (?1, ?2, ?3)", params![kind, id, now_unix_ms()])?;
    Ok(())
}

/// Writes an event to the outbox unless one with its id is there; says
/// whether it did.
pub(super) fn write_event(tx: &Connection, e: &crate::events::NewEvent) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO events (id, type, key_id, at_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.id, e.kind.as_str(), e.key_id, e.at_ms, e.body],
    )?;
    Ok(n == 1)
}

/// Stores a secret's hash for a key; `Conflict` if any key already has it.
pub(super) fn add_secret(tx: &Connection, hash: &TokenHash, key_id: &str) -> Result<(), StoreError> {
    tx.execute("INSERT INTO secrets (token_hash, key_id, expires_at) VALUES (?1, ?2, NULL)", params![&hash.0[..], key_id])
        .map(|_| ())
        .map_err(|e| if is_constraint(&e) { StoreError::Conflict("that token is already in use".into()) } else { unavailable(e) })
}

pub(super) fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The columns of a key a change writes, in the order of [`editable`].
const EDITABLE: [&str; 17] = [
    "name",
    "description",
    "owner",
    "role",
    "permissions",
    "plan",
    "rate_limit",
    "allowed_ips",
    "env",
    "enabled",
    "expires_at",
    "metadata",
    "key_prefix",
    "quota",
    "credits",
    "shadow",
    "max_in_flight",
];

/// The values of a key's [`EDITABLE`] columns.
fn editable(key: &ApiKey) -> Result<Vec<Value>, StoreError> {
    let text = |s: &str| Value::Text(s.to_string());
    let optional = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
    Ok(vec![
        text(&key.name),
        text(&key.description),
        text(&key.owner),
        optional(&key.role),
        Value::Text(json(&key.permissions)?),
        optional(&key.plan),
        key.rate_limit.map_or(Value::Null, |n| Value::Integer(i64::from(n))),
        Value::Text(json(&key.allowed_ips)?),
        text(key.env.as_str()),
        Value::Integer(i64::from(key.enabled)),
        key.expires_at.map_or(Value::Null, Value::Integer),
        Value::Text(json(&key.metadata)?),
        text(&key.key_prefix),
        Value::Text(json(&key.quota)?),
        key.credits.as_ref().map(json).transpose()?.map_or(Value::Null, Value::Text),
        Value::Integer(i64::from(key.shadow)),
        key.max_in_flight.map_or(Value::Null, |n| Value::Integer(i64::from(n))),
    ])
}

fn key_write_error(key: &ApiKey) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| if is_constraint(&e) { StoreError::Conflict(constraint_message(key)) } else { unavailable(e) }
}

/// Inserts a new key row whole, usage and version included.
pub(super) fn insert_key_row(tx: &Connection, key: &ApiKey) -> Result<(), StoreError> {
    let columns = EDITABLE.join(", ");
    let marks = (1..=EDITABLE.len() + 5).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
    let sql = format!("INSERT INTO keys ({columns}, key_id, created_at, last_used, usage_count, version) VALUES ({marks})");
    let mut values = editable(key)?;
    values.extend([
        Value::Text(key.key_id.clone()),
        Value::Integer(key.created_at),
        key.last_used.map_or(Value::Null, Value::Integer),
        Value::Integer(key.usage_count as i64),
        Value::Integer(key.version as i64),
    ]);
    tx.execute(&sql, params_from_iter(values)).map(|_| ()).map_err(key_write_error(key))
}

/// Writes a key's [`EDITABLE`] columns if the row is still at
/// `key.version`, and bumps it; usage and the creation time are not
/// touched. `Ok(false)` when no row at that version was found (see
/// [`version_check`]).
pub(super) fn update_key_row(tx: &Connection, key: &ApiKey) -> Result<bool, StoreError> {
    let n = EDITABLE.len();
    let set = EDITABLE.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 1)).collect::<Vec<_>>().join(", ");
    let sql = format!("UPDATE keys SET {set}, version = version + 1 WHERE key_id = ?{} AND version = ?{}", n + 1, n + 2);
    let mut values = editable(key)?;
    values.extend([Value::Text(key.key_id.clone()), Value::Integer(key.version as i64)]);
    tx.execute(&sql, params_from_iter(values)).map(|n| n > 0).map_err(key_write_error(key))
}

/// Why a conditional write on `table`'s row `id` found nothing to write:
/// the row is gone, or at another version.
pub(super) fn version_check(tx: &Connection, table: &str, column: &str, id: &str) -> StoreError {
    match version_of(tx, table, column, id) {
        Ok(Some(current)) => StoreError::VersionConflict { current },
        Ok(None) => StoreError::NotFound,
        Err(e) => e,
    }
}

/// The version `table`'s row `id` is at, if it exists.
fn version_of(tx: &Connection, table: &str, column: &str, id: &str) -> Result<Option<u64>, StoreError> {
    tx.query_row(&format!("SELECT version FROM {table} WHERE {column} = ?1"), params![id], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
        .map_err(unavailable)
}

/// The version a key row is at, if it exists.
pub(super) fn key_version(tx: &Connection, key_id: &str) -> Result<Option<u64>, StoreError> {
    version_of(tx, "keys", "key_id", key_id)
}

pub(super) fn constraint_message(key: &ApiKey) -> String {
    match &key.role {
        Some(role) => {
            format!("key `{}` already exists, its token is already in use, or role `{role}` does not exist", key.key_id)
        }
        None => format!("key `{}` already exists or its token is already in use", key.key_id),
    }
}
