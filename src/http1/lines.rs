//! An upstream response's header fields kept as HTTP/1.1 text.
//!
//! The client reads an upstream's head once, keeps the fields that may go
//! on as `name: value\r\n` lines, and the server copies them out as they
//! are, with no header map in between
//! (docs/decisions/004-header-lines-not-maps.md). HTTP/2 clients (and
//! tests) turn them into a map.

use super::{read_lines, write_line, Named};
use crate::http1::framing::agreed_length;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The end-to-end header fields of an upstream response, as header lines.
/// `Content-Length` is kept apart as a number (the writer frames the body
/// with it); hop-by-hop fields and those `Connection` names are gone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderLines {
    text: Vec<u8>,
    content_length: Option<u64>,
    has_date: bool,
    /// Whether an `X-Request-Id` is among them (keygate answers with the
    /// request's own, so the upstream's is taken out).
    has_request_id: bool,
    /// Whether the answer is a server-sent event stream (`Content-Type:
    /// text/event-stream`, parameters allowed).
    event_stream: bool,
}

/// Fields rendered once as header lines, to be written as they are into
/// many requests (a key's identity fields, cached with the key). Only this
/// module renders them, and never a framing, `Host` or hop-by-hop field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldLines(bytes::Bytes);

impl FieldLines {
    /// No fields.
    pub const EMPTY: FieldLines = FieldLines(bytes::Bytes::new());

    /// Renders `fields`, leaving out any this module writes itself.
    pub fn render<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> FieldLines {
        let mut text = Vec::with_capacity(128);
        for (name, value) in fields {
            if !super::frames_or_hops(name) {
                write_line(&mut text, name, value);
            }
        }
        // Exactly as long as the text: a cached key keeps these for as long
        // as it is cached, and a `Vec` with room to spare would keep the room
        // (and, made into `Bytes`, one more allocation to share it by).
        FieldLines(text.into_boxed_slice().into())
    }

    /// The lines, `name: value\r\n` each.
    pub fn text(&self) -> &[u8] {
        &self.0
    }
}

/// What reading a response head's fields learned besides the lines.
#[derive(Debug, Default)]
pub struct Hop<'a> {
    /// `close` or `keep-alive` in `Connection`, if either was named.
    pub close: bool,
    pub keep_alive: bool,
    /// The last `Transfer-Encoding` coding, lowercase-compared by the caller.
    pub transfer_encoding: Option<&'a [u8]>,
    /// `Upgrade`, when sent once.
    pub upgrade: Option<&'a [u8]>,
}

