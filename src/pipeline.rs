//! The request path, top to bottom. Each step is a small function in the
//! module of its concern; this file only puts them in the contract's order
//! (docs/interface.md, "The request path") and turns the outcome into a response.
//!
//! 1. accept (in `server`)  2. normalise the path  3. match a route, or
//!    answer a browser's preflight under `[cors]`
//! 4. extract the credential  5. resolve the key  6. status, expiry, env
//! 7. IP allowlist  8. permission  9. rate limit  10. forward

use crate::body::Body;
use crate::cache::Origin;
use crate::clock::{self, Moment};
use crate::config::Config;
use crate::config::Underscores;
use crate::correlation;
use crate::credentials::{self, CredentialError};
use crate::error::{json_response, GatewayError};
use crate::http1::{BodyOutcome, Reply};
use crate::keys::model::{ApiKey, KeyLookup};
use crate::keys::token::{self, TokenHash};
use crate::policy::routes::Route;
use crate::policy::{cors, ip, path};
use crate::proxy::headers;
use crate::proxy::outgoing::Outgoing;
use crate::proxy::{self, body::GuardedBody};
use crate::ratelimit::meter::{self, Charge, RateView};
use crate::ratelimit::RateHeaders;
use crate::state::{App, Runtime};
use crate::telemetry::RequestSpan;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Served by keygate itself on the data listener.
pub const WHOAMI_PATH: &str = "/whoami";

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The worker thread serving the connection (picks its upstream pool).
    pub worker: usize,
    /// The peer address as an `X-Forwarded-For` entry.
    pub peer_header: HeaderValue,
}

impl ConnInfo {
    /// Facts about a connection from `peer`, served by `worker`.
    pub fn new(peer: SocketAddr, tls: bool, worker: usize) -> ConnInfo {
        ConnInfo { peer, tls, worker, peer_header: headers::peer_value(peer.ip()) }
    }
}

/// Which route answered, as cheap to record as an index.
#[derive(Default, Clone, Copy, PartialEq, Eq, Hash)]
enum RouteLabel {
    #[default]
    None,
    Whoami,
    Route(usize),
}

/// What the access log and metrics learn while a request goes through.
#[derive(Default)]
pub struct Trace {
    route: RouteLabel,
    /// The resolved key (for its id in the access log), shared, not copied.
    key: Option<Arc<KeyLookup>>,
    /// The rate-limit state to report in `X-RateLimit-*` headers.
    pub rate: Option<RateView>,
    /// Which upstream was asked, when, and when its answer came.
    upstream: Option<UpstreamTiming>,
    /// Set when the request was answered without a key (public route) or
    /// by keygate itself (`/whoami`): the `outcome` label.
    served_as: Option<&'static str>,
    /// The request's `X-Request-Id`, forwarded and returned.
    request_id: Option<correlation::RequestId>,
    /// Its spans, when `[tracing]` exports them.
    span: Option<Box<RequestSpan>>,
    /// The client's valid trace context and its state (boxed: most
    /// requests carry none, and every request's future holds the field).
    context: Option<Box<(correlation::TraceParent, Option<HeaderValue>)>>,
}

/// A forwarded request's exchange with its upstream.
#[derive(Clone, Copy)]
struct UpstreamTiming {
    index: usize,
    sent: Instant,
    answered: Instant,
}

impl UpstreamTiming {
    fn took(&self) -> Duration {
        self.answered.saturating_duration_since(self.sent)
    }
}

