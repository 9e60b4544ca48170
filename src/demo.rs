//! A tiny stand-in for an email-marketing backend, run by `keygate demo`
//! so a newcomer has something to call through the gateway. It answers
//! every request with JSON describing what it received, identity headers
//! included, so the effect of the gateway is visible.

use crate::body::{full, Body};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest body the demo reads (it only reports the size).
const MAX_DEMO_BODY: usize = 1024 * 1024;

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let identity: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("x-keygate-"))
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned().into()))
        .collect();
    let body =
        http_body_util::Limited::new(req.into_body(), MAX_DEMO_BODY).collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    let data = match (method.as_str(), path.as_str()) {
        ("GET", "/api/lists") => {
            json!([{ "id": 1, "name": "Newsletter", "subscribers": 1204 }, { "id": 2, "name": "Product updates", "subscribers": 311 }])
        }
        ("GET", "/api/stats") => json!({ "sent": 18211, "opens": 7123, "clicks": 1312 }),
        _ => json!({ "received": { "method": method, "path": path, "query": query, "bodyBytes": body } }),
    };
    let mut resp = Response::new(full(json!({ "success": true, "data": data, "seenByBackend": identity }).to_string()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    *resp.status_mut() = if method == "POST" { StatusCode::CREATED } else { StatusCode::OK };
    resp
}

/// Serves the demo backend until the process ends.
pub async fn serve_backend(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req| async { Ok::<_, Infallible>(answer(req).await) });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
