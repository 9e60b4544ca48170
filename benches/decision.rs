//! Criterion benchmarks of the per-request decision, without network: each
//! step alone, then steps 2-9 together for a cached key. Run with
//! `cargo bench --bench decision`.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request};
use keygate::clock::Moment;
use keygate::clock::Period;
use keygate::config::Underscores;
use keygate::config::{Algorithm, Config};
use keygate::decide::{decide, Ask, Decision, Means};
use keygate::http1::FieldLines;
use keygate::http1::RequestHead;
use keygate::keys::token::TokenHash;
use keygate::manage::{KeyInput, Manager};
use keygate::policy::{ip, path, permissions};
use keygate::proxy::headers;
use keygate::proxy::outgoing::Outgoing;
use keygate::ratelimit::local::LocalLimiter;
use keygate::ratelimit::Counter;
use keygate::state::App;
use std::future::Future;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

const CONFIG: &str = include_str!("../gateway.toml");

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, CONFIG).unwrap();
    let config = Config::load(&path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, token) = rt.block_on(async {
        let app = App::new(config, path).await.unwrap();
        let runtime = app.runtime.load_full();
        let m = Manager::new(app.store.as_ref(), &runtime.config, "bench");
        let input = KeyInput {
            name: Some("bench".into()),
            role: Some("contact-sync".into()),
            rate_limit: Some(u32::MAX),
            allowed_ips: Some(vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()]),
            ..KeyInput::default()
        };
        let (_, token) = m.create_key(input, None).await.unwrap();
        (app, token)
    });
    Fixture { rt, app, token, _dir: dir }
}

fn request(token: &str) -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri("/api//contacts/./42?page=1")
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json")
        .header("user-agent", "bench/1.0")
        .body(())
        .unwrap()
}

fn steps(c: &mut Criterion) {
    let f = fixture();
    let req = request(&f.token);
    let head = request(&f.token).into_parts().0;
    let runtime = f.app.runtime.load_full();
    let cfg = &runtime.config;
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let peer_header = headers::peer_value(peer);

    c.bench_function("credential_parse", |b| {
        b.iter(|| keygate::credentials::extract(black_box(req.headers()), black_box(req.uri().query())).unwrap())
    });
    c.bench_function("token_shape", |b| b.iter(|| keygate::keys::token::shape(black_box(&f.token), "kg")));
    // What a miss adds: the store's lookup is by SHA-256.
    c.bench_function("token_sha256", |b| b.iter(|| TokenHash::of(black_box(&f.token))));
    f.rt.block_on(f.app.cache.resolve(&f.token, f.app.store.as_ref(), Instant::now())).unwrap();
    c.bench_function("cache_hit", |b| {
        b.iter(|| f.rt.block_on(f.app.cache.resolve(black_box(&f.token), f.app.store.as_ref(), Instant::now())).unwrap())
    });
    let allow: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.0/8".parse().unwrap()];
    c.bench_function("ip_check", |b| {
        b.iter(|| {
            let client = ip::client_ip(black_box(peer), req.headers(), &cfg.server.trusted_proxies);
            ip::allowed(client, black_box(&allow))
        })
    });
    c.bench_function("normalise_and_route", |b| {
        b.iter(|| {
            let p = path::normalise(black_box(req.uri().path())).unwrap();
            cfg.routes.find(&Method::GET, &p).map(|(_, r)| r.permission.is_some())
        })
    });
    let grants = ["lists.view".to_string(), "contacts.*".to_string(), "broadcasts.view".to_string()];
    c.bench_function("permission_check", |b| b.iter(|| permissions::permits(grants.iter(), black_box("contacts.view"))));
    let limiter = LocalLimiter::default();
    c.bench_function("limiter_decision", |b| {
        let counter = Counter { id: "key_0123456789abcdef", period: Period::Minute };
        b.iter(|| limiter.check(Algorithm::FixedWindow, black_box(counter), u32::MAX, 1, keygate::clock::now_ms()))
    });
    let identity = FieldLines::render([(&b"x-keygate-key-id"[..], &b"key_0123456789abcdef"[..]), (b"x-keygate-env", b"live")]);
    c.bench_function("header_rewrite", |b| b.iter(|| rewrite(black_box(req.headers()), &peer_header, &identity)));
    c.bench_function("whole_decision", |b| {
        b.iter(|| {
            let p = path::normalise(req.uri().path()).unwrap();
            let (_, route) = cfg.routes.find(req.method(), &p).unwrap();
            let client = ip::client_ip(peer, req.headers(), &cfg.server.trusted_proxies);
            let head = black_box(&head);
            let credential = keygate::credentials::extract(&head.headers, head.uri.query()).unwrap().unwrap();
            let ask = Ask::request(cfg, Some(route), client, &credential.token);
            let mut decision = Decision::default();
            ready_or_block_on(&f.rt, decide(&Means::node(&f.app, cfg), &ask, Moment::now(), &mut decision));
            let key = decision.found.filter(|_| decision.refusal.is_none()).unwrap();
            rewrite(req.headers(), &peer_header, headers::identity_lines(&key))
        })
    });
}

/// Polls `work` once, as the request's task does: a decision for a cached
/// key with the local limiter is ready at once. Only a decision that waits
/// goes through `block_on`, whose own cost (entering the runtime, parking)
/// is not the gateway's.
fn ready_or_block_on<F: Future>(rt: &tokio::runtime::Runtime, work: F) -> F::Output {
    let _context = rt.enter();
    let mut work = std::pin::pin!(work);
    match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => rt.block_on(work),
    }
}

/// The forwarded head: client headers filtered, forwarding and identity
/// headers added, every line visited as the HTTP/1.1 client writes them.
fn rewrite(client: &HeaderMap, peer: &HeaderValue, identity: &FieldLines) -> usize {
    let mut out = Outgoing::new(&Method::GET, "/api/contacts/42".into(), client, true, Underscores::Drop);
    out.set_forwarded(peer, false, Some(HeaderValue::from_static("api.example.com")), false);
    out.set_identity(identity);
    let mut bytes = identity.text().len();
    out.each_field(&mut |n, v| bytes += n.len() + v.len());
    bytes
}

criterion_group!(benches, steps);
criterion_main!(benches);
