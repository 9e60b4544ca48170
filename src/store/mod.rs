//! Where keys and roles live. Two backends, the embedded SQLite store and
//! (for many nodes) Redis, implement one trait per kind of consumer:
//! [`Resolver`] for the request path, [`ChangeFeed`] for the nodes'
//! caches, [`Records`] for operators' changes, [`UsageLog`] for metering,
//! [`CreditLedger`] for balances, [`Outbox`] for lifecycle events and
//! their webhook deliveries, and [`Blocklist`] for addresses the
//! failed-credential guard blocked. [`Store`] is all of them.

pub mod redis;
pub mod redis_conn;
mod redis_outbox;
mod redis_scripts;
pub mod sqlite;

use crate::events::{Delivery, DeliveryQuery, DeliveryUpdate, EventQuery, NewEvent, StoredEvent};
use crate::keys::model::{ApiKey, KeyLookup, KeyStatus, Role};
use crate::keys::token::TokenHash;
use async_trait::async_trait;
use std::sync::Arc;

pub use crate::clock::{now_ms as now_unix_ms, now_unix};

/// Why a store call failed. `Unavailable` is the only one the request path
/// sees: it must never be taken for "unknown key".
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("role is used by {keys} key(s)")]
    RoleInUse { keys: u64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A conditional write found another version: another change came
    /// first, and nothing was written.
    #[error("changed since it was read: it is at version {current} now")]
    VersionConflict { current: u64 },
    /// A restore meant to create a key whose id was deleted (a tombstone
    /// remembers it): nothing was written.
    #[error("was deleted")]
    Deleted,
    /// An `add` would take a balance below 0 or above [`MAX_CREDITS`]: the
    /// balance (after any refill due) is left as it is.
    #[error("the balance is {remaining}: adding {add} would take it below 0 or above {MAX_CREDITS}")]
    BalanceBound { remaining: i64, add: i64 },
}

/// The largest credit balance a key may hold (far beyond any bill).
pub const MAX_CREDITS: u64 = 1_000_000_000_000;

/// What a restore (`put_key`) expects to find under the key's id; the write
/// happens only if it finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutExpect {
    /// No key. With `recreate_deleted`, an id that was deleted may be
    /// created again (its versions go on from the deleted key's).
    Absent { recreate_deleted: bool },
    /// The key at exactly this version: it is replaced.
    Version(u64),
}

/// How long a deleted key's id is remembered, so that an import or a
/// restore does not bring the key back unasked.
pub const TOMBSTONE_RETENTION_DAYS: i64 = 400;

/// What a change-feed entry touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeTarget {
    /// A key was created, edited, rotated or deleted.
    Key(String),
    /// A role was created, edited or deleted.
    Role(String),
}

/// One entry of the change feed that invalidates every node's cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub target: ChangeTarget,
    /// When the change was committed (Unix milliseconds): the start of the
    /// revocation lag this node measures.
    pub at_ms: i64,
}

/// Where a node is in the change feed: the sequence number of the last
/// entry it applied, and that entry's text. The text tells apart a feed
/// replaced by another one that has since reached the same number (a
/// restore from an older copy, then written to), which a number alone
/// cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedCursor {
    pub seq: u64,
    /// Empty when not known (an empty feed, or just after a resync): it is
    /// learnt at the next read.
    pub mark: String,
}

impl FeedCursor {
    /// Whether the feed's entry at this cursor (if the feed still holds
    /// one there) contradicts what the node applied.
    pub fn contradicted_by(&self, entry_here: Option<&str>) -> bool {
        !self.mark.is_empty() && entry_here.is_some_and(|e| e != self.mark)
    }
}

/// Changes after a cursor, and the cursor to go on from.
#[derive(Debug, Clone, Default)]
pub struct ChangeBatch {
    pub latest: FeedCursor,
    pub changes: Vec<Change>,
    /// The feed no longer holds everything since the cursor, went back
    /// behind it or holds another entry at it (a restore from an older
    /// copy): flush all, and go on from `latest`.
    pub gap: bool,
}

/// Most entries one read of the change feed returns; a full page is read
/// as a gap (the node resyncs rather than reading on).
pub const FEED_PAGE: usize = 10_000;

