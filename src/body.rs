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

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Failed(String),
}

/// Reads a whole body of at most `max` bytes (admin requests, answers to
/// keygate's own calls). Frame by frame rather than through `Limited`,
/// whose error conversion keeps a caller's future from being provably `Send`.
pub async fn read_to_bytes<B>(mut body: B, max: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
