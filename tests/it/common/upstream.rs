//! The test upstream: a real hyper server on a loopback port that answers
//! every request with JSON describing exactly what it received, so tests
//! can see what keygate forwarded. `/api/slow/{ms}` waits before answering;
//! `/api/upload` counts the body without keeping it; `/api/cost/{value}`
//! reports `value` in `X-Keygate-Cost`; `/api/events/{n}/{gap_ms}` is an
//! event stream; a WebSocket handshake to `/ws/...` is answered by an
//! echo server whose first message is what the handshake carried.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A running upstream; it stops with the test's runtime.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests to `/api/slow/{ms}` being answered now, and the most ever.
    pub slow: Arc<InFlight>,
    /// WebSocket handshakes answered, and the close codes the echo got.
    pub websockets: Arc<Sockets>,
    /// Stops the listener and every connection it serves.
    serving: tokio::task::AbortHandle,
}

impl Upstream {
    /// Kills the upstream as a crash would: the listener and every open
    /// connection close at once; new connections are refused.
    pub fn kill(&self) {
        self.serving.abort();
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Requests being answered at once.
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// The most requests ever answered at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests being answered now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

/// The upstream's WebSocket connections.
#[derive(Default)]
pub struct Sockets {
    handshakes: AtomicUsize,
    closes: std::sync::Mutex<Vec<u16>>,
}

impl Sockets {
    /// Handshakes answered with 101.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// The codes of the close frames the echo received.
    pub fn closes(&self) -> Vec<u16> {
        self.closes.lock().unwrap().clone()
    }
}

/// What the upstream counts, shared by its connections.
#[derive(Clone, Default)]
struct Counters {
    slow: Arc<InFlight>,
    sockets: Arc<Sockets>,
}

async fn answer(
    mut req: Request<Incoming>,
    served_by: SocketAddr,
    tls: Tls,
    counters: Counters,
) -> Result<Response<Answer>, Infallible> {
    let slow = counters.slow;
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .keys()
        .map(|k| {
            let values: Vec<String> =
                req.headers().get_all(k).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
            (k.to_string(), values.join(", ").into())
        })
        .collect();
    let version = format!("{:?}", req.version());
    if path.starts_with("/ws/") && req.headers().contains_key("upgrade") {
        let seen = json!({ "path": path, "query": query, "headers": headers });
        return Ok(websocket_echo(&mut req, seen, counters.sockets));
    }
    if let Some(ms) = path.strip_prefix("/api/slow/").and_then(|m| m.parse::<u64>().ok()) {
        let now = slow.now.fetch_add(1, Ordering::SeqCst) + 1;
        slow.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        slow.now.fetch_sub(1, Ordering::SeqCst);
    }
    // Count the body frame by frame: nothing is buffered.
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    if let Some(spec) = path.strip_prefix("/api/events/") {
        return Ok(event_stream(spec));
    }
    if path == "/api/contacts/unavailable" {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"down")).boxed());
        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return Ok(resp);
    }
    let out = json!({
        "method": method, "path": path, "query": query, "headers": headers, "bodyBytes": body_bytes, "version": version,
        "servedBy": served_by.to_string(), "tls": tls.on, "clientCert": tls.client_cert,
    });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())).boxed());
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    resp.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
    resp.headers_mut().insert("x-hop", "must-not-pass".parse().unwrap());
    if let Some(cost) = path.strip_prefix("/api/cost/") {
        resp.headers_mut().insert("x-keygate-cost", cost.parse().unwrap());
    }
    if path == "/api/contacts/own-headers" {
        resp.headers_mut().insert("x-request-id", "upstream-own".parse().unwrap());
        resp.headers_mut().insert("access-control-allow-origin", "*".parse().unwrap());
    }
    Ok(resp)
}