impl ChangeBatch {
    /// Where a read from `from` stands, given the feed's newest and oldest
    /// sequence numbers and its entry at `from.seq`: the empty batch to add
    /// the entries after the cursor to (a gap if some were trimmed; the
    /// cursor's text learnt when it was not known), or, as `Err`, the feed
    /// was replaced (behind the cursor, or another entry at it): a gap, to
    /// go on from the feed's newest entry, with nothing to read.
    pub fn open(from: &FeedCursor, newest: u64, oldest: Option<u64>, here: Option<String>) -> Result<ChangeBatch, ChangeBatch> {
        if newest < from.seq || from.contradicted_by(here.as_deref()) {
            return Err(ChangeBatch { latest: FeedCursor { seq: newest, mark: String::new() }, changes: Vec::new(), gap: true });
        }
        let mark = if from.mark.is_empty() { here.unwrap_or_default() } else { from.mark.clone() };
        let gap = from.seq > 0 && oldest.is_some_and(|o| o > from.seq + 1);
        Ok(ChangeBatch { latest: FeedCursor { seq: from.seq, mark }, changes: Vec::new(), gap })
    }

    /// Adds the entry numbered `seq`, whose text is `mark`.
    pub fn push(&mut self, seq: u64, mark: String, change: Change) {
        if seq > self.latest.seq {
            self.latest = FeedCursor { seq, mark };
        }
        self.changes.push(change);
    }
}

/// Requests one key made since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: String,
    /// The key's owner at the time (reports group by it).
    pub owner: String,
    /// Requests admitted.
    pub count: u64,
    /// Requests refused by a limit, quota or credits.
    pub refused: u64,
    /// What the admitted requests cost (a negative delta: reported less).
    pub units: i64,
    /// Unix seconds of the latest request.
    pub last_used: i64,
    /// Unix minute (seconds / 60) the requests fell in.
    pub minute: i64,
}

/// A key's credit balance as the store holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditBalance {
    pub remaining: i64,
    /// The refill window (day or month index) it was last refilled in.
    pub period: i64,
    /// Bumped by every `set`: spending from before it no longer counts.
    pub generation: i64,
}

impl CreditBalance {
    /// Applies one batch of spending, refilling first when it happened in
    /// a later refill window than the balance was last refilled in. The
    /// one definition of this arithmetic: nodes replay their spending with
    /// it, SQLite applies it, and the Redis scripts mirror it.
    pub fn apply(&mut self, refill: Option<u64>, period: i64, spent: i64) {
        if let Some(amount) = refill {
            if self.period < period {
                self.remaining = amount as i64;
                self.period = period;
            }
        }
        self.remaining -= spent;
    }
}

/// Credits a node spent and has not written yet, in one refill window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditSpend {
    pub key_id: String,
    pub generation: i64,
    /// The key's refill amount, when it has one.
    pub refill: Option<u64>,
    /// The refill window the units were spent in.
    pub period: i64,
    pub spent: i64,
}

/// What a node asks of a balance when it takes credits to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditTake {
    pub need: u64,
    pub want: u64,
    pub nodes: u32,
    pub refill: Option<u64>,
    pub period: i64,
}

impl CreditTake {
    /// How much of `remaining` to grant: `need` or nothing, and more up to
    /// `want` while it stays within a quarter of each node's share.
    pub fn grant(&self, remaining: i64) -> u64 {
        let remaining = remaining.max(0) as u64;
        if remaining < self.need {
            return 0;
        }
        let share = remaining / (4 * u64::from(self.nodes.max(1)));
        self.want.min(share).max(self.need)
    }
}

/// An operator's change to a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditChange {
    Add(i64),
    Set(i64),
}

/// Units a calendar window of one counter counted since the last flush
/// (written), or in all (read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCount {
    pub period: crate::clock::Period,
    pub id: String,
    pub index: i64,
    pub delta: i64,
}

/// Which usage a report covers: hours `from_hour..to_hour` (Unix hours),
/// optionally of one owner or one key.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub owner: Option<String>,
    pub key_id: Option<String>,
    pub from_hour: i64,
    pub to_hour: i64,
}

/// Requests of one key in one hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub owner: String,
    /// Unix hour (seconds / 3600).
    pub hour: i64,
    pub admitted: u64,
    pub refused: u64,
    /// What the admitted requests cost, in their routes' units (settled
    /// with what upstreams reported).
    pub units: i64,
}

