//! HTTP/1.1 body framing (RFC 9112 sections 6 and 7): where a message body
//! ends, and the chunked decoding. Shared by the two HTTP/1.1 ends keygate
//! speaks: request bodies read by the server, response bodies read by the
//! upstream client.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http_body::SizeHint;

/// Bytes asked of a socket per read of a body.
pub const READ_CHUNK: usize = 16 * 1024;

/// Longest chunk-size line accepted (the size and its extensions).
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk (they are dropped).
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the decoding.
    Chunked(Chunk),
    /// A response with neither: it ends when the connection closes.
    UntilClose,
}

/// Where a chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    /// Reading trailer lines; this many trailer bytes so far.
    Trailers(usize),
    Done,
}

/// What the buffered bytes give.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// Why a body's framing is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed chunked body: missing CRLF after a chunk")]
    MissingCrlf,
    #[error("malformed chunked body: a chunk-size line is longer than {MAX_CHUNK_LINE} bytes")]
    LineTooLong,
    #[error("malformed chunked body: trailers longer than {MAX_TRAILER_BYTES} bytes")]
    TrailersTooLong,
    #[error("malformed chunked body: invalid chunk size {0:?}")]
    ChunkSize(String),
}

impl Framing {
    /// A chunked body at its start.
    pub const CHUNKED: Framing = Framing::Chunked(Chunk::Size);

    /// Whether the whole body has been read.
    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    /// The size still to come, when the framing says it.
    pub fn size_hint(&self) -> SizeHint {
        match self {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }

    /// Takes the next piece of body out of `buf` (chunk framing and
    /// trailers are consumed and dropped).
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, FramingError> {
        loop {
            match self {
                Framing::Empty | Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(Step::End),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    if let Framing::Chunked(c @ Chunk::Data(0)) = self {
                        *c = Chunk::DataEnd;
                    }
                    return Ok(Step::Data(buf.split_to(take as usize).freeze()));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(FramingError::MissingCrlf);
                    }
                    let _ = buf.split_to(2);
                    *self = Framing::CHUNKED;
                }
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers(_))) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(FramingError::LineTooLong);
                        }
                        return Ok(Step::NeedMore);
                    };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    *state = match *state {
                        Chunk::Size => match chunk_size(line)? {
                            0 => Chunk::Trailers(0),
                            n => Chunk::Data(n),
                        },
                        // Trailers are dropped; an empty line ends the body.
                        Chunk::Trailers(_) if line.is_empty() => Chunk::Done,
                        Chunk::Trailers(seen) if seen + line.len() > MAX_TRAILER_BYTES => {
                            return Err(FramingError::TrailersTooLong);
                        }
                        Chunk::Trailers(seen) => Chunk::Trailers(seen + line.len() + 2),
                        other => other,
                    };
                }
            }
        }
    }
}

/// The line that opens a chunk of `len` bytes (`1f4\r\n`), written into `buf`.
pub fn chunk_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    buf[16..].copy_from_slice(b"\r\n");
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Whether a request body has no meaning for this method (RFC 9110
/// section 9.3): some servers ignore it and would read it as the next
/// request, so a connection that carried one carries no other.
pub fn body_has_no_meaning(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE, Method::TRACE, Method::CONNECT].contains(method)
}

/// Whether a response with this status never has a body (1xx, 204, 304),
/// whatever its headers say.
pub fn bodiless(status: http::StatusCode) -> bool {
    status.is_informational() || status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED
}

/// The `Content-Length` of a message: `Ok(None)` without one, an error
/// when a value is not a number or two values differ.
pub fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    agreed_length(headers.get_all(header::CONTENT_LENGTH).iter().map(HeaderValue::as_bytes))
}

/// [`declared_length`] over the `Content-Length` values as received.
pub fn agreed_length<'v>(values: impl IntoIterator<Item = &'v [u8]>) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in values {
        let n = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        length = Some(n);
    }
    Ok(length)
}

