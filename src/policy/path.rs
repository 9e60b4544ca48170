//! Path normalisation, done before route matching so that no spelling of a
//! path reaches the upstream without the permission its route needs.
//!
//! Percent-encoded unreserved characters are decoded, `.`/`..` segments are
//! resolved, repeated slashes collapse. A path that climbs above the root,
//! or carries an encoded `/` or `\` or NUL, is refused: no upstream could be
//! relied on to read it the way the route table did. So is a segment that
//! is empty, `.` or `..` before a `;`: servlet containers cut path
//! parameters off before resolving dots, so `/a/..;/b` is `/b` to them.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path climbs above the root")]
    EscapesRoot,
    #[error("the path contains an encoded slash, backslash or NUL")]
    ForbiddenEncoding,
    #[error("the path contains a malformed percent-escape")]
    BadEscape,
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("a path segment is empty, '.' or '..' before its ';' parameters")]
    DotParameters,
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986's `pchar` without `pct-encoded`: unreserved, sub-delims, `:`, `@`.
fn is_pchar(b: u8) -> bool {
    PCHAR[usize::from(b)]
}

/// [`is_pchar`] as a table: it is asked of every byte of every path.
static PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
    out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
}

/// Decodes unreserved escapes in one segment and upper-cases the others.
fn normalise_segment(seg: &str, out: &mut String) -> Result<(), PathError> {
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(|h| hex_val(*h)), bytes.get(i + 2).and_then(|l| hex_val(*l)))
            else {
                return Err(PathError::BadEscape);
            };
            let decoded = hi * 16 + lo;
            match decoded {
                b'/' | b'\\' | 0 => return Err(PathError::ForbiddenEncoding),
                d if is_unreserved(d) => out.push(d as char),
                d => push_escaped(out, d),
            }
            i += 3;
        } else {
            if b == b'\\' || b == 0 {
                return Err(PathError::ForbiddenEncoding);
            }
            // A byte RFC 3986 does not allow in a path (`"`, `{`, `|`, `^`,
            // `[`, a `?`, UTF-8) is escaped, so every parser reads the path
            // alike; spaces and controls are left for the target check to refuse.
            if is_pchar(b) || b <= b' ' || b == 0x7f {
                out.push(char::from(b));
            } else {
                push_escaped(out, b);
            }
            i += 1;
        }
    }
    Ok(())
}

/// A normalised segment's part before its `;` parameters (`%3B` counts:
/// a server may decode before it cuts), if it has any.
fn parameters_stem(segment: &str) -> Option<&str> {
    let semicolon = segment.find(';');
    let escaped = segment.find("%3B");
    let at = match (semicolon, escaped) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(&segment[..at])
}

/// Whether `path` is already in normal form: no escapes, no empty, `.` or
/// `..` segments, no backslash or NUL. Most requests are; they skip the work.
fn already_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    // One walk: each segment is checked as its closing `/` is reached.
    let mut start = 1;
    for (i, &c) in b.iter().enumerate().skip(1) {
        if c == b'/' {
            if matches!(&b[start..i], b"" | b"." | b"..") {
                return false;
            }
            start = i + 1;
        } else if c == b';' || !is_pchar(c) {
            return false;
        }
    }
    // The last segment may be empty (a trailing slash), never a dot one.
    !matches!(&b[start..], b"." | b"..")
}

/// Returns the normalised form of `path` (no query), keeping a trailing
/// slash: the path itself when it already is (most are), with no copy.
/// (Inlined: called once per request, from one place.)
#[inline]
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    if already_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    normalise_slowly(path).map(Cow::Owned)
}

