//! The request path, top to bottom, in five phases over one request
//! context ([`Ctx`]). Each step is a small function in the module of its
//! concern; this file only puts them in the contract's order
//! (docs/interface.md, "The request path") and turns the outcome into a
//! response.
//!
//! 1. `route`: normalise the path, refuse a denied address, answer a
//!    browser's preflight under `[cors]`, match `/whoami` or a route
//! 2. `authorise`: the credential, then [`decide`] (the key, its state,
//!    IP allowlist, permission, limits), shared with the verify API
//! 3. `forward`: rewrite the request for the upstream and send it
//! 4. `decorate`: the refusal's body, CORS and rate-limit fields
//! 5. `record`: metrics, the access line, the span

use crate::body::Body;
use crate::clock::{self, Moment};
use crate::config::{Config, Underscores, Upstream};
use crate::correlation;
use crate::credentials::{self, CredentialError};
use crate::decide::{self, decide, Ask, Decision, Means};
use crate::error::{json_response, GatewayError};
use crate::http1::{BodyOutcome, Reply};
use crate::keys::model::{ApiKey, KeyLookup};
use crate::policy::routes::Route;
use crate::policy::{cors, ip, path};
use crate::proxy::headers;
use crate::proxy::outgoing::Outgoing;
use crate::proxy::{self, body::GuardedBody};
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
    LeakReport,
    Route(usize),
}

/// What the answer, the access log and metrics learn while a request goes
/// through.
#[derive(Default)]
struct Trace {
    route: RouteLabel,
    /// What `decide` found: the key (for its id in the access log, shared,
    /// not copied) and the limits to report in the rate-limit fields.
    decision: Decision,
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
    /// The `outcome` and `code` labels, set when the answer is made.
    outcome: (&'static str, &'static str),
    /// The code a rule in shadow mode would have refused with: the request
    /// went on, and the upstream is told.
    shadow: Option<&'static str>,
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

/// One request on its way through: what every phase reads, and the trace
/// it leaves for the answer's fields, the metrics, the access line and the
/// span.
struct Ctx<'a> {
    app: &'a App,
    rt: &'a Runtime,
    head: &'a Parts,
    conn: &'a ConnInfo,
    arrived: Moment,
    trace: Trace,
    /// The client's address (after `trusted_proxies`), read once, when a
    /// phase first asks for it.
    client: Option<IpAddr>,
    /// A WebSocket handshake on a route that takes them.
    handshake: bool,
}

impl Ctx<'_> {
    fn client(&mut self) -> IpAddr {
        let (peer, headers, trusted) = (self.conn.peer.ip(), &self.head.headers, &self.rt.config.server.trusted_proxies);
        *self.client.get_or_insert_with(|| ip::client_ip(peer, headers, trusted))
    }
}

/// Handles one request from start to response, in five phases: `route`,
/// `authorise` (which calls [`decide`]), `forward`, `decorate`, `record`.
pub async fn handle(app: Arc<App>, req: Request<Body>, conn: ConnInfo) -> Reply {
    let arrived = Moment::now();
    let rt = app.runtime.load_full();
    // Split once; every phase borrows the head. (Passed by value, it would
    // be copied into each phase's future.)
    let (head, body) = req.into_parts();
    let mut cx =
        Ctx { app: &app, rt: &rt, head: &head, conn: &conn, arrived, trace: Trace::default(), client: None, handshake: false };
    start_trace(&mut cx);
    let answer = respond(&mut cx, body).await;
    let reply = decorate(&mut cx, answer);
    record(&mut cx, reply)
}

/// Starts a request's trace with what it carries (its id and trace
/// context) and, with `[tracing]`, its span. Out of line, so what it reads
/// is not kept in every request's future; in place, so no trace is made
/// twice.
fn start_trace(cx: &mut Ctx<'_>) {
    let incoming = correlation::Incoming::of(&cx.head.headers);
    cx.trace.span = cx.app.telemetry.as_ref().map(|t| {
        // A caller's sampling decision is believed from a trusted proxy only.
        let believed = ip::believes_forwarded_for(cx.conn.peer.ip(), &cx.rt.config.server.trusted_proxies);
        Box::new(t.request_span(cx.arrived.system(), incoming.parent.as_ref(), incoming.state.as_ref(), believed))
    });
    cx.trace.request_id = Some(incoming.request_id);
    cx.trace.context = incoming.parent.map(|p| Box::new((p, incoming.state)));
}

