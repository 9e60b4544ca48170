//! The Lua scripts that make every Redis store mutation atomic: the record,
//! its indexes and its change-feed entry (plus the pub/sub message that
//! invalidates every node's cache) commit together. Every store key shares
//! the `{kg}` hash tag, so in a Redis Cluster all of them live in one slot
//! and multi-key scripts are allowed; rate-limit counters use per-key tags
//! instead and spread over the cluster.

use redis::Script;
use std::sync::LazyLock;

/// Helpers every mutating script starts with. `feed` bumps the sequence,
/// records the change and publishes it.
const PRELUDE: &str = r#"
local P = '{kg}:'
local function feed(kind, id, at)
  local seq = redis.call('INCR', P .. 'seq')
  local entry = seq .. '|' .. kind .. '|' .. id .. '|' .. at
  redis.call('ZADD', P .. 'changes', seq, entry)
  redis.call('PUBLISH', P .. 'events', entry)
  if seq % 1000 == 0 then
    redis.call('ZREMRANGEBYRANK', P .. 'changes', 0, -100001)
  end
  return seq
end
local function refuse(msg) return redis.error_reply('KG ' .. msg) end
-- Writes an event (JSON of id, type, key, at, body; '' for none) to the
-- outbox stream, numbered by its own sequence, unless one with its id was
-- written in the last 35 days. Returns 1 if it wrote.
local function emit(ev)
  if ev == nil or ev == '' then return 0 end
  local e = cjson.decode(ev)
  if not redis.call('SET', P .. 'event_id:' .. e.id, '1', 'NX', 'EX', 3024000) then return 0 end
  local seq = redis.call('INCR', P .. 'outbox_seq')
  redis.call('XADD', P .. 'outbox', seq .. '-1', 'id', e.id, 'type', e.type, 'key', e.key, 'at', e.at, 'body', e.body)
  return 1
end
local function role_of(json)
  local r = cjson.decode(json)['role']
  if type(r) == 'string' then return r end
  return ''
end
-- A record's version (1 for one written before versions existed).
local function version_of(json)
  local v = cjson.decode(json)['version']
  if type(v) == 'number' then return v end
  return 1
end
-- Refuses unless the record `json` (false when absent) is at `want`.
local function check_version(json, want)
  if not json then return refuse('notfound') end
  local v = version_of(json)
  if v ~= tonumber(want) then return refuse('stale ' .. v) end
  return nil
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: key_id, json, token hash (hex), role ('' for none), created_at,
/// at_ms, event ('' for none).
pub static INSERT_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, json, hash, role, created, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', P .. 'key:' .. id) == 1 then return refuse('conflict key `' .. id .. '` already exists') end
if redis.call('EXISTS', P .. 'secret:' .. hash) == 1 then return refuse('conflict that token is already in use') end
if role ~= '' and redis.call('EXISTS', P .. 'role:' .. role) == 0 then return refuse('conflict role `' .. role .. '` does not exist') end
redis.call('SET', P .. 'key:' .. id, json)
redis.call('SET', P .. 'secret:' .. hash, id .. '|')
redis.call('SADD', P .. 'secrets:' .. id, hash)
redis.call('ZADD', P .. 'keys', created, id)
if role ~= '' then redis.call('SADD', P .. 'role_users:' .. role, id) end
emit(ARGV[7])
return feed('key', id, at)
"#,
    )
});

/// ARGV: key_id, json (at the new version), role ('' for none), at_ms,
/// the version the key must still be at, event.
pub static UPDATE_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, json, role, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local old = redis.call('GET', P .. 'key:' .. id)
local stale = check_version(old, ARGV[5])
if stale then return stale end
if role ~= '' and redis.call('EXISTS', P .. 'role:' .. role) == 0 then return refuse('conflict role `' .. role .. '` does not exist') end
local old_role = role_of(old)
if old_role ~= '' then redis.call('SREM', P .. 'role_users:' .. old_role, id) end
if role ~= '' then redis.call('SADD', P .. 'role_users:' .. role, id) end
redis.call('SET', P .. 'key:' .. id, json)
emit(ARGV[6])
return feed('key', id, at)
"#,
    )
});