/// How long hourly usage is kept for reports: more than a year, so a
/// year-on-year bill can be made.
pub const USAGE_REPORT_RETENTION_DAYS: i64 = 420;

/// A page of keys and how many matched in all.
#[derive(Debug, Clone, Default)]
pub struct KeyPage {
    pub keys: Vec<ApiKey>,
    pub total: u64,
}

/// One of a key's secrets, by its hash: what an export carries instead of
/// the secret itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretRecord {
    pub hash: TokenHash,
    /// Unix seconds after which a rotated-out secret stops working.
    pub valid_until: Option<i64>,
}

/// A new secret for a key, and when its older ones stop working.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    pub key_id: &'a str,
    pub hash: &'a TokenHash,
    /// The masked form of the new secret, shown in listings.
    pub key_prefix: &'a str,
    /// Unix seconds.
    pub old_valid_until: i64,
    /// The key's version the rotation was made for.
    pub version: u64,
    /// Written to the outbox with the rotation.
    pub event: Option<&'a NewEvent>,
}

/// Which keys a listing wants.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Case-insensitive substring over name, description, owner, keyPrefix, role, keyId, allowed IPs.
    pub search: Option<String>,
    /// Only keys of this role (`Some("")`: keys without one).
    pub role: Option<String>,
    /// Only keys in this state at `now`.
    pub status: Option<KeyStatus>,
    /// Unix seconds, for `status`.
    pub now: i64,
    /// Only keys expiring within these Unix seconds (both included).
    pub expiring: Option<(i64, i64)>,
    pub offset: u64,
    pub limit: u64,
}

impl KeyQuery {
    /// Whether a key passes the role, status and expiry filters (not the search).
    pub fn admits(&self, key: &ApiKey) -> bool {
        self.role.as_deref().is_none_or(|r| key.role.as_deref().unwrap_or("") == r)
            && self.status.is_none_or(|s| KeyStatus::of(key, self.now) == s)
            && self.expiring.is_none_or(|(from, to)| key.expires_at.is_some_and(|t| (from..=to).contains(&t)))
    }
}

/// Requests per bucket for one key, for "usage at a glance".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSummary {
    pub last_hour: u64,
    pub last_day: u64,
}

/// One management change: who did what to which key or role, and when.
/// `before`/`after` are the JSON forms shown by the admin API: never a secret.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `admin-api (<token name>@<address>)` or `cli (<user>)`.
    pub actor: String,
    /// `key.create`, `key.edit`, `key.rotate`, `role.delete`, ...
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// A page of the audit log and how many entries matched in all.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub total: u64,
}

/// Every part of a store: what a backend implements and what a node
/// opens. Each consumer takes the one part it uses, so a test of it
/// implements only that part.
pub trait Store: Resolver + ChangeFeed + Records + UsageLog + CreditLedger + Outbox + Blocklist {}

impl<T: Resolver + ChangeFeed + Records + UsageLog + CreditLedger + Outbox + Blocklist> Store for T {}

/// What the request path asks of the store: the key a token belongs to,
/// every role, and whether the store answers. The key cache and the role
/// set read through it.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The key holding this secret, if any.
    async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<KeyLookup>, StoreError>;
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError>;
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The feed of committed changes every node follows to keep its caches
/// current.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// The feed's newest entry (sequence 0 for none).
    async fn change_cursor(&self) -> Result<FeedCursor, StoreError>;
    /// Changes after `from`.
    async fn changes_since(&self, from: &FeedCursor) -> Result<ChangeBatch, StoreError>;
    /// Tells `heard` of each change the store announces as it is
    /// committed, so a follower reads the feed at once instead of at its
    /// next poll; runs until `heard` is closed. A store that announces
    /// nothing (SQLite: followers poll) returns at once.
    async fn announce(&self, heard: tokio::sync::mpsc::Sender<Heard>) {
        drop(heard);
    }
}

/// What a store's announcements tell the node following its change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A change was committed: read the feed now.
    News,
    /// The subscription was lost: announcements are missed until it is back.
    Lost,
    /// The subscription is back after a loss: changes made meanwhile may
    /// never be announced, so every cache must be asked again.
    Restored,
}