/// Where a request goes.
enum Routed<'r> {
    /// keygate answered it: a browser's preflight (rare: boxed).
    Answered(Box<Reply>),
    Whoami,
    /// A leak report from GitHub's secret scanning (`[leaks.github]`).
    LeakReport,
    Upstream(Target<'r>),
}

/// A route and the normalised path it matched.
struct Target<'r> {
    route: &'r Route,
    /// The normalised path: the request's own when it already was.
    path: std::borrow::Cow<'r, str>,
}

/// The phases that make the answer: route, authorise, forward.
async fn respond(cx: &mut Ctx<'_>, body: Body) -> Result<Reply, GatewayError> {
    // What is authorised: `/whoami` (no route) or a keyed route.
    let target = match route(cx)? {
        Routed::Answered(reply) => return Ok(*reply),
        // Boxed: rare, and its future would otherwise be every request's.
        Routed::LeakReport => return Box::pin(leak_report(cx, body)).await,
        Routed::Whoami => None,
        Routed::Upstream(target) => {
            check_declared_length(&body, &cx.rt.config)?;
            if cx.handshake && !http_body::Body::is_end_stream(&body) {
                // What follows a handshake is the new protocol's: a body
                // would be read as frames by one side and not the other.
                return Err(GatewayError::BadRequest("a WebSocket handshake carries no body".into()));
            }
            if target.route.public {
                cx.trace.served_as = Some("public");
                return forward(cx, &target, body, None).await;
            }
            Some(target)
        }
    };
    let route = target.as_ref().map(|t| t.route);
    let found = match cx.rt.config.failed_credentials {
        None => authorise(cx, route).await?,
        Some(policy) => Box::pin(authorise_guarded(cx, route, policy)).await?,
    };
    match &target {
        None => Ok(whoami(cx, &found.key).into()),
        // Most requests: the upstream's answer as it comes, moved nowhere.
        Some(target) if cx.trace.decision.slot.is_none() && target.route.cost_header.is_none() => {
            forward(cx, target, body, Some(&found)).await
        }
        Some(target) => {
            let slot = cx.trace.decision.slot.take();
            let answer = forward(cx, target, body, Some(&found)).await;
            match (&target.route.cost_header, slot) {
                (None, None) => answer,
                (None, Some(slot)) => answer.map(|reply| held_until_written(reply, slot)),
                // Boxed: only routes with a cost header pay for its future.
                (Some(name), slot) => {
                    let reply = Box::pin(settle_cost(cx, target.route, name, &found.key, answer?)).await;
                    Ok(match slot {
                        Some(slot) => held_until_written(reply, slot),
                        None => reply,
                    })
                }
            }
        }
    }
}

/// The answer, holding the request's in-flight slot until its body's last
/// byte is out (or the client goes).
fn held_until_written(mut reply: Reply, slot: crate::ratelimit::inflight::Slot) -> Reply {
    reply.response = reply.response.map(|body| crate::body::holding(body, slot));
    reply
}

/// What the upstream reported the request cost, in the route's
/// `cost_header`: taken out of the answer, then settled against what was
/// charged up front. A malformed report is logged and counted, and the
/// charge stands.
async fn settle_cost(cx: &mut Ctx<'_>, route: &Route, name: &str, key: &ApiKey, mut reply: Reply) -> Reply {
    let mut values = reply.upstream.take(name.as_bytes());
    if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
        values.extend(reply.response.headers_mut().remove(name).map(|v| v.as_bytes().to_vec()));
    }
    if values.is_empty() {
        return reply;
    }
    let metrics = &cx.app.metrics;
    match headers::reported_cost(&values) {
        // A request a shadowed rule would have refused took nothing to settle.
        Ok(real) if cx.trace.decision.charged && cx.trace.shadow.is_none() => {
            metrics.reported_costs.with_label_values(&["settled"]).inc();
            let means = (&cx.rt.config, cx.app.store.as_ref() as &dyn crate::store::CreditLedger);
            let cost = decide::Cost::of(&cx.rt.config, Some(route));
            // Settled now: the window the request began in may have ended.
            decide::settle(decide::Live::of(cx.app), means, key, &cost, real, Moment::now()).await;
        }
        Ok(_) => {}
        Err(why) => {
            metrics.reported_costs.with_label_values(&["malformed"]).inc();
            tracing::warn!(route = %route.pattern, key_id = %key.key_id, field = name, why, "the upstream's reported cost was refused; the route's cost stands");
        }
    }
    reply
}

