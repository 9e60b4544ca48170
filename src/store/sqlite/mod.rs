//! The embedded default store: one SQLite file, shared safely by the
//! gateway and CLI processes (WAL mode, busy timeout). Every mutation also
//! appends to a `changes` table in the same transaction; gateways poll that
//! sequence, which is how a CLI change reaches a running gateway.

mod outbox;
mod rows;

use super::*;
use rows::*;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// SQLite-backed [`Store`]: one connection writes, another reads, so a
/// lookup never queues behind a write that waits for another process's
/// lock (WAL lets readers go on while a writer holds it).
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        migrate(&conn).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        let reader = Connection::open(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        reader.busy_timeout(std::time::Duration::from_secs(5)).map_err(unavailable)?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), reader: Arc::new(Mutex::new(reader)) })
    }

    /// Runs `f` on the writing connection off the async threads.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Self::on(&self.conn, f).await
    }

    /// Runs a query that writes nothing on the reading connection.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        Self::on(&self.reader, f).await
    }

    async fn on<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| unavailable("sqlite connection poisoned"))?;
            f(&mut guard)
        })
        .await
        .map_err(unavailable)?
    }

    /// Runs `f` in a transaction that also records, in the change feed, a
    /// change to the `kind` item `id` (how other nodes' caches hear of it)
    /// and writes the event it causes, and commits them together.
    async fn logged_change<F>(&self, kind: &'static str, id: String, event: Option<&NewEvent>, f: F) -> Result<(), StoreError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<(), StoreError> + Send + 'static,
    {
        let event = event.cloned();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            f(&tx)?;
            log_change(&tx, kind, &id).map_err(unavailable)?;
            if let Some(e) = &event {
                write_event(&tx, e).map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl Resolver for SqliteStore {
    async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<KeyLookup>, StoreError> {
        let hash = *hash;
        self.read(move |c| {
            let sql = format!(
                "SELECT {KEY_COLUMNS}, s.expires_at FROM secrets s JOIN keys k ON k.key_id = s.key_id WHERE s.token_hash = ?1"
            );
            c.query_row(&sql, params![&hash.0[..]], |row| Ok(KeyLookup::new(key_from_row(row)?, row.get(AFTER_KEY_COLUMNS)?)))
                .optional()
                .map_err(unavailable)
        })
        .await
    }
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!("SELECT {ROLE_COLUMNS} FROM roles ORDER BY id")).map_err(unavailable)?;
            let roles =
                stmt.query_map([], role_from_row).and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>()).map_err(unavailable)?;
            Ok(roles)
        })
        .await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable)).await
    }
}

#[async_trait]
impl ChangeFeed for SqliteStore {
    async fn change_cursor(&self) -> Result<FeedCursor, StoreError> {
        self.read(|c| {
            let seq = c.query_row("SELECT IFNULL(MAX(seq), 0) FROM changes", [], |r| r.get::<_, i64>(0)).map_err(unavailable)?;
            Ok(FeedCursor { seq: seq as u64, mark: entry_at(c, seq)?.unwrap_or_default() })
        })
        .await
    }
    async fn changes_since(&self, from: &FeedCursor) -> Result<ChangeBatch, StoreError> {
        let from = from.clone();
        self.read(move |c| {
            let seq = from.seq;
            let (oldest, newest): (Option<i64>, Option<i64>) =
                c.query_row("SELECT MIN(seq), MAX(seq) FROM changes", [], |r| Ok((r.get(0)?, r.get(1)?))).map_err(unavailable)?;
            let here = entry_at(c, seq as i64)?;
            // Behind the cursor, or another entry at it: the file was
            // restored from an older copy.
            let mut batch = match ChangeBatch::open(&from, newest.unwrap_or(0) as u64, oldest.map(|o| o as u64), here) {
                Ok(batch) => batch,
                Err(resync) => return Ok(resync),
            };
            let mut stmt = c
                .prepare_cached("SELECT seq, kind, id, at_ms FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![seq as i64, FEED_PAGE as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
                })
                .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            batch.gap |= rows.len() >= FEED_PAGE;
            for (s, kind, id, at_ms) in rows {
                let mark = entry_text(&kind, &id, at_ms);
                let target = if kind == "role" { ChangeTarget::Role(id) } else { ChangeTarget::Key(id) };
                batch.push(s as u64, mark, Change { target, at_ms });
            }
            Ok(batch)
        })
        .await
    }
}

