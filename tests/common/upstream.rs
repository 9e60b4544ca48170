//! The test upstream: a real hyper server on a loopback port that answers
//! every request with JSON describing exactly what it received, so tests
//! can see what keygate forwarded. `/api/slow/{ms}` waits before answering;
//! `/api/upload` counts the body without keeping it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// A running upstream; it stops with the test's runtime.
pub struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
    if let Some(ms) = path.strip_prefix("/api/slow/").and_then(|m| m.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
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
    let out = json!({ "method": method, "path": path, "query": query, "headers": headers, "bodyBytes": body_bytes, "version": version });
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut().insert("x-upstream", "yes".parse().unwrap());
    resp.headers_mut().insert("connection", "keep-alive, x-hop".parse().unwrap());
    resp.headers_mut().insert("x-hop", "must-not-pass".parse().unwrap());
    Ok(resp)
}

/// Starts an upstream on a free loopback port.
pub async fn start() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer)).await;
            });
        }
    });
    Upstream { addr }
}
