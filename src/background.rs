//! A node's work besides requests: following the store's change feed into
//! the caches, writing usage behind, sweeping limiter windows, idle credit
//! leases and the guard's blocks, writing the events requests noticed and
//! the expiry notices, and delivering webhooks ([`crate::outbox`]).
//! [`Background`] holds every task, and [`Background::stop`] is the one
//! shutdown: the tasks end at their next pause (never in the
//! middle of a write), then what the node holds is written or given back.

use crate::state::App;
use crate::store::{Change, ChangeTarget, Heard, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How often the outbox forgets what it keeps no longer.
const SWEEP_OUTBOX_EVERY: Duration = Duration::from_secs(3600);

/// How often idle limiter windows and credit leases are swept.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// The running background tasks.
pub struct Background {
    app: Arc<App>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Ends with its store's subscription; nothing it holds needs writing.
    announcer: JoinHandle<()>,
}

impl Background {
    /// Starts every task for `app`.
    pub fn start(app: &Arc<App>) -> Background {
        let (stop, stopped) = watch::channel(false);
        let (heard_tx, heard) = mpsc::channel(1);
        let store = Arc::clone(&app.store);
        let announcer = tokio::spawn(async move { store.announce(heard_tx).await });
        let tasks = vec![
            tokio::spawn(follow_changes(Arc::clone(app), heard, stopped.clone())),
            tokio::spawn(write_usage_behind(Arc::clone(app), stopped.clone())),
            tokio::spawn(sweep(Arc::clone(app), stopped.clone())),
            tokio::spawn(crate::outbox::deliver(Arc::clone(app), stopped.clone())),
            tokio::spawn(write_notices(Arc::clone(app), stopped.clone())),
            tokio::spawn(tell_expiries(Arc::clone(app), stopped)),
        ];
        Background { app: Arc::clone(app), stop, tasks, announcer }
    }

    /// Ends every task, then writes pending usage and gives back what this
    /// node took of shared limits and credits and did not spend, so a
    /// restart strands none of it; last, sends the spans not yet exported.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.announcer.abort();
        for task in self.tasks {
            let _ = task.await;
        }
        let app = self.app;
        flush_usage(&app).await;
        let now_ms = crate::clock::now_ms();
        app.limiter.release(now_ms).await;
        app.credits.give_back_idle(app.store.as_ref(), now_ms, true).await;
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = &app.telemetry {
                t.shutdown();
            }
        })
        .await;
    }
}

/// Sleeps `pause`; false if the stop signal came first.
async fn pause(pause: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => !*stopped.borrow(),
        _ = stopped.changed() => false,
    }
}

/// Reads the store's change feed, every `poll_interval` or at once when the
/// store announces news, and drops what changed from the caches. Both read
/// the same feed from the same cursor, so each change is applied exactly
/// once and a lost announcement is caught by the next poll.
async fn follow_changes(app: Arc<App>, mut heard: mpsc::Receiver<Heard>, mut stopped: watch::Receiver<bool>) {
    let mut cursor = app.start_cursor().clone();
    let mut announcing = true;
    loop {
        let every = app.runtime.load().config.store.poll_interval;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.changed() => return,
            news = heard.recv(), if announcing => match news {
                Some(Heard::News) => {}
                Some(Heard::Lost) => {
                    app.metrics.subscription_losses.inc();
                    tracing::warn!("change subscription lost; reconnecting");
                    continue;
                }
                Some(Heard::Restored) => {
                    tracing::warn!("change subscription restored: flushing every cache");
                    flush_caches(&app).await;
                }
                None => announcing = false,
            },
        }
        match app.store.changes_since(&cursor).await {
            Ok(batch) => {
                if batch.gap {
                    tracing::warn!("change feed has a gap or went back: revalidating every cached key");
                    flush_caches(&app).await;
                }
                apply_changes(&app, &batch.changes).await;
                cursor = batch.latest;
            }
            Err(e) => app.note_store_error("changes_since", &e),
        }
    }
}

/// Has every cached key asked of the store again (served meanwhile only
/// while the store cannot answer), and reloads roles (kept as they are if
/// the store cannot answer).
async fn flush_caches(app: &App) {
    app.cache.expire_all();
    app.credits.forget_all();
    app.metrics.cache_invalidations.with_label_values(&["flush"]).inc();
    if let Err(e) = app.roles.reload(app.store.as_ref()).await {
        app.note_store_error("list_roles", &e);
    }
}