/// What operators change: keys, their secrets, roles, and the audit log.
/// Every write is conditional on the version that was read.
#[async_trait]
pub trait Records: Resolver + Send + Sync {
    async fn get_key(&self, key_id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_keys(&self, query: &KeyQuery) -> Result<KeyPage, StoreError>;
    /// Stores a new key with its secret's hash; `Conflict` if either exists.
    /// Every key write takes the event it causes, written to the outbox
    /// with it or not at all.
    async fn insert_key(&self, key: &ApiKey, hash: &TokenHash, event: Option<&NewEvent>) -> Result<(), StoreError>;
    /// Writes a key's fields (not its secrets, usage or creation time) if
    /// the stored key is still at `key.version`, and makes it
    /// `key.version + 1`; `VersionConflict` if another change came first.
    async fn update_key(&self, key: &ApiKey, event: Option<&NewEvent>) -> Result<(), StoreError>;
    /// Removes a key and its secrets if it is still at `version`, keeping a
    /// tombstone of its id; `NotFound` if absent.
    async fn delete_key(&self, key_id: &str, version: u64, event: Option<&NewEvent>) -> Result<(), StoreError>;
    /// A key's secrets (hashes) that still work at `now`, the current one first.
    async fn secrets_of(&self, key_id: &str, now: i64) -> Result<Vec<SecretRecord>, StoreError>;
    /// Writes a key whole with exactly these secrets (what an import
    /// restores) if the store holds what `expect` says, else `NotFound`,
    /// `VersionConflict` or `Deleted` and nothing is written. Says whether it
    /// created the key. Usage counts only go up: a replaced key keeps the
    /// larger of its own and the restored ones. `Conflict` if a secret
    /// belongs to another key.
    async fn put_key(
        &self,
        key: &ApiKey,
        secrets: &[SecretRecord],
        expect: PutExpect,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError>;
    /// Adds a new secret if the key is still at the rotation's version
    /// (and makes it one more); older ones stop working at its
    /// `old_valid_until`.
    async fn rotate_secret(&self, rotation: &Rotation<'_>) -> Result<(), StoreError>;
    async fn get_role(&self, id: &str) -> Result<Option<Role>, StoreError>;
    /// Creates a role; `Conflict` if the id exists.
    async fn insert_role(&self, role: &Role) -> Result<(), StoreError>;
    /// Creates a role only when its id is free; says whether it did.
    async fn insert_role_if_absent(&self, role: &Role) -> Result<bool, StoreError>;
    /// Writes a role if it is still at `role.version`, making it
    /// `role.version + 1`; `VersionConflict` if another change came first.
    async fn update_role(&self, role: &Role) -> Result<(), StoreError>;
    /// Deletes a role no key uses (`RoleInUse` otherwise) if it is still at `version`.
    async fn delete_role(&self, id: &str, version: u64) -> Result<(), StoreError>;
    /// Appends one management change to the audit log.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Audit entries, newest first, optionally only those about one target.
    async fn list_audit(&self, target: Option<&str>, offset: u64, limit: u64) -> Result<AuditPage, StoreError>;
}

/// Counted usage: per-key request counts and reports, and the calendar
/// windows of quotas.
#[async_trait]
pub trait UsageLog: Send + Sync {
    async fn record_usage(&self, batch: &[UsageDelta]) -> Result<(), StoreError>;
    async fn usage_summary(&self, key_id: &str, now: i64) -> Result<UsageSummary, StoreError>;
    /// Hourly admitted and refused counts, ordered by hour then key.
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
    /// Writes what calendar windows counted and credits spent since the
    /// last flush; counts of deleted keys are dropped.
    async fn record_meter(&self, windows: &[WindowCount], credits: &[CreditSpend]) -> Result<(), StoreError>;
    /// Totals of every counter's calendar windows current at `now_ms`.
    async fn meter_windows(&self, now_ms: i64) -> Result<Vec<WindowCount>, StoreError>;
}

/// Prepaid credit balances: read, changed by operators, leased by nodes.
#[async_trait]
pub trait CreditLedger: Send + Sync {
    /// A key's credit balance; `None` if it never had one.
    async fn credit_balance(&self, key_id: &str) -> Result<Option<CreditBalance>, StoreError>;
    /// Adds to or sets a key's balance (refilling it first when `refill`
    /// is due in refill window `period`); a set starts a new generation.
    /// With `expect`, only if the key is at that version (the balance is
    /// not one of the key's fields: its version stays). Goes into the
    /// change feed, so every node reads the balance again.
    async fn change_credits(
        &self,
        key_id: &str,
        change: CreditChange,
        refill: Option<u64>,
        period: i64,
        expect: Option<u64>,
    ) -> Result<CreditBalance, StoreError>;
    /// Takes credits for a node to spend (refilling first when due in
    /// refill window `period`): `need` units or none, and up to `want`
    /// when the balance is large enough to share between `nodes`.
    /// Returns the units granted and the balance after.
    async fn take_credits(&self, key_id: &str, take: CreditTake) -> Result<(u64, CreditBalance), StoreError>;
    /// Gives back units a node took and did not spend, unless a `set` or
    /// a refill came since (they belonged to a balance that is gone).
    async fn return_credits(&self, key_id: &str, units: u64, taken_from: CreditBalance) -> Result<(), StoreError>;
}

/// Lifecycle events and their deliveries to webhook endpoints. Events
/// enter with the key writes of [`Records`] (or, for what no write causes,
/// through `emit`); one node at a time, holding the lease, delivers.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Starts `webhook`'s cursor at the newest event if it has none: what
    /// is written from now on is delivered to it. Every process that
    /// loads a config registers its webhooks before it writes anything.
    async fn register_webhook(&self, webhook: &str) -> Result<(), StoreError>;
    /// Writes an event no key write causes (an expiry notice, a
    /// threshold), unless one with its id exists; says whether it wrote.
    async fn emit(&self, event: &NewEvent) -> Result<bool, StoreError>;
    /// Takes the events written since the last call into `webhook`'s
    /// deliveries (those of `types`, or all when it is empty; a webhook
    /// seen the first time starts after the newest event) and returns its
    /// open deliveries, oldest first, at most `max`.
    async fn open_deliveries(&self, webhook: &str, types: &[String], max: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Writes what a try did, if the delivery is still open and at
    /// `update.attempts_before` attempts; says whether it did.
    async fn record_attempt(&self, webhook: &str, seq: u64, update: &DeliveryUpdate) -> Result<bool, StoreError>;
    /// Events, newest first.
    async fn list_events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;
    /// Deliveries, newest first.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>, StoreError>;
    /// Opens again (pending, no attempts) the deliveries to `webhook` of
    /// every event written at or after `since_ms` that are not open,
    /// making those it lacks; says how many.
    async fn replay(&self, webhook: &str, types: &[String], since_ms: i64) -> Result<u64, StoreError>;
    /// Holds the lease `name` for `owner` for `ttl_ms` more (at least half
    /// of that), if it is free, lapsed or already `owner`'s; says whether
    /// `owner` holds it.
    async fn hold_lease(&self, name: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Forgets events written before `before_ms` and deliveries last
    /// changed before it, but never an open delivery or its event.
    async fn sweep_events(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// Client addresses blocked for failed credentials: written by the node
/// that saw the limit passed, read by every node, removed by operators.
#[async_trait]
pub trait Blocklist: Send + Sync {
    /// Blocks `address` until `until_ms` (a later block of it stands).
    async fn put_block(&self, address: &str, until_ms: i64) -> Result<(), StoreError>;
    /// Lifts a block; whether there was one.
    async fn remove_block(&self, address: &str) -> Result<bool, StoreError>;
    /// The blocks in force at `now_ms`: address and end, by address.
    async fn list_blocks(&self, now_ms: i64) -> Result<Vec<(String, i64)>, StoreError>;
}

/// Event types as one script or statement parameter: `,a,b,` (empty:
/// every type), so a type is matched as `,type,` within it.
fn types_param(types: &[String]) -> String {
    if types.is_empty() {
        String::new()
    } else {
        format!(",{},", types.join(","))
    }
}

/// A shared handle to whichever store the config names.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store the config names; `metrics` counts its Redis calls.
pub async fn open(config: &crate::config::StoreConfig, metrics: &crate::metrics::Metrics) -> Result<SharedStore, StoreError> {
    match &config.backend {
        crate::config::StoreBackend::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path)?)),
        crate::config::StoreBackend::Redis(target) => {
            let handle =
                redis_conn::RedisHandle::connect(&target.url, target.cluster, config.timeout, metrics.redis_calls.clone())
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(Arc::new(redis::RedisStore::new(Arc::new(handle))))
        }
    }
}
