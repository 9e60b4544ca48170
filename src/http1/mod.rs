//! HTTP/1.1, both ends keygate speaks, sealed: the server connection
//! (`server`), the upstream client and its pools (`client`), body framing
//! (`framing`), the lazily moved deadlines every wait uses (`deadline`), and
//! header lines (`lines`, [`write_line`]).
//!
//! This module knows nothing of keys, rate limits or identity. It takes and
//! returns typed values: a handler's [`Reply`] with extra [`Fields`] and a
//! [`BodyOutcome`]; a request head to forward as anything implementing
//! [`client::RequestHead`]. What a field means, and which may pass, is the
//! caller's business; how it goes on the wire is this module's.

mod client;
mod deadline;
mod framing;
mod lines;
mod server;

// The whole surface the rest of keygate sees.
pub use client::pool::{ConnectError, Pool, Target};
pub use client::stream::TlsTarget;
pub use client::{ExchangeError, RequestHead, SwitchedIo, Timing, Upstreamed};
pub use deadline::Deadline;
pub use lines::{FieldLines, HeaderLines};
pub use server::{serve, Ended, Limits};

/// What the fuzz targets drive directly (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use super::client::write_request;
    pub use super::framing::{Framing, Step};
    pub use super::server::parse_head;
}

use crate::body::Body;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Response;

/// Fields that never cross a proxy (RFC 9110 section 7.6.1, and the
/// classic list), lowercase.
pub const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization"];

/// Whether a header is hop-by-hop. Names are lowercase, so a match on the
/// text settles it without building names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The names this module treats apart, as received (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Connection,
    TransferEncoding,
    Upgrade,
    /// Any other of [`HOP_BY_HOP`].
    OtherHop,
    ContentLength,
    Host,
    Date,
    RequestId,
    ContentType,
    Other,
}

impl Named {
    /// Sorts a name by its length first, so that most names are told
    /// apart by one comparison: every field of every head passes here.
    fn of(name: &[u8]) -> Named {
        // A name is a token (both parsers check), and setting a token
        // byte's 0x20 bit folds its letters and turns no other byte into
        // a letter, digit or `-`: a compare as cheap as a plain one.
        let is = |lower: &[u8]| name.iter().zip(lower).all(|(n, l)| n | 0x20 == *l);
        match name.len() {
            2 if is(b"te") => Named::OtherHop,
            4 if is(b"host") => Named::Host,
            4 if is(b"date") => Named::Date,
            7 if is(b"upgrade") => Named::Upgrade,
            7 if is(b"trailer") => Named::OtherHop,
            10 if is(b"connection") => Named::Connection,
            10 if is(b"keep-alive") => Named::OtherHop,
            12 if is(b"x-request-id") => Named::RequestId,
            12 if is(b"content-type") => Named::ContentType,
            14 if is(b"content-length") => Named::ContentLength,
            16 if is(b"proxy-connection") => Named::OtherHop,
            17 if is(b"transfer-encoding") => Named::TransferEncoding,
            19 if is(b"proxy-authorization") => Named::OtherHop,
            _ => Named::Other,
        }
    }

    fn hop_by_hop(self) -> bool {
        matches!(self, Named::Connection | Named::TransferEncoding | Named::Upgrade | Named::OtherHop)
    }
}

/// Whether a field is this module's to write, never a caller's: the
/// framing, `Host`, and the hop-by-hop fields.
pub(crate) fn frames_or_hops(name: &[u8]) -> bool {
    let named = Named::of(name);
    named.hop_by_hop() || matches!(named, Named::ContentLength | Named::Host)
}

/// How a response header field of a handler's header map is spelled on
/// an HTTP/1.1 wire: as the caller's `spellings` list it (compared without
/// case), else with each word capitalised (`retry-after` as `Retry-After`),
/// since many clients look names up case-sensitively. `name` is the
/// lowercase form a header map holds; the answer is written into `buf`
/// unless the list has it.
fn spelled<'a>(name: &'a str, spellings: &'static [&'static str], buf: &'a mut [u8; 64]) -> &'a [u8] {
    if let Some(known) = spellings.iter().find(|s| s.eq_ignore_ascii_case(name)) {
        return known.as_bytes();
    }
    if name.len() > buf.len() {
        return name.as_bytes();
    }
    let mut upper = true;
    for (slot, b) in buf.iter_mut().zip(name.bytes()) {
        *slot = if upper { b.to_ascii_uppercase() } else { b };
        upper = b == b'-';
    }
    &buf[..name.len()]
}