impl HeaderLines {
    /// Sorts the fields of a parsed head: hop-by-hop ones (and those the
    /// `Connection` field names) into [`Hop`], the rest into lines. Fails
    /// on an invalid or conflicting `Content-Length`.
    pub fn sort<'a>(fields: &[httparse::Header<'a>]) -> Result<(HeaderLines, Hop<'a>), &'static str> {
        let mut hop = Hop::default();
        // Names `Connection` lists are hop-by-hop too; usually there are none.
        let mut named: Vec<&[u8]> = Vec::new();
        let mut upgrade_seen = 0;
        // Each field's name is sorted once; past the first 64, twice.
        let mut kinds = [Named::Other; 64];
        for (i, field) in fields.iter().enumerate() {
            let kind = Named::of(field.name.as_bytes());
            if let Some(k) = kinds.get_mut(i) {
                *k = kind;
            }
            match kind {
                Named::Connection => {
                    for token in field.value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
                        if token.eq_ignore_ascii_case(b"close") {
                            hop.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            hop.keep_alive = true;
                        } else {
                            named.push(token);
                        }
                    }
                }
                Named::TransferEncoding => {
                    hop.transfer_encoding = field.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii);
                }
                Named::Upgrade => {
                    // Two of them name no one protocol.
                    upgrade_seen += 1;
                    hop.upgrade = (upgrade_seen == 1).then(|| field.value.trim_ascii());
                }
                _ => {}
            }
        }
        let kind_of =
            |i: usize, field: &httparse::Header<'_>| kinds.get(i).copied().unwrap_or_else(|| Named::of(field.name.as_bytes()));
        let lengths = fields.iter().enumerate().filter(|(i, f)| kind_of(*i, f) == Named::ContentLength);
        let mut lines = HeaderLines {
            text: Vec::with_capacity(fields.len() * 32),
            content_length: agreed_length(lengths.map(|(_, f)| f.value))?,
            has_date: false,
            has_request_id: false,
            event_stream: false,
        };
        for (i, field) in fields.iter().enumerate() {
            let name = field.name.as_bytes();
            let kind = kind_of(i, field);
            if kind == Named::ContentLength || kind.hop_by_hop() || named.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            lines.has_date |= kind == Named::Date;
            lines.has_request_id |= kind == Named::RequestId;
            lines.event_stream |= kind == Named::ContentType && is_event_stream(field.value);
            write_line(&mut lines.text, name, field.value);
        }
        if hop.transfer_encoding.is_some() {
            // Transfer-Encoding overrides a Content-Length sent with it (RFC
            // 9112 section 6.3); passed on, the stale length would cut the body.
            lines.content_length = None;
        }
        Ok((lines, hop))
    }

    /// The lines, each `name: value\r\n`.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// Adds a field (written with the upstream's, after keygate's own).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        write_line(&mut self.text, name, value);
    }

    /// Takes out the upstream's `X-Request-Id` fields, if it sent any.
    pub fn remove_request_id(&mut self) {
        if std::mem::take(&mut self.has_request_id) {
            self.remove(b"x-request-id");
        }
    }

    /// Takes out every field named `name` (lowercase), if there is one.
    pub fn remove(&mut self, name: &[u8]) {
        self.remove_where(|line| {
            line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name)
        });
    }

    /// Takes out every field named `name` (lowercase), returning their
    /// values in order.
    pub fn take(&mut self, name: &[u8]) -> Vec<Vec<u8>> {
        let values: Vec<Vec<u8>> =
            read_lines(&self.text).filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_vec()).collect();
        if !values.is_empty() {
            self.remove(name);
        }
        values
    }

    /// Takes out every field whose name starts with `prefix` (lowercase).
    pub fn remove_prefixed(&mut self, prefix: &[u8]) {
        self.remove_where(|line| line.len() > prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix));
    }

    fn remove_where(&mut self, named: impl Fn(&[u8]) -> bool) {
        if !self.text.split(|b| *b == b'\n').any(&named) {
            return;
        }
        let mut kept = Vec::with_capacity(self.text.len());
        for line in self.text.split_inclusive(|b| *b == b'\n') {
            if !named(line) {
                kept.extend_from_slice(line);
            }
        }
        self.text = kept;
    }

    /// Whether the answer is a server-sent event stream.
    pub fn is_event_stream(&self) -> bool {
        self.event_stream
    }

    /// The body length the upstream declared.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Whether the upstream sent its own `Date`.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Adds the fields (and the length) to a header map.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for (name, value) in read_lines(&self.text) {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        if let Some(n) = self.content_length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Whether a `Content-Type` value is `text/event-stream` (parameters
