//! The outbox in SQLite: `events` (written in the transaction of the key
//! change that caused them), each webhook's cursor over them, its
//! `deliveries`, and the `leases` that let one process deliver at a time.

use super::rows::{from_json, json, unavailable, write_event};
use super::*;
use crate::events::{AttemptRecord, DeliveryStatus};
use rusqlite::Row;

const DELIVERY_COLUMNS: &str = "d.webhook, d.status, d.attempts, d.first_attempt_ms, d.next_at_ms, d.updated_at_ms, d.log, \
     e.seq, e.id, e.type, e.key_id, e.at_ms, e.body";
const EVENT_COLUMNS: &str = "e.seq, e.id, e.type, e.key_id, e.at_ms, e.body";

fn event_from_row(row: &Row, at: usize) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: row.get::<_, i64>(at)? as u64,
        id: row.get(at + 1)?,
        kind: row.get(at + 2)?,
        key_id: row.get(at + 3)?,
        at_ms: row.get(at + 4)?,
        body: row.get(at + 5)?,
    })
}

fn delivery_from_row(row: &Row) -> rusqlite::Result<Delivery> {
    let status: String = row.get(1)?;
    let log: String = row.get(6)?;
    Ok(Delivery {
        webhook: row.get(0)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: row.get::<_, i64>(2)? as u32,
        first_attempt_ms: row.get(3)?,
        next_at_ms: row.get(4)?,
        updated_at_ms: row.get(5)?,
        log: from_json::<Vec<AttemptRecord>>(&log)?,
        event: event_from_row(row, 7)?,
    })
}

/// Matches an event type against `?2`, a list as `store::types_param` makes it.
const TYPE_FILTER: &str = "(?2 = '' OR instr(?2, ',' || type || ',') > 0)";

/// The webhook's cursor, made at the newest event when it has none.
fn cursor(tx: &Connection, webhook: &str) -> rusqlite::Result<(i64, i64)> {
    let newest: i64 = tx.query_row("SELECT IFNULL(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    let at: Option<i64> =
        tx.query_row("SELECT seq FROM webhook_cursors WHERE webhook = ?1", params![webhook], |r| r.get(0)).optional()?;
    match at {
        Some(at) => Ok((at, newest)),
        None => {
            tx.execute("INSERT INTO webhook_cursors (webhook, seq) VALUES (?1, ?2)", params![webhook, newest])?;
            Ok((newest, newest))
        }
    }
}

/// Whether events were written past the webhook's cursor (or it has none).
fn has_news(c: &Connection, webhook: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT IFNULL((SELECT seq FROM webhook_cursors WHERE webhook = ?1), -1) < (SELECT IFNULL(MAX(seq), 0) FROM events)",
        params![webhook],
        |r| r.get(0),
    )
}

