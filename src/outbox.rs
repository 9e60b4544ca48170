//! Delivering the outbox to each `[[webhooks]]` endpoint, signed as
//! Standard Webhooks has it. One node delivers at a time: the one holding
//! the store's lease, renewed while it works; a node that dies mid-delivery
//! leaves its lease to lapse and the delivery to whoever takes it next
//! (the same `webhook-id`, so a receiver drops the repeat). Events of one
//! key go in order: a key's next event waits until the one before it is
//! delivered or dead. What was tried, and when next, is in the store.

use crate::config::Webhook;
use crate::events::{retry_at, AttemptRecord, Delivery, DeliveryStatus, DeliveryUpdate, RetryPolicy, KEPT_ATTEMPTS};
use crate::http1::Pool;
use crate::proxy::call::{self, Call};
use crate::state::{App, Runtime};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Method};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The lease every node asks for, how long it holds, and how often the
/// holder renews it while delivering.
const LEASE: &str = "webhook-delivery";
const LEASE_TTL: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often the outbox is read for new events and due retries.
const POLL: Duration = Duration::from_millis(250);
/// Open deliveries read per endpoint per pass, and keys delivered at once.
const BATCH: usize = 500;
const KEYS_AT_ONCE: usize = 16;
/// The most of an endpoint's answer read (and dropped).
const MAX_ANSWER: usize = 64 * 1024;
/// Events and finished deliveries are kept this long (the sweep is the
/// expiry task's, which runs with or without webhooks).
pub const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Delivers until `stopped`. A pass under way when the signal comes is
/// dropped: what it had not written is tried again by the next holder.
pub async fn deliver(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let owner = node_name(&app);
    let mut pools = Pools::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopped.changed() => return,
        }
        let rt = app.runtime.load_full();
        if rt.config.webhooks.is_empty() || !holds_lease(&app, &owner).await {
            app.metrics.webhook_backlog.set(0);
            continue;
        }
        pools.follow(&rt);
        let pass = deliver_all(&app, &rt, &pools);
        tokio::pin!(pass);
        let backlog = loop {
            tokio::select! {
                backlog = &mut pass => break Some(backlog),
                _ = tokio::time::sleep(RENEW_EVERY) => if !holds_lease(&app, &owner).await { break None },
                _ = stopped.changed() => return,
            }
        };
        app.metrics.webhook_backlog.set(backlog.unwrap_or(0) as i64);
    }
}

/// Who this node is to the lease: the same across its restarts (so a
/// node killed and started again takes its lease back at once), its own
/// among nodes (no two bind one data address on one host).
pub fn node_name(app: &App) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{}/{}", host.trim(), app.runtime.load().config.server.listen)
}

async fn holds_lease(app: &App, owner: &str) -> bool {
    match app.store.hold_lease(LEASE, owner, LEASE_TTL.as_millis() as u64).await {
        Ok(held) => held,
        Err(e) => {
            app.note_store_error("hold_lease", &e);
            false
        }
    }
}

/// Connection pools by endpoint, made again when the config is reloaded.
#[derive(Default)]
struct Pools {
    of: Option<Arc<Runtime>>,
    pools: HashMap<String, Arc<Pool>>,
}

impl Pools {
    fn follow(&mut self, rt: &Arc<Runtime>) {
        if self.of.as_ref().is_some_and(|of| Arc::ptr_eq(of, rt)) {
            return;
        }
        self.pools = rt
            .config
            .webhooks
            .iter()
            .map(|w| (w.name.clone(), call::pool(&w.to, w.timeout.min(Duration::from_secs(5)))))
            .collect();
        self.of = Some(Arc::clone(rt));
    }
}

/// One pass over every endpoint; the open deliveries seen (the backlog).
async fn deliver_all(app: &App, rt: &Runtime, pools: &Pools) -> usize {
    let mut backlog = 0;
    for hook in &rt.config.webhooks {
        let Some(pool) = pools.pools.get(&hook.name) else { continue };
        match app.store.open_deliveries(&hook.name, &hook.events, BATCH).await {
            Ok(open) => {
                backlog += open.len();
                deliver_open(app, hook, pool, open).await;
            }
            Err(e) => app.note_store_error("open_deliveries", &e),
        }
    }
    backlog
}

