//! What happens to keys, told to the backend: lifecycle events, written to
//! an outbox in the store together with the change that caused them, and
//! their deliveries to each `[[webhooks]]` endpoint, retried with backoff
//! until delivered or, after `retry_for`, dead. The delivering is
//! [`crate::outbox`]'s; keeping them is the store's.

use serde_json::{json, Value};

/// Every kind of event, as `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    KeyCreated,
    KeyUpdated,
    KeyDisabled,
    KeyEnabled,
    KeyRotated,
    KeyDeleted,
    KeyLeaked,
    KeyExpiring,
    KeyExpired,
    QuotaThreshold,
    CreditsLow,
    CreditsExhausted,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::KeyCreated,
        EventKind::KeyUpdated,
        EventKind::KeyDisabled,
        EventKind::KeyEnabled,
        EventKind::KeyRotated,
        EventKind::KeyDeleted,
        EventKind::KeyLeaked,
        EventKind::KeyExpiring,
        EventKind::KeyExpired,
        EventKind::QuotaThreshold,
        EventKind::CreditsLow,
        EventKind::CreditsExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::KeyCreated => "key.created",
            EventKind::KeyUpdated => "key.updated",
            EventKind::KeyDisabled => "key.disabled",
            EventKind::KeyEnabled => "key.enabled",
            EventKind::KeyRotated => "key.rotated",
            EventKind::KeyDeleted => "key.deleted",
            EventKind::KeyLeaked => "key.leaked",
            EventKind::KeyExpiring => "key.expiring",
            EventKind::KeyExpired => "key.expired",
            EventKind::QuotaThreshold => "quota.threshold",
            EventKind::CreditsLow => "credits.low",
            EventKind::CreditsExhausted => "credits.exhausted",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The longest event id: a Standard Webhooks message id.
pub const MAX_EVENT_ID: usize = 128;

/// An event about to be written: its id (the `webhook-id` of every
/// delivery, retries included), what and whom it is about, and the body
/// every endpoint receives, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: String,
    pub kind: EventKind,
    pub key_id: String,
    pub at_ms: i64,
    pub body: String,
}

impl NewEvent {
    /// An event with a fresh id: `{"id", "type", "timestamp", "data"}`.
    /// `data` is the key's public fields (never a secret or its hash).
    pub fn new(kind: EventKind, key_id: &str, at_ms: i64, data: Value) -> NewEvent {
        NewEvent::with_id(format!("evt_{}", random_id()), kind, key_id, at_ms, data)
    }

    /// An event about `key`: its public fields (never a secret or its
    /// hash) and, with `extra`, one more.
    pub fn about_key(kind: EventKind, key: &crate::keys::model::ApiKey, at_ms: i64, extra: Option<(&str, Value)>) -> NewEvent {
        NewEvent::new(kind, &key.key_id, at_ms, key_data(key, at_ms, extra))
    }

    /// An event whose id says what it is once (`key.expiring` at one
    /// notice, `quota.threshold` of one window), so that nodes noticing
    /// the same thing write it once.
    pub fn with_id(id: String, kind: EventKind, key_id: &str, at_ms: i64, data: Value) -> NewEvent {
        let body = json!({
            "id": id,
            "type": kind.as_str(),
            "timestamp": crate::clock::rfc3339(at_ms.div_euclid(1000)),
            "data": data,
        })
        .to_string();
        NewEvent { id, kind, key_id: key_id.into(), at_ms, body }
    }
}

/// What every event about a key says of it.
pub fn key_data(key: &crate::keys::model::ApiKey, at_ms: i64, extra: Option<(&str, Value)>) -> Value {
    let mut data = json!({
        "keyId": key.key_id,
        "name": key.name,
        "owner": key.owner,
        "env": key.env.as_str(),
        "role": key.role,
        "plan": key.plan,
        "enabled": key.enabled,
        "status": crate::keys::model::KeyStatus::of(key, at_ms.div_euclid(1000)).as_str(),
        "expiresAt": key.expires_at.map(crate::clock::rfc3339),
        "metadata": key.metadata,
    });
    if let Some((name, value)) = extra {
        data[name] = value;
    }
    data
}