/// The webhook's open deliveries, oldest first.
fn open_of(c: &Connection, webhook: &str, max: usize) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.seq \
             WHERE d.webhook = ?1 AND d.status IN ('pending', 'failed') ORDER BY d.seq LIMIT ?2"
        ))
        .map_err(unavailable)?;
    let rows = stmt.query_map(params![webhook, max as i64], delivery_from_row).map_err(unavailable)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn register_webhook(&self, webhook: &str) -> Result<(), StoreError> {
        let webhook = webhook.to_string();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
            cursor(&tx, &webhook).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn emit(&self, event: &NewEvent) -> Result<bool, StoreError> {
        let event = event.clone();
        self.with(move |c| write_event(c, &event).map_err(unavailable)).await
    }

    async fn open_deliveries(&self, webhook: &str, types: &[String], max: usize) -> Result<Vec<Delivery>, StoreError> {
        let (webhook, types) = (webhook.to_string(), types_param(types));
        self.with(move |c| {
            // Most passes find nothing new: looked at first without the write lock.
            if !has_news(c, &webhook).map_err(unavailable)? {
                return open_of(c, &webhook, max);
            }
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
            let (from, to) = cursor(&tx, &webhook).map_err(unavailable)?;
            if to > from {
                let now = now_unix_ms();
                tx.execute(
                    &format!(
                        "INSERT OR IGNORE INTO deliveries (webhook, seq, status, next_at_ms, updated_at_ms) \
                         SELECT ?1, seq, 'pending', ?3, ?3 FROM events WHERE seq > ?4 AND seq <= ?5 AND {TYPE_FILTER}"
                    ),
                    params![webhook, types, now, from, to],
                )
                .map_err(unavailable)?;
                tx.execute("UPDATE webhook_cursors SET seq = ?2 WHERE webhook = ?1", params![webhook, to])
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            open_of(c, &webhook, max)
        })
        .await
    }

    async fn record_attempt(&self, webhook: &str, seq: u64, u: &DeliveryUpdate) -> Result<bool, StoreError> {
        let (webhook, u, log) = (webhook.to_string(), u.clone(), json(&u.log)?);
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE deliveries SET status = ?3, attempts = ?4 + 1, first_attempt_ms = ?5, next_at_ms = ?6, \
                     updated_at_ms = ?7, log = ?8 \
                     WHERE webhook = ?1 AND seq = ?2 AND attempts = ?4 AND status IN ('pending', 'failed')",
                    params![
                        webhook,
                        seq as i64,
                        u.status.as_str(),
                        u.attempts_before,
                        u.first_attempt_ms,
                        u.next_at_ms,
                        u.at_ms,
                        log
                    ],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e WHERE (?1 IS NULL OR e.key_id = ?1) AND (?2 IS NULL OR e.type = ?2) \
                     AND (?3 IS NULL OR e.at_ms >= ?3) ORDER BY e.seq DESC LIMIT ?4"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![q.key_id, q.kind, q.since_ms, q.limit as i64], |r| event_from_row(r, 0))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
        })
        .await
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let q = q.clone();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.seq \
                     WHERE (?1 IS NULL OR d.webhook = ?1) AND (?2 IS NULL OR d.status = ?2) AND (?3 IS NULL OR e.key_id = ?3) \
                     ORDER BY d.seq DESC, d.webhook LIMIT ?4"
                ))
                .map_err(unavailable)?;
            let status = q.status.map(DeliveryStatus::as_str);
            let rows =
                stmt.query_map(params![q.webhook, status, q.key_id, q.limit as i64], delivery_from_row).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
        })
        .await
    }

    async fn replay(&self, webhook: &str, types: &[String], since_ms: i64) -> Result<u64, StoreError> {
        let (webhook, types) = (webhook.to_string(), types_param(types));
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(unavailable)?;
            let (upto, _) = cursor(&tx, &webhook).map_err(unavailable)?;
            let now = now_unix_ms();
            let reopened = tx
                .execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, first_attempt_ms = NULL, next_at_ms = ?2, \
                     updated_at_ms = ?2 WHERE webhook = ?1 AND status IN ('delivered', 'dead') \
                     AND seq IN (SELECT seq FROM events WHERE at_ms >= ?3)",
                    params![webhook, now, since_ms],
                )
                .map_err(unavailable)?;
            let made = tx
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO deliveries (webhook, seq, status, next_at_ms, updated_at_ms) \
                         SELECT ?1, seq, 'pending', ?3, ?3 FROM events WHERE at_ms >= ?4 AND seq <= ?5 AND {TYPE_FILTER}"
                    ),
                    params![webhook, types, now, since_ms, upto],
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok((reopened + made) as u64)
        })
        .await
    }

    async fn hold_lease(&self, name: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.with(move |c| {
            let now = now_unix_ms();
            // Held by another, or by this owner for over half the time
            // asked: answered without taking the write lock.
            let held: Option<(String, i64)> = c
                .query_row("SELECT owner, until_ms FROM leases WHERE name = ?1", params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(unavailable)?;
            match held {
                Some((by, until)) if by != owner && until >= now => return Ok(false),
                Some((by, until)) if by == owner && until - now > (ttl_ms / 2) as i64 => return Ok(true),
                _ => {}
            }
            let n = c
                .execute(
                    "INSERT INTO leases (name, owner, until_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE \
                     SET owner = excluded.owner, until_ms = excluded.until_ms \
                     WHERE leases.until_ms < ?4 OR leases.owner = excluded.owner",
                    params![name, owner, now.saturating_add(ttl_ms as i64), now],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn sweep_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let deliveries = tx
                .execute(
                    "DELETE FROM deliveries WHERE updated_at_ms < ?1 AND status IN ('delivered', 'dead')",
                    params![before_ms],
                )
                .map_err(unavailable)?;
            let events = tx
                .execute("DELETE FROM events WHERE at_ms < ?1 AND seq NOT IN (SELECT seq FROM deliveries)", params![before_ms])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok((deliveries + events) as u64)
        })
        .await
    }
}

#[async_trait]
impl Blocklist for SqliteStore {
    async fn put_block(&self, address: &str, until_ms: i64) -> Result<(), StoreError> {
        let address = address.to_string();
        self.with(move |c| {
            c.execute(
                "INSERT INTO blocks (address, until_ms) VALUES (?1, ?2) \
                 ON CONFLICT(address) DO UPDATE SET until_ms = MAX(until_ms, excluded.until_ms)",
                params![address, until_ms],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn remove_block(&self, address: &str) -> Result<bool, StoreError> {
        let address = address.to_string();
        self.with(move |c| {
            c.execute("DELETE FROM blocks WHERE address = ?1", params![address]).map(|n| n > 0).map_err(unavailable)
        })
        .await
    }

    async fn list_blocks(&self, now_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT address, until_ms FROM blocks WHERE until_ms > ?1 ORDER BY address")
                .map_err(unavailable)?;
            let rows = stmt.query_map(params![now_ms], |r| Ok((r.get(0)?, r.get(1)?))).map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(unavailable)
        })
        .await
    }
}
