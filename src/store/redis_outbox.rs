//! The outbox in Redis. Events are a stream, `{kg}:outbox`, written by the
//! key scripts' `emit` (in the same script as the change) with ids
//! `<seq>-1`. Each webhook reads it through a consumer group of its own,
//! its cursor: an event taken into the webhook's deliveries is acked in
//! the same script, so the group's position is exactly what was taken.
//! A delivery is a hash, `{kg}:dlv:<webhook>:<seq>`, indexed by the sorted
//! sets `{kg}:wh:<webhook>:open` (pending or failed) and `:all`.

use super::redis::{RedisStore, PREFIX};
use super::*;
use crate::events::{AttemptRecord, DeliveryStatus};
use ::redis::{Script, Value};
use std::collections::HashMap;
use std::sync::LazyLock;

/// Helpers of the outbox scripts.
const PRELUDE: &str = r#"
local P = '{kg}:'
local STREAM = P .. 'outbox'
local function dlv(wh, seq) return P .. 'dlv:' .. wh .. ':' .. seq end
local function wanted(types, t) return types == '' or string.find(types, ',' .. t .. ',', 1, true) ~= nil end
local function fields(flat)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
-- The webhook's group, made at the newest event the first time.
local function group(wh)
  redis.pcall('XGROUP', 'CREATE', STREAM, 'webhook:' .. wh, '$', 'MKSTREAM')
  redis.call('SADD', P .. 'webhooks', wh)
  return 'webhook:' .. wh
end
local function open_delivery(wh, seq, h, now)
  redis.call('HSET', dlv(wh, seq), 'id', h['id'], 'type', h['type'], 'key', h['key'], 'at', h['at'], 'body', h['body'],
    'status', 'pending', 'attempts', 0, 'first', '', 'next', now, 'updated', now, 'log', '[]')
  redis.call('ZADD', P .. 'wh:' .. wh .. ':open', seq, seq)
  redis.call('ZADD', P .. 'wh:' .. wh .. ':all', seq, seq)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: webhook.
static REGISTER: LazyLock<Script> = LazyLock::new(|| script("group(ARGV[1])\nreturn 1"));

/// ARGV: webhook, types (`,a,b,` or ''), now_ms, max. Takes up to 5,000
/// new events per call; returns up to `max` open deliveries, oldest first,
/// as {seq, {field, value...}} pairs.
static OPEN_DELIVERIES: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local wh, types, now, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local g = group(wh)
for _ = 1, 10 do
  local r = redis.call('XREADGROUP', 'GROUP', g, 'keygate', 'COUNT', 500, 'STREAMS', STREAM, '>')
  if not r or #r[1][2] == 0 then break end
  local entries = r[1][2]
  for _, en in ipairs(entries) do
    local seq = string.match(en[1], '^(%d+)')
    local h = fields(en[2])
    if wanted(types, h['type']) then open_delivery(wh, seq, h, now) end
    redis.call('XACK', STREAM, g, en[1])
  end
  if #entries < 500 then break end
end
local out = {}
for _, seq in ipairs(redis.call('ZRANGE', P .. 'wh:' .. wh .. ':open', 0, max - 1)) do
  table.insert(out, {seq, redis.call('HGETALL', dlv(wh, seq))})
end
return out
"#,
    )
});

/// ARGV: webhook, seq, status, attempts before, first, next, at, log.
static RECORD_ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local d = dlv(ARGV[1], ARGV[2])
local st = redis.call('HGET', d, 'status')
if st ~= 'pending' and st ~= 'failed' then return 0 end
if redis.call('HGET', d, 'attempts') ~= ARGV[4] then return 0 end
redis.call('HSET', d, 'status', ARGV[3], 'attempts', tonumber(ARGV[4]) + 1, 'first', ARGV[5], 'next', ARGV[6],
  'updated', ARGV[7], 'log', ARGV[8])
if ARGV[3] ~= 'pending' and ARGV[3] ~= 'failed' then redis.call('ZREM', P .. 'wh:' .. ARGV[1] .. ':open', ARGV[2]) end
return 1
"#,
    )
});

