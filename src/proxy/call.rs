//! Requests keygate makes of its own accord (span exports, GitHub's key
//! list, webhook deliveries): one whole request out, one bounded answer
//! back, within one deadline.

use crate::config::Outbound;
use crate::http1::{FieldLines, Pool, RequestHead, Target};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The connection pool for calls to `to`.
pub fn pool(to: &Outbound, connect_timeout: Duration) -> Arc<Pool> {
    let mut target = Target::new(&to.authority, connect_timeout);
    if let Some(tls) = &to.tls {
        target = target.with_tls(tls.clone());
    }
    Pool::new(target)
}

/// A request's head as the HTTP/1.1 client writes it.
pub struct Call {
    pub method: Method,
    /// Origin form: `/path?query`.
    pub target: String,
    pub host: HeaderValue,
    pub fields: Vec<(HeaderName, HeaderValue)>,
}

impl Call {
    /// A request for `target` of the pool's origin.
    pub fn new(method: Method, target: impl Into<String>, pool: &Pool) -> Call {
        Call { method, target: target.into(), host: pool.target().host_header.clone(), fields: Vec::new() }
    }
}

impl RequestHead for Call {
    fn method(&self) -> &Method {
        &self.method
    }
    fn target(&self) -> &str {
        &self.target
    }
    fn host(&self) -> Option<&HeaderValue> {
        Some(&self.host)
    }
    fn each_field(&self, field: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value) in &self.fields {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    fn rendered(&self) -> &FieldLines {
        static NONE: FieldLines = FieldLines::EMPTY;
        &NONE
    }
}

/// What came back: the status and at most the asked-for bytes of body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends `head` and `body` through `pool` and reads the answer, all
/// within `timeout`; a body over `max_answer` bytes is an error.
pub async fn call(pool: &Arc<Pool>, head: &Call, body: Bytes, timeout: Duration, max_answer: usize) -> Result<Answer, String> {
    let timing = crate::http1::Timing::within(timeout);
    let deadline = timing.deadline;
    let mut body = Some(crate::body::full(body));
    let answer = super::exchange(pool, head, &mut body, Instant::now(), &timing).await.map_err(|e| e.to_string())?;
    let status = answer.response.status();
    match tokio::time::timeout_at(deadline, crate::body::read_to_bytes(answer.response.into_body(), max_answer)).await {
        Err(_) => Err("the answer took too long".into()),
        Ok(body) => Ok(Answer { status, body: body.map_err(|e| e.to_string())? }),
    }
}