async fn apply_changes(app: &App, changes: &[Change]) {
    let mut roles_changed = false;
    let mut live: Vec<&str> = Vec::new();
    let now_ms = crate::clock::now_ms();
    for change in changes {
        match &change.target {
            ChangeTarget::Key(id) => {
                app.cache.invalidate_key(id);
                app.credits.forget(id);
                app.metrics.cache_invalidations.with_label_values(&["key"]).inc();
                live.push(id);
            }
            ChangeTarget::Role(_) => roles_changed = true,
        }
        app.metrics.revocation_lag.observe(((now_ms - change.at_ms).max(0) as f64) / 1000.0);
    }
    if roles_changed {
        app.metrics.cache_invalidations.with_label_values(&["role"]).inc();
        if let Err(e) = app.roles.reload(app.store.as_ref()).await {
            app.note_store_error("list_roles", &e);
        }
        // Any key's permissions may have changed.
        let every = app.streams.keys();
        close_revoked(app, every.iter().map(String::as_str)).await;
    } else {
        close_revoked(app, live.into_iter()).await;
    }
}

/// Ends the live connections (event streams) of the keys among `key_ids`
/// that may no longer use them: deleted, disabled (a leak report too),
/// expired, of another environment, or without the permission a
/// connection's route needs. Read from the store, as the change left it.
async fn close_revoked(app: &App, key_ids: impl Iterator<Item = &str>) {
    use crate::realtime::Closed;
    let environment = app.runtime.load().config.server.environment;
    for id in key_ids.filter(|id| app.streams.is_open(id)) {
        let key = match app.store.get_key(id).await {
            Ok(key) => key,
            Err(e) => {
                // Kept open: a store that cannot answer revokes nothing.
                app.note_store_error("get_key", &e);
                continue;
            }
        };
        use crate::keys::model::KeyState;
        let usable = key.as_ref().filter(|k| KeyState::of(k, crate::clock::now_unix(), environment) == KeyState::Usable);
        match usable {
            None => app.streams.close(id, Closed::Revoked, |_| true),
            Some(key) => app.streams.close(id, Closed::Forbidden, |p| p.is_some_and(|p| !app.roles.permits(key, p))),
        };
    }
}