/// Handles one request from start to response.
pub async fn handle(app: Arc<App>, req: Request<Body>, conn: ConnInfo) -> Reply {
    let arrived = Moment::now();
    let rt = app.runtime.load_full();
    // Split once; every step below borrows the head. (Passed by value, it
    // would be copied into each step's future.)
    let (head, body) = req.into_parts();
    let mut trace = traced(&app, &rt.config, &head, &conn, arrived);
    let result = run(&app, &rt, (&head, body), &conn, arrived, &mut trace).await;
    let (outcome, code) = match &result {
        Ok(_) => (trace.served_as.unwrap_or("forwarded"), "none"),
        Err(e) => (e.outcome(), e.code()),
    };
    // A body refused for its size or pace is not read on: the connection
    // closes after the answer.
    let body = match &result {
        Err(GatewayError::PayloadTooLarge | GatewayError::RequestTimeout) => BodyOutcome::Refused,
        _ => BodyOutcome::Complete,
    };
    let mut reply = result.unwrap_or_else(|e| e.to_response_for(trace.request_id.as_ref()).into());
    reply.body = body;
    // The request's id is keygate's to give: an upstream's own goes.
    reply.upstream.remove_request_id();
    if let Some(policy) = cors_policy(&rt.config, &trace) {
        // keygate speaks for the route: an upstream's own CORS fields go.
        reply.upstream.remove_prefixed(b"access-control-");
        for (name, value) in policy.actual(head.headers.get(header::ORIGIN)) {
            reply.response.headers_mut().append(name, value);
        }
    }
    if let Some(view) = trace.rate {
        let headers = RateHeaders { view, now_ms: arrived.unix_ms, ietf: rt.config.rate_limit.ietf_headers };
        reply.extra = headers.fields();
    }
    // A forwarded request's time ends with the upstream's answer, read then.
    let elapsed = trace.upstream.map_or_else(Instant::now, |u| u.answered).saturating_duration_since(arrived.at);
    record(&app, &rt, &head.method, reply.response.status(), &trace, (outcome, code), elapsed);
    if let Some(span) = trace.span.take() {
        end_span(*span, &rt, &head.method, reply.response.status(), &trace, (outcome, code));
    }
    if let Some(id) = trace.request_id.take() {
        // With the upstream's fields: no header map is filled for it.
        reply.upstream.push(b"X-Request-Id", id.as_bytes());
    }
    reply
}

/// A request's trace, started with what it carries (its id and trace
/// context) and, with `[tracing]`, its span. Out of line, so what it reads
/// is not kept in every request's future.
fn traced(app: &App, cfg: &Config, head: &Parts, conn: &ConnInfo, arrived: Moment) -> Trace {
    let incoming = correlation::Incoming::of(&head.headers);
    let span = app.telemetry.as_ref().map(|t| {
        // A caller's sampling decision is believed from a trusted proxy only.
        let believed = ip::believes_forwarded_for(conn.peer.ip(), &cfg.server.trusted_proxies);
        Box::new(t.request_span(arrived.system(), incoming.parent.as_ref(), incoming.state.as_ref(), believed))
    });
    Trace {
        request_id: Some(incoming.request_id),
        span,
        context: incoming.parent.map(|p| Box::new((p, incoming.state))),
        ..Trace::default()
    }
}