fn random_id() -> String {
    use rand::Rng;
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    (0..24).map(|_| BASE62[rng.gen_range(0..62)] as char).collect()
}

/// How long after a key expired `key.expired` may still be sent (a node
/// down for a while catches up; keys long expired stay quiet).
pub const EXPIRED_TELLS_FOR_SECS: i64 = 7 * 86_400;

/// The expiry event due for `key` at `now_ms`, if any: `key.expired` once
/// it has expired, else `key.expiring` for the shortest notice (of
/// `notices`) that its time left is within. Ids name the expiry and the
/// notice, so each is written once however often it is looked for; a
/// key given a new expiry is told of again. Disabled keys are not told of.
pub fn expiry_event(key: &crate::keys::model::ApiKey, notices: &[std::time::Duration], now_ms: i64) -> Option<NewEvent> {
    let expires = key.expires_at.filter(|_| key.enabled)?;
    let left = expires - now_ms.div_euclid(1000);
    if left <= 0 {
        if -left > EXPIRED_TELLS_FOR_SECS {
            return None;
        }
        let id = format!("evt_expired_{}_{expires}", key.key_id);
        return Some(NewEvent::with_id(id, EventKind::KeyExpired, &key.key_id, now_ms, key_data(key, now_ms, None)));
    }
    let notice = notices.iter().map(|n| n.as_secs() as i64).filter(|n| *n >= left).min()?;
    let id = format!("evt_expiring_{}_{expires}_{notice}", key.key_id);
    let extra = json!({ "noticeSeconds": notice, "secondsLeft": left });
    Some(NewEvent::with_id(id, EventKind::KeyExpiring, &key.key_id, now_ms, key_data(key, now_ms, Some(("expiry", extra)))))
}

/// Events the request path notices (a quota threshold, credits running
/// low), handed to a background writer without waiting: when its queue is
/// full the event is dropped and counted rather than a request held up.
#[derive(Debug, Clone)]
pub struct Notices {
    tx: tokio::sync::mpsc::Sender<NewEvent>,
}

/// Events the writer may be behind by.
pub const NOTICE_QUEUE: usize = 4096;

impl Notices {
    pub fn channel() -> (Notices, tokio::sync::mpsc::Receiver<NewEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(NOTICE_QUEUE);
        (Notices { tx }, rx)
    }

    /// Queues an event; false if the queue was full (or the writer gone).
    pub fn send(&self, event: NewEvent) -> bool {
        self.tx.try_send(event).is_ok()
    }
}

/// An event as the outbox keeps it, numbered in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub key_id: String,
    pub at_ms: i64,
    pub body: String,
}

impl StoredEvent {
    /// The event as the admin API lists it: the delivered body, parsed.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// `GET /events`: newest first, each filter optional.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub key_id: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: usize,
}

impl EventQuery {
    /// Whether an event passes the filters (for stores that scan).
    pub fn admits(&self, e: &StoredEvent) -> bool {
        self.key_id.as_ref().is_none_or(|k| *k == e.key_id)
            && self.kind.as_ref().is_none_or(|t| *t == e.kind)
            && self.since_ms.is_none_or(|s| e.at_ms >= s)
    }
}

/// Where one event stands with one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not tried yet, or waiting for an earlier event of its key.
    Pending,
    /// Tried and failed; tried again at `next_at_ms`.
    Failed,
    Delivered,
    /// Failed for longer than the endpoint's `retry_for`: kept, not tried
    /// again unless replayed.
    Dead,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] =
        [DeliveryStatus::Pending, DeliveryStatus::Failed, DeliveryStatus::Delivered, DeliveryStatus::Dead];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Pending or failed: still to be delivered.
    pub fn is_open(self) -> bool {
        matches!(self, DeliveryStatus::Pending | DeliveryStatus::Failed)
    }
}