/// The size on a chunk-size line: hex digits (at most 16), then optional
/// whitespace and `;` extensions, which are ignored. Anything looser (a
/// sign, leading spaces) is refused: two parsers must agree where a body ends.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let rest = &rest[rest_ok..];
    let invalid = || FramingError::ChunkSize(String::from_utf8_lossy(&line[..line.len().min(32)]).into_owned());
    if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') {
        return Err(invalid());
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| invalid())?;
    u64::from_str_radix(text, 16).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(framing: Framing, wire: &[u8]) -> Result<(Vec<u8>, Framing), FramingError> {
        let mut framing = framing;
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        loop {
            match framing.next(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::NeedMore | Step::End => return Ok((out, framing)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, end) = decode(Framing::CHUNKED, b"5;ext=1\r\nhello\r\n6 \r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(end, Framing::Chunked(Chunk::Done));
    }

    #[test]
    fn loose_chunk_sizes_are_refused() {
        for bad in [&b"+5\r\nhello\r\n0\r\n\r\n"[..], b" 5\r\nhello\r\n0\r\n\r\n", b"5x\r\nhello\r\n", b"11111111111111111\r\n"] {
            assert!(
                matches!(decode(Framing::CHUNKED, bad), Err(FramingError::ChunkSize(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode(Framing::CHUNKED, b"5\r\nhelloXX"), Err(FramingError::MissingCrlf));
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (body, end) = decode(Framing::Length(5), b"helloGET / HTTP/1.1").unwrap();
        assert_eq!(body, b"hello");
        assert!(end.is_done());
        let (body, end) = decode(Framing::Length(10), b"hel").unwrap();
        assert_eq!((body.as_slice(), end), (&b"hel"[..], Framing::Length(7)));
    }

    #[test]
    fn chunk_lines_are_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_line(255, &mut buf), b"ff\r\n");
        assert_eq!(chunk_line(65536, &mut buf), b"10000\r\n");
        assert_eq!(chunk_line(usize::MAX, &mut buf), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn declared_lengths_must_agree() {
        let mut h = HeaderMap::new();
        assert_eq!(declared_length(&h), Ok(None));
        h.append(header::CONTENT_LENGTH, http::HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, http::HeaderValue::from_static(" 5"));
        assert_eq!(declared_length(&h), Ok(Some(5)));
        h.append(header::CONTENT_LENGTH, http::HeaderValue::from_static("6"));
        assert!(declared_length(&h).is_err());
    }

    #[test]
    fn endless_trailers_are_refused() {
        let mut wire = b"0\r\n".to_vec();
        for _ in 0..100 {
            wire.extend_from_slice(format!("X-Pad: {}\r\n", "p".repeat(1000)).as_bytes());
        }
        assert_eq!(decode(Framing::CHUNKED, &wire), Err(FramingError::TrailersTooLong));
    }

    #[test]
    fn a_chunked_body_decodes_alike_however_it_is_split() {
        let wire = b"4\r\nWiki\r\nA;ext\r\n0123456789\r\n0\r\nT: 1\r\n\r\nrest";
        for split in 0..wire.len() {
            let mut framing = Framing::CHUNKED;
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let mut fed = split;
            loop {
                match framing.next(&mut buf).unwrap() {
                    Step::Data(d) => body.extend_from_slice(&d),
                    Step::End => {
                        // What the decoder was never given stays unread too.
                        buf.extend_from_slice(&wire[fed..]);
                        break;
                    }
                    Step::NeedMore => {
                        assert!(fed < wire.len(), "ran out at split {split}");
                        buf.extend_from_slice(&wire[fed..]);
                        fed = wire.len();
                    }
                }
            }
            assert_eq!(body, b"Wiki0123456789", "split at {split}");
            assert_eq!(&buf[..], b"rest", "split at {split}: what follows the body is left");
        }
    }

    #[test]
    fn sizes_are_hex_in_either_case_and_overflow_is_refused() {
        assert_eq!(decode(Framing::CHUNKED, b"A\r\n0123456789\r\n0\r\n\r\n").unwrap().0, b"0123456789");
        assert_eq!(decode(Framing::CHUNKED, b"a\r\n0123456789\r\n0\r\n\r\n").unwrap().0, b"0123456789");
        assert_eq!(decode(Framing::CHUNKED, b"0000000000000001\r\nx\r\n0\r\n\r\n").unwrap().0, b"x", "16 digits with zeros");
        assert!(matches!(decode(Framing::CHUNKED, b";x\r\n"), Err(FramingError::ChunkSize(_))), "no digits");
        assert!(matches!(decode(Framing::CHUNKED, b"5 x\r\n"), Err(FramingError::ChunkSize(_))), "junk after the size");
        let long_line = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 1]].concat();
        assert_eq!(decode(Framing::CHUNKED, &long_line), Err(FramingError::LineTooLong));
    }

    #[test]
    fn empty_and_zero_lengths_are_done_at_once() {
        for framing in [Framing::Empty, Framing::Length(0)] {
            assert!(framing.is_done());
            assert_eq!(framing.size_hint().exact(), Some(0));
            assert_eq!(decode(framing, b"GET / HTTP/1.1\r\n").unwrap().0, b"", "the next request is not body");
        }
        assert!(!Framing::CHUNKED.is_done());
        assert_eq!(Framing::CHUNKED.size_hint().exact(), None);
        assert_eq!(Framing::UntilClose.size_hint().exact(), None);
    }

    #[test]
    fn until_close_takes_everything() {
        let (body, framing) = decode(Framing::UntilClose, b"all of it").unwrap();
        assert_eq!((body.as_slice(), framing), (&b"all of it"[..], Framing::UntilClose));
    }

    #[test]
    fn methods_whose_body_has_no_meaning() {
        use http::Method;
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE, Method::TRACE, Method::CONNECT] {
            assert!(body_has_no_meaning(&m), "{m}");
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::from_bytes(b"PURGE").unwrap()] {
            assert!(!body_has_no_meaning(&m), "{m}");
        }
    }

    #[test]
    fn bodiless_statuses() {
        use http::StatusCode;
        for s in [StatusCode::CONTINUE, StatusCode::SWITCHING_PROTOCOLS, StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert!(bodiless(s), "{s}");
        }
        for s in [StatusCode::OK, StatusCode::RESET_CONTENT, StatusCode::NOT_FOUND] {
            assert!(!bodiless(s), "{s}");
        }
    }
}