/// ARGV: webhook, types, since_ms, now_ms. Reopens the closed deliveries
/// of events at or after `since_ms` and makes those missing among the
/// events the group has taken; returns how many.
static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local wh, types, since, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local g = group(wh)
local taken = 0
for _, info in ipairs(redis.call('XINFO', 'GROUPS', STREAM)) do
  local h = fields(info)
  if h['name'] == g then taken = tonumber(string.match(h['last-delivered-id'], '^(%d+)')) end
end
local n, from = 0, '-'
while true do
  local entries = redis.call('XRANGE', STREAM, from, '+', 'COUNT', 1000)
  if #entries == 0 then break end
  for _, en in ipairs(entries) do
    local seq = string.match(en[1], '^(%d+)')
    local h = fields(en[2])
    if tonumber(seq) <= taken and tonumber(h['at']) >= since and wanted(types, h['type']) then
      local st = redis.call('HGET', dlv(wh, seq), 'status')
      if not st then
        open_delivery(wh, seq, h, now)
        n = n + 1
      elseif st == 'delivered' or st == 'dead' then
        redis.call('HSET', dlv(wh, seq), 'status', 'pending', 'attempts', 0, 'first', '', 'next', now, 'updated', now)
        redis.call('ZADD', P .. 'wh:' .. wh .. ':open', seq, seq)
        n = n + 1
      end
    end
  end
  if #entries < 1000 then break end
  from = '(' .. entries[#entries][1]
end
return n
"#,
    )
});

/// ARGV: lease name, owner, ttl_ms.
static HOLD_LEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local k = P .. 'lease:' .. ARGV[1]
local cur = redis.call('GET', k)
if cur and cur ~= ARGV[2] then return 0 end
redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
return 1
"#,
    )
});

/// ARGV: before_ms. Forgets closed deliveries of events written before it
/// (up to 1,000 per webhook a call), then the stream's entries before it
/// that every group has taken.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local before = tonumber(ARGV[1])
local n = 0
local floor = nil
for _, wh in ipairs(redis.call('SMEMBERS', P .. 'webhooks')) do
  local all = P .. 'wh:' .. wh .. ':all'
  for _, seq in ipairs(redis.call('ZRANGE', all, 0, 999)) do
    local d = redis.call('HMGET', dlv(wh, seq), 'status', 'at')
    if not d[2] then
      redis.call('ZREM', all, seq)
    elseif tonumber(d[2]) >= before then
      break
    elseif d[1] == 'delivered' or d[1] == 'dead' then
      redis.call('DEL', dlv(wh, seq))
      redis.call('ZREM', all, seq)
      n = n + 1
    end
  end
end
if redis.call('EXISTS', STREAM) == 0 then return n end
for _, info in ipairs(redis.call('XINFO', 'GROUPS', STREAM)) do
  local taken = tonumber(string.match(fields(info)['last-delivered-id'], '^(%d+)'))
  if not floor or taken < floor then floor = taken end
end
local cut = nil
for _, en in ipairs(redis.call('XRANGE', STREAM, '-', '+', 'COUNT', 1000)) do
  local seq = tonumber(string.match(en[1], '^(%d+)'))
  if tonumber(fields(en[2])['at']) >= before or (floor and seq > floor) then break end
  cut = seq
end
if cut then n = n + redis.call('XTRIM', STREAM, 'MINID', (cut + 1) .. '-0') end
return n
"#,
    )
});

/// Entries read per `XREVRANGE` when listing events, and the most read.
const EVENT_CHUNK: usize = 500;
const MAX_EVENTS_SCANNED: usize = 20_000;

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// A flat `{field, value...}` reply as pairs.
fn pairs(v: &Value) -> HashMap<String, String> {
    let Value::Array(items) = v else { return HashMap::new() };
    items.chunks(2).filter(|c| c.len() == 2).map(|c| (text(&c[0]), text(&c[1]))).collect()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("an outbox {what}"))
}

fn event_of(seq: u64, h: &HashMap<String, String>) -> Result<StoredEvent, StoreError> {
    let field = |name: &str| h.get(name).cloned().ok_or_else(|| corrupt(&format!("entry without `{name}`")));
    Ok(StoredEvent {
        seq,
        id: field("id")?,
        kind: field("type")?,
        key_id: field("key")?,
        at_ms: field("at")?.parse().map_err(|_| corrupt("time"))?,
        body: field("body")?,
    })
}