/// Writes the events requests noticed to the outbox. One the store
/// refuses is kept (up to the queue's size) and tried again a second
/// later; a stop drops what is left (thresholds are noticed again only in
/// their next window: a small loss, against holding up shutdown).
async fn write_notices(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let Some(mut noticed) = app.noticed.lock().ok().and_then(|mut n| n.take()) else { return };
    let mut waiting: std::collections::VecDeque<crate::events::NewEvent> = std::collections::VecDeque::new();
    loop {
        if waiting.is_empty() {
            tokio::select! {
                event = noticed.recv() => match event {
                    Some(e) => waiting.push_back(e),
                    None => return,
                },
                _ = stopped.changed() => return,
            }
        }
        while let Ok(e) = noticed.try_recv() {
            if waiting.len() < crate::events::NOTICE_QUEUE {
                waiting.push_back(e);
            }
        }
        while let Some(e) = waiting.front() {
            match app.store.emit(e).await {
                Ok(_) => {
                    waiting.pop_front();
                }
                Err(err) => {
                    app.note_store_error("emit", &err);
                    if !pause(Duration::from_secs(1), &mut stopped).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Writes `key.expiring` and `key.expired` for the keys whose time has
/// come, every `events.check_interval`, on the node holding the lease
/// (the events' ids make a second writer harmless, only wasteful); and
/// hourly, the outbox's sweep, webhooks or not.
async fn tell_expiries(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let owner = crate::outbox::node_name(&app);
    let mut swept: Option<std::time::Instant> = None;
    loop {
        let cfg = app.runtime.load_full();
        if !pause(cfg.config.events.check_interval, &mut stopped).await {
            return;
        }
        let lease = cfg.config.events.check_interval.saturating_mul(3).as_millis() as u64;
        match app.store.hold_lease("expiry-notices", &owner, lease).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                app.note_store_error("hold_lease", &e);
                continue;
            }
        }
        if swept.is_none_or(|t| t.elapsed() >= SWEEP_OUTBOX_EVERY) {
            swept = Some(std::time::Instant::now());
            let before = crate::clock::now_ms() - crate::outbox::KEEP.as_millis() as i64;
            if let Err(e) = app.store.sweep_events(before).await {
                app.note_store_error("sweep_events", &e);
            }
        }
        let notices = &cfg.config.events.expiry_notice;
        let now_ms = crate::clock::now_ms();
        let now = now_ms.div_euclid(1000);
        let ahead = notices.first().map_or(0, |n| n.as_secs() as i64);
        let query = crate::store::KeyQuery {
            expiring: Some((now - crate::events::EXPIRED_TELLS_FOR_SECS, now + ahead)),
            now,
            ..Default::default()
        };
        let keys = match app.store.list_keys(&query).await {
            Ok(page) => page.keys,
            Err(e) => {
                app.note_store_error("list_keys", &e);
                continue;
            }
        };
        for key in &keys {
            let Some(event) = crate::events::expiry_event(key, notices, now_ms) else { continue };
            if let Err(e) = app.store.emit(&event).await {
                app.note_store_error("emit", &e);
                break;
            }
        }
    }
}

/// Writes usage every `keys.usage_flush_interval`.
async fn write_usage_behind(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        let every = app.runtime.load().config.keys.usage_flush_interval;
        if !pause(every, &mut stopped).await {
            return;
        }
        flush_usage(&app).await;
    }
}

/// Drops idle limiter windows and gives back idle credit leases.
async fn sweep(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    while pause(SWEEP_EVERY, &mut stopped).await {
        let now_ms = crate::clock::now_ms();
        app.limiter.sweep(now_ms).await;
        app.credits.give_back_idle(app.store.as_ref(), now_ms, false).await;
        app.in_flight.renew(now_ms).await;
        app.in_flight.sweep();
        if app.runtime.load().config.failed_credentials.is_some() {
            follow_blocks(&app, now_ms).await;
        }
    }
}

/// Reads every node's blocks from the store into the guard (an
/// operator's removal lifts this node's own block too).
async fn follow_blocks(app: &App, now_ms: i64) {
    let listed = match app.store.list_blocks(now_ms).await {
        Ok(l) => l,
        Err(e) => return app.note_store_error("list_blocks", &e),
    };
    let blocks: std::collections::HashMap<std::net::IpAddr, i64> =
        listed.into_iter().filter_map(|(a, until)| Some((a.parse().ok()?, until))).collect();
    for (ip, _) in app.guard.blocked(now_ms) {
        if !blocks.contains_key(&ip) && app.guard.settled(ip, now_ms) {
            app.guard.unblock(ip, now_ms);
        }
    }
    app.guard.follow(blocks);
    app.guard.sweep(now_ms);
    app.metrics.blocked_addresses.set(app.guard.blocked_count() as i64);
}

/// Writes pending usage counts, and what this node's calendar windows
/// counted and its keys' credits spent.
async fn flush_usage(app: &App) {
    let usage = app.usage.flush(app.store.as_ref()).await;
    let meter = flush_meter(app).await;
    match usage.and_then(|n| meter.map(|m| n + m)) {
        Ok(0) => {}
        Ok(_) => app.metrics.usage_flushes.with_label_values(&["ok"]).inc(),
        Err(e) => {
            app.metrics.usage_flushes.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, "usage flush failed; counts kept for the next try");
        }
    }
}

/// Writes what calendar windows counted (local limiter: on Redis they are
/// counted there) and credits spent since the last flush.
async fn flush_meter(app: &App) -> Result<usize, StoreError> {
    use crate::ratelimit::Limiter;
    let _writing = app.credits.writing().await;
    let windows = match &app.limiter {
        Limiter::Local(l) => l.take_unflushed(),
        Limiter::Redis(_) => Vec::new(),
    };
    let spends = app.credits.take_unflushed();
    if windows.is_empty() && spends.is_empty() {
        return Ok(0);
    }
    let n = windows.len() + spends.len();
    match app.store.record_meter(&windows, &spends).await {
        Ok(()) => Ok(n),
        Err(e) => {
            if let Limiter::Local(l) = &app.limiter {
                l.put_back(windows);
            }
            app.credits.put_back(spends);
            Err(e)
        }
    }
}