/// Phase 1: the normalised path, then a browser's preflight under
/// `[cors]`, `/whoami` or a route.
fn route<'r>(cx: &mut Ctx<'r>) -> Result<Routed<'r>, GatewayError> {
    let cfg = &cx.rt.config;
    let path = path::normalise(cx.head.uri.path()).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    if let Some(deny) = &cfg.server.deny {
        refuse_denied(cx, deny)?;
    }
    if cfg.server.underscore_headers == Underscores::Reject {
        headers::refuse_underscores(&cx.head.headers).map_err(GatewayError::BadRequest)?;
    }
    if let Some(answer) = preflight(cx, &path) {
        return answer.map(|reply| Routed::Answered(Box::new(reply)));
    }
    if path == WHOAMI_PATH && reads(&cx.head.method) {
        cx.trace.route = RouteLabel::Whoami;
        cx.trace.served_as = Some("whoami");
        return Ok(Routed::Whoami);
    }
    if cfg.leaks.github.as_ref().is_some_and(|g| g.path == path) && cx.head.method == Method::POST {
        cx.trace.route = RouteLabel::LeakReport;
        cx.trace.served_as = Some("leak_report");
        return Ok(Routed::LeakReport);
    }
    let (index, route) = cfg.routes.find(&cx.head.method, &path).ok_or(GatewayError::NoRoute)?;
    cx.trace.route = RouteLabel::Route(index);
    // The server marks a head with `Upgrade`: most requests look no further.
    if cx.head.extensions.get::<crate::http1::UpgradeAsked>().is_some() && headers::asks_websocket(&cx.head.headers) {
        handshake(cx, route)?;
    }
    if let Some(deny) = &route.deny {
        refuse_denied(cx, deny)?;
    }
    Ok(Routed::Upstream(Target { route, path }))
}

/// A WebSocket handshake: refused (400 `upgrade_not_allowed`) unless its
/// route takes them; a malformed one is a bad request, and a browser's
/// from an origin `[cors]` does not allow is refused (403), since a
/// handshake has no preflight.
#[cold]
fn handshake(cx: &mut Ctx<'_>, route: &Route) -> Result<(), GatewayError> {
    if !route.websocket {
        return Err(GatewayError::UpgradeRefused);
    }
    let head = cx.head;
    if let Some(problem) = crate::websocket::handshake_problem(&head.method, head.version, &head.headers) {
        return Err(GatewayError::BadRequest(problem.into()));
    }
    if let (true, Some(policy), Some(origin)) = (route.cors, &cx.rt.config.cors, head.headers.get(header::ORIGIN)) {
        if !policy.allows(origin) {
            return Err(GatewayError::CorsRefused("this origin may not open a WebSocket here".into()));
        }
    }
    cx.handshake = true;
    Ok(())
}

/// 403 `ip_denied` for a client whose address (after `trusted_proxies`)
/// is on `deny`: before any key is looked at.
fn refuse_denied(cx: &mut Ctx<'_>, deny: &ip::DenyList) -> Result<(), GatewayError> {
    if deny.denies(cx.client()) {
        return Err(GatewayError::IpDenied);
    }
    Ok(())
}