/// Delivers each key's open deliveries in order, keys side by side: a
/// key's run stops at its first delivery not due or not delivered.
async fn deliver_open(app: &App, hook: &Webhook, pool: &Arc<Pool>, open: Vec<Delivery>) {
    let mut runs: Vec<Vec<Delivery>> = Vec::new();
    let mut run_of: HashMap<String, usize> = HashMap::new();
    for d in open {
        let at = *run_of.entry(d.event.key_id.clone()).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        runs[at].push(d);
    }
    futures_util::stream::iter(runs)
        .for_each_concurrent(KEYS_AT_ONCE, |run| async move {
            for d in run {
                if d.next_at_ms > crate::clock::now_ms() || !attempt(app, hook, pool, &d).await {
                    return;
                }
            }
        })
        .await;
}

/// Tries one delivery and writes what came of it; whether it was delivered.
async fn attempt(app: &App, hook: &Webhook, pool: &Arc<Pool>, d: &Delivery) -> bool {
    let started = Instant::now();
    let now_ms = crate::clock::now_ms();
    let sent = send(hook, pool, d, now_ms.div_euclid(1000)).await;
    let record = AttemptRecord {
        at_ms: now_ms,
        status: sent.as_ref().ok().copied(),
        error: match &sent {
            Ok(s) if (200..300).contains(s) => None,
            Ok(s) => Some(format!("the endpoint answered {s}")),
            Err(e) => Some(e.clone()),
        },
        took_ms: started.elapsed().as_millis() as u64,
    };
    let delivered = record.error.is_none();
    let first = d.first_attempt_ms.unwrap_or(now_ms);
    let policy =
        RetryPolicy { for_ms: hook.retry_for.as_millis() as i64, max_wait_ms: hook.max_retry_interval.as_millis() as i64 };
    let (status, next_at_ms) = match (delivered, retry_at(d.attempts + 1, first, now_ms, policy, rand::random::<f64>())) {
        (true, _) => (DeliveryStatus::Delivered, now_ms),
        (false, Some(at)) => (DeliveryStatus::Failed, at),
        (false, None) => (DeliveryStatus::Dead, now_ms),
    };
    if status != DeliveryStatus::Delivered {
        tracing::warn!(webhook = %hook.name, event = %d.event.id, attempts = d.attempts + 1, error = record.error.as_deref().unwrap_or(""), status = status.as_str(), "webhook delivery failed");
    }
    let mut log = d.log.clone();
    log.push(record);
    let excess = log.len().saturating_sub(KEPT_ATTEMPTS);
    log.drain(..excess);
    let update = DeliveryUpdate { status, attempts_before: d.attempts, first_attempt_ms: first, next_at_ms, at_ms: now_ms, log };
    app.metrics.webhook_deliveries.with_label_values(&[status.as_str()]).inc();
    match app.store.record_attempt(&hook.name, d.event.seq, &update).await {
        Ok(written) => delivered && written,
        Err(e) => {
            app.note_store_error("record_attempt", &e);
            false
        }
    }
}

/// POSTs the event's body, signed; the endpoint's status.
async fn send(hook: &Webhook, pool: &Arc<Pool>, d: &Delivery, timestamp: i64) -> Result<u16, String> {
    let body = d.event.body.as_bytes();
    let signature = hook.secret.sign(&d.event.id, timestamp, body).map_err(|e| e.to_string())?;
    let target = hook.to.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = Call::new(Method::POST, target, pool);
    let field = |name: &'static str, value: &str| HeaderValue::from_str(value).map(|v| (HeaderName::from_static(name), v));
    head.fields = vec![
        field("content-type", "application/json"),
        field("user-agent", concat!("keygate/", env!("CARGO_PKG_VERSION"))),
        field("webhook-id", &d.event.id),
        field("webhook-timestamp", &timestamp.to_string()),
        field("webhook-signature", &signature),
    ]
    .into_iter()
    .collect::<Result<_, _>>()
    .map_err(|e| e.to_string())?;
    let answer = call::call(pool, &head, Bytes::copy_from_slice(body), hook.timeout, MAX_ANSWER).await?;
    Ok(answer.status.as_u16())
}
