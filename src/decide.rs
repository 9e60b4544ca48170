//! Whether a token may do what is asked, now: the checks every request
//! passes (docs/interface.md, "The request path", steps 5 to 9), in the
//! contract's order. The data plane ([`crate::pipeline`]) and the verify
//! API ([`crate::manage`]) both call [`decide`], so they cannot drift.
//!
//! 5. the key (token shape, then cache or store)
//! 6. status, expiry, environment
//! 7. IP allowlist  8. permission  9. limits, quotas, credits

use crate::cache::Origin;
use crate::clock::Moment;
use crate::config::{Config, RedisErrorPolicy};
use crate::error::GatewayError;
use crate::events::{self, EventKind, NewEvent, Notices};
use crate::keys::model::{ApiKey, KeyLookup, Role};
use crate::keys::token::{self, TokenHash};
use crate::metrics::Metrics;
use crate::policy::routes::Route;
use crate::policy::{ip, permissions};
use crate::ratelimit::credits::{CreditDecision, Credits};
use crate::ratelimit::inflight::{Admission, InFlight, Slot, SlotAsk};
use crate::ratelimit::meter::{self, Charge, CreditNotice, Metered, RateView};
use crate::ratelimit::Limiter;
use crate::state::App;
use crate::store::{CreditLedger, Records, StoreError};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

/// What is asked of a key besides its token: from a request's route, or
/// from the verify API's body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// The token presented.
    pub token: &'a str,
    /// The permission required.
    pub permission: Option<&'a str>,
    /// The caller's address, for the key's allowlist; `None` when there is
    /// no request to take it from (the verify API).
    pub client_ip: Option<IpAddr>,
    /// What is charged; `None` charges nothing and reads no limit.
    pub cost: Option<Cost<'a>>,
    /// Whether the request holds a slot of the key's `max_in_flight` while
    /// it is answered (a forwarded request; not `/whoami` or the verify API).
    pub hold: bool,
}

impl<'a> Ask<'a> {
    /// What a request from `client_ip` with `token` asks: its route's
    /// permission and cost (`None`: keygate's own `/whoami`, which costs 1).
    pub fn request(config: &Config, route: Option<&'a Route>, client_ip: IpAddr, token: &'a str) -> Ask<'a> {
        Ask {
            token,
            permission: route.and_then(|r| r.permission.as_deref()),
            client_ip: Some(client_ip),
            cost: Some(Cost::of(config, route)),
            hold: route.is_some(),
        }
    }
}

/// A charge against the key's windows and credits.
#[derive(Debug, Clone, Copy)]
pub struct Cost<'a> {
    pub units: u32,
    /// A route's own per-minute limit: its pattern and limit.
    pub route_limit: Option<(&'a str, u32)>,
    pub on_redis_error: RedisErrorPolicy,
}

impl<'a> Cost<'a> {
    /// What a request on `route` is charged (`None`: keygate's own
    /// `/whoami`, which costs 1).
    pub fn of(config: &Config, route: Option<&'a Route>) -> Cost<'a> {
        Cost {
            units: route.map_or(1, |r| r.cost),
            route_limit: route.and_then(|r| Some((r.pattern.as_str(), r.per_minute?))),
            on_redis_error: route.and_then(|r| r.on_redis_error).unwrap_or(config.rate_limit.on_redis_error),
        }
    }
}

/// Where a decision reads keys and roles.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// The node's caches, kept current by the change feed: requests.
    Cached(&'a App),
    /// The store itself, so a change made a moment ago is seen: the verify
    /// API and the CLI.
    Store(&'a dyn Records),
}

/// A running node's limiter, credits and usage counts: what a charge
/// takes from and is counted in.
#[derive(Clone, Copy)]
pub struct Live<'a> {
    pub limiter: &'a Limiter,
    pub credits: &'a Credits,
    pub metrics: &'a Metrics,
    pub usage: &'a crate::cache::UsageRecorder,
    /// Where thresholds a charge crosses are told (none in the CLI, which
    /// charges nothing).
    pub notices: Option<&'a Notices>,
    /// The node's in-flight slots (none in the CLI, which forwards nothing).
    pub in_flight: Option<&'a Arc<InFlight>>,
}

impl<'a> Live<'a> {
    /// The node's own.
    pub fn of(app: &'a App) -> Live<'a> {
        Live {
            limiter: &app.limiter,
            credits: &app.credits,
            metrics: &app.metrics,
            usage: &app.usage,
            notices: Some(&app.notices),
            in_flight: Some(&app.in_flight),
        }
    }
}

/// What a decision reads from and charges to.
#[derive(Clone, Copy)]
pub struct Means<'a> {
    pub config: &'a Config,
    pub keys: KeySource<'a>,
    /// `None` where no gateway runs (the CLI): nothing can be charged.
    pub live: Option<Live<'a>>,
    /// Where credit balances are leased from.
    pub ledger: &'a dyn CreditLedger,
}

impl<'a> Means<'a> {
    /// A node deciding its own requests.
    pub fn node(app: &'a App, config: &'a Config) -> Means<'a> {
        Means { config, keys: KeySource::Cached(app), live: Some(Live::of(app)), ledger: app.store.as_ref() }
    }
}