/// ARGV: key_id, at_ms, the version the key must still be at, seconds to
/// keep its tombstone, event.
pub static DELETE_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, at = ARGV[1], ARGV[2]
local old = redis.call('GET', P .. 'key:' .. id)
local stale = check_version(old, ARGV[3])
if stale then return stale end
redis.call('SET', P .. 'tomb:' .. id, ARGV[3], 'EX', ARGV[4])
for _, h in ipairs(redis.call('SMEMBERS', P .. 'secrets:' .. id)) do redis.call('DEL', P .. 'secret:' .. h) end
local old_role = role_of(old)
if old_role ~= '' then redis.call('SREM', P .. 'role_users:' .. old_role, id) end
redis.call('DEL', P .. 'secrets:' .. id, P .. 'key:' .. id, P .. 'usage:' .. id, P .. 'credits:' .. id)
redis.call('ZREM', P .. 'keys', id)
emit(ARGV[5])
return feed('key', id, at)
"#,
    )
});

/// ARGV: key_id, new json (with the new prefix, at the new version), new
/// hash, old_valid_until, now, at_ms, the version the key must still be at,
/// event.
pub static ROTATE_SECRET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, json, hash, untl, now, at = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local stale = check_version(redis.call('GET', P .. 'key:' .. id), ARGV[7])
if stale then return stale end
if redis.call('EXISTS', P .. 'secret:' .. hash) == 1 then return refuse('conflict that token is already in use') end
for _, h in ipairs(redis.call('SMEMBERS', P .. 'secrets:' .. id)) do
  local v = redis.call('GET', P .. 'secret:' .. h)
  local exp = untl
  if v then
    local e = tonumber(string.match(v, '|(%d*)$') or '')
    if e and e < exp then exp = e end
  end
  if not v or exp <= now then
    redis.call('DEL', P .. 'secret:' .. h)
    redis.call('SREM', P .. 'secrets:' .. id, h)
  else
    redis.call('SET', P .. 'secret:' .. h, id .. '|' .. exp)
    redis.call('EXPIREAT', P .. 'secret:' .. h, exp + 60)
  end
end
redis.call('SET', P .. 'secret:' .. hash, id .. '|')
redis.call('SADD', P .. 'secrets:' .. id, hash)
redis.call('SET', P .. 'key:' .. id, json)
emit(ARGV[8])
return feed('key', id, at)
"#,
    )
});

/// ARGV: key_id, json, role ('' for none), created_at, at_ms, usage count,
/// last used ('' for never), what the store must hold (`v<N>`: the key at
/// version N; `absent`: no key and no tombstone; `tomb<N>`: no key, and a
/// tombstone at version N or none for N = 0), event, then pairs of secret
/// hash and its expiry ('' for none). Returns 1 created, 0 replaced.
pub static PUT_KEY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, json, role, created, at, count, last, expect = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local old = redis.call('GET', P .. 'key:' .. id)
local tomb = redis.call('GET', P .. 'tomb:' .. id)
if string.sub(expect, 1, 1) == 'v' then
  local stale = check_version(old, string.sub(expect, 2))
  if stale then return stale end
else
  if old then return refuse('stale ' .. version_of(old)) end
  if expect == 'absent' and tomb then return refuse('deleted') end
  if expect ~= 'absent' and (tomb or '0') ~= string.sub(expect, 5) then return refuse('deleted') end
end
for i = 10, #ARGV, 2 do
  local v = redis.call('GET', P .. 'secret:' .. ARGV[i])
  if v and string.match(v, '^(.*)|') ~= id then return refuse('conflict that token is already in use by another key') end
end
if role ~= '' and redis.call('EXISTS', P .. 'role:' .. role) == 0 then return refuse('conflict role `' .. role .. '` does not exist') end
redis.call('DEL', P .. 'tomb:' .. id)
if old then
  local old_role = role_of(old)
  if old_role ~= '' then redis.call('SREM', P .. 'role_users:' .. old_role, id) end
  for _, h in ipairs(redis.call('SMEMBERS', P .. 'secrets:' .. id)) do redis.call('DEL', P .. 'secret:' .. h) end
  redis.call('DEL', P .. 'secrets:' .. id)
end
redis.call('SET', P .. 'key:' .. id, json)
redis.call('ZADD', P .. 'keys', created, id)
if role ~= '' then redis.call('SADD', P .. 'role_users:' .. role, id) end
for i = 10, #ARGV, 2 do
  local h, exp = ARGV[i], ARGV[i + 1]
  redis.call('SET', P .. 'secret:' .. h, id .. '|' .. exp)
  if exp ~= '' then redis.call('EXPIREAT', P .. 'secret:' .. h, tonumber(exp) + 60) end
  redis.call('SADD', P .. 'secrets:' .. id, h)