fn delivery_of(webhook: &str, seq: u64, h: &HashMap<String, String>) -> Result<Delivery, StoreError> {
    let number = |name: &str| h.get(name).and_then(|v| v.parse::<i64>().ok());
    Ok(Delivery {
        webhook: webhook.to_string(),
        event: event_of(seq, h)?,
        status: h.get("status").and_then(|s| DeliveryStatus::parse(s)).ok_or_else(|| corrupt("delivery status"))?,
        attempts: number("attempts").unwrap_or(0) as u32,
        first_attempt_ms: number("first"),
        next_at_ms: number("next").unwrap_or(0),
        updated_at_ms: number("updated").unwrap_or(0),
        log: h.get("log").and_then(|l| serde_json::from_str::<Vec<AttemptRecord>>(l).ok()).unwrap_or_default(),
    })
}

/// `<seq>-1` -> seq.
fn seq_of(stream_id: &str) -> Option<u64> {
    stream_id.split('-').next()?.parse().ok()
}

impl RedisStore {
    /// Every webhook's deliveries' hashes, newest first, at most `scan` each.
    async fn deliveries_of(&self, webhook: &str, scan: usize) -> Result<Vec<Delivery>, StoreError> {
        let all = format!("{PREFIX}wh:{webhook}:all");
        let seqs: Vec<u64> =
            self.query("list_deliveries", ::redis::cmd("ZREVRANGE").arg(&all).arg(0).arg(scan as i64 - 1).to_owned()).await?;
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(EVENT_CHUNK) {
            let mut pipe = ::redis::pipe();
            for seq in chunk {
                pipe.cmd("HGETALL").arg(format!("{PREFIX}dlv:{webhook}:{seq}"));
            }
            let hashes: Vec<Value> = self
                .redis
                .run("list_deliveries", |mut c| async move { pipe.query_async(&mut c).await })
                .await
                .map_err(super::redis::to_store_error)?;
            for (seq, h) in chunk.iter().zip(hashes) {
                let h = pairs(&h);
                if !h.is_empty() {
                    out.push(delivery_of(webhook, *seq, &h)?);
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Outbox for RedisStore {
    async fn register_webhook(&self, webhook: &str) -> Result<(), StoreError> {
        self.invoke::<i64>("register_webhook", &REGISTER, vec![webhook.to_string()]).await.map(|_| ())
    }

    async fn emit(&self, event: &NewEvent) -> Result<bool, StoreError> {
        let args = vec![super::redis::event_arg(Some(event))];
        self.invoke::<i64>("emit", &super::redis_scripts::EMIT, args).await.map(|n| n == 1)
    }

    async fn open_deliveries(&self, webhook: &str, types: &[String], max: usize) -> Result<Vec<Delivery>, StoreError> {
        let args = vec![webhook.to_string(), types_param(types), now_unix_ms().to_string(), max.max(1).to_string()];
        let reply: Value = self.invoke("open_deliveries", &OPEN_DELIVERIES, args).await?;
        let Value::Array(items) = reply else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let Value::Array(pair) = item else { continue };
            let (Some(seq), Some(h)) = (pair.first().map(text).and_then(|s| s.parse().ok()), pair.get(1)) else { continue };
            out.push(delivery_of(webhook, seq, &pairs(h))?);
        }
        Ok(out)
    }

    async fn record_attempt(&self, webhook: &str, seq: u64, u: &DeliveryUpdate) -> Result<bool, StoreError> {
        let log = serde_json::to_string(&u.log).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let args = vec![
            webhook.to_string(),
            seq.to_string(),
            u.status.as_str().to_string(),
            u.attempts_before.to_string(),
            u.first_attempt_ms.to_string(),
            u.next_at_ms.to_string(),
            u.at_ms.to_string(),
            log,
        ];
        self.invoke::<i64>("record_attempt", &RECORD_ATTEMPT, args).await.map(|n| n == 1)
    }

    async fn list_events(&self, q: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let stream = format!("{PREFIX}outbox");
        let (mut out, mut upto, mut scanned) = (Vec::new(), "+".to_string(), 0);
        while out.len() < q.limit && scanned < MAX_EVENTS_SCANNED {
            let cmd = ::redis::cmd("XREVRANGE").arg(&stream).arg(&upto).arg("-").arg("COUNT").arg(EVENT_CHUNK).to_owned();
            let entries: Vec<(String, HashMap<String, String>)> = self.query("list_events", cmd).await?;
            scanned += entries.len();
            let Some(last) = entries.last().map(|e| e.0.clone()) else { break };
            for (id, h) in &entries {
                let event = event_of(seq_of(id).ok_or_else(|| corrupt("stream id"))?, h)?;
                if q.since_ms.is_some_and(|s| event.at_ms < s) {
                    return Ok(out);
                }
                if q.admits(&event) && out.len() < q.limit {
                    out.push(event);
                }
            }
            if entries.len() < EVENT_CHUNK {
                break;
            }
            upto = format!("({last}");
        }
        Ok(out)
    }

    async fn list_deliveries(&self, q: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError> {
        let webhooks: Vec<String> = match &q.webhook {
            Some(w) => vec![w.clone()],
            None => self.query("list_deliveries", ::redis::cmd("SMEMBERS").arg(format!("{PREFIX}webhooks")).to_owned()).await?,
        };
        let mut out = Vec::new();
        for webhook in &webhooks {
            let found = self.deliveries_of(webhook, MAX_EVENTS_SCANNED / webhooks.len().max(1)).await?;
            out.extend(
                found
                    .into_iter()
                    .filter(|d| q.status.is_none_or(|s| s == d.status) && q.key_id.as_ref().is_none_or(|k| *k == d.event.key_id)),
            );
        }
        out.sort_by(|a, b| b.event.seq.cmp(&a.event.seq).then_with(|| a.webhook.cmp(&b.webhook)));
        out.truncate(q.limit);
        Ok(out)
    }

    async fn replay(&self, webhook: &str, types: &[String], since_ms: i64) -> Result<u64, StoreError> {
        let args = vec![webhook.to_string(), types_param(types), since_ms.to_string(), now_unix_ms().to_string()];
        self.invoke::<i64>("replay", &REPLAY, args).await.map(|n| n.max(0) as u64)
    }

    async fn hold_lease(&self, name: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let args = vec![name.to_string(), owner.to_string(), ttl_ms.max(1).to_string()];
        self.invoke::<i64>("hold_lease", &HOLD_LEASE, args).await.map(|n| n == 1)
    }

    async fn sweep_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.invoke::<i64>("sweep_events", &SWEEP, vec![before_ms.to_string()]).await.map(|n| n.max(0) as u64)
    }
}

/// The sorted set of blocked addresses, scored by when each block ends.
const BLOCKS: &str = "{kg}:blocks";

#[async_trait]
impl Blocklist for RedisStore {
    async fn put_block(&self, address: &str, until_ms: i64) -> Result<(), StoreError> {
        // GT: a later block of the address stands.
        let cmd = ::redis::cmd("ZADD").arg(BLOCKS).arg("GT").arg(until_ms).arg(address).to_owned();
        self.query::<i64>("put_block", cmd).await.map(|_| ())
    }

    async fn remove_block(&self, address: &str) -> Result<bool, StoreError> {
        self.query::<i64>("remove_block", ::redis::cmd("ZREM").arg(BLOCKS).arg(address).to_owned()).await.map(|n| n > 0)
    }

    async fn list_blocks(&self, now_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let _: i64 =
            self.query("list_blocks", ::redis::cmd("ZREMRANGEBYSCORE").arg(BLOCKS).arg("-inf").arg(now_ms).to_owned()).await?;
        let cmd =
            ::redis::cmd("ZRANGE").arg(BLOCKS).arg(format!("({now_ms}")).arg("+inf").arg("BYSCORE").arg("WITHSCORES").to_owned();
        let mut out: Vec<(String, i64)> = self.query("list_blocks", cmd).await?;
        out.sort();
        Ok(out)
    }
}