/// What was decided.
#[derive(Debug, Default)]
pub struct Decision {
    /// The key, once the token is known and its secret current.
    pub found: Option<Arc<KeyLookup>>,
    /// Why the key may not do what was asked; `None`: it may.
    pub refusal: Option<GatewayError>,
    /// What the rate-limit fields describe: the tightest window of the
    /// charge, or of a look at the windows (taking nothing) when an earlier
    /// step refused.
    pub rate: Option<RateView>,
    /// The credits' answer, when the charge reached them.
    pub credits: Option<CreditDecision>,
    /// The request's slot among the key's requests in flight, held until
    /// it is dropped (with the answer's body).
    pub slot: Option<Slot>,
    /// Whether the limits were charged (not only looked at): then a
    /// refusal is theirs.
    pub charged: bool,
    /// The key's role as the store holds it, when the store is the source
    /// (the verify API lists its permissions; boxed: requests never read it).
    pub role: Option<Box<Role>>,
    /// The store call that failed, when the refusal is `store_unavailable`
    /// (boxed: rare, and every decision would carry it).
    pub failure: Option<Box<(&'static str, StoreError)>>,
}

impl Decision {
    fn refuse(&mut self, found: Option<Arc<KeyLookup>>, refusal: GatewayError) {
        self.found = found;
        self.refusal = Some(refusal);
    }