/// Appends one header line, `name: value\r\n`.
fn write_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The fields of header lines written by [`write_line`], as names and values.
fn read_lines(text: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    text.split(|b| *b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|b| *b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

/// In a request's extensions when its head carried an `Upgrade` field (the
/// HTTP/1.1 server sets it; HTTP/2 has no such field): whoever cares about
/// upgrades need not look up a header map for a request without it.
#[derive(Debug, Clone, Copy)]
pub struct UpgradeAsked;

/// A value passed once through a response's extensions (which must be
/// `Clone`): the first to take it has it.
pub struct Handover<T>(std::sync::Arc<std::sync::Mutex<Option<T>>>);

impl<T> Clone for Handover<T> {
    fn clone(&self) -> Self {
        Handover(std::sync::Arc::clone(&self.0))
    }
}

impl<T> Handover<T> {
    pub fn new(value: T) -> Handover<T> {
        Handover(std::sync::Arc::new(std::sync::Mutex::new(Some(value))))
    }

    /// The value, unless it was taken.
    pub fn take(&self) -> Option<T> {
        self.0.lock().ok()?.take()
    }
}

/// What a handler gives a server connection: the response, the header lines
/// an upstream sent with it, fields of its own to add, and what became of
/// the request body. Each protocol's writer renders them its own way.
pub struct Reply {
    pub response: Response<Body>,
    /// An upstream's header fields, written after the response's own
    /// (empty for keygate's own answers).
    pub upstream: HeaderLines,
    /// More fields, written last.
    pub extra: Fields,
    pub body: BodyOutcome,
}

/// What became of a request body, as the handler tells the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyOutcome {
    /// Read, or not needed: what is left of it may be read and dropped so
    /// the connection carries another request.
    #[default]
    Complete,
    /// Refused (too large, too slow): the connection closes after the answer.
    Refused,
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Reply {
        Reply { response, upstream: HeaderLines::default(), extra: Fields::default(), body: BodyOutcome::Complete }
    }
}

impl From<client::Upstreamed> for Reply {
    fn from(up: client::Upstreamed) -> Reply {
        Reply { response: up.response, upstream: up.lines, extra: Fields::default(), body: BodyOutcome::Complete }
    }
}

impl Reply {
    /// The response with every field in its map (for HTTP/2).
    pub fn into_response(self) -> Response<Body> {
        let mut response = self.response;
        self.upstream.append_to(response.headers_mut());
        self.extra.insert_into(response.headers_mut());
        response
    }
}

/// Header fields a handler adds to its response, rendered only when the
/// response is written: a few numbers, and the function that turns them
/// into names and values. Small and `Copy`, so a response carries them on
/// every request without an allocation or a copy of rendered text.
#[derive(Clone, Copy, Default)]
pub struct Fields {
    numbers: [i64; 8],
    render: Option<Render>,
}

/// Calls `field` with each name and value that `numbers` stand for.
pub type Render = fn(numbers: &[i64; 8], field: &mut dyn FnMut(&'static str, &[u8]));

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut all = Vec::new();
        self.each(&mut |name, value| all.push((name, String::from_utf8_lossy(value).into_owned())));
        f.debug_map().entries(all).finish()
    }
}

impl Fields {
    /// The fields `render` makes of `numbers`.
    pub fn new(numbers: [i64; 8], render: Render) -> Fields {
        Fields { numbers, render: Some(render) }
    }

    /// Calls `field` with each name and value, in order.
    pub fn each(&self, field: &mut dyn FnMut(&'static str, &[u8])) {
        if let Some(render) = self.render {
            render(&self.numbers, field);
        }
    }

    /// Writes them as header lines.
    pub fn write_lines(&self, out: &mut Vec<u8>) {
        self.each(&mut |name, value| write_line(out, name.as_bytes(), value));
    }

    /// Sets them in a header map (each replacing a field of its name).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        self.each(&mut |name, value| {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
                headers.insert(name, value);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a name as received, in any case, is hop-by-hop.
    fn is_hop_by_hop_any_case(name: &[u8]) -> bool {
        Named::of(name).hop_by_hop()
    }

    #[test]
    fn names_are_spelled_as_the_caller_lists_them_else_capitalised() {
        let mut buf = [0u8; 64];
        let listed: &[&str] = &["X-RateLimit-Remaining", "WWW-Authenticate"];
        assert_eq!(spelled("x-ratelimit-remaining", listed, &mut buf), b"X-RateLimit-Remaining");
        assert_eq!(spelled("x-ratelimit-remaining", &[], &mut buf), b"X-Ratelimit-Remaining");
        assert_eq!(spelled("retry-after", listed, &mut buf), b"Retry-After");
        assert_eq!(spelled("www-authenticate", listed, &mut buf), b"WWW-Authenticate");
        assert_eq!(spelled("content-type", listed, &mut buf), b"Content-Type");
        assert_eq!(spelled("x", listed, &mut buf), b"X");
        let long = "a".repeat(80);
        assert_eq!(spelled(&long, listed, &mut buf), long.as_bytes(), "longer than the buffer: as it is");
    }

    #[test]
    fn fields_render_alike_as_lines_and_in_a_map() {
        let f = Fields::new([12, 60, 0, 0, 0, 0, 0, 0], |n, field| {
            field("x-a", itoa::Buffer::new().format(n[0]).as_bytes());
            field("x-b", format!("\"fixed\";q={}", n[1]).as_bytes());
        });
        let mut lines = Vec::new();
        f.write_lines(&mut lines);
        assert_eq!(lines, b"x-a: 12\r\nx-b: \"fixed\";q=60\r\n");
        let mut map = HeaderMap::new();
        f.insert_into(&mut map);
        let back: Vec<(&[u8], &[u8])> = read_lines(&lines).collect();
        assert_eq!(back, map.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect::<Vec<_>>());
        let mut none = Vec::new();
        Fields::default().write_lines(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn names_are_sorted_in_any_case_and_near_misses_are_not() {
        for name in ["Content-Type", "content-type", "CONTENT-TYPE", "cOnTeNt-TyPe"] {
            assert_eq!(Named::of(name.as_bytes()), Named::ContentType, "{name}");
        }
        for name in ["Content-Typf", "Content_Type", "Content-Type ", "Content-Typ", "Content-Type\r"] {
            assert_eq!(Named::of(name.as_bytes()), Named::Other, "{name}");
        }
        assert_eq!(Named::of(b"X-REQUEST-ID"), Named::RequestId);
        assert_eq!(Named::of(b"dATE"), Named::Date);
        assert_eq!(Named::of(b"Content-Length"), Named::ContentLength);
        assert_eq!(Named::of(b"Content-Lengt_"), Named::Other);
    }

    #[test]
    fn every_hop_by_hop_name_is_sorted_as_one_in_any_case() {
        for name in HOP_BY_HOP {
            assert!(is_hop_by_hop_any_case(name.as_bytes()), "{name}");
            assert!(is_hop_by_hop_any_case(name.to_ascii_uppercase().as_bytes()), "{name}");
            assert!(!is_hop_by_hop_any_case(format!("{name}s").as_bytes()), "{name}s");
            assert!(!is_hop_by_hop_any_case(&name.as_bytes()[1..]), "{name} less its first letter");
        }
        let others = ["date", "x-request-id", "content-type", "content-length", "host", "accept", "x-tE"];
        for name in others {
            assert!(!is_hop_by_hop_any_case(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_names_in_any_case_and_the_fields_only_http1_writes() {
        assert!(is_hop_by_hop_any_case(b"Transfer-Encoding") && is_hop_by_hop_any_case(b"PROXY-AUTHORIZATION"));
        assert!(!is_hop_by_hop_any_case(b"transfer-encodings"));
        for name in ["content-length", "Content-Length", "HOST", "te", "Upgrade", "keep-alive", "proxy-connection", "trailer"] {
            assert!(frames_or_hops(name.as_bytes()), "{name}");
        }
        for name in ["x-content-length", "hostname", "accept", "", "cookie", "user-agent"] {
            assert!(!frames_or_hops(name.as_bytes()), "{name}");
        }
    }
}
