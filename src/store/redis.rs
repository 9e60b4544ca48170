//! The Redis store: keys and roles in Redis (standalone or Cluster), shared
//! by any number of gateway nodes. Every mutation is one Lua script (see
//! `redis_scripts`) that also appends to the change feed and publishes it on
//! `{kg}:events`, which every node subscribes to.

use super::redis_conn::{RedisFailure, RedisHandle};
use super::redis_scripts as scripts;
use super::*;
use ::redis::Script;
use std::collections::HashMap;
use std::time::Duration;

/// Every store key starts with this (one hash tag: one cluster slot).
pub const PREFIX: &str = "{kg}:";
/// The pub/sub channel of the change feed.
pub const EVENTS_CHANNEL: &str = "{kg}:events";
/// Routing key passed to every script.
const ROUTE: &str = "{kg}:seq";
/// The audit log (newest first), and how many entries it keeps.
const AUDIT_LOG: &str = "{kg}:audit";
const AUDIT_KEEP: i64 = 100_000;
/// Keys fetched per MGET when listing.
const LIST_CHUNK: usize = 500;

/// A key's usage hash: `count` and `last`, either possibly absent.
type UsageFields = (Option<String>, Option<String>);

/// Redis-backed [`Store`].
pub struct RedisStore {
    pub(super) redis: Arc<RedisHandle>,
}