/// The full normalisation, for paths that need it: segment by segment
/// into one output string (a `..` cuts the output back to its last `/`).
fn normalise_slowly(path: &str) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix('/') else { return Err(PathError::NotAbsolute) };
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    let mut raw_segments = rest.split('/').peekable();
    while let Some(raw) = raw_segments.next() {
        let is_last = raw_segments.peek().is_none();
        let slash = out.len();
        out.push('/');
        normalise_segment(raw, &mut out)?;
        if matches!(parameters_stem(&out[slash + 1..]), Some("" | "." | "..")) {
            return Err(PathError::DotParameters);
        }
        match &out[slash + 1..] {
            "" | "." => out.truncate(slash),
            ".." => {
                out.truncate(slash);
                let parent = out.rfind('/').ok_or(PathError::EscapesRoot)?;
                out.truncate(parent);
            }
            _ => {
                trailing_slash = false;
                continue;
            }
        }
        trailing_slash = is_last && !out.is_empty();
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-walk check says what the two-walk one it replaced said, for
    /// every path of up to seven characters over the bytes that matter.
    #[test]
    fn the_one_walk_check_agrees_with_the_segment_split() {
        fn by_segments(path: &str) -> bool {
            let b = path.as_bytes();
            if b.first() != Some(&b'/') || b.iter().any(|c| *c == b';' || (*c != b'/' && !is_pchar(*c))) {
                return false;
            }
            path[1..].split('/').enumerate().all(|(i, seg)| match seg {
                "" => i + 1 == path[1..].split('/').count() && path.len() > 1,
                "." | ".." => false,
                _ => true,
            }) || path == "/"
        }
        let alphabet = ['/', '.', 'a', ';', '%', ' '];
        let mut paths = vec![String::new()];
        for _ in 0..7 {
            let longer: Vec<String> = paths.iter().flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}"))).collect();
            for p in &longer {
                assert_eq!(already_normal(p), by_segments(p), "{p:?}");
            }
            paths = longer;
        }
    }

    #[test]
    fn plain_paths_are_unchanged() {
        assert_eq!(normalise("/"), Ok("/".into()));
        assert_eq!(normalise("/api/lists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/lists/"), Ok("/api/lists/".into()));
    }

    #[test]
    fn dots_and_slashes() {
        assert_eq!(normalise("/api//lists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/./lists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/stats/../lists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/lists/."), Ok("/api/lists/".into()));
        assert_eq!(normalise("/a/b/.."), Ok("/a/".into()));
        assert_eq!(normalise("/.."), Err(PathError::EscapesRoot));
        assert_eq!(normalise("/api/../../etc/passwd"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(normalise("/api/%6cists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/stats/%2e%2e/lists"), Ok("/api/lists".into()));
        assert_eq!(normalise("/api/%2E%2E/%2e%2e/x"), Err(PathError::EscapesRoot));
        assert_eq!(normalise("/api/a%20b"), Ok("/api/a%20b".into()));
        assert_eq!(normalise("/api/a%3ab"), Ok("/api/a%3Ab".into()));
        assert_eq!(normalise("/api/a%2Fb"), Err(PathError::ForbiddenEncoding));
        assert_eq!(normalise("/api/a%2fb"), Err(PathError::ForbiddenEncoding));
        assert_eq!(normalise("/api/a%00b"), Err(PathError::ForbiddenEncoding));
        assert_eq!(normalise("/api/a%5Cb"), Err(PathError::ForbiddenEncoding));
        assert_eq!(normalise("/api/a%zzb"), Err(PathError::BadEscape));
        assert_eq!(normalise("/api/a%2"), Err(PathError::BadEscape));
    }

    #[test]
    fn fast_path_agrees_with_the_slow_one() {
        for p in [
            "/", "/a", "/a/", "/a/b", "/a//b", "/a/./b", "/a/../b", "/a/.", "/a/..", "//", "/a%20b", "/a\\b", "/.hidden", "/a..b",
        ] {
            if already_normal(p) {
                assert_eq!(normalise_slowly(p).as_deref(), Ok(p), "{p} was taken as normal");
            }
        }
        assert!(already_normal("/api/lists/42"));
        assert!(already_normal("/api/lists/"));
        assert!(!already_normal("/api//lists"));
        assert!(!already_normal("/api/./lists"));
    }

    #[test]
    fn dot_segments_before_parameters_are_refused() {
        for p in [
            "/api/stats/..;/admin/x",
            "/api/stats/%2e%2e;/admin",
            "/api/stats/%2E%2E;/admin",
            "/api/..;jsessionid=1/x",
            "/api/.;/x",
            "/api/;x=1/y",
            "/api/..%3B/x",
            "/api/..%3bx/x",
            "/api/%2e;/x",
        ] {
            assert_eq!(normalise(p), Err(PathError::DotParameters), "{p}");
        }
        assert_eq!(normalise("/api/lists;v=1"), Ok("/api/lists;v=1".into()));
        assert_eq!(normalise("/api/a;b/c"), Ok("/api/a;b/c".into()));
        assert_eq!(normalise("/api/...;x"), Ok("/api/...;x".into()), "three dots are a name");
        assert!(!already_normal("/api/lists;v=1"), "a ';' takes the checked path");
    }

    #[test]
    fn bytes_no_uri_allows_in_a_path_are_escaped() {
        assert_eq!(normalise("/api/a\"b{c}|d^e[f]g`h"), Ok("/api/a%22b%7Bc%7D%7Cd%5Ee%5Bf%5Dg%60h".into()));
        assert_eq!(normalise("/api/caf\u{e9}"), Ok("/api/caf%C3%A9".into()));
        assert_eq!(normalise("/api/a?b#c"), Ok("/api/a%3Fb%23c".into()));
        assert_eq!(normalise("/api/a!$&'()*+,=:@b"), Ok("/api/a!$&'()*+,=:@b".into()), "sub-delims, : and @ are path characters");
        assert!(!already_normal("/api/a{b}"));
    }

    #[test]
    fn relative_is_refused() {
        assert_eq!(normalise("api"), Err(PathError::NotAbsolute));
        assert_eq!(normalise("*"), Err(PathError::NotAbsolute));
    }
}