async fn run(
    app: &App,
    rt: &Runtime,
    (head, body): (&Parts, Body),
    conn: &ConnInfo,
    now: Moment,
    trace: &mut Trace,
) -> Result<Reply, GatewayError> {
    let cfg = &rt.config;
    // 2. normalise
    let path = path::normalise(head.uri.path()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    if cfg.server.underscore_headers == Underscores::Reject {
        headers::refuse_underscores(&head.headers).map_err(GatewayError::BadRequest)?;
    }
    // 3a. a browser's preflight for a route under `[cors]`: keygate's to
    // answer (it carries no key, and the backend never sees it).
    if let Some(pre) = cors::Preflight::of(&head.method, &head.headers) {
        // `/whoami` is keygate's own route, under `[cors]` as every route is by default.
        let governed = if path == WHOAMI_PATH && (pre.method == Method::GET || pre.method == Method::HEAD) {
            Some(RouteLabel::Whoami)
        } else {
            cfg.routes.find(&pre.method, &path).filter(|(_, r)| r.cors).map(|(index, _)| RouteLabel::Route(index))
        };
        if let (Some(policy), Some(label)) = (&cfg.cors, governed) {
            trace.route = label;
            trace.served_as = Some(PREFLIGHT);
            return policy.preflight(&pre).map(preflight_answer).map_err(|r| GatewayError::CorsRefused(r.to_string()));
        }
    }
    let client_ip = ip::client_ip(conn.peer.ip(), &head.headers, &cfg.server.trusted_proxies);
    if path == WHOAMI_PATH && (head.method == Method::GET || head.method == Method::HEAD) {
        trace.route = RouteLabel::Whoami;
        trace.served_as = Some("whoami");
        let key = authorise(app, cfg, head, client_ip, None, now, trace).await?;
        return Ok(whoami(app, cfg, &key.key, trace.rate.as_ref()).into());
    }
    // 3. route
    let (index, route) = cfg.routes.find(&head.method, &path).ok_or(GatewayError::NoRoute)?;
    trace.route = RouteLabel::Route(index);
    check_declared_length(&body, cfg)?;
    if route.public {
        trace.served_as = Some("public");
        return forward(rt, route, head, body, &path, conn, None, trace).await;
    }
    // 4-9. authenticate and authorise
    let key = authorise(app, cfg, head, client_ip, Some(route), now, trace).await?;
    // 10. forward
    forward(rt, route, head, body, &path, conn, Some(&key), trace).await
}

/// Steps 4 to 9: the key, its state, its IP allowlist, its permission, its
/// quota. Public so the benchmarks can time the whole decision without a socket.
pub async fn authorise(
    app: &App,
    cfg: &Config,
    head: &Parts,
    client_ip: IpAddr,
    route: Option<&Route>,
    now: Moment,
    trace: &mut Trace,
) -> Result<Arc<KeyLookup>, GatewayError> {
    let permission = route.and_then(|r| r.permission.as_deref());
    let on_redis_error = route.and_then(|r| r.on_redis_error).unwrap_or(cfg.rate_limit.on_redis_error);
    // 4. credential
    let credential = credentials::extract(&head.headers, head.uri.query())
        .map_err(|e| match e {
            CredentialError::Malformed(m) => GatewayError::BadRequest(m.into()),
            CredentialError::Ambiguous => GatewayError::AmbiguousCredentials,
        })?
        .ok_or(GatewayError::MissingKey)?;
    // 5. resolve
    let found = resolve(app, cfg, &credential.token, now.at).await?;
    let key = &found.key;
    if let Some(span) = trace.span.as_mut() {
        span.event("key resolved", SystemTime::now(), vec![KeyValue::new("keygate.key_id", key.key_id.clone())]);
    }
    // 6. status, expiry, environment
    let now_ms = now.unix_ms;
    if let Some(refusal) = GatewayError::of_state(found.state(now.unix(), cfg.server.environment)) {
        return Err(refusal);
    }
    trace.key = Some(Arc::clone(&found));
    let subject = meter::subject_of(cfg.rate_limit.scope, key);
    // Only a route with its own limit has a counter (its id is made per request).
    let route_counter = route.and_then(|r| r.per_minute.map(|limit| (meter::route_counter_id(&subject, &r.pattern), limit)));
    let charge = Charge {
        key_id: &key.key_id,
        subject: &subject,
        route: route_counter.as_ref().map(|(id, limit)| (id.as_str(), *limit)),
        limits: cfg.limits_for(key),
        credits: key.credits.as_ref(),
        cost: route.map_or(1, |r| r.cost),
        algorithm: cfg.rate_limit.algorithm,
    };
    // 7. IP allowlist
    if !ip::allowed(client_ip, &key.allowed_ips) {
        trace.rate = meter::peek(&app.limiter, &charge, now_ms).view();
        return Err(GatewayError::IpBlocked);
    }
    // 8. permission
    if let Some(required) = permission {
        if !app.roles.permits(key, required) {
            trace.rate = meter::peek(&app.limiter, &charge, now_ms).view();
            return Err(GatewayError::InsufficientPermissions { required: required.to_string() });
        }
    }
    // 9. rate limits, quotas and credits
    let metered = match meter::charge_ready(&app.limiter, &charge, now_ms) {
        meter::Progress::Done(m) => m,
        meter::Progress::Wait(m, from) => {
            let credits = (&app.credits, app.store.as_ref());
            // Boxed: most requests never get here, and every request's
            // future would otherwise carry this one's state.
            let rest = meter::charge_rest(&app.limiter, credits, &charge, (m, from), now_ms, on_redis_error, &app.metrics);
            match Box::pin(rest).await {
                Ok(m) => m,
                Err(e) => {
                    // Credits that cannot be read cannot be spent.
                    app.note_store_error("credit_balance", &e);
                    return Err(GatewayError::StoreUnavailable);
                }
            }
        }
    };
    trace.rate = metered.view();
    if let (Some(span), Some(view)) = (trace.span.as_mut(), trace.rate.as_ref()) {
        let attributes = vec![
            KeyValue::new("keygate.ratelimit.allowed", metered.refused.is_none()),
            KeyValue::new("keygate.ratelimit.remaining", i64::from(view.decision.remaining)),
            KeyValue::new("keygate.ratelimit.policy", view.policy.name()),
        ];
        span.event("rate limit", SystemTime::now(), attributes);
    }
    if let Some(refusal) = GatewayError::of_metered(&metered) {
        app.metrics.ratelimit_denied.inc();
        app.usage.refused(&key.key_id, &key.owner, now.unix());
        return Err(refusal);
    }
    app.metrics.ratelimit_allowed.inc();
    app.usage.record(&key.key_id, &key.owner, now.unix());
    Ok(found)
}

/// Step 5: token shape, then cache, then store.
async fn resolve(app: &App, cfg: &Config, token: &str, now: Instant) -> Result<Arc<KeyLookup>, GatewayError> {
    if !token::shape(token, &cfg.keys.brand).may_be_known() {
        return Err(GatewayError::InvalidKey);
    }
    let hash = TokenHash::of(token);
    match app.cache.resolve(&hash, app.store.as_ref(), now).await {
        Ok((found, origin)) => {
            match origin {
                Origin::Cache => app.metrics.cache_hits.inc(),
                Origin::Store => app.metrics.cache_misses.inc(),
                Origin::Stale => {
                    app.metrics.cache_misses.inc();
                    app.metrics.store_errors.with_label_values(&["key_by_hash"]).inc();
                }
            }
            found.ok_or(GatewayError::InvalidKey)
        }
        Err(e) => {
            app.metrics.cache_misses.inc();
            app.note_store_error("key_by_hash", &e);
            Err(GatewayError::StoreUnavailable)
        }
    }
}

/// Refuses up front a body whose declared length is over the cap. Both
/// servers give a body its `Content-Length` as an exact size hint (already
/// checked against every other framing field), so no header is read again.
fn check_declared_length(body: &Body, cfg: &Config) -> Result<(), GatewayError> {
    match http_body::Body::size_hint(body).exact() {
        Some(n) if n > cfg.server.max_body_bytes => Err(GatewayError::PayloadTooLarge),
        _ => Ok(()),
    }
}

/// Step 10: rewrite the request for the upstream and send it.
#[allow(clippy::too_many_arguments)]
async fn forward(
    rt: &Runtime,
    route: &Route,
    head: &Parts,
    body: Body,
    path: &str,
    conn: &ConnInfo,
    key: Option<&KeyLookup>,
    trace: &mut Trace,
) -> Result<Reply, GatewayError> {
    let cfg = &rt.config;
    let upstream = cfg.upstream(route.upstream).ok_or(GatewayError::UpstreamUnavailable)?;
    let query = head.uri.query().and_then(|q| credentials::forwarded_query(q, key.is_some()));
    let host = head
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| head.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let target = proxy::upstream_target(upstream, path, query.as_deref())?;
    // Hop-by-hop, framing, client-sent X-Keygate-*, address claims,
    // overrides and (for keyed routes) credential headers stay behind
    // (`headers::fate`); forwarding and identity headers are added.
    let mut out = Outgoing::new(&head.method, target, &head.headers, key.is_some(), cfg.server.underscore_headers);
    let believed = ip::believes_forwarded_for(conn.peer.ip(), &cfg.server.trusted_proxies);
    out.set_forwarded(&conn.peer_header, conn.tls, host, believed);
    // Borrowed by the outgoing head while it is sent, then put back.
    let request_id = trace.request_id.take();
    if let Some(id) = &request_id {
        // With spans exported, the upstream's parent is keygate's span for
        // the exchange; otherwise the client's context goes on as it came.
        let state = trace.context.as_ref().and_then(|c| c.1.clone());
        let traceparent = match trace.span.as_mut() {
            Some(span) => Some(span.start_upstream(&upstream.name, SystemTime::now())),
            None => trace.context.as_ref().map(|c| c.0.value()),
        };
        out.set_correlation(id, traceparent.map(|t| (t, state)));
    }
    if let Some(key) = key {
        out.set_identity(headers::identity_lines(key));
    }
    // A request without a body (most GETs) needs no size or pause guard.
    let body = if http_body::Body::is_end_stream(&body) {
        crate::body::empty()
    } else {
        GuardedBody::new(body, cfg.server.max_body_bytes, cfg.server.body_read_timeout).boxed()
    };
    let sent = Instant::now();
    let result = rt.forwarder.send(conn.worker, route.upstream, upstream, &mut out, body, sent).await;
    drop(out);
    trace.request_id = request_id;
    trace.upstream = Some(UpstreamTiming { index: route.upstream, sent, answered: Instant::now() });
    if let Some(span) = trace.span.as_mut() {
        span.end_upstream(SystemTime::now(), result.as_ref().ok().map(|r| r.response.status().as_u16()));
    }
    // Hop-by-hop response headers never got past the HTTP/1.1 client.
    result.map(Reply::from)
}

/// The `outcome` of a preflight keygate answered.
const PREFLIGHT: &str = "preflight";

/// 204 with the preflight's fields.
fn preflight_answer(fields: cors::Fields) -> Reply {
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().extend(fields);
    resp.into()
}

/// `[cors]`, when it governs the route that answered (and the answer was
/// not a preflight, which carries its fields already).
fn cors_policy<'a>(cfg: &'a Config, trace: &Trace) -> Option<&'a cors::CorsPolicy> {
    let governed = match trace.route {
        RouteLabel::Route(i) => cfg.routes.routes().get(i).is_some_and(|r| r.cors),
        RouteLabel::Whoami => true,
        _ => false,
    };
    cfg.cors.as_ref().filter(|_| governed && trace.served_as != Some(PREFLIGHT))
}