pub(super) fn to_store_error(e: RedisFailure) -> StoreError {
    match e {
        RedisFailure::Refused(msg) => {
            let (kind, rest) = msg.split_once(' ').unwrap_or((msg.as_str(), ""));
            match kind {
                "notfound" => StoreError::NotFound,
                "roleinuse" => StoreError::RoleInUse { keys: rest.trim().parse().unwrap_or(1) },
                "conflict" => StoreError::Conflict(rest.to_string()),
                "stale" => match rest.trim().parse() {
                    Ok(current) => StoreError::VersionConflict { current },
                    Err(_) => StoreError::Corrupt(format!("a version `{rest}`")),
                },
                "deleted" => StoreError::Deleted,
                "bound" => StoreError::BalanceBound { remaining: rest.trim().parse().unwrap_or(0), add: 0 },
                _ => StoreError::Unavailable(msg),
            }
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The stored JSON of a key at version `version`.
fn key_json_at(key: &ApiKey, version: u64) -> Result<String, StoreError> {
    let mut stored = key.clone();
    stored.version = version;
    // Usage lives in its own hash, written in batches.
    stored.usage_count = 0;
    stored.last_used = None;
    serde_json::to_string(&stored).map_err(corrupt)
}

/// An event as the scripts' `emit` reads it ('' for none): the time as
/// text, which Lua's numbers would print in exponent form.
pub(super) fn event_arg(event: Option<&NewEvent>) -> String {
    event.map_or_else(String::new, |e| {
        serde_json::json!({ "id": e.id, "type": e.kind.as_str(), "key": e.key_id, "at": e.at_ms.to_string(), "body": e.body })
            .to_string()
    })
}

fn parse_key(json: &str, count: &str, last: &str) -> Result<ApiKey, StoreError> {
    let mut key: ApiKey = serde_json::from_str(json).map_err(corrupt)?;
    key.usage_count = count.parse().unwrap_or(0);
    key.last_used = last.parse().ok();
    Ok(key)
}

impl RedisStore {
    /// A store over an existing connection handle.
    pub fn new(redis: Arc<RedisHandle>) -> RedisStore {
        RedisStore { redis }
    }

    pub(super) async fn invoke<T: ::redis::FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        script: &'static Script,
        args: Vec<String>,
    ) -> Result<T, StoreError> {
        self.redis
            .run(op, |mut c| async move {
                let mut inv = script.key(ROUTE);
                for a in &args {
                    inv.arg(a);
                }
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(to_store_error)
    }

    pub(super) async fn query<T: ::redis::FromRedisValue + Send + 'static>(
        &self,
        op: &'static str,
        cmd: ::redis::Cmd,
    ) -> Result<T, StoreError> {
        self.redis.run(op, |mut c| async move { cmd.query_async(&mut c).await }).await.map_err(to_store_error)
    }

    /// Keys by id, in the given order, with their usage (missing ones skipped).
    async fn keys_by_id(&self, ids: &[String]) -> Result<Vec<ApiKey>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_CHUNK) {
            let mut pipe = ::redis::pipe();
            pipe.cmd("MGET").arg(chunk.iter().map(|id| format!("{PREFIX}key:{id}")).collect::<Vec<_>>());
            for id in chunk {
                pipe.cmd("HMGET").arg(format!("{PREFIX}usage:{id}")).arg("count").arg("last");
            }
            let (jsons, usage): (Vec<Option<String>>, Vec<UsageFields>) = self
                .redis
                .run("list_keys", |mut c| async move {
                    let mut values: Vec<::redis::Value> = pipe.query_async(&mut c).await?;
                    let usage = values.split_off(1);
                    let jsons: Vec<Option<String>> = ::redis::from_redis_value(values.remove(0))?;
                    let usage = usage.into_iter().map(::redis::from_redis_value).collect::<Result<Vec<_>, _>>()?;
                    Ok((jsons, usage))
                })
                .await
                .map_err(to_store_error)?;
            for (json, (count, last)) in jsons.into_iter().zip(usage) {
                if let Some(json) = json {
                    out.push(parse_key(&json, count.as_deref().unwrap_or("0"), last.as_deref().unwrap_or(""))?);
                }
            }
        }
        Ok(out)
    }
}

fn matches(key: &ApiKey, needle: &str) -> bool {
    let hay = [&key.name, &key.description, &key.owner, &key.key_prefix, &key.key_id];
    hay.iter().any(|h| h.to_lowercase().contains(needle))
        || key.role.as_deref().is_some_and(|r| r.to_lowercase().contains(needle))
        || key.allowed_ips.iter().any(|net| net.to_string().contains(needle))
}

#[async_trait]
impl Resolver for RedisStore {
    async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<KeyLookup>, StoreError> {
        let found: Option<(String, String, String, String)> =
            self.invoke("key_by_hash", &scripts::LOOKUP, vec![hash.to_hex()]).await?;
        let Some((json, exp, count, last)) = found else { return Ok(None) };
        Ok(Some(KeyLookup::new(parse_key(&json, &count, &last)?, exp.parse().ok())))
    }
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        let mut ids: Vec<String> =
            self.query("list_roles", ::redis::cmd("SMEMBERS").arg(format!("{PREFIX}roles")).to_owned()).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| format!("{PREFIX}role:{id}")).collect();
        let jsons: Vec<Option<String>> = self.query("list_roles", ::redis::cmd("MGET").arg(keys).to_owned()).await?;
        jsons.into_iter().flatten().map(|j| serde_json::from_str(&j).map_err(corrupt)).collect()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.query::<String>("ping", ::redis::cmd("PING")).await.map(|_| ())
    }
}

