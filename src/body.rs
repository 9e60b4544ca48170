//! The one body type every response and forwarded request uses: a boxed
//! stream of bytes, so upstream bodies flow through without buffering.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Errors a body stream may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed HTTP body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `data` whole (error responses, admin answers).
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// An empty body (zero-sized: boxing it allocates nothing).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
