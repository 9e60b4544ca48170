//! What ties one request together across logs, services and traces: its
//! `X-Request-Id` (the client's when sane, else one keygate makes) and the
//! W3C trace context (`traceparent`, `tracestate`) it carries on.

use http::{HeaderMap, HeaderValue};
use rand::Rng;

/// The header both ways.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Longest request id kept from a client.
pub const MAX_REQUEST_ID: usize = 128;
/// Longest `tracestate` passed on (W3C allows 32 members of ~256 bytes;
/// beyond this the context is dropped rather than cut).
pub const MAX_TRACESTATE: usize = 512;

/// The request's id: the one the client (or a proxy in front) sent, if
/// there is exactly one and it is at most 128 of `[A-Za-z0-9._-]`: safe in
/// any log line, header or JSON string. Otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(one), None) if sane_id(one.as_bytes()) => one.clone(),
        _ => new_id(),
    }
}

fn sane_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 128 random bits as 32 lowercase hex digits (the shape of a W3C trace id).
pub fn new_id() -> HeaderValue {
    let bits: u128 = rand::thread_rng().gen();
    let mut text = [0u8; 32];
    hex_into(&bits.to_be_bytes(), &mut text);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// A parsed `traceparent` (version 00 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The client's trace context, if it sent exactly one valid
    /// `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero
    /// (a later version's longer form is read by its first four parts).
    pub fn of(headers: &HeaderMap) -> Option<TraceParent> {
        let mut sent = headers.get_all(&TRACEPARENT).iter();
        let (Some(one), None) = (sent.next(), sent.next()) else { return None };
        TraceParent::parse(one.as_bytes())
    }

    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let version = hex_array::<1>(&v[0..2])?;
        if version[0] == 0xff || (version[0] == 0 && v.len() != 55) {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let trace_id = hex_array::<16>(&v[3..35])?;
        let parent_id = hex_array::<8>(&v[36..52])?;
        let flags = hex_array::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, parent_id, flags })
    }

    /// The header value, version 00.
    pub fn value(&self) -> HeaderValue {
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut text[3..35]);
        text[35] = b'-';
        hex_into(&self.parent_id, &mut text[36..52]);
        text[52] = b'-';
        hex_into(&[self.flags], &mut text[53..55]);
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("00"))
    }

    /// Whether the caller asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// `tracestate` as the client sent it, if it goes with a valid
/// `traceparent`, is one line, bounded and printable.
pub fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut sent = headers.get_all(&TRACESTATE).iter();
    let (Some(one), None) = (sent.next(), sent.next()) else { return None };
    let ok = one.len() <= MAX_TRACESTATE && one.as_bytes().iter().all(|b| (0x20..0x7f).contains(b));
    ok.then(|| one.clone())
}

/// Lowercase hex digits only (W3C forbids upper case).
fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &http::HeaderName, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_sane_request_id_is_kept_and_any_other_replaced() {
        assert_eq!(request_id(&with(&REQUEST_ID, &["abc-123_X.y"])), "abc-123_X.y");
        let long = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(request_id(&with(&REQUEST_ID, &[&long])), long.as_str());
        for bad in [&["a".repeat(129)][..], &["has space".into()], &["quote\"".into()], &["".into()], &["a".into(), "b".into()]] {
            let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
            let id = request_id(&with(&REQUEST_ID, &bad));
            assert_eq!(id.len(), 32, "{bad:?} gave {id:?}");
            assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()), "new ids differ");
    }

    #[test]
    fn traceparent_is_read_strictly_and_written_back_alike() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::of(&with(&TRACEPARENT, &[good])).unwrap();
        assert!(tp.sampled());
        assert_eq!(tp.value(), good);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
        // A later version may add fields after a dash.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more").is_some());
        assert_eq!(TraceParent::of(&with(&TRACEPARENT, &[good, good])), None, "two are ambiguous");
    }

    #[test]
    fn tracestate_passes_only_when_bounded_and_single() {
        assert_eq!(tracestate(&with(&TRACESTATE, &["congo=t61rcWkgMzE"])).unwrap(), "congo=t61rcWkgMzE");
        assert!(tracestate(&with(&TRACESTATE, &[&"a".repeat(MAX_TRACESTATE + 1)])).is_none());
        assert!(tracestate(&with(&TRACESTATE, &["a=1", "b=2"])).is_none());
    }
}