/// Answers a handshake with 101 (the first subprotocol offered, if any),
/// then echoes each message, after one saying what the handshake carried.
fn websocket_echo(req: &mut Request<Incoming>, seen: serde_json::Value, sockets: Arc<Sockets>) -> Response<Answer> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};
    sockets.handshakes.fetch_add(1, Ordering::SeqCst);
    let key = req.headers().get("sec-websocket-key").map(|k| k.as_bytes().to_vec()).unwrap_or_default();
    let protocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok()?.split(',').next().map(str::trim))
        .map(str::to_string);
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _ = ws.send(Message::text(seen.to_string())).await;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = &message {
                sockets.closes.lock().unwrap().push(frame.as_ref().map_or(1005, |f| u16::from(f.code)));
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                return;
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert("upgrade", "websocket".parse().unwrap());
    resp.headers_mut().insert("connection", "Upgrade".parse().unwrap());
    resp.headers_mut().insert("sec-websocket-accept", accept.parse().unwrap());
    if let Some(p) = protocol {
        resp.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    resp
}

/// The upstream's answer bodies: whole, or streamed.
type Answer = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/api/events/{n}/{gap_ms}`: a `text/event-stream` of `n` events, one
/// every `gap_ms`, each carrying the Unix time in ms it was sent at.
fn event_stream(spec: &str) -> Response<Answer> {
    let mut parts = spec.split('/').map(|p| p.parse::<u64>().unwrap_or(0));
    let (n, gap) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let events = futures_util::stream::unfold(0, move |i| async move {
        if i == n {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let sent = keygate::clock::now_ms();
        let frame = hyper::body::Frame::data(Bytes::from(format!("id: {i}\ndata: {sent}\n\n")));
        Some((Ok::<_, Infallible>(frame), i + 1))
    });
    let mut resp = Response::new(http_body_util::StreamBody::new(events).boxed());
    resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
    resp.headers_mut().insert("cache-control", "no-cache".parse().unwrap());
    resp
}

/// What the connection's TLS was, for the answer.
#[derive(Clone, Copy, Default)]
struct Tls {
    on: bool,
    client_cert: bool,
}

/// Starts an upstream on a free loopback port.
pub async fn start() -> Upstream {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), None)
}

/// Starts an upstream on `listener`, speaking TLS with `tls` if given.
pub fn start_on(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let addr = listener.local_addr().unwrap();
    let counted = Counters::default();
    let (slow, websockets) = (Arc::clone(&counted.slow), Arc::clone(&counted.sockets));
    let serving = tokio::spawn(async move {
        // Connections live in the set, so aborting this task closes them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (tls, counters) = (tls.clone(), counted.clone());
            connections.spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let service = hyper::service::service_fn(move |req| answer(req, addr, Tls::default(), counters.clone()));
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else { return };
                        let client_cert = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                        let tls = Tls { on: true, client_cert };
                        let service = hyper::service::service_fn(move |req| answer(req, addr, tls, counters.clone()));
                        let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                    }
                }
            });
            while connections.try_join_next().is_some() {}
        }
    })
    .abort_handle();
    Upstream { addr, slow, websockets, serving }
}

/// A private CA and the certificates it issues, written to `dir` as PEM
/// files keygate's config can name.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub ca_file: PathBuf,
}

impl TestCa {
    /// A new CA, its certificate in `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join(format!("{name}.pem"));
        std::fs::write(&ca_file, cert.pem()).unwrap();
        TestCa { cert, key, ca_file }
    }

    /// A certificate for `names` (DNS names or IP addresses), as
    /// (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str], client: bool) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages =
            vec![if client { rcgen::ExtendedKeyUsagePurpose::ClientAuth } else { rcgen::ExtendedKeyUsagePurpose::ServerAuth }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server config with a certificate for `names`; with
    /// `clients_of`, a client certificate from that CA is required.
    pub fn server(&self, names: &[&str], clients_of: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
        let (cert, key) = self.issue(names, false);
        let chain = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes()).unwrap().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().unwrap();
        let builder = match clients_of {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.cert.der().clone()).unwrap();
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Starts an HTTPS upstream on a free loopback port.
pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Upstream {
    start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), Some(config))
}