    fn fail(&mut self, operation: &'static str, e: StoreError) {
        self.refuse(None, GatewayError::StoreUnavailable);
        self.failure = Some(Box::new((operation, e)));
    }
}

/// Steps 5 to 9 for the asking token, written into `out` (which starts
/// empty). One async function over small plain ones, writing where the
/// caller keeps the answer: each nested future, and each move of the
/// answer, would cost every request.
pub async fn decide(means: &Means<'_>, ask: &Ask<'_>, now: Moment, out: &mut Decision) {
    // 5. the key: its shape, then the cache or the store
    if !token::shape(ask.token, &means.config.keys.brand).may_be_known() {
        return out.refuse(None, GatewayError::InvalidKey);
    }
    let found = match means.keys {
        KeySource::Cached(app) => counted(app, app.cache.resolve(ask.token, app.store.as_ref(), now.at).await),
        KeySource::Store(store) => store.key_by_hash(&TokenHash::of(ask.token)).await.map(|found| found.map(Arc::new)),
    };
    let found = match found {
        Ok(Some(found)) => found,
        Ok(None) => return out.refuse(None, GatewayError::InvalidKey),
        Err(e) => return out.fail("key_by_hash", e),
    };
    // 6. status, expiry, environment
    let state = GatewayError::of_state(found.state(now.unix(), means.config.server.environment));
    if let Some(GatewayError::InvalidKey) = state {
        // A rotated-out secret past its grace is as unknown as any other.
        return out.refuse(None, GatewayError::InvalidKey);
    }
    // From the store, the role is read once, for the permission and the
    // verify API's list alike (the node's caches hold every role).
    if let (KeySource::Store(store), Some(id)) = (means.keys, found.key.role.as_deref()) {
        match store.get_role(id).await {
            Ok(role) => out.role = role.map(Box::new),
            Err(e) => return out.fail("get_role", e),
        }
    }
    if let Some(refusal) = state {
        return out.refuse(Some(found), refusal);
    }
    // 7, 8. the address and the permission
    out.refusal = admits(means, &found.key, ask, out.role.as_deref());
    out.found = Some(found);
    // 9. requests in flight, then limits, quotas, credits
    if let Some(cost) = &ask.cost {
        let in_flight = out.found.as_ref().filter(|_| ask.hold && out.refusal.is_none());
        if let Some((limit, _)) = in_flight.and_then(|f| means.config.in_flight_for(&f.key)) {
            hold(out, means, limit, cost.on_redis_error).await;
        }
        charge(out, means, cost, now).await;
    }
}

/// Step 9, first: a slot among the requests of the key (or its owner) in
/// flight, when a `max_in_flight` applies to it; taken before the charge,
/// so a request refused for it takes nothing from the windows.
async fn hold(out: &mut Decision, means: &Means<'_>, limit: u32, on_error: RedisErrorPolicy) {
    let (Some(found), Some(in_flight)) = (out.found.as_ref(), means.live.and_then(|l| l.in_flight)) else { return };
    let config = means.config;
    let subject = meter::subject_of(config.rate_limit.scope, &found.key);
    let admission = if in_flight.is_local() {
        in_flight.acquire_local(&subject, limit)
    } else {
        let ask = SlotAsk {
            subject: &subject,
            limit,
            ttl_ms: config.rate_limit.slot_ttl.as_millis() as u64,
            on_error,
            nodes: config.rate_limit.nodes_hint.get(),
        };
        // Boxed: only a shared limit waits, and every request's future
        // would otherwise carry this call's state.
        Box::pin(in_flight.acquire(ask)).await
    };
    match admission {
        Admission::Held(slot) => out.slot = Some(slot),
        Admission::Full => out.refusal = Some(GatewayError::TooManyInFlight),
        Admission::Unheld => {}
    }
}

/// The cache's answer, counted.
#[inline]
fn counted(
    app: &App,
    answer: Result<(Option<Arc<KeyLookup>>, Origin), StoreError>,
) -> Result<Option<Arc<KeyLookup>>, StoreError> {
    match &answer {
        Ok((_, Origin::Cache)) => app.metrics.cache_hits.inc(),
        Ok((_, Origin::Store)) | Err(_) => app.metrics.cache_misses.inc(),
        Ok((_, Origin::Stale)) => {
            app.metrics.cache_misses.inc();
            app.metrics.store_errors.with_label_values(&["key_by_hash"]).inc();
        }
    }
    answer.map(|(found, _)| found)
}

/// Steps 7 and 8: the caller's address and the permission, with the key's
/// role as the store holds it when the store is the source.
#[inline]
fn admits(means: &Means<'_>, key: &ApiKey, ask: &Ask<'_>, stored_role: Option<&Role>) -> Option<GatewayError> {
    if ask.client_ip.is_some_and(|client| !ip::allowed(client, &key.allowed_ips)) {
        return Some(GatewayError::IpBlocked);
    }
    let required = ask.permission?;
    let permitted = match means.keys {
        KeySource::Cached(app) => app.roles.permits(key, required),
        KeySource::Store(_) => {
            let of_role = stored_role.into_iter().flat_map(|r| r.permissions.iter());
            permissions::permits(key.permissions.iter().chain(of_role), required)
        }
    };
    (!permitted).then(|| GatewayError::InsufficientPermissions { required: required.to_string() })
}

/// The counters a key's charge names, kept while the charge borrows them.
struct Counters<'k> {
    subject: Cow<'k, str>,
    /// Only a route with its own limit has a counter (its id is made per request).
    route: Option<(String, u32)>,
}