/// `GET /whoami`: what the presented key is and may do.
fn whoami(app: &App, cfg: &Config, key: &ApiKey, rate: Option<&RateView>) -> Response<Body> {
    let data = serde_json::json!({
        "keyId": key.key_id,
        "name": key.name,
        "owner": key.owner,
        "role": key.role,
        "permissions": app.roles.effective_permissions(key),
        "env": key.env.as_str(),
        "rateLimit": cfg.limit_for(key.rate_limit, key.plan.as_deref()),
        "remaining": rate.map(|r| r.decision.remaining),
        "allowedIps": key.allowed_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "expiresAt": key.expires_at.map(clock::rfc3339),
    });
    json_response(StatusCode::OK, &serde_json::json!({ "success": true, "data": data }))
}

/// Metrics and the access log line (key id, never the token).
fn record(
    app: &App,
    rt: &Runtime,
    method: &Method,
    status: StatusCode,
    trace: &Trace,
    (outcome, code): (&'static str, &'static str),
    elapsed: Duration,
) {
    let route = route_label(rt, trace);
    rt.count_request(&app.metrics, (trace.route_index(), status.as_u16(), outcome, code), route);
    let upstream_time = trace.upstream.map(|u| u.took()).unwrap_or_default();
    app.metrics.gateway_latency.observe(elapsed.saturating_sub(upstream_time).as_secs_f64());
    if let Some(u) = trace.upstream {
        rt.observe_upstream(u.index, upstream_time);
    }
    tracing::info!(
        target: "keygate::access",
        method = %method,
        route,
        status = status.as_u16(),
        outcome,
        code,
        key_id = trace.key.as_ref().map_or("-", |k| k.key.key_id.as_str()),
        request_id = trace.request_id.as_ref().map_or("-", |id| id.as_str()),
        latency_us = elapsed.as_micros() as u64,
    );
}