/// GET or HEAD: the methods `/whoami` answers.
fn reads(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A browser's preflight for a route under `[cors]`: keygate's to answer
/// (it carries no key, and the backend never sees it).
fn preflight(cx: &mut Ctx<'_>, path: &str) -> Option<Result<Reply, GatewayError>> {
    let pre = cors::Preflight::of(&cx.head.method, &cx.head.headers)?;
    let cfg = &cx.rt.config;
    // `/whoami` is keygate's own route, under `[cors]` as every route is by default.
    let governed = if path == WHOAMI_PATH && reads(&pre.method) {
        Some(RouteLabel::Whoami)
    } else {
        cfg.routes.find(&pre.method, path).filter(|(_, r)| r.cors).map(|(index, _)| RouteLabel::Route(index))
    };
    let (policy, label) = (cfg.cors.as_ref()?, governed?);
    cx.trace.route = label;
    cx.trace.served_as = Some(PREFLIGHT);
    Some(policy.preflight(&pre).map(preflight_answer).map_err(|r| GatewayError::CorsRefused(r.to_string())))
}

/// Phase 2 with `[abuse] failed_credentials`: a blocked address is
/// refused before its credential is read, and a 401 counts against it.
/// (A phase of its own, boxed: without the guard a request pays nothing.)
async fn authorise_guarded(
    cx: &mut Ctx<'_>,
    route: Option<&Route>,
    policy: crate::config::GuardPolicy,
) -> Result<Arc<KeyLookup>, GatewayError> {
    let client = cx.client();
    if let Some(retry_after) = cx.app.guard.blocked_for(client, cx.arrived.unix_ms) {
        return Err(GatewayError::TooManyFailures { retry_after });
    }
    let result = authorise(cx, route).await;
    if matches!(&result, Err(e) if e.status() == StatusCode::UNAUTHORIZED) {
        Box::pin(cx.app.note_failed_credential(client, policy, cx.arrived.unix_ms)).await;
    }
    result
}

/// Phase 2: the request's credential, then [`decide`] for its route (none
/// for `/whoami`), noted in the trace.
async fn authorise(cx: &mut Ctx<'_>, route: Option<&Route>) -> Result<Arc<KeyLookup>, GatewayError> {
    let credential = credentials::extract_from(&cx.head.headers, cx.head.uri.query(), cx.handshake)
        .map_err(|e| match e {
            CredentialError::Malformed(m) => GatewayError::BadRequest(m.into()),
            CredentialError::Ambiguous => GatewayError::AmbiguousCredentials,
        })?
        .ok_or(GatewayError::MissingKey)?;
    let client_ip = cx.client();
    let cfg = &cx.rt.config;
    let ask = Ask::request(cfg, route, client_ip, &credential.token);
    decide(&Means::node(cx.app, cfg), &ask, cx.arrived, &mut cx.trace.decision).await;
    cx.trace.note_span();
    let decision = &mut cx.trace.decision;
    if let Some(failure) = &decision.failure {
        cx.app.note_store_error(failure.0, &failure.1);
    }
    match (decision.refusal.take(), &decision.found) {
        (None, Some(found)) => Ok(Arc::clone(found)),
        (Some(refusal), Some(found)) if decide::shadowed(cfg, route, &found.key, &refusal, decision.rate.as_ref()) => {
            let found = Arc::clone(found);
            note_shadow(cx, route, refusal.code());
            Ok(found)
        }
        (refusal, _) => Err(refusal.unwrap_or(GatewayError::InvalidKey)),
    }
}

/// A refusal a rule in shadow mode would have made: counted, and kept for
/// the upstream's header and the access line.
#[cold]
fn note_shadow(cx: &mut Ctx<'_>, route: Option<&Route>, code: &'static str) {
    cx.trace.shadow = Some(code);
    let pattern = route.map_or(WHOAMI_PATH, |r| r.pattern.as_str());
    cx.app.metrics.shadow_refusals.with_label_values(&[code, pattern]).inc();
}

/// The largest leak report read, and the longest it may take to arrive.
const MAX_REPORT_BYTES: u64 = 8 << 20;
const REPORT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A report GitHub posted of tokens it found in public code: read whole,
/// its signature checked over the bytes as received, then handled as
/// every leak report is ([`crate::manage::Manager::report_leaks`]).
async fn leak_report(cx: &mut Ctx<'_>, body: Body) -> Result<Reply, GatewayError> {
    let cfg = &cx.rt.config;
    let (Some(github), Some(keys)) = (cfg.leaks.github.as_ref(), cx.rt.github.as_ref()) else {
        return Err(GatewayError::NoRoute);
    };
    let max = MAX_REPORT_BYTES.min(cfg.server.max_body_bytes);
    let bytes = proxy::read_whole(body, max, cfg.server.body_read_timeout, REPORT_READ_TIMEOUT).await?;
    let manager = crate::manage::Manager::new(cx.app.store.as_ref(), cfg, "github-secret-scanning");
    let feedback = crate::manage::answer_github(&manager, keys, &cx.head.headers, &bytes, github.on_leak).await?;
    Ok(json_response(StatusCode::OK, &feedback).into())
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

/// Phase 3: rewrite the request for the upstream and send it.
async fn forward(cx: &mut Ctx<'_>, target: &Target<'_>, body: Body, key: Option<&KeyLookup>) -> Result<Reply, GatewayError> {
    let (rt, index) = (cx.rt, target.route.upstream);
    let upstream = rt.config.upstream(index).ok_or(GatewayError::UpstreamUnavailable)?;
    let mut out = outgoing(cx, target, upstream, key.is_some())?;
    // Borrowed by the outgoing head while it is sent, then put back.
    let request_id = cx.trace.request_id.take();
    if let Some(id) = &request_id {
        correlate(&mut cx.trace, &mut out, id, &upstream.name);
    }
    if let Some(key) = key {
        out.set_identity(headers::identity_lines(key));
    }
    if let Some(code) = cx.trace.shadow {
        out.set_shadow(code);
    }
    if cx.handshake {
        out.set_websocket();
    }
    let body = guarded(body, &rt.config);
    let sent = Instant::now();
    let result = rt.forwarder.send(cx.conn.worker, index, upstream, &mut out, body, sent).await;
    drop(out);
    cx.trace.request_id = request_id;
    cx.trace.upstream = Some(UpstreamTiming { index, sent, answered: Instant::now() });
    if let Some(span) = cx.trace.span.as_mut() {
        span.end_upstream(SystemTime::now(), result.as_ref().ok().map(|r| r.response.status().as_u16()));
    }
    // Hop-by-hop response headers never got past the HTTP/1.1 client.
    result.map(Reply::from)
}

/// The request's head as the upstream gets it. Hop-by-hop, framing,
/// client-sent X-Keygate-*, address claims, overrides and (for keyed
/// routes) credential fields stay behind (`headers::fate`); forwarding
/// fields are added.
fn outgoing<'a>(cx: &Ctx<'a>, target: &Target<'_>, upstream: &Upstream, keyed: bool) -> Result<Outgoing<'a>, GatewayError> {
    let (head, cfg) = (cx.head, &cx.rt.config);
    let query = head.uri.query().and_then(|q| credentials::forwarded_query(q, keyed));
    let uri = proxy::upstream_target(upstream, &target.path, query.as_deref())?;
    let mut out = Outgoing::new(&head.method, uri, &head.headers, keyed, cfg.server.underscore_headers);
    let host = out.client_host().cloned().or_else(|| head.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let believed = ip::believes_forwarded_for(cx.conn.peer.ip(), &cfg.server.trusted_proxies);
    out.set_forwarded(&cx.conn.peer_header, cx.conn.tls, host, believed);
    Ok(out)
}

/// The request's id and trace context for the upstream. With spans
/// exported, the upstream's parent is keygate's span for the exchange;
/// otherwise the client's context goes on as it came.
fn correlate<'o>(trace: &mut Trace, out: &mut Outgoing<'o>, id: &'o correlation::RequestId, upstream: &str) {
    let state = trace.context.as_ref().and_then(|c| c.1.clone());
    let traceparent = match trace.span.as_mut() {
        Some(span) => Some(span.start_upstream(upstream, SystemTime::now())),
        None => trace.context.as_ref().map(|c| c.0.value()),
    };
    out.set_correlation(id, traceparent.map(|t| (t, state)));
}

/// The body as the upstream reads it: bounded in size and pace. A request
/// without one (most GETs) needs no guard.
fn guarded(body: Body, cfg: &Config) -> Body {
    if http_body::Body::is_end_stream(&body) {
        crate::body::empty()
    } else {
        GuardedBody::new(body, cfg.server.max_body_bytes, cfg.server.body_read_timeout).boxed()
    }
}

/// Phase 4: what keygate adds to every answer, its own or the upstream's:
/// the refusal's body, CORS fields for a route under `[cors]`, and the
/// rate-limit fields.
fn decorate(cx: &mut Ctx<'_>, mut answer: Result<Reply, GatewayError>) -> Reply {
    // Looked at in place: most answers are not event streams, and a move
    // of the answer costs every request a copy.
    if matches!(&answer, Ok(reply) if reply.upstream.is_event_stream() || reply.response.status() == StatusCode::SWITCHING_PROTOCOLS)
    {
        answer = answer.and_then(|reply| live_connection(cx, reply));
    }
    cx.trace.outcome = match &answer {
        Ok(_) => (cx.trace.served_as.unwrap_or("forwarded"), "none"),
        Err(e) => (e.outcome(), e.code()),
    };
    // A body refused for its size or pace is not read on: the connection
    // closes after the answer.
    let body = match &answer {
        Err(GatewayError::PayloadTooLarge | GatewayError::RequestTimeout) => BodyOutcome::Refused,
        _ => BodyOutcome::Complete,
    };
    let mut reply = answer.unwrap_or_else(|e| e.to_response_for(cx.trace.request_id.as_ref()).into());
    reply.body = body;
    // The request's id is keygate's to give: an upstream's own goes.
    reply.upstream.remove_request_id();
    if let Some(policy) = cors_policy(&cx.rt.config, &cx.trace) {
        // keygate speaks for the route: an upstream's own CORS fields go.
        reply.upstream.remove_prefixed(b"access-control-");
        for (name, value) in policy.actual(cx.head.headers.get(header::ORIGIN)) {
            reply.response.headers_mut().append(name, value);
        }
    }
    if let Some(view) = cx.trace.decision.rate {
        let now_ms = cx.arrived.unix_ms;
        let decision = &cx.trace.decision;
        let credits = match (&decision.credits, decision.found.as_ref().and_then(|f| f.key.credits.as_ref())) {
            (Some(spent), Some(terms)) => Some(crate::ratelimit::CreditFields::of(spent, terms, now_ms)),
            _ => None,
        };
        let headers = RateHeaders { view, now_ms, ietf: cx.rt.config.rate_limit.ietf_headers, credits };
        reply.extra = headers.fields();
    }
    reply
}

/// An event stream or a WebSocket a key opened: registered under the
/// key, so that revoking the key (or taking the route's permission from
/// it) ends the connection; and ended when the key expires. A key holding
/// `[realtime] per_key_connections` of them on this node is refused. (A
/// public route's WebSocket has no key: only its bounds and shutdown end
/// it.)
#[cold]
fn live_connection(cx: &mut Ctx<'_>, mut reply: Reply) -> Result<Reply, GatewayError> {
    use crate::realtime::Kind;
    let switched = reply.response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let kind = if switched { Kind::WebSocket } else { Kind::EventStream };
    let cfg = &cx.rt.config;
    let watched = match (cx.trace.decision.found.as_ref(), cx.trace.route) {
        (Some(found), RouteLabel::Route(index)) => {
            let permission = cfg.routes.routes().get(index).and_then(|r| r.permission.as_deref());
            let key = &found.key;
            let registration = cx
                .app
                .streams
                .open(&key.key_id, permission, cfg.realtime.per_key_connections, kind)
                .ok_or(GatewayError::TooManyConnections)?;
            let until = key.expires_at.map(|at| {
                let left = u64::try_from(at.saturating_sub(clock::now_unix())).unwrap_or(0);
                tokio::time::Instant::now() + Duration::from_secs(left)
            });
            Some((registration, until))
        }
        _ => None,
    };
    if !switched {
        let Some((registration, until)) = watched else { return Ok(reply) };
        let close = registration.close.clone();
        reply.response = reply.response.map(|body| crate::body::ending(body, close, until, registration));
        return Ok(reply);
    }
    let end = async move {
        let Some((registration, until)) = watched else { return std::future::pending().await };
        let expiry = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = registration.close.cancelled() => crate::websocket::Ending::REVOKED,
            _ = expiry => crate::websocket::Ending::EXPIRED,
        }
    };
    let bounds = crate::websocket::Bounds { idle: cfg.realtime.idle_timeout };
    let watch = crate::websocket::Watch { end: Box::pin(end), bounds };
    reply.response.extensions_mut().insert(crate::http1::Handover::new(watch));
    reply.response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Ok(reply)
}

/// Phase 5: metrics, the access line and the span; last, the request's id
/// for the client (with the upstream's fields: no header map is filled).
fn record(cx: &mut Ctx<'_>, mut reply: Reply) -> Reply {
    let status = reply.response.status();
    // A forwarded request's time ends with the upstream's answer, read then.
    let elapsed = cx.trace.upstream.map_or_else(Instant::now, |u| u.answered).saturating_duration_since(cx.arrived.at);
    count_and_log(cx, status, elapsed);
    if let Some(span) = cx.trace.span.take() {
        end_span(*span, cx, status);
    }
    if let Some(id) = cx.trace.request_id.take() {
        reply.upstream.push(b"X-Request-Id", id.as_bytes());
    }
    reply
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
fn whoami(cx: &Ctx<'_>, key: &ApiKey) -> Response<Body> {
    let (app, cfg) = (cx.app, &cx.rt.config);
    let data = serde_json::json!({
        "keyId": key.key_id,
        "name": key.name,
        "owner": key.owner,
        "role": key.role,
        "permissions": app.roles.effective_permissions(key),
        "env": key.env.as_str(),
        "rateLimit": cfg.limit_for(key.rate_limit, key.plan.as_deref()),
        "remaining": cx.trace.decision.rate.as_ref().map(|r| r.decision.remaining),
        "allowedIps": key.allowed_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "expiresAt": key.expires_at.map(clock::rfc3339),
    });
    json_response(StatusCode::OK, &crate::envelope::success(data, None))
}

/// Metrics and the access log line (key id, never the token).
fn count_and_log(cx: &Ctx<'_>, status: StatusCode, elapsed: Duration) {
    let (app, rt, trace) = (cx.app, cx.rt, &cx.trace);
    let (outcome, code) = trace.outcome;
    let route = route_label(rt, trace);
    rt.count_request(&app.metrics, (trace.route_index(), status.as_u16(), outcome, code), route);
    let upstream_time = trace.upstream.map(|u| u.took()).unwrap_or_default();
    app.metrics.gateway_latency.observe(elapsed.saturating_sub(upstream_time).as_secs_f64());
    if let Some(u) = trace.upstream {
        rt.observe_upstream(u.index, upstream_time);
    }
    tracing::info!(
        target: "keygate::access",
        method = %cx.head.method,
        route,
        status = status.as_u16(),
        outcome,
        code,
        key_id = trace.decision.found.as_ref().map_or("-", |k| k.key.key_id.as_str()),
        request_id = trace.request_id.as_ref().map_or("-", |id| id.as_str()),
        latency_us = elapsed.as_micros() as u64,
        shadow = trace.shadow,
    );
}

/// The `route` label: the pattern that answered.
fn route_label<'a>(rt: &'a Runtime, trace: &Trace) -> &'a str {
    match trace.route {
        RouteLabel::None => "(none)",
        RouteLabel::Whoami => WHOAMI_PATH,
        RouteLabel::LeakReport => rt.config.leaks.github.as_ref().map_or("(none)", |g| g.path.as_str()),
        RouteLabel::Route(i) => rt.config.routes.routes().get(i).map_or("(none)", |r| r.pattern.as_str()),
    }
}

