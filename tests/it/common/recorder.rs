//! A recording upstream: a strict HTTP/1.1 reader (httparse for the head,
//! RFC 9112 section 6 for the body) that keeps every message exactly as it
//! arrived, with the connection it came on, and answers each with `200 ok`
//! (a request for a `/slow/` path three seconds late, one for a `/big/`
//! path with [`BIG`] bytes).
//! A request keygate smuggled would show here as a message of its own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Size of the answer to a `/big/` path: more than socket buffers hold.
pub const BIG: usize = 8 * 1024 * 1024;

/// One message as the upstream read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection carried it (0, 1, ...).
    pub conn: usize,
    /// The head and body bytes exactly as sent, or a line saying why they
    /// could not be read as one message (`UNREADABLE: ...`).
    pub text: String,
}

#[derive(Default)]
struct Log {
    messages: Vec<Received>,
    closed: Vec<usize>,
}

/// A running recorder on a loopback port; its threads end with the test binary.
#[derive(Clone)]
pub struct Recorder {
    pub url: String,
    pub host: String,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&shared);
                std::thread::spawn(move || serve(n, stream, &log));
            }
        });
        Recorder { url: format!("http://{host}"), host, log }
    }

    /// Takes the messages received so far.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut self.log.lock().unwrap().messages)
    }

    /// Whether keygate closed upstream connection `conn`.
    pub fn closed(&self, conn: usize) -> bool {
        self.log.lock().unwrap().closed.contains(&conn)
    }
}

fn serve(conn: usize, mut stream: TcpStream, log: &Mutex<Log>) {
    let mut buf = Vec::new();
    loop {
        match read_message(&mut stream, &mut buf) {
            Ok(Some(text)) => {
                let line = text.lines().next().unwrap_or("").to_string();
                log.lock().unwrap().messages.push(Received { conn, text });
                if line.contains("/slow/") && !answer_late(&mut stream, &mut buf) {
                    break;
                }
                let answered = if line.contains("/big/") {
                    stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes()).is_ok()
                        && stream.write_all(&vec![b'b'; BIG]).is_ok()
                } else {
                    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_ok()
                };
                if !answered {
                    break;
                }
            }
            Ok(None) => break,
            Err(why) => {
                let text = format!("UNREADABLE: {why}: {}", String::from_utf8_lossy(&buf));
                log.lock().unwrap().messages.push(Received { conn, text });
                break;
            }
        }
    }
    log.lock().unwrap().closed.push(conn);
}

/// For a `/slow/` request: waits 3 s before answering, watching for the
/// gateway to close the connection meanwhile (false: it did).
fn answer_late(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    while std::time::Instant::now() < until {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Reads from `stream` until `buf` holds at least `want` bytes (false: closed first).
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Result<bool, String> {
    while buf.len() < want {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}

/// Reads one message (`Ok(None)`: the connection ended cleanly between messages).
fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<String>, String> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let (head_len, framing) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => break (n, framing_of(req.headers)?),
            Ok(httparse::Status::Partial) => {
                let before = buf.len();
                if !fill(stream, buf, before + 1)? {
                    return if buf.is_empty() { Ok(None) } else { Err("closed inside a head".into()) };
                }
            }
            Err(e) => return Err(format!("head: {e}")),
        }
    };
    let end = match framing {
        Body::None => head_len,
        Body::Length(n) => {
            if !fill(stream, buf, head_len + n)? {
                return Err("closed inside a body".into());
            }
            head_len + n
        }
        Body::Chunked => chunked_end(stream, buf, head_len)?,
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Ok(Some(text))
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

/// RFC 9112 section 6.3, strictly: both framings, or a length twice, is an error.
fn framing_of(headers: &[httparse::Header]) -> Result<Body, String> {
    let te: Vec<_> = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).collect();
    let cl: Vec<_> = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")).collect();
    match (te.len(), cl.len()) {
        (0, 0) => Ok(Body::None),
        (0, 1) => {
            let v = std::str::from_utf8(cl[0].value).map_err(|e| e.to_string())?;
            v.parse().map(Body::Length).map_err(|_| format!("bad length {v:?}"))
        }
        (1, 0) if te[0].value.eq_ignore_ascii_case(b"chunked") => Ok(Body::Chunked),
        _ => Err("ambiguous framing".into()),
    }
}

/// Where a chunked body that starts at `at` ends.
fn chunked_end(stream: &mut TcpStream, buf: &mut Vec<u8>, mut at: usize) -> Result<usize, String> {
    loop {
        let line_end = loop {
            if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            let want = buf.len() + 1;
            if !fill(stream, buf, want)? {
                return Err("closed inside a chunk line".into());
            }
        };
        let line = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {line:?}"))?;
        at = line_end + 2;
        if size == 0 {
            // No trailers are expected from keygate: the body ends with an empty line.
            if !fill(stream, buf, at + 2)? || &buf[at..at + 2] != b"\r\n" {
                return Err("trailers or no end after the last chunk".into());
            }
            return Ok(at + 2);
        }
        if !fill(stream, buf, at + size + 2)? {
            return Err("closed inside a chunk".into());
        }
        at += size + 2;
    }
}
