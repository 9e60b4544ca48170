//! A small OTLP/HTTP receiver: takes `POST /v1/traces` (protobuf), keeps
//! every span it was sent, answers 200 as a collector does.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A running receiver and what it got.
pub struct Receiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span so far, each with its resource's `service.name`.
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The paths exports were posted to.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Starts a receiver on a free loopback port.
pub async fn start() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let (kept, seen) = (Arc::clone(&spans), Arc::clone(&paths));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (kept, seen) = (Arc::clone(&kept), Arc::clone(&seen));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (kept, seen) = (Arc::clone(&kept), Arc::clone(&seen));
                    async move {
                        seen.lock().unwrap().push(req.uri().path().to_string());
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let export = ExportTraceServiceRequest::decode(body.as_ref()).unwrap_or_default();
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .as_ref()
                                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                                .and_then(|a| a.value.as_ref())
                                .map(|v| format!("{:?}", v.value))
                                .unwrap_or_default();
                            for scope in resource.scope_spans {
                                for span in scope.spans {
                                    kept.lock().unwrap().push((service.clone(), span));
                                }
                            }
                        }
                        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                        resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    Receiver { addr, spans, paths }
}