end
-- Usage only goes up: a replaced key keeps the larger counts.
local u = P .. 'usage:' .. id
if tonumber(count) > tonumber(redis.call('HGET', u, 'count') or '0') then redis.call('HSET', u, 'count', count) end
if last ~= '' and tonumber(last) > tonumber(redis.call('HGET', u, 'last') or '0') then redis.call('HSET', u, 'last', last) end
emit(ARGV[9])
feed('key', id, at)
if old then return 0 end
return 1
"#,
    )
});

/// ARGV: token hash. Returns {json, secret expiry or '', usage count, last used}.
pub static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = redis.call('GET', P .. 'secret:' .. ARGV[1])
if not v then return false end
local id, exp = string.match(v, '^(.*)|(%d*)$')
if not id then return false end
local json = redis.call('GET', P .. 'key:' .. id)
if not json then return false end
local u = redis.call('HMGET', P .. 'usage:' .. id, 'count', 'last')
return {json, exp, u[1] or '0', u[2] or ''}
"#,
    )
});

/// ARGV: event. Returns 1 if it was written (its id was not).
pub static EMIT: LazyLock<Script> = LazyLock::new(|| script("return emit(ARGV[1])"));

/// ARGV: role id, json, only_if_absent ('1' or '0'), at_ms. Returns 1 created, 0 existed.
pub static INSERT_ROLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local id, json, quiet, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', P .. 'role:' .. id) == 1 then
  if quiet == '1' then return 0 end
  return refuse('conflict role `' .. id .. '` already exists')
end
redis.call('SET', P .. 'role:' .. id, json)
redis.call('SADD', P .. 'roles', id)
feed('role', id, at)
return 1
"#,
    )
});

/// ARGV: role id, json (at the new version), at_ms, the version it must still be at.
pub static UPDATE_ROLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local stale = check_version(redis.call('GET', P .. 'role:' .. ARGV[1]), ARGV[4])
if stale then return stale end
redis.call('SET', P .. 'role:' .. ARGV[1], ARGV[2])
return feed('role', ARGV[1], ARGV[3])
"#,
    )
});

/// ARGV: role id, at_ms, the version it must still be at.
pub static DELETE_ROLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local users = redis.call('SCARD', P .. 'role_users:' .. ARGV[1])
if users > 0 then return refuse('roleinuse ' .. users) end
local stale = check_version(redis.call('GET', P .. 'role:' .. ARGV[1]), ARGV[3])
if stale then return stale end
redis.call('DEL', P .. 'role:' .. ARGV[1])
redis.call('SREM', P .. 'roles', ARGV[1])
return feed('role', ARGV[1], ARGV[2])
"#,
    )
});

/// ARGV: report retention in seconds, then repeated (key_id, count,
/// last_used, minute, day, refused, owner, units). Counts for deleted keys
/// are dropped. Hourly counts go to one hash per day (`<key>|<hour>|a`,
/// `|r` and `|u`), owners to `usage_owner`, for usage reports.
pub static RECORD_USAGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local keep = tonumber(ARGV[1])
for i = 2, #ARGV, 8 do
  local id, n, last, minute, day = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), ARGV[i + 4]
  local refused, owner, units = tonumber(ARGV[i + 5]), ARGV[i + 6], tonumber(ARGV[i + 7])
  if redis.call('EXISTS', P .. 'key:' .. id) == 1 then
    local hour = math.floor(minute / 60)
    local d = P .. 'usage_d:' .. day
    if n > 0 then
      local u = P .. 'usage:' .. id
      redis.call('HINCRBY', u, 'count', n)
      local prev = tonumber(redis.call('HGET', u, 'last') or '0')
      if last > prev then redis.call('HSET', u, 'last', last) end
      local m = P .. 'usage_min:' .. id .. ':' .. day
      redis.call('HINCRBY', m, minute, n)
      redis.call('EXPIRE', m, 8 * 86400)
      redis.call('HINCRBY', d, id .. '|' .. hour .. '|a', n)
    end
    if refused > 0 then redis.call('HINCRBY', d, id .. '|' .. hour .. '|r', refused) end
    if units ~= 0 then redis.call('HINCRBY', d, id .. '|' .. hour .. '|u', units) end
    redis.call('EXPIRE', d, keep)
    redis.call('HSET', P .. 'usage_owner', id, owner)
  end
end
return 1
"#,
    )
});