#[async_trait]
impl ChangeFeed for RedisStore {
    async fn change_cursor(&self) -> Result<FeedCursor, StoreError> {
        let seq: Option<u64> = self.query("change_cursor", ::redis::cmd("GET").arg(ROUTE).to_owned()).await?;
        let seq = seq.unwrap_or(0);
        let key = format!("{PREFIX}changes");
        let here: Vec<String> =
            self.query("change_cursor", ::redis::cmd("ZRANGEBYSCORE").arg(&key).arg(seq).arg(seq).to_owned()).await?;
        Ok(FeedCursor { seq, mark: here.into_iter().next().unwrap_or_default() })
    }
    async fn changes_since(&self, from: &FeedCursor) -> Result<ChangeBatch, StoreError> {
        let (seq, key) = (from.seq, format!("{PREFIX}changes"));
        let mut pipe = ::redis::pipe();
        pipe.cmd("ZRANGE").arg(&key).arg(0).arg(0).arg("WITHSCORES");
        pipe.cmd("ZRANGEBYSCORE").arg(&key).arg(seq).arg(seq);
        pipe.cmd("ZRANGEBYSCORE").arg(&key).arg(format!("({seq}")).arg("+inf").arg("LIMIT").arg(0).arg(FEED_PAGE);
        pipe.cmd("GET").arg(ROUTE);
        type Read = (Vec<(String, u64)>, Vec<String>, Vec<String>, Option<u64>);
        let (oldest, here, entries, current): Read = self
            .redis
            .run("changes_since", |mut c| async move { pipe.query_async(&mut c).await })
            .await
            .map_err(to_store_error)?;
        // Behind the cursor, or another entry at it: Redis came back from an
        // older copy (or was emptied).
        let oldest = oldest.first().map(|(_, s)| *s);
        let mut batch = match ChangeBatch::open(from, current.unwrap_or(0), oldest, here.into_iter().next()) {
            Ok(batch) => batch,
            Err(resync) => return Ok(resync),
        };
        batch.gap |= entries.len() >= FEED_PAGE;
        for entry in entries {
            let Some((at, change)) = parse_event(&entry) else { continue };
            batch.push(at, entry, change);
        }
        Ok(batch)
    }
    async fn announce(&self, heard: tokio::sync::mpsc::Sender<Heard>) {
        use futures_util::StreamExt;
        let mut first = true;
        while !heard.is_closed() {
            let client = &self.redis.pubsub_client;
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(EVENTS_CHANNEL).await?;
                Ok::<_, ::redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
                Ok(Ok(pubsub)) => {
                    let back = if first { Heard::News } else { Heard::Restored };
                    first = false;
                    if heard.send(back).await.is_err() {
                        return;
                    }
                    let mut messages = pubsub.into_on_message();
                    while messages.next().await.is_some() {
                        // A full channel already holds news: one read sees this change too.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = heard.try_send(Heard::News) {
                            return;
                        }
                    }
                    if heard.send(Heard::Lost).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to change events yet"),
                Err(_) => tracing::debug!("subscribing to change events timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[async_trait]
impl Records for RedisStore {
    async fn get_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.keys_by_id(&[key_id.to_string()]).await?.pop())
    }
    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let limit = if query.limit == 0 { u64::MAX } else { query.limit };
        let needle = query.search.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
        let filtered = needle.is_some() || query.role.is_some() || query.status.is_some();
        if !filtered {
            let total: u64 = self.query("list_keys", ::redis::cmd("ZCARD").arg(format!("{PREFIX}keys")).to_owned()).await?;
            let stop = query.offset.saturating_add(limit).saturating_sub(1).min(i64::MAX as u64) as i64;
            let ids: Vec<String> = self
                .query("list_keys", ::redis::cmd("ZREVRANGE").arg(format!("{PREFIX}keys")).arg(query.offset).arg(stop).to_owned())
                .await?;
            return Ok(KeyPage { keys: self.keys_by_id(&ids).await?, total });
        }
        let ids: Vec<String> =
            self.query("list_keys", ::redis::cmd("ZREVRANGE").arg(format!("{PREFIX}keys")).arg(0).arg(-1).to_owned()).await?;
        let all: Vec<ApiKey> = self
            .keys_by_id(&ids)
            .await?
            .into_iter()
            .filter(|k| needle.as_deref().is_none_or(|n| matches(k, n)) && query.admits(k))
            .collect();
        let total = all.len() as u64;
        let keys = all.into_iter().skip(query.offset as usize).take(limit.min(usize::MAX as u64) as usize).collect();
        Ok(KeyPage { keys, total })
    }
    async fn insert_key(&self, key: &ApiKey, hash: &TokenHash, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let args = vec![
            key.key_id.clone(),
            key_json_at(key, key.version)?,
            hash.to_hex(),
            key.role.clone().unwrap_or_default(),
            key.created_at.to_string(),
            now_unix_ms().to_string(),
            event_arg(event),
        ];
        self.invoke::<i64>("insert_key", &scripts::INSERT_KEY, args).await.map(|_| ())
    }
    async fn update_key(&self, key: &ApiKey, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let args = vec![
            key.key_id.clone(),
            key_json_at(key, key.version + 1)?,
            key.role.clone().unwrap_or_default(),
            now_unix_ms().to_string(),
            key.version.to_string(),
            event_arg(event),
        ];
        self.invoke::<i64>("update_key", &scripts::UPDATE_KEY, args).await.map(|_| ())
    }
    async fn delete_key(&self, key_id: &str, version: u64, event: Option<&NewEvent>) -> Result<(), StoreError> {
        let args = vec![
            key_id.to_string(),
            now_unix_ms().to_string(),
            version.to_string(),
            (TOMBSTONE_RETENTION_DAYS * 86_400).to_string(),
            event_arg(event),
        ];
        self.invoke::<i64>("delete_key", &scripts::DELETE_KEY, args).await.map(|_| ())
    }
    async fn secrets_of(&self, key_id: &str, now: i64) -> Result<Vec<SecretRecord>, StoreError> {
        let hashes: Vec<String> =
            self.query("secrets_of", ::redis::cmd("SMEMBERS").arg(format!("{PREFIX}secrets:{key_id}")).to_owned()).await?;
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = hashes.iter().map(|h| format!("{PREFIX}secret:{h}")).collect();
        let values: Vec<Option<String>> = self.query("secrets_of", ::redis::cmd("MGET").arg(&keys).to_owned()).await?;
        let mut out = Vec::new();
        for (hex, value) in hashes.iter().zip(values) {
            // `secret:<hash>` holds `<key id>|<expiry or nothing>`.
            let Some((owner, expiry)) = value.as_deref().and_then(|v| v.rsplit_once('|')) else { continue };
            let valid_until = expiry.parse::<i64>().ok();
            if owner != key_id || valid_until.is_some_and(|t| t <= now) {
                continue;
            }
            let hash = TokenHash::from_hex(hex).ok_or_else(|| corrupt(format!("secret hash `{hex}`")))?;
            out.push(SecretRecord { hash, valid_until });
        }
        out.sort_by_key(|s| (s.valid_until.is_some(), std::cmp::Reverse(s.valid_until)));
        Ok(out)
    }
    async fn put_key(
        &self,
        key: &ApiKey,
        secrets: &[SecretRecord],
        expect: PutExpect,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        // The version written, and what the script must find for it to hold.
        let (version, expect) = match expect {
            PutExpect::Version(v) => (v + 1, format!("v{v}")),
            PutExpect::Absent { recreate_deleted: false } => (crate::keys::model::first_version(), "absent".to_string()),
            PutExpect::Absent { recreate_deleted: true } => {
                let tomb: Option<u64> =
                    self.query("put_key", ::redis::cmd("GET").arg(format!("{PREFIX}tomb:{}", key.key_id)).to_owned()).await?;
                (tomb.unwrap_or(0) + 1, format!("tomb{}", tomb.unwrap_or(0)))
            }
        };
        let mut args = vec![
            key.key_id.clone(),
            key_json_at(key, version)?,
            key.role.clone().unwrap_or_default(),
            key.created_at.to_string(),
            now_unix_ms().to_string(),
            key.usage_count.to_string(),
            key.last_used.map(|t| t.to_string()).unwrap_or_default(),
            expect,
            event_arg(event),
        ];
        for s in secrets {
            args.push(s.hash.to_hex());
            args.push(s.valid_until.map(|t| t.to_string()).unwrap_or_default());
        }
        self.invoke::<i64>("put_key", &scripts::PUT_KEY, args).await.map(|n| n == 1)
    }
    async fn rotate_secret(&self, r: &Rotation<'_>) -> Result<(), StoreError> {
        let mut key = self.get_key(r.key_id).await?.ok_or(StoreError::NotFound)?;
        key.key_prefix = r.key_prefix.to_string();
        // Written only if the key is still at `r.version` (the script compares).
        let args = vec![
            r.key_id.to_string(),
            key_json_at(&key, r.version + 1)?,
            r.hash.to_hex(),
            r.old_valid_until.to_string(),
            now_unix().to_string(),
            now_unix_ms().to_string(),
            r.version.to_string(),
            event_arg(r.event),
        ];
        self.invoke::<i64>("rotate_secret", &scripts::ROTATE_SECRET, args).await.map(|_| ())
    }
    async fn get_role(&self, id: &str) -> Result<Option<Role>, StoreError> {
        let json: Option<String> =
            self.query("get_role", ::redis::cmd("GET").arg(format!("{PREFIX}role:{id}")).to_owned()).await?;
        json.map(|j| serde_json::from_str(&j).map_err(corrupt)).transpose()
    }
    async fn insert_role(&self, role: &Role) -> Result<(), StoreError> {
        let args = vec![role.id.clone(), serde_json::to_string(role).map_err(corrupt)?, "0".into(), now_unix_ms().to_string()];
        self.invoke::<i64>("insert_role", &scripts::INSERT_ROLE, args).await.map(|_| ())
    }
    async fn insert_role_if_absent(&self, role: &Role) -> Result<bool, StoreError> {
        let args = vec![role.id.clone(), serde_json::to_string(role).map_err(corrupt)?, "1".into(), now_unix_ms().to_string()];
        self.invoke::<i64>("insert_role", &scripts::INSERT_ROLE, args).await.map(|n| n == 1)
    }
    async fn update_role(&self, role: &Role) -> Result<(), StoreError> {
        let next = Role { version: role.version + 1, ..role.clone() };
        let args = vec![
            role.id.clone(),
            serde_json::to_string(&next).map_err(corrupt)?,
            now_unix_ms().to_string(),
            role.version.to_string(),
        ];
        self.invoke::<i64>("update_role", &scripts::UPDATE_ROLE, args).await.map(|_| ())
    }
    async fn delete_role(&self, id: &str, version: u64) -> Result<(), StoreError> {
        let args = vec![id.to_string(), now_unix_ms().to_string(), version.to_string()];
        self.invoke::<i64>("delete_role", &scripts::DELETE_ROLE, args).await.map(|_| ())
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let json = serde_json::to_string(entry).map_err(corrupt)?;
        let mut pipe = ::redis::pipe();
        pipe.cmd("LPUSH").arg(AUDIT_LOG).arg(&json).ignore();
        pipe.cmd("LTRIM").arg(AUDIT_LOG).arg(0).arg(AUDIT_KEEP - 1).ignore();
        pipe.cmd("LPUSH").arg(format!("{PREFIX}audit:{}", entry.target)).arg(&json).ignore();
        pipe.cmd("LTRIM").arg(format!("{PREFIX}audit:{}", entry.target)).arg(0).arg(AUDIT_KEEP - 1).ignore();
        self.redis.run("append_audit", |mut c| async move { pipe.query_async::<()>(&mut c).await }).await.map_err(to_store_error)
    }
    async fn list_audit(&self, target: Option<&str>, offset: u64, limit: u64) -> Result<AuditPage, StoreError> {
        let list = match target {
            Some(t) => format!("{PREFIX}audit:{t}"),
            None => AUDIT_LOG.to_string(),
        };
        let stop = if limit == 0 { -1 } else { offset.saturating_add(limit).saturating_sub(1).min(i64::MAX as u64) as i64 };
        let mut pipe = ::redis::pipe();
        pipe.cmd("LLEN").arg(&list);
        pipe.cmd("LRANGE").arg(&list).arg(offset).arg(stop);
        let (total, rows): (u64, Vec<String>) =
            self.redis.run("list_audit", |mut c| async move { pipe.query_async(&mut c).await }).await.map_err(to_store_error)?;
        let entries = rows.iter().map(|j| serde_json::from_str(j).map_err(corrupt)).collect::<Result<_, _>>()?;
        Ok(AuditPage { entries, total })
    }
}

#[async_trait]
impl UsageLog for RedisStore {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError> {
        let mut args = Vec::with_capacity(1 + batch.len() * 8);
        args.push((USAGE_REPORT_RETENTION_DAYS * 86_400).to_string());
        for d in batch {
            args.extend([
                d.key_id.clone(),
                d.count.to_string(),
                d.last_used.to_string(),
                d.minute.to_string(),
                (d.minute / 1440).to_string(),
                d.refused.to_string(),
                d.owner.clone(),
                d.units.to_string(),
            ]);
        }
        self.invoke::<i64>("record_usage", &scripts::RECORD_USAGE, args).await.map(|_| ())
    }
    async fn usage_summary(&self, key_id: &str, now: i64) -> Result<UsageSummary, StoreError> {
        let minute = now / 60;
        let day = minute / 1440;
        let mut pipe = ::redis::pipe();
        pipe.cmd("HGETALL").arg(format!("{PREFIX}usage_min:{key_id}:{day}"));
        pipe.cmd("HGETALL").arg(format!("{PREFIX}usage_min:{key_id}:{}", day - 1));
        let (today, yesterday): (HashMap<i64, u64>, HashMap<i64, u64>) = self
            .redis
            .run("usage_summary", |mut c| async move { pipe.query_async(&mut c).await })
            .await
            .map_err(to_store_error)?;
        let mut summary = UsageSummary::default();
        for (m, n) in today.into_iter().chain(yesterday) {
            if m > minute - 60 {
                summary.last_hour += n;
            }
            if m > minute - 1440 {
                summary.last_day += n;
            }
        }
        Ok(summary)
    }
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let owners: HashMap<String, String> =
            self.query("usage_report", ::redis::cmd("HGETALL").arg(format!("{PREFIX}usage_owner")).to_owned()).await?;
        let mut rows: std::collections::BTreeMap<(i64, String), UsageRow> = Default::default();
        let (first_day, last_day) = (query.from_hour.div_euclid(24), (query.to_hour - 1).div_euclid(24));
        for day in first_day..=last_day {
            let cmd = ::redis::cmd("HGETALL").arg(format!("{PREFIX}usage_d:{day}")).to_owned();
            let counts: HashMap<String, i64> = self.query("usage_report", cmd).await?;
            for (field, n) in counts {
                let mut parts = field.rsplitn(3, '|');
                let (Some(kind), Some(hour), Some(key_id)) = (parts.next(), parts.next(), parts.next()) else { continue };
                let Ok(hour) = hour.parse::<i64>() else { continue };
                let owner = owners.get(key_id).cloned().unwrap_or_default();
                if hour < query.from_hour
                    || hour >= query.to_hour
                    || query.key_id.as_deref().is_some_and(|k| k != key_id)
                    || query.owner.as_deref().is_some_and(|o| o != owner)
                {
                    continue;
                }
                let row = rows.entry((hour, key_id.to_string())).or_insert_with(|| UsageRow {
                    key_id: key_id.to_string(),
                    owner,
                    hour,
                    admitted: 0,
                    refused: 0,
                    units: 0,
                });
                match kind {
                    "a" => row.admitted += n.max(0) as u64,
                    "r" => row.refused += n.max(0) as u64,
                    "u" => row.units += n,
                    _ => {}
                }
            }
        }
        Ok(rows.into_values().collect())
    }
    async fn record_meter(&self, windows: &[WindowCount], credits: &[CreditSpend]) -> Result<(), StoreError> {
        let mut args = vec![windows.len().to_string()];
        for w in windows {
            let ttl = 2 * w.period.length_secs(w.index) + 3600;
            args.extend([w.period.as_str().to_string(), w.index.to_string(), w.id.clone(), w.delta.to_string(), ttl.to_string()]);
        }
        for c in credits {
            args.extend([
                c.key_id.clone(),
                c.generation.to_string(),
                c.refill.map(|r| r.to_string()).unwrap_or_default(),
                c.period.to_string(),
                c.spent.to_string(),
            ]);
        }
        self.invoke::<i64>("record_meter", &scripts::RECORD_METER, args).await.map(|_| ())
    }
    async fn meter_windows(&self, now_ms: i64) -> Result<Vec<WindowCount>, StoreError> {
        let mut out = Vec::new();
        for period in crate::clock::Period::ALL.into_iter().filter(|p| p.is_calendar()) {
            let index = period.index(now_ms);
            let cmd = ::redis::cmd("HGETALL").arg(format!("{PREFIX}meter:{}:{index}", period.as_str())).to_owned();
            let counts: HashMap<String, i64> = self.query("meter_windows", cmd).await?;
            out.extend(counts.into_iter().map(|(id, delta)| WindowCount { period, id, index, delta }));
        }
        Ok(out)
    }
}

