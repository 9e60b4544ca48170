//! Traces exported over OTLP/HTTP (protobuf) with the OpenTelemetry SDK:
//! a server span per request, with the key resolution and the rate-limit
//! decision as its events and the upstream exchange as a child span whose
//! id the upstream receives in `traceparent`. Spans are batched and sent
//! from the SDK's own thread through keygate's HTTP/1.1 client (plain or
//! TLS), so exporting never runs on a worker's event loop.

use crate::config::TracingConfig;
use crate::correlation::TraceParent;
use crate::http1::Pool;
use crate::proxy::call::Call;
use bytes::Bytes;
use http::HeaderValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read.
const MAX_ANSWER: usize = 1 << 20;

/// The running exporter and the tracer requests take spans from.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// `sample_ratio`, for callers whose sampled flag is not believed.
    ratio: f64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    /// Starts exporting to `cfg.endpoint`; exports run on `runtime`.
    pub fn start(cfg: &TracingConfig, runtime: tokio::runtime::Handle) -> Result<Telemetry, String> {
        let client = Collector { pool: crate::proxy::call::pool(&cfg.collector, Duration::from_secs(5)), runtime };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(cfg.collector.uri.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("the OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
            .with_resource(resource)
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "keygate");
        Ok(Telemetry { provider, tracer, ratio: cfg.sample_ratio })
    }

    /// Sends what is batched and stops (blocks: call off the event loop).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "could not send the last spans");
        }
    }

    /// The server span of a request that arrived at `start`, a child of
    /// the client's trace context if it sent one. It is named when it ends,
    /// once the route is known ([`RequestSpan::end`]). The caller's sampled
    /// flag is followed only when it is `believed` (it came through a
    /// trusted proxy): any other client could make every span exported.
    pub fn request_span(
        &self,
        start: SystemTime,
        parent: Option<&TraceParent>,
        state: Option<&HeaderValue>,
        believed: bool,
    ) -> RequestSpan {
        let cx = match parent {
            Some(p) => {
                let flags = if believed { p.flags } else { (p.flags & !1) | u8::from(ratio_samples(self.ratio, &p.trace_id)) };
                let state = state.and_then(|s| s.to_str().ok()).and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
                let remote = SpanContext::new(
                    TraceId::from_bytes(p.trace_id),
                    SpanId::from_bytes(p.parent_id),
                    TraceFlags::new(flags),
                    true,
                    state,
                );
                Context::new().with_remote_span_context(remote)
            }
            None => Context::new(),
        };
        let span = self
            .tracer
            .span_builder("request")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.tracer, &cx);
        RequestSpan { tracer: self.tracer.clone(), span, upstream: None }
    }
}

/// Whether `ratio` samples a trace: the SDK's own rule for a trace of no
/// parent (the low 63 bits of the id against the ratio), so a caller
/// whose flag is not believed is sampled as if it had sent none.
fn ratio_samples(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// One request's spans while it runs.
pub struct RequestSpan {
    tracer: SdkTracer,
    span: Span,
    upstream: Option<Span>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan").field("context", self.span.span_context()).finish()
    }
}

impl RequestSpan {
    /// Notes a step of the request as an event.
    pub fn event(&mut self, name: &'static str, at: SystemTime, attributes: Vec<KeyValue>) {
        self.span.add_event_with_timestamp(name, at, attributes);
    }

    /// Starts the upstream exchange's span; returns the `traceparent`
    /// the upstream gets (naming that span as its parent).
    pub fn start_upstream(&mut self, upstream: &str, at: SystemTime) -> HeaderValue {
        let sc = self.span.span_context();
        let parent = SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), false, sc.trace_state().clone());
        let cx = Context::new().with_remote_span_context(parent);
        let span = self
            .tracer
            .span_builder(format!("upstream {upstream}"))
            .with_kind(SpanKind::Client)
            .with_start_time(at)
            .with_attributes([KeyValue::new("keygate.upstream", upstream.to_string())])
            .start_with_context(&self.tracer, &cx);
        let own = span.span_context();
        let value = TraceParent {
            trace_id: own.trace_id().to_bytes(),
            parent_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        }
        .value();
        self.upstream = Some(span);
        value
    }

    /// Ends the upstream span when its answer (or failure) came.
    pub fn end_upstream(&mut self, at: SystemTime, status: Option<u16>) {
        if let Some(mut span) = self.upstream.take() {
            match status {
                Some(code) => span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code))),
                None => span.set_status(Status::error("no answer from the upstream")),
            }
            span.end_with_timestamp(at);
        }
    }

    /// Ends the request's span, named now its route is known, with what
    /// the access line says.
    pub fn end(mut self, name: String, at: SystemTime, attributes: Vec<KeyValue>, failed: bool) {
        self.span.update_name(name);
        self.span.set_attributes(attributes);
        if failed {
            self.span.set_status(Status::error("the gateway could not serve the request"));
        }
        self.span.end_with_timestamp(at);
    }
}

/// Sends export requests to the collector through keygate's own client,
/// on the main runtime (the SDK's batch thread waits for the answer).
#[derive(Clone)]
struct Collector {
    pool: Arc<Pool>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("target", &self.pool.target().authority).finish()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Collector {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let mut head = Call::new(parts.method, target, &self.pool);
        head.fields = parts.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let pool = Arc::clone(&self.pool);
        // On a blocking thread of the runtime, driven by its reactor: the
        // exchange's future need not be `Send`, only what it starts from.
        let runtime = self.runtime.clone();
        let sent = self.runtime.spawn_blocking(move || runtime.block_on(export(pool, head, body)));
        match sent.await {
            Ok(result) => result.map_err(Into::into),
            Err(e) => Err(e.to_string().into()),
        }
    }
}

/// One export request and its answer, within [`EXPORT_TIMEOUT`].
async fn export(pool: Arc<Pool>, head: Call, body: Bytes) -> Result<http::Response<Bytes>, String> {
    let answer = crate::proxy::call::call(&pool, &head, body, EXPORT_TIMEOUT, MAX_ANSWER).await?;
    let mut response = http::Response::new(answer.body);
    *response.status_mut() = answer.status;
    Ok(response)
}