#[async_trait]
impl Records for SqliteStore {
    async fn get_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.key_id = ?1"), params![key_id], key_from_row)
                .optional()
                .map_err(unavailable)
        })
        .await
    }
    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let q = query.clone();
        self.read(move |c| {
            let pattern =
                format!("%{}%", q.search.unwrap_or_default().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
            let filter = "FROM keys k WHERE (?1 = '%%' OR k.name LIKE ?1 ESCAPE '\\' OR k.description LIKE ?1 ESCAPE '\\' \
                 OR k.owner LIKE ?1 ESCAPE '\\' OR k.key_prefix LIKE ?1 ESCAPE '\\' OR IFNULL(k.role, '') LIKE ?1 ESCAPE '\\' \
                 OR k.key_id LIKE ?1 ESCAPE '\\' OR k.allowed_ips LIKE ?1 ESCAPE '\\') \
                 AND (?2 IS NULL OR IFNULL(k.role, '') = ?2) \
                 AND (?3 IS NULL OR (?3 = 'disabled' AND k.enabled = 0) \
                   OR (?3 = 'expired' AND k.enabled = 1 AND k.expires_at IS NOT NULL AND k.expires_at <= ?4) \
                   OR (?3 = 'active' AND k.enabled = 1 AND (k.expires_at IS NULL OR k.expires_at > ?4))) \
                 AND (?5 IS NULL OR (k.expires_at IS NOT NULL AND k.expires_at BETWEEN ?5 AND ?6))";
            let status = q.status.map(KeyStatus::as_str);
            let (from, to) = (q.expiring.map(|e| e.0), q.expiring.map(|e| e.1));
            let total: i64 = c
                .query_row(&format!("SELECT COUNT(*) {filter}"), params![pattern, q.role, status, q.now, from, to], |r| r.get(0))
                .map_err(unavailable)?;
            let limit = if q.limit == 0 { i64::MAX } else { q.limit as i64 };
            let mut stmt = c
                .prepare(&format!("SELECT {KEY_COLUMNS} {filter} ORDER BY k.created_at DESC, k.key_id LIMIT ?7 OFFSET ?8"))
                .map_err(unavailable)?;
            let keys = stmt
                .query_map(params![pattern, q.role, status, q.now, from, to, limit, q.offset as i64], key_from_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            Ok(KeyPage { keys, total: total as u64 })
        })
        .await
    }
    async fn insert_key(&self, key: &ApiKey, hash: &TokenHash, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let (key, hash) = (key.clone(), *hash);
        self.logged_change("key", key.key_id.clone(), event, move |tx| {
            insert_key_row(tx, &key)?;
            add_secret(tx, &hash, &key.key_id)
        })
        .await
    }
    async fn update_key(&self, key: &ApiKey, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let key = key.clone();
        self.logged_change("key", key.key_id.clone(), event, move |tx| match update_key_row(tx, &key)? {
            true => Ok(()),
            false => Err(version_check(tx, "keys", "key_id", &key.key_id)),
        })
        .await
    }
    async fn delete_key(&self, key_id: &str, version: u64, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let key_id = key_id.to_string();
        self.logged_change("key", key_id.clone(), event, move |tx| {
            let n = tx
                .execute("DELETE FROM keys WHERE key_id = ?1 AND version = ?2", params![key_id, version as i64])
                .map_err(unavailable)?;
            if n == 0 {
                return Err(version_check(tx, "keys", "key_id", &key_id));
            }
            tx.execute(
                "INSERT OR REPLACE INTO tombstones (key_id, version, deleted_at) VALUES (?1, ?2, ?3)",
                params![key_id, version as i64, now_unix()],
            )
            .map_err(unavailable)?;
            tx.execute("DELETE FROM usage_minutes WHERE key_id = ?1", params![key_id]).map_err(unavailable)?;
            Ok(())
        })
        .await
    }
    async fn secrets_of(&self, key_id: &str, now: i64) -> Result<Vec<SecretRecord>, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT token_hash, expires_at FROM secrets WHERE key_id = ?1 AND (expires_at IS NULL OR expires_at > ?2) \
                     ORDER BY expires_at IS NOT NULL, expires_at DESC",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![key_id, now], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Option<i64>>(1)?)))
                .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(bytes, valid_until)| {
                    let hash = <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| StoreError::Corrupt("a secret's hash is not 32 bytes".into()))?;
                    Ok(SecretRecord { hash: TokenHash(hash), valid_until })
                })
                .collect()
        })
        .await
    }
    async fn put_key(
        &self,
        key: &ApiKey,
        secrets: &[SecretRecord],
        expect: PutExpect,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let (mut key, secrets, event) = (key.clone(), secrets.to_vec(), event.cloned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
            let current = key_version(&tx, &key.key_id)?;
            let exists = current.is_some();
            match (expect, current) {
                (PutExpect::Absent { .. }, Some(v)) => return Err(StoreError::VersionConflict { current: v }),
                (PutExpect::Version(_), None) => return Err(StoreError::NotFound),
                (PutExpect::Version(want), Some(v)) if want != v => return Err(StoreError::VersionConflict { current: v }),
                (PutExpect::Version(want), Some(_)) => {
                    key.version = want;
                    update_key_row(&tx, &key)?;
                    tx.execute(
                        "UPDATE keys SET usage_count = MAX(usage_count, ?2), \
                         last_used = CASE WHEN ?3 IS NULL THEN last_used ELSE MAX(IFNULL(last_used, 0), ?3) END \
                         WHERE key_id = ?1",
                        params![key.key_id, key.usage_count as i64, key.last_used],
                    )
                    .map_err(unavailable)?;
                }
                (PutExpect::Absent { recreate_deleted }, None) => {
                    let tomb: Option<i64> = tx
                        .query_row("SELECT version FROM tombstones WHERE key_id = ?1", params![key.key_id], |r| r.get(0))
                        .optional()
                        .map_err(unavailable)?;
                    match tomb {
                        Some(_) if !recreate_deleted => return Err(StoreError::Deleted),
                        // Versions go on from the deleted key's: an `If-Match` of
                        // the old key never matches the new one.
                        Some(v) => key.version = v as u64 + 1,
                        None => key.version = crate::keys::model::first_version(),
                    }
                    tx.execute("DELETE FROM tombstones WHERE key_id = ?1", params![key.key_id]).map_err(unavailable)?;
                    insert_key_row(&tx, &key)?;
                }
            }
            tx.execute("DELETE FROM secrets WHERE key_id = ?1", params![key.key_id]).map_err(unavailable)?;
            for s in &secrets {
                add_secret(&tx, &s.hash, &key.key_id)?;
                if s.valid_until.is_some() {
                    tx.execute("UPDATE secrets SET expires_at = ?2 WHERE token_hash = ?1", params![&s.hash.0[..], s.valid_until])
                        .map_err(unavailable)?;
                }
            }
            log_change(&tx, "key", &key.key_id).map_err(unavailable)?;
            if let Some(e) = &event {
                write_event(&tx, e).map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(!exists)
        })
        .await
    }
    async fn rotate_secret(&self, r: &Rotation<'_>) -> Result<(), StoreError> {
        let (key_id, hash, prefix) = (r.key_id.to_string(), *r.hash, r.key_prefix.to_string());
        let (old_valid_until, version) = (r.old_valid_until, r.version);
        self.logged_change("key", key_id.clone(), r.event, move |tx| {
            let n = tx
                .execute(
                    "UPDATE keys SET key_prefix = ?2, version = version + 1 WHERE key_id = ?1 AND version = ?3",
                    params![key_id, prefix, version as i64],
                )
                .map_err(unavailable)?;
            if n == 0 {
                return Err(version_check(tx, "keys", "key_id", &key_id));
            }
            tx.execute(
                "UPDATE secrets SET expires_at = MIN(IFNULL(expires_at, ?2), ?2) WHERE key_id = ?1",
                params![key_id, old_valid_until],
            )
            .map_err(unavailable)?;
            tx.execute("DELETE FROM secrets WHERE key_id = ?1 AND expires_at <= ?2", params![key_id, now_unix()])
                .map_err(unavailable)?;
            add_secret(tx, &hash, &key_id)
        })
        .await
    }
    async fn get_role(&self, id: &str) -> Result<Option<Role>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {ROLE_COLUMNS} FROM roles WHERE id = ?1"), params![id], role_from_row)
                .optional()
                .map_err(unavailable)
        })
        .await
    }
    async fn insert_role(&self, role: &Role) -> Result<(), StoreError> {
        if self.insert_role_if_absent(role).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!("role `{}` already exists", role.id)))
        }
    }
    async fn insert_role_if_absent(&self, role: &Role) -> Result<bool, StoreError> {
        let role = role.clone();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO roles (id, name, description, permissions, version) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![role.id, role.name, role.description, json(&role.permissions)?, role.version as i64],
                )
                .map_err(unavailable)?;
            if n > 0 {
                log_change(&tx, "role", &role.id).map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(n > 0)
        })
        .await
    }
    async fn update_role(&self, role: &Role) -> Result<(), StoreError> {
        let role = role.clone();
        self.logged_change("role", role.id.clone(), None, move |tx| {
            let n = tx
                .execute(
                    "UPDATE roles SET name = ?2, description = ?3, permissions = ?4, version = version + 1 \
                     WHERE id = ?1 AND version = ?5",
                    params![role.id, role.name, role.description, json(&role.permissions)?, role.version as i64],
                )
                .map_err(unavailable)?;
            match n {
                0 => Err(version_check(tx, "roles", "id", &role.id)),
                _ => Ok(()),
            }
        })
        .await
    }
    async fn delete_role(&self, id: &str, version: u64) -> Result<(), StoreError> {
        let id = id.to_string();
        self.logged_change("role", id.clone(), None, move |tx| {
            let users: i64 =
                tx.query_row("SELECT COUNT(*) FROM keys WHERE role = ?1", params![id], |r| r.get(0)).map_err(unavailable)?;
            if users > 0 {
                return Err(StoreError::RoleInUse { keys: users as u64 });
            }
            match tx
                .execute("DELETE FROM roles WHERE id = ?1 AND version = ?2", params![id, version as i64])
                .map_err(unavailable)?
            {
                0 => Err(version_check(tx, "roles", "id", &id)),
                _ => Ok(()),
            }
        })
        .await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let (target, json) = (entry.target.clone(), json(entry)?);
        self.with(move |c| {
            c.execute("INSERT INTO audit (target, entry) VALUES (?1, ?2)", params![target, json]).map(|_| ()).map_err(unavailable)
        })
        .await
    }
    async fn list_audit(&self, target: Option<&str>, offset: u64, limit: u64) -> Result<AuditPage, StoreError> {
        let target = target.map(str::to_string);
        self.read(move |c| {
            let filter = "FROM audit WHERE (?1 IS NULL OR target = ?1)";
            let total: i64 =
                c.query_row(&format!("SELECT COUNT(*) {filter}"), params![target], |r| r.get(0)).map_err(unavailable)?;
            let limit = if limit == 0 { i64::MAX } else { limit as i64 };
            let mut stmt =
                c.prepare(&format!("SELECT entry {filter} ORDER BY id DESC LIMIT ?2 OFFSET ?3")).map_err(unavailable)?;
            let rows = stmt
                .query_map(params![target, limit, offset as i64], |r| r.get::<_, String>(0))
                .and_then(|r| r.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(unavailable)?;
            let entries = rows
                .iter()
                .map(|j| serde_json::from_str(j).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect::<Result<_, _>>()?;
            Ok(AuditPage { entries, total: total as u64 })
        })
        .await
    }
}

#[async_trait]
impl UsageLog for SqliteStore {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let batch = batch.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            for d in &batch {
                tx.execute(
                    "INSERT INTO usage_hours (key_id, hour, owner, admitted, refused, units) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                     ON CONFLICT (key_id, hour) DO UPDATE SET owner = excluded.owner, \
                     admitted = admitted + excluded.admitted, refused = refused + excluded.refused, \
                     units = units + excluded.units",
                    params![d.key_id, d.minute / 60, d.owner, d.count as i64, d.refused as i64, d.units],
                )
                .map_err(unavailable)?;
                if d.count == 0 {
                    continue;
                }
                tx.execute(
                    "UPDATE keys SET usage_count = usage_count + ?2, last_used = MAX(IFNULL(last_used, 0), ?3) WHERE key_id = ?1",
                    params![d.key_id, d.count as i64, d.last_used],
                )
                .map_err(unavailable)?;
                tx.execute(
                    "INSERT INTO usage_minutes (key_id, minute, count) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key_id, minute) DO UPDATE SET count = count + excluded.count",
                    params![d.key_id, d.minute, d.count as i64],
                )
                .map_err(unavailable)?;
            }
            let now = now_unix();
            tx.execute("DELETE FROM usage_minutes WHERE minute < ?1", params![(now - USAGE_RETENTION_SECS) / 60])
                .map_err(unavailable)?;
            tx.execute("DELETE FROM usage_hours WHERE hour < ?1", params![(now - USAGE_REPORT_RETENTION_DAYS * 86_400) / 3600])
                .map_err(unavailable)?;
            tx.execute("DELETE FROM tombstones WHERE deleted_at < ?1", params![now - TOMBSTONE_RETENTION_DAYS * 86_400])
                .map_err(unavailable)?;
            tx.execute(
                "DELETE FROM changes WHERE at_ms < ?1 AND seq < (SELECT MAX(seq) FROM changes)",
                params![(now - CHANGE_RETENTION_SECS) * 1000],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }
    async fn usage_summary(&self, key_id: &str, now: i64) -> Result<UsageSummary, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| {
            let minute = now / 60;
            let sum = |since: i64| -> Result<u64, StoreError> {
                c.query_row(
                    "SELECT IFNULL(SUM(count), 0) FROM usage_minutes WHERE key_id = ?1 AND minute > ?2",
                    params![key_id, since],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(unavailable)
            };
            Ok(UsageSummary { last_hour: sum(minute - 60)?, last_day: sum(minute - 24 * 60)? })
        })
        .await
    }
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let q = query.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT key_id, owner, hour, admitted, refused, units FROM usage_hours \
                     WHERE hour >= ?1 AND hour < ?2 AND (?3 IS NULL OR owner = ?3) AND (?4 IS NULL OR key_id = ?4) \
                     ORDER BY hour, key_id",
                )
                .map_err(unavailable)?;
            stmt.query_map(params![q.from_hour, q.to_hour, q.owner, q.key_id], |r| {
                Ok(UsageRow {
                    key_id: r.get(0)?,
                    owner: r.get(1)?,
                    hour: r.get(2)?,
                    admitted: r.get::<_, i64>(3)? as u64,
                    refused: r.get::<_, i64>(4)? as u64,
                    units: r.get(5)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(unavailable)
        })
        .await
    }
    async fn record_meter(&self, windows: &[WindowCount], credits: &[CreditSpend]) -> Result<(), StoreError> {
        let (windows, credits) = (windows.to_vec(), credits.to_vec());
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            for w in &windows {
                tx.execute(
                    "INSERT INTO meter_windows (id, period, idx, used) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (id, period, idx) DO UPDATE SET used = used + excluded.used",
                    params![w.id, w.period.as_str(), w.index, w.delta],
                )
                .map_err(unavailable)?;
            }
            for s in &credits {
                // A balance first spent without a row (terms set, never topped up) starts at 0.
                tx.execute(
                    "INSERT INTO credits (key_id, remaining, period, generation) \
                     SELECT key_id, 0, 0, 0 FROM keys WHERE key_id = ?1 ON CONFLICT (key_id) DO NOTHING",
                    params![s.key_id],
                )
                .map_err(unavailable)?;
                // The same arithmetic as `CreditBalance::apply`.
                tx.execute(
                    "UPDATE credits SET \
                       remaining = (CASE WHEN ?3 IS NOT NULL AND period < ?4 THEN ?3 ELSE remaining END) - ?5, \
                       period = (CASE WHEN ?3 IS NOT NULL AND period < ?4 THEN ?4 ELSE period END) \
                     WHERE key_id = ?1 AND generation = ?2",
                    params![s.key_id, s.generation, s.refill.map(|r| r as i64), s.period, s.spent],
                )
                .map_err(unavailable)?;
            }
            let now = now_unix_ms();
            for p in crate::clock::Period::ALL.into_iter().filter(|p| p.is_calendar()) {
                tx.execute("DELETE FROM meter_windows WHERE period = ?1 AND idx < ?2", params![p.as_str(), p.index(now) - 1])
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }
    async fn meter_windows(&self, now_ms: i64) -> Result<Vec<WindowCount>, StoreError> {
        self.read(move |c| {
            let mut out = Vec::new();
            let mut stmt = c.prepare("SELECT id, used FROM meter_windows WHERE period = ?1 AND idx = ?2").map_err(unavailable)?;
            for period in crate::clock::Period::ALL.into_iter().filter(|p| p.is_calendar()) {
                let index = period.index(now_ms);
                let rows = stmt
                    .query_map(params![period.as_str(), index], |r| {
                        Ok(WindowCount { period, id: r.get(0)?, index, delta: r.get(1)? })
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(unavailable)?;
                out.extend(rows);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl CreditLedger for SqliteStore {
    async fn credit_balance(&self, key_id: &str) -> Result<Option<CreditBalance>, StoreError> {
        let key_id = key_id.to_string();
        self.read(move |c| stored_balance(c, &key_id)).await
    }
    async fn change_credits(
        &self,
        key_id: &str,
        change: CreditChange,
        refill: Option<u64>,
        period: i64,
        expect: Option<u64>,
    ) -> Result<CreditBalance, StoreError> {
        let key_id = key_id.to_string();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            if let Some(want) = expect {
                match key_version(&tx, &key_id)? {
                    Some(v) if v != want => return Err(StoreError::VersionConflict { current: v }),
                    _ => {}
                }
            }
            let mut b = balance_for_update(&tx, &key_id)?.ok_or(StoreError::NotFound)?;
            match change {
                CreditChange::Add(n) => {
                    b.apply(refill, period, 0);
                    let after = b.remaining.saturating_add(n);
                    if !(0..=MAX_CREDITS as i64).contains(&after) {
                        return Err(StoreError::BalanceBound { remaining: b.remaining, add: n });
                    }
                    b.remaining = after;
                }
                CreditChange::Set(n) => b = CreditBalance { remaining: n, period, generation: b.generation + 1 },
            }
            write_balance(&tx, &key_id, &b)?;
            log_change(&tx, "key", &key_id).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(b)
        })
        .await
    }
    async fn take_credits(&self, key_id: &str, take: CreditTake) -> Result<(u64, CreditBalance), StoreError> {
        let key_id = key_id.to_string();
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let Some(mut b) = balance_for_update(&tx, &key_id)? else { return Ok((0, CreditBalance::default())) };
            b.apply(take.refill, take.period, 0);
            let granted = take.grant(b.remaining);
            b.remaining -= granted as i64;
            write_balance(&tx, &key_id, &b)?;
            tx.commit().map_err(unavailable)?;
            Ok((granted, b))
        })
        .await
    }
    async fn return_credits(&self, key_id: &str, units: u64, taken_from: CreditBalance) -> Result<(), StoreError> {
        let key_id = key_id.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE credits SET remaining = remaining + ?2 WHERE key_id = ?1 AND generation = ?3 AND period = ?4",
                params![key_id, units as i64, taken_from.generation, taken_from.period],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}

/// The text of the change-feed row at `seq`, if the table holds it.
/// A key's balance (0 when it has none yet); `None` if the key is gone.
fn balance_for_update(tx: &Connection, key_id: &str) -> Result<Option<CreditBalance>, StoreError> {
    let exists: bool = tx
        .query_row("SELECT EXISTS (SELECT 1 FROM keys WHERE key_id = ?1)", params![key_id], |r| r.get(0))
        .map_err(unavailable)?;
    if !exists {
        return Ok(None);
    }
    Ok(Some(stored_balance(tx, key_id)?.unwrap_or_default()))
}

/// A key's row of `credits`, if it has one.
fn stored_balance(c: &Connection, key_id: &str) -> Result<Option<CreditBalance>, StoreError> {
    c.query_row("SELECT remaining, period, generation FROM credits WHERE key_id = ?1", params![key_id], |r| {
        Ok(CreditBalance { remaining: r.get(0)?, period: r.get(1)?, generation: r.get(2)? })
    })
    .optional()
    .map_err(unavailable)
}

fn write_balance(tx: &Connection, key_id: &str, b: &CreditBalance) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO credits (key_id, remaining, period, generation) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period, \
         generation = excluded.generation",
        params![key_id, b.remaining, b.period, b.generation],
    )
    .map(|_| ())
    .map_err(unavailable)
}

fn entry_at(c: &Connection, seq: i64) -> Result<Option<String>, StoreError> {
    c.query_row("SELECT kind, id, at_ms FROM changes WHERE seq = ?1", params![seq], |r| {
        Ok(entry_text(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?, r.get(2)?))
    })
    .optional()
    .map_err(unavailable)
}

fn entry_text(kind: &str, id: &str, at_ms: i64) -> String {
    format!("{kind}|{id}|{at_ms}")
}