#[async_trait]
impl CreditLedger for RedisStore {
    async fn credit_balance(&self, key_id: &str) -> Result<Option<CreditBalance>, StoreError> {
        let cmd = ::redis::cmd("HMGET").arg(format!("{PREFIX}credits:{key_id}")).arg(&["remaining", "period", "gen"]).to_owned();
        let (remaining, period, generation): (Option<i64>, Option<i64>, Option<i64>) = self.query("credit_balance", cmd).await?;
        Ok(remaining.map(|remaining| CreditBalance {
            remaining,
            period: period.unwrap_or(0),
            generation: generation.unwrap_or(0),
        }))
    }
    async fn change_credits(
        &self,
        key_id: &str,
        change: CreditChange,
        refill: Option<u64>,
        period: i64,
        expect: Option<u64>,
    ) -> Result<CreditBalance, StoreError> {
        let (op, n) = match change {
            CreditChange::Add(n) => ("add", n),
            CreditChange::Set(n) => ("set", n),
        };
        let args = vec![
            key_id.to_string(),
            op.to_string(),
            n.to_string(),
            refill.map(|r| r.to_string()).unwrap_or_default(),
            period.to_string(),
            now_unix_ms().to_string(),
            expect.map(|v| v.to_string()).unwrap_or_default(),
            MAX_CREDITS.to_string(),
        ];
        let result = self.invoke("change_credits", &scripts::CHANGE_CREDITS, args).await;
        let (remaining, period, generation): (i64, i64, i64) = match result {
            Err(StoreError::BalanceBound { remaining, .. }) => return Err(StoreError::BalanceBound { remaining, add: n }),
            other => other?,
        };
        Ok(CreditBalance { remaining, period, generation })
    }
    async fn take_credits(&self, key_id: &str, take: CreditTake) -> Result<(u64, CreditBalance), StoreError> {
        let args = vec![
            key_id.to_string(),
            take.need.to_string(),
            take.want.to_string(),
            take.nodes.max(1).to_string(),
            take.refill.map(|r| r.to_string()).unwrap_or_default(),
            take.period.to_string(),
        ];
        let (granted, remaining, period, generation): (u64, i64, i64, i64) =
            self.invoke("take_credits", &scripts::TAKE_CREDITS, args).await?;
        Ok((granted, CreditBalance { remaining, period, generation }))
    }
    async fn return_credits(&self, key_id: &str, units: u64, taken_from: CreditBalance) -> Result<(), StoreError> {
        let args = vec![key_id.to_string(), units.to_string(), taken_from.generation.to_string(), taken_from.period.to_string()];
        self.invoke::<i64>("return_credits", &scripts::RETURN_CREDITS, args).await.map(|_| ())
    }
}

/// Parses a change-feed entry `seq|kind|id|at_ms`.
pub fn parse_event(entry: &str) -> Option<(u64, Change)> {
    let mut parts = entry.splitn(4, '|');
    let seq = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let id = parts.next()?.to_string();
    let at_ms = parts.next()?.parse().ok()?;
    let target = match kind {
        "role" => ChangeTarget::Role(id),
        _ => ChangeTarget::Key(id),
    };
    Some((seq, Change { target, at_ms }))
}