/// One try of a delivery, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub at_ms: i64,
    /// The endpoint's status, when it answered.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub took_ms: u64,
}

/// The attempts a delivery keeps (the latest).
pub const KEPT_ATTEMPTS: usize = 10;

/// One event's delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub webhook: String,
    pub event: StoredEvent,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub first_attempt_ms: Option<i64>,
    pub next_at_ms: i64,
    pub updated_at_ms: i64,
    /// The latest attempts, oldest first, at most [`KEPT_ATTEMPTS`].
    pub log: Vec<AttemptRecord>,
}

impl Delivery {
    /// The admin API's form.
    pub fn json(&self) -> Value {
        let last = self.log.last();
        json!({
            "webhook": self.webhook,
            "eventId": self.event.id,
            "type": self.event.kind,
            "keyId": self.event.key_id,
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "nextAttemptAt": self.status.is_open().then(|| crate::clock::rfc3339(self.next_at_ms.div_euclid(1000))),
            "lastStatus": last.and_then(|a| a.status),
            "lastError": last.and_then(|a| a.error.clone()),
            "log": self.log.iter().map(|a| json!({
                "at": crate::clock::rfc3339(a.at_ms.div_euclid(1000)),
                "status": a.status,
                "error": a.error,
                "tookMs": a.took_ms,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What a try did to a delivery: written only if the delivery is still
/// open and at `attempts_before` (a replay in between wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub status: DeliveryStatus,
    pub attempts_before: u32,
    pub first_attempt_ms: i64,
    pub next_at_ms: i64,
    pub at_ms: i64,
    /// The whole log after this attempt.
    pub log: Vec<AttemptRecord>,
}

/// `GET /webhooks/deliveries`: newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub webhook: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub key_id: Option<String>,
    pub limit: usize,
}

/// The first retry waits this long; each next one twice as long, up to
/// the endpoint's longest wait (an hour by default), each jittered by
/// ±25% so that an endpoint coming back is not met by every retry at once.
pub const FIRST_BACKOFF_MS: i64 = 1_000;

/// How a failing delivery is tried again: for `for_ms` since its first
/// try, waiting at most `max_wait_ms` between two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub for_ms: i64,
    pub max_wait_ms: i64,
}

/// When a delivery that has now failed `attempts` times is tried again,
/// or `None` when it has been failing for `policy.for_ms` and is dead.
/// `jitter` is uniform in [0, 1).
pub fn retry_at(attempts: u32, first_ms: i64, now_ms: i64, policy: RetryPolicy, jitter: f64) -> Option<i64> {
    if now_ms.saturating_sub(first_ms) >= policy.for_ms {
        return None;
    }
    let doublings = attempts.saturating_sub(1).min(32);
    let base = FIRST_BACKOFF_MS.saturating_mul(1_i64 << doublings).min(policy.max_wait_ms.max(FIRST_BACKOFF_MS));
    let factor = 0.75 + 0.5 * jitter.clamp(0.0, 1.0);
    Some(now_ms + (base as f64 * factor) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_its_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("key.exploded"), None);
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn an_event_body_carries_its_id_type_time_and_data_and_the_id_is_signable() {
        let e = NewEvent::new(EventKind::KeyDisabled, "key_a", 1_765_000_000_123, json!({ "keyId": "key_a" }));
        let body: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["id"], e.id.as_str());
        assert_eq!(body["type"], "key.disabled");
        assert_eq!(body["timestamp"], "2025-12-06T05:46:40Z");
        assert_eq!(body["data"]["keyId"], "key_a");
        assert!(e.id.starts_with("evt_") && e.id.len() == 28);
        let secret = crate::webhooks::SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert!(secret.sign(&e.id, 1, e.body.as_bytes()).is_ok());
        assert_ne!(NewEvent::new(EventKind::KeyDisabled, "key_a", 0, Value::Null).id, e.id);
    }

    #[test]
    fn expiry_notices_come_at_the_tightest_notice_then_once_expired() {
        use std::time::Duration;
        let day = 86_400;
        let notices = [Duration::from_secs(7 * day as u64), Duration::from_secs(day as u64)];
        let mut key = crate::keys::model::ApiKey::blank("key_x".into(), crate::keys::model::Env::Live, "kg".into(), 0);
        let expires = 100 * day;
        key.expires_at = Some(expires);
        let at = |secs_before: i64| (expires - secs_before) * 1000;
        let told_of = |key: &crate::keys::model::ApiKey, now_ms| expiry_event(key, &notices, now_ms).map(|e| (e.kind, e.id));
        let told = |now_ms| told_of(&key, now_ms);
        assert_eq!(told(at(8 * day)), None, "more than every notice ahead");
        let week = told(at(7 * day)).unwrap();
        assert_eq!(week, (EventKind::KeyExpiring, format!("evt_expiring_key_x_{expires}_{}", 7 * day)));
        assert_eq!(told(at(2 * day)).unwrap(), week, "still the week's notice: the same id");
        assert_eq!(told(at(day)).unwrap().1, format!("evt_expiring_key_x_{expires}_{day}"));
        assert_eq!(told(at(1)).unwrap().1, format!("evt_expiring_key_x_{expires}_{day}"));
        assert_eq!(told(at(0)).unwrap(), (EventKind::KeyExpired, format!("evt_expired_key_x_{expires}")));
        assert_eq!(told(at(-EXPIRED_TELLS_FOR_SECS)).unwrap().0, EventKind::KeyExpired);
        assert_eq!(told(at(-EXPIRED_TELLS_FOR_SECS - 1)), None, "expired long ago: quiet");
        let body: Value = serde_json::from_str(&expiry_event(&key, &notices, at(3600)).unwrap().body).unwrap();
        assert_eq!(body["data"]["expiry"]["secondsLeft"], 3600);
        assert_eq!(body["data"]["expiry"]["noticeSeconds"], day);
        // A key given another expiry is told of again; a disabled key is not.
        key.expires_at = Some(expires + 60);
        assert_ne!(told_of(&key, at(day)).unwrap().1, format!("evt_expiring_key_x_{expires}_{day}"));
        key.enabled = false;
        assert_eq!(told_of(&key, at(day)), None);
    }

    #[test]
    fn retries_back_off_doubling_with_jitter_and_die_after_retry_for() {
        let (day, hour) = (86_400_000, 3_600_000);
        let policy = RetryPolicy { for_ms: day, max_wait_ms: hour };
        assert_eq!(retry_at(1, 0, 0, policy, 0.5), Some(1_000));
        assert_eq!(retry_at(2, 0, 0, policy, 0.5), Some(2_000));
        assert_eq!(retry_at(4, 0, 0, policy, 0.5), Some(8_000));
        assert_eq!(retry_at(1, 0, 0, policy, 0.0), Some(750));
        assert_eq!(retry_at(1, 0, 0, policy, 1.0), Some(1_250));
        // Capped at the longest wait, however many attempts.
        assert_eq!(retry_at(40, 0, 10, policy, 0.5), Some(10 + hour));
        assert_eq!(retry_at(u32::MAX, 0, 10, policy, 0.5), Some(10 + hour));
        let brisk = RetryPolicy { max_wait_ms: 2_000, ..policy };
        assert_eq!(retry_at(9, 0, 10, brisk, 0.5), Some(2_010));
        // Failing for retry_for: dead; a moment before, tried again.
        assert_eq!(retry_at(30, 0, day, policy, 0.5), None);
        assert!(retry_at(30, 0, day - 1, policy, 0.5).is_some());
        // From the first attempt: doublings, then hourly retries, make at
        // least a day of trying.
        let (mut now, mut n) = (0, 0);
        while let Some(next) = retry_at(n + 1, 0, now, policy, 0.0) {
            now = next;
            n += 1;
        }
        assert!(now >= day && n < 50, "{n} attempts over {now} ms");
    }
}