impl<'k> Counters<'k> {
    #[inline]
    fn of(config: &Config, key: &'k ApiKey, route_limit: Option<(&str, u32)>) -> Counters<'k> {
        let subject = meter::subject_of(config.rate_limit.scope, key);
        let route = route_limit.map(|(pattern, limit)| (meter::route_counter_id(&subject, pattern), limit));
        Counters { subject, route }
    }

    fn charge<'c>(&'c self, config: &Config, key: &'c ApiKey, units: u32) -> Charge<'c> {
        Charge {
            key_id: &key.key_id,
            subject: &self.subject,
            route: self.route.as_ref().map(|(id, limit)| (id.as_str(), *limit)),
            limits: config.limits_for(key),
            credits: key.credits.as_ref(),
            cost: units,
            algorithm: config.rate_limit.algorithm,
        }
    }
}

/// Step 9: the charge, or only a look at the windows when an earlier step
/// refused. A charge is counted in usage, admitted or refused.
async fn charge(out: &mut Decision, means: &Means<'_>, cost: &Cost<'_>, now: Moment) {
    let (Some(found), Some(live)) = (out.found.as_ref(), means.live) else { return };
    let key = &found.key;
    let counters = Counters::of(means.config, key, cost.route_limit);
    let charge = counters.charge(means.config, key, cost.units);
    if out.refusal.is_some() {
        out.rate = meter::peek(live.limiter, &charge, now.unix_ms).view();
        return;
    }
    let metered = match meter::charge_ready(live.limiter, &charge, now.unix_ms) {
        meter::Progress::Done(m) => m,
        meter::Progress::Wait(m, from) => {
            let credits = (live.credits, means.ledger);
            let rest =
                meter::charge_rest(live.limiter, credits, &charge, (m, from), now.unix_ms, cost.on_redis_error, live.metrics);
            // Boxed: most requests never get here, and every request's
            // future would otherwise carry this one's state.
            match Box::pin(rest).await {
                Ok(m) => m,
                // Credits that cannot be read cannot be spent.
                Err(e) => {
                    out.refusal = Some(GatewayError::StoreUnavailable);
                    out.failure = Some(Box::new(("credit_balance", e)));
                    return;
                }
            }
        }
    };
    out.refusal = GatewayError::of_metered(&metered);
    out.charged = true;
    if out.refusal.is_some() {
        live.metrics.ratelimit_denied.inc();
        live.usage.refused(&key.key_id, &key.owner, now.unix());
    } else {
        live.metrics.ratelimit_allowed.inc();
        live.usage.record(&key.key_id, &key.owner, now.unix(), cost.units);
    }
    out.rate = metered.view();
    out.credits = metered.credits;
    let lowest = means.config.events.quota_thresholds.first().copied().unwrap_or(u8::MAX);
    if let (true, Some(notices)) = (metered.may_cross(lowest), live.notices) {
        notice(notices, means.config, key, &metered, cost.units, now.unix_ms);
    }
}

/// What the upstream said an admitted request cost, against what was
/// charged up front: the difference is settled in every window and the
/// credits the charge took from (more is counted whatever the limit, so
/// the next request is refused; less is given back), and in usage.
pub async fn settle(live: Live<'_>, means: (&Config, &dyn CreditLedger), key: &ApiKey, cost: &Cost<'_>, real: u32, now: Moment) {
    let (config, ledger) = means;
    let delta = i64::from(real) - i64::from(cost.units);
    if delta == 0 {
        return;
    }
    let counters = Counters::of(config, key, cost.route_limit);
    let charge = counters.charge(config, key, cost.units);
    if let Err(e) = meter::settle(live.limiter, (live.credits, ledger), &charge, delta, now.unix_ms).await {
        live.metrics.store_errors.with_label_values(&["settle_credits"]).inc();
        tracing::warn!(key_id = %key.key_id, error = %e, "could not settle a reported cost against the credits");
    }
    live.usage.settle(&key.key_id, &key.owner, now.unix(), delta);
}

/// Tells the quota thresholds and credit marks an admitted charge
/// crossed. Each event's id names its window (or refill period), so that
/// however many nodes see the crossing, the outbox keeps it once.
#[cold]
fn notice(notices: &Notices, config: &Config, key: &ApiKey, metered: &Metered, units: u32, now_ms: i64) {
    let event = |id: String, kind: EventKind, name: &str, data: serde_json::Value| {
        let event = NewEvent::with_id(id, kind, &key.key_id, now_ms, events::key_data(key, now_ms, Some((name, data))));
        if !notices.send(event) {
            tracing::warn!(key_id = %key.key_id, kind = kind.as_str(), "the event queue is full: an event was dropped");
        }
    };
    metered.crossings(units, &config.events.quota_thresholds, |c| {
        let id = format!("evt_quota_{}_{}_{}_{}", key.key_id, c.policy.name(), c.policy.period().index(now_ms), c.percent);
        let data = serde_json::json!({
            "window": c.policy.name(),
            "threshold": c.percent,
            "used": c.used,
            "limit": c.limit,
            "resetsAt": crate::clock::rfc3339(c.reset_at),
        });
        event(id, EventKind::QuotaThreshold, "quota", data);
    });
    let Some(terms) = &key.credits else { return };
    let refill = terms.refill().map(|(amount, _)| amount);
    let Some(told) = metered.credit_notice(units, config.events.credits_low.bound(refill)) else { return };
    // Once per refill period; without a refill, at most once a day.
    let period = match crate::ratelimit::credits::due(terms, now_ms) {
        (Some(_), period) => period,
        (None, _) => crate::clock::Period::Day.index(now_ms),
    };
    match told {
        CreditNotice::Low { remaining, below } => {
            let id = format!("evt_credits_low_{}_{period}", key.key_id);
            event(id, EventKind::CreditsLow, "credits", serde_json::json!({ "remaining": remaining, "below": below }));
        }
        CreditNotice::Exhausted { remaining } => {
            let id = format!("evt_credits_exhausted_{}_{period}", key.key_id);
            event(id, EventKind::CreditsExhausted, "credits", serde_json::json!({ "remaining": remaining }));
        }
    }
}

/// Whether `refusal` comes from a rule only tried, not enforced: a key, a
/// route, a plan or `[rate_limit]` in shadow mode. Such a request goes on,
/// telling the upstream what would have refused it. What is wrong with
/// the key itself (unknown, disabled, expired, other environment) or the
/// caller's address is never shadowed: those are not rules being tried.
pub fn shadowed(config: &Config, route: Option<&Route>, key: &ApiKey, refusal: &GatewayError, rate: Option<&RateView>) -> bool {
    let on_route = route.is_some_and(|r| r.shadow);
    match refusal {
        // A key in shadow mode tries its own rules: permissions, allowlist, limits.
        GatewayError::InsufficientPermissions { .. }
        | GatewayError::IpBlocked
        | GatewayError::RateLimited { .. }
        | GatewayError::QuotaExceeded { .. }
        | GatewayError::CreditsExhausted { .. }
        | GatewayError::TooManyInFlight
            if key.shadow =>
        {
            true
        }
        GatewayError::InsufficientPermissions { .. } => on_route,
        GatewayError::TooManyInFlight => {
            on_route || config.rate_limit.shadow || config.in_flight_for(key).is_some_and(|(_, plan_shadow)| plan_shadow)
        }
        GatewayError::RateLimited { .. } | GatewayError::QuotaExceeded { .. } if on_route || config.rate_limit.shadow => true,
        GatewayError::CreditsExhausted { .. } => on_route || config.rate_limit.shadow,
        GatewayError::RateLimited { .. } | GatewayError::QuotaExceeded { .. } => {
            rate.is_some_and(|view| plan_sets(config, key, view.policy))
        }
        _ => false,
    }
}

/// Whether the window of `policy` is the key's plan's, and the plan is in
/// shadow mode (a key's own limit overrides its plan's, and is enforced).
fn plan_sets(config: &Config, key: &ApiKey, policy: meter::Policy) -> bool {
    let Some(plan) = key.plan.as_deref().and_then(|p| config.plans.get(p)).filter(|p| p.shadow) else { return false };
    let (own, plans) = match policy {
        meter::Policy::Minute => (key.rate_limit.is_some(), plan.per_minute.is_some()),
        meter::Policy::Hour => (key.quota.per_hour.is_some(), plan.quota.per_hour.is_some()),
        meter::Policy::Day => (key.quota.per_day.is_some(), plan.quota.per_day.is_some()),
        meter::Policy::Month => (key.quota.per_month.is_some(), plan.quota.per_month.is_some()),
        meter::Policy::Route => return false,
    };
    !own && plans
}

/// The verdict a request of `units` by `key` would get now, taking
/// nothing; `credits` is the balance and the seconds to its next refill.
pub fn verdict_now(config: &Config, live: Live<'_>, key: &ApiKey, units: u32, credits: Option<(i64, Option<u64>)>) -> Metered {
    let counters = Counters::of(config, key, None);
    meter::verdict_now(live.limiter, &counters.charge(config, key, units), crate::clock::now_ms(), credits)
}