/// Ends a request's span, named and labelled as its access line.
fn end_span(span: RequestSpan, cx: &Ctx<'_>, status: StatusCode) {
    let (trace, method) = (&cx.trace, &cx.head.method);
    let (outcome, code) = trace.outcome;
    let route = route_label(cx.rt, trace);
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("http.route", route.to_string()),
        KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        KeyValue::new("keygate.outcome", outcome),
        KeyValue::new("keygate.code", code),
    ];
    if let Some(k) = &trace.decision.found {
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
    /// The span's events of what `decide` found.
    fn note_span(&mut self) {
        let (Some(span), decision) = (self.span.as_mut(), &self.decision) else { return };
        if let Some(found) = &decision.found {
            let id = KeyValue::new("keygate.key_id", found.key.key_id.clone());
            span.event("key resolved", SystemTime::now(), vec![id]);
        }
        if let (true, Some(view)) = (decision.charged, decision.rate.as_ref()) {
            let attributes = vec![
                KeyValue::new("keygate.ratelimit.allowed", decision.refusal.is_none()),
                KeyValue::new("keygate.ratelimit.remaining", i64::from(view.decision.remaining)),
                KeyValue::new("keygate.ratelimit.policy", view.policy.name()),
            ];
            span.event("rate limit", SystemTime::now(), attributes);
        }
    }

    /// A small number per route label, for the metrics cache.
    fn route_index(&self) -> usize {
        match self.route {
            RouteLabel::None => usize::MAX,
            RouteLabel::Whoami => usize::MAX - 1,
            RouteLabel::LeakReport => usize::MAX - 2,
            RouteLabel::Route(i) => i,
        }
    }
}

#[cfg(test)]
mod tests;