/// The `route` label: the pattern that answered.
fn route_label<'a>(rt: &'a Runtime, trace: &Trace) -> &'a str {
    match trace.route {
        RouteLabel::None => "(none)",
        RouteLabel::Whoami => WHOAMI_PATH,
        RouteLabel::Route(i) => rt.config.routes.routes().get(i).map_or("(none)", |r| r.pattern.as_str()),
    }
}

/// Ends a request's span, named and labelled as its access line.
fn end_span(
    span: RequestSpan,
    rt: &Runtime,
    method: &Method,
    status: StatusCode,
    trace: &Trace,
    (outcome, code): (&'static str, &'static str),
) {
    let route = route_label(rt, trace);
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        KeyValue::new("keygate.outcome", outcome),
        KeyValue::new("keygate.code", code),
    ];
    if let Some(k) = &trace.key {
        attributes.push(KeyValue::new("keygate.key_id", k.key.key_id.clone()));
    }
    if let Some(id) = &trace.request_id {
        attributes.push(KeyValue::new("keygate.request_id", id.as_str().to_string()));
    }
    let name = match trace.route {
        RouteLabel::None => format!("{method} (no route)"),
        _ => route.to_string(),
    };
    span.end(name, SystemTime::now(), attributes, status.is_server_error());
}

impl Trace {
    /// A small number per route label, for the metrics cache.
    fn route_index(&self) -> usize {
        match self.route {
            RouteLabel::None => usize::MAX,
            RouteLabel::Whoami => usize::MAX - 1,
            RouteLabel::Route(i) => i,
        }
    }
}