/// allowed). Compared in place: every answer's type passes through here.
fn is_event_stream(value: &[u8]) -> bool {
    const TYPE: &[u8] = b"text/event-stream";
    let value = value.trim_ascii_start();
    value.len() >= TYPE.len()
        && value[..TYPE.len()].eq_ignore_ascii_case(TYPE)
        && value[TYPE.len()..].first().is_none_or(|b| *b == b';' || *b == b' ' || *b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(raw: &str) -> (HeaderLines, bool, bool, Option<Vec<u8>>) {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut fields);
        parsed.parse(raw.as_bytes()).unwrap();
        let (lines, hop) = HeaderLines::sort(parsed.headers).unwrap();
        (lines, hop.close, hop.keep_alive, hop.transfer_encoding.map(<[u8]>::to_vec))
    }

    #[test]
    fn a_field_is_taken_out_by_name_in_any_case_and_only_it() {
        let (mut lines, ..) =
            sorted("HTTP/1.1 200 OK\r\nX-Request-Id: up\r\nX-Request-Ids: keep\r\nA: 1\r\nx-request-id: two\r\n\r\n");
        lines.remove_request_id();
        assert_eq!(lines.text(), b"X-Request-Ids: keep\r\nA: 1\r\n");
        let before = lines.clone();
        lines.remove(b"x-request-id");
        assert_eq!(lines, before, "none left: unchanged");
        let (mut lines, ..) =
            sorted("HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nA: 1\r\naccess-control-max-age: 5\r\n\r\n");
        lines.remove_prefixed(b"access-control-");
        assert_eq!(lines.text(), b"A: 1\r\n");
        let (mut lines, ..) = sorted("HTTP/1.1 200 OK\r\nX-Cost: 5\r\nA: 1\r\nx-cost: 6\r\n\r\n");
        assert_eq!(lines.take(b"x-cost"), vec![b"5".to_vec(), b"6".to_vec()]);
        assert_eq!(lines.text(), b"A: 1\r\n");
        assert!(lines.take(b"x-cost").is_empty());
        assert!(!lines.is_event_stream());
        for stream in ["text/event-stream", "Text/Event-Stream; charset=utf-8"] {
            let (lines, ..) = sorted(&format!("HTTP/1.1 200 OK\r\nContent-Type: {stream}\r\n\r\n"));
            assert!(lines.is_event_stream(), "{stream}");
        }
        let (lines, ..) = sorted("HTTP/1.1 200 OK\r\nContent-Type: text/event-streams\r\n\r\n");
        assert!(!lines.is_event_stream());
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_stay_behind() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret-Hop\r\nx-secret-hop: 1\r\nKeep-Alive: timeout=5\r\n\
                   TE: trailers\r\nProxy-Authorization: x\r\nServer: up\r\nContent-Length: 5\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\n\r\n";
        let (lines, close, keep, te) = sorted(raw);
        assert_eq!(String::from_utf8_lossy(lines.text()), "Server: up\r\nDate: Mon, 30 Nov 2026 07:00:00 GMT\r\n");
        assert_eq!((lines.content_length(), lines.has_date(), close, keep, te), (Some(5), true, false, true, None));
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        assert_eq!(map.len(), 3);
        assert_eq!(map["server"], "up");
        assert_eq!(map["content-length"], "5");
    }

    #[test]
    fn transfer_encoding_wins_over_length_and_lengths_must_agree() {
        let (lines, _, _, te) = sorted("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((lines.content_length(), te.as_deref()), (None, Some(&b"chunked"[..])));
        assert!(lines.text().is_empty());
        let (lines, close, ..) =
            sorted("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length:  5\r\nConnection: close\r\n\r\n");
        assert_eq!((lines.content_length(), close), (Some(5), true));
        let mut fields = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Response::new(&mut fields);
        parsed.parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").unwrap();
        assert_eq!(HeaderLines::sort(parsed.headers).err(), Some("conflicting Content-Length values"));
    }

    #[test]
    fn lines_turn_into_a_map_with_the_length_kept_apart() {
        let (lines, ..) = sorted("HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(lines.content_length(), Some(7));
        assert!(!lines.has_date());
        let mut map = HeaderMap::new();
        lines.append_to(&mut map);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated fields stay repeated, in order");
        assert_eq!(map["content-length"], "7");
    }

    #[test]
    fn rendered_field_lines_never_hold_what_http1_writes_itself() {
        let lines = FieldLines::render([
            (&b"x-keygate-key-id"[..], &b"key_1"[..]),
            (b"Content-Length", b"5"),
            (b"host", b"evil"),
            (b"Transfer-Encoding", b"chunked"),
            (b"connection", b"close"),
            (b"x-keygate-env", b"live"),
        ]);
        assert_eq!(lines.text(), b"x-keygate-key-id: key_1\r\nx-keygate-env: live\r\n");
        assert!(FieldLines::EMPTY.text().is_empty());
    }

    #[test]
    fn read_lines_reads_back_what_write_line_wrote() {
        let mut text = Vec::new();
        write_line(&mut text, b"a", b"1");
        write_line(&mut text, b"b-c", b" spaced ");
        text.extend_from_slice(b"no colon here\r\n");
        let back: Vec<(&[u8], &[u8])> = read_lines(&text).collect();
        assert_eq!(back, [(&b"a"[..], &b"1"[..]), (b"b-c", b"spaced")], "values are trimmed, a line without a colon skipped");
    }
}