/// A credits hash's balance after the refill due, and that balance less
/// `spent` written back: the arithmetic of `CreditBalance::apply` in
/// store/mod.rs, its one definition (`refill` is '' for none).
const CREDITS_APPLY: &str = r#"
local function credits_due(c, refill, period)
  local rem = tonumber(redis.call('HGET', c, 'remaining') or '0')
  local per = tonumber(redis.call('HGET', c, 'period') or '0')
  if refill ~= '' and per < period then
    rem = tonumber(refill)
    per = period
  end
  return {rem, per}
end
local function credits_apply(c, refill, period, spent)
  local r = credits_due(c, refill, period)
  local rem = r[1] - spent
  redis.call('HSET', c, 'remaining', rem, 'period', r[2])
  return {rem, r[2]}
end
"#;

/// ARGV: key_id, "add" or "set", n, refill ('' for none), period, at_ms,
/// the version the key must be at ('' for any), the largest balance (an
/// add that crosses 0 or it is refused).
/// Returns {remaining, period, generation}.
pub static CHANGE_CREDITS: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{CREDITS_APPLY}{}",
        r#"
local id, op, n, refill, period, at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local json = redis.call('GET', P .. 'key:' .. id)
if not json then return refuse('notfound') end
if ARGV[7] ~= '' then
  local stale = check_version(json, ARGV[7])
  if stale then return stale end
end
local c = P .. 'credits:' .. id
local gen = tonumber(redis.call('HGET', c, 'gen') or '0')
local r
if op == 'set' then
  gen = gen + 1
  redis.call('HSET', c, 'remaining', n, 'period', period, 'gen', gen)
  r = {n, period}
else
  local due = credits_due(c, refill, period)
  if due[1] + n < 0 or due[1] + n > tonumber(ARGV[8]) then return refuse('bound ' .. due[1]) end
  r = credits_apply(c, refill, period, -n)
  redis.call('HSET', c, 'gen', gen)
end
feed('key', id, at)
return {r[1], r[2], gen}
"#
    ))
});

/// ARGV: count of windows, then (period name, index, id, delta, ttl
/// seconds) per window, then (key_id, generation, refill or '', period,
/// spent) per credit spend. Counts for deleted keys' credits are dropped.
pub static RECORD_METER: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{CREDITS_APPLY}{}",
        r#"
local windows = tonumber(ARGV[1])
local i = 2
for _ = 1, windows do
  local h = P .. 'meter:' .. ARGV[i] .. ':' .. ARGV[i + 1]
  redis.call('HINCRBY', h, ARGV[i + 2], ARGV[i + 3])
  redis.call('EXPIRE', h, ARGV[i + 4])
  i = i + 5
end
while i <= #ARGV do
  local id, gen, refill, period, spent = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local c = P .. 'credits:' .. id
  if redis.call('EXISTS', P .. 'key:' .. id) == 1 and (redis.call('HGET', c, 'gen') or '0') == gen then
    credits_apply(c, refill, period, spent)
  end
  i = i + 5
end
return 1
"#
    ))
});

/// ARGV: key_id, need, want, nodes, refill ('' for none), period.
/// Returns {granted, remaining, period, generation} (the grant rule of
/// `CreditTake::grant`).
pub static TAKE_CREDITS: LazyLock<Script> = LazyLock::new(|| {
    script(&format!(
        "{CREDITS_APPLY}{}",
        r#"
local id, need, want, nodes, refill, period = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
if redis.call('EXISTS', P .. 'key:' .. id) == 0 then return {0, 0, 0, 0} end
local c = P .. 'credits:' .. id
local r = credits_apply(c, refill, period, 0)
local rem = r[1]
local grant = 0
if rem >= need then
  grant = math.max(need, math.min(want, math.floor(rem / (4 * nodes))))
  rem = redis.call('HINCRBY', c, 'remaining', -grant)
end
return {grant, rem, r[2], tonumber(redis.call('HGET', c, 'gen') or '0')}
"#
    ))
});

/// ARGV: key_id, units, generation, period: given back only to the
/// balance they were taken from.
pub static RETURN_CREDITS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local c = P .. 'credits:' .. ARGV[1]
if redis.call('EXISTS', c) == 0 then return 0 end
if (redis.call('HGET', c, 'gen') or '0') ~= ARGV[3] or (redis.call('HGET', c, 'period') or '0') ~= ARGV[4] then return 0 end
redis.call('HINCRBY', c, 'remaining', ARGV[2])
return 1
"#,
    )
});
