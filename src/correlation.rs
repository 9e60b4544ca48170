//! What ties one request together across logs, services and traces: its
//! `X-Request-Id` (the client's when sane, else one keygate makes) and the
//! W3C trace context (`traceparent`, `tracestate`) it carries on.

use http::{HeaderMap, HeaderValue};
use rand::Rng;

/// The header both ways.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A request's id: a value the client sent (already checked to be a safe
/// token), or 32 hex digits made for it, kept inline (no allocation and no
/// value check on the path every request takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    Sent(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Sent(v) => v.as_bytes(),
            RequestId::Made(b) => b,
        }
    }

    /// As text (both forms are ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// Longest request id kept from a client.
pub const MAX_REQUEST_ID: usize = 128;
/// Longest `tracestate` passed on (W3C allows 32 members of ~256 bytes;
/// beyond this the context is dropped rather than cut).
pub const MAX_TRACESTATE: usize = 512;

/// What a request carries that ties it to others, read in one pass over
/// its fields (three map lookups hashed three names on every request).
///
/// The id is the one the client (or a proxy in front) sent, if there is
/// exactly one and it is at most 128 of `[A-Za-z0-9._-]`: safe in any log
/// line, header or JSON string; otherwise a new one. The trace context is
/// the client's single valid `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`,
/// ids not all zero; a later version's longer form is read by its first
/// four parts), and `tracestate` goes with it when one line, bounded and
/// printable.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub request_id: RequestId,
    /// The client's trace context, when valid and alone.
    pub parent: Option<TraceParent>,
    /// Its `tracestate`, only with a valid parent.
    pub state: Option<HeaderValue>,
}

impl Incoming {
    pub fn of(headers: &HeaderMap) -> Incoming {
        let (mut ids, mut parents, mut states) = (Seen::default(), Seen::default(), Seen::default());
        for (name, value) in headers {
            let seen = match name.as_str().len() {
                12 if *name == REQUEST_ID => &mut ids,
                11 if *name == TRACEPARENT => &mut parents,
                10 if *name == TRACESTATE => &mut states,
                _ => continue,
            };
            seen.add(value);
        }
        let request_id = match ids.one().filter(|v| sane_id(v.as_bytes())) {
            Some(v) => RequestId::Sent(v.clone()),
            None => RequestId::Made(new_id()),
        };
        let parent = parents.one().and_then(|v| TraceParent::parse(v.as_bytes()));
        let state = parent.and(states.one()).filter(|v| sane_state(v)).cloned();
        Incoming { request_id, parent, state }
    }
}

/// The values of one field, as far as "exactly one" goes.
#[derive(Default)]
struct Seen<'a> {
    first: Option<&'a HeaderValue>,
    more: bool,
}

impl<'a> Seen<'a> {
    fn add(&mut self, v: &'a HeaderValue) {
        self.more |= self.first.is_some();
        self.first.get_or_insert(v);
    }

    fn one(&self) -> Option<&'a HeaderValue> {
        self.first.filter(|_| !self.more)
    }
}

fn sane_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// 128 random bits as 32 lowercase hex digits (the shape of a W3C trace id).
/// From a per-thread wyrand seeded by the OS: an id must be unique, not
/// secret, and a ChaCha draw per request cost more than the rest of the id.
pub fn new_id() -> [u8; 32] {
    let bits = IDS.with(|state| {
        let mut s = state.get();
        let (high, low) = (wyrand(&mut s), wyrand(&mut s));
        state.set(s);
        u128::from(high) << 64 | u128::from(low)
    });
    let mut text = [0u8; 32];
    hex_into(&bits.to_be_bytes(), &mut text);
    text
}

thread_local! {
    static IDS: std::cell::Cell<u64> = std::cell::Cell::new(rand::rngs::OsRng.gen());
}

/// wyrand: one multiply per 64 bits, a full period over the state.
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    (t >> 64) as u64 ^ t as u64
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
}

fn sane_state(v: &HeaderValue) -> bool {
    v.len() <= MAX_TRACESTATE && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
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
        assert_eq!(Incoming::of(&with(&REQUEST_ID, &["abc-123_X.y"])).request_id.as_str(), "abc-123_X.y");
        let long = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(Incoming::of(&with(&REQUEST_ID, &[&long])).request_id.as_str(), long.as_str());
        for bad in [&["a".repeat(129)][..], &["has space".into()], &["quote\"".into()], &["".into()], &["a".into(), "b".into()]] {
            let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
            let id = Incoming::of(&with(&REQUEST_ID, &bad)).request_id;
            assert!(matches!(id, RequestId::Made(_)) && id.as_bytes().len() == 32, "{bad:?} gave {id:?}");
            assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(Incoming::of(&HeaderMap::new()).request_id, Incoming::of(&HeaderMap::new()).request_id, "new ids differ");
    }

    #[test]
    fn traceparent_is_read_strictly_and_written_back_alike() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = Incoming::of(&with(&TRACEPARENT, &[good])).parent.unwrap();
        assert_eq!(tp.flags & 1, 1, "sampled");
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
        assert_eq!(Incoming::of(&with(&TRACEPARENT, &[good, good])).parent, None, "two are ambiguous");
    }

    #[test]
    fn tracestate_passes_only_when_bounded_single_and_with_its_parent() {
        let parent = |state: &[&str]| {
            let mut h = with(&TRACESTATE, state);
            h.insert(TRACEPARENT, HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
            h
        };
        assert_eq!(Incoming::of(&parent(&["congo=t61rcWkgMzE"])).state.unwrap(), "congo=t61rcWkgMzE");
        assert!(Incoming::of(&parent(&[&"a".repeat(MAX_TRACESTATE + 1)])).state.is_none());
        assert!(Incoming::of(&parent(&["a=1", "b=2"])).state.is_none());
        assert!(Incoming::of(&with(&TRACESTATE, &["congo=t61rcWkgMzE"])).state.is_none(), "no parent, no state");
    }
}
