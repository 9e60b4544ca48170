//! WebSocket connections spliced through (RFC 6455): once both sides have
//! switched protocols, bytes are copied both ways as they come, through a
//! bounded buffer each way. The frames are followed (their heads read,
//! their payloads counted, never unmasked or kept) for one reason: keygate
//! may have to end a connection itself (its key revoked, the node
//! stopping, both sides silent too long), and its close frame must go
//! between two frames, never into one.
//!
//! This module knows nothing of keys: the caller says when a connection
//! ends and with what code ([`Ending`]). Why it splices rather than
//! terminates: docs/decisions/013-websocket-splice.md.

use http::{header, HeaderMap, Method, Version};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes held at most in each direction.
const PIPE_BYTES: usize = 16 * 1024;
/// How long a connection keygate ends gets to finish: the frame in flight,
/// the close frames, the peers' answers to them.
const CLOSING: Duration = Duration::from_secs(2);

/// Why keygate ends a connection: the close frame's status code (RFC 6455
/// section 7.4.1) and its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub code: u16,
    pub reason: &'static str,
}

impl Ending {
    /// 1008: the key may no longer hold the connection.
    pub const REVOKED: Ending = Ending { code: 1008, reason: "key revoked" };
    /// 1008: the key's `expiresAt` passed.
    pub const EXPIRED: Ending = Ending { code: 1008, reason: "key expired" };
    /// 1001: the node is shutting down; a client reconnects elsewhere.
    pub const GOING_AWAY: Ending = Ending { code: 1001, reason: "going away" };
    /// 1001: no frame either way for the idle timeout.
    pub const IDLE: Ending = Ending { code: 1001, reason: "idle timeout" };

    /// The close frame, masked with `mask` when it goes to a server.
    pub fn frame(&self, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut payload = self.code.to_be_bytes().to_vec();
        // A control frame's payload is at most 125 bytes.
        payload.extend(self.reason.bytes().take(123));
        let mut frame = vec![0x88, payload.len() as u8];
        if let Some(mask) = mask {
            frame[1] |= 0x80;
            frame.extend_from_slice(&mask);
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
        }
        frame.extend(payload);
        frame
    }
}

/// How a spliced connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// One side closed (or failed) and the other followed.
    Closed,
    /// keygate ended it, for this reason.
    Ended(Ending),
}

/// Where a stream of frames stands: in a frame's head (how many of its
/// bytes were seen) or in its payload (how many bytes are left).
#[derive(Debug, Default, Clone)]
pub struct Frames {
    head: [u8; 14],
    seen: usize,
    payload_left: u64,
}

impl Frames {
    /// Follows `data` through the frames.
    pub fn pass(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left).unwrap_or(usize::MAX).min(data.len());
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.seen] = data[0];
            self.seen += 1;
            data = &data[1..];
            if self.head_len() == Some(self.seen) {
                self.payload_left = payload_len(&self.head);
                self.seen = 0;
            }
        }
    }

    /// Whether the bytes so far end exactly where a frame ends.
    pub fn at_boundary(&self) -> bool {
        self.seen == 0 && self.payload_left == 0
    }

    /// How many bytes may pass before the next boundary (at least one
    /// when not at one).
    fn to_boundary(&self) -> usize {
        if self.payload_left > 0 {
            return usize::try_from(self.payload_left).unwrap_or(usize::MAX);
        }
        self.head_len().map_or(1, |len| len - self.seen)
    }

    /// The head's length, once its second byte says it.
    fn head_len(&self) -> Option<usize> {
        if self.seen < 2 {
            return None;
        }
        let extended = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        Some(2 + extended + mask)
    }
}

/// A complete head's payload length.
fn payload_len(head: &[u8; 14]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes([head[2], head[3], head[4], head[5], head[6], head[7], head[8], head[9]]),
        n => u64::from(n),
    }
}

/// One direction of a connection.
struct Pipe {
    buf: Box<[u8]>,
    /// Bytes in `buf[start..end]` are still to be written.
    start: usize,
    end: usize,
    frames: Frames,
    /// Masked: this direction goes to the server.
    masked: bool,
    state: PipeState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PipeState {
    Copying,
    /// keygate's close frame waits for the frame in flight to end.
    Closing(Ending),
    /// The close frame is written: the writing side is to be shut.
    Closed,
    /// The writing side is shut, and what the source still sends is read
    /// and dropped (a close with unread bytes would reset the connection,
    /// and the peer could lose the close frame with it).
    Draining,
    /// The source ended: the writing side is to be shut, and that is all.
    Done,
}

impl Pipe {
    fn new(read: &[u8], masked: bool) -> Pipe {
        let mut buf = vec![0u8; PIPE_BYTES.max(read.len())].into_boxed_slice();
        buf[..read.len()].copy_from_slice(read);
        let mut frames = Frames::default();
        frames.pass(read);
        Pipe { buf, start: 0, end: read.len(), frames, masked, state: PipeState::Copying }
    }

    fn close(&mut self, ending: Ending) {
        if self.state == PipeState::Copying {
            self.state = PipeState::Closing(ending);
        }
    }

    /// Moves bytes from `src` to `dst` until either would wait: `Ready`
    /// once this direction is done. `moved` is set when bytes came.
    fn poll_pump<S, D>(&mut self, cx: &mut Context<'_>, src: &mut S, dst: &mut D, moved: &mut bool) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            while self.start < self.end {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
            }
            (self.start, self.end) = (0, 0);
            match self.state {
                PipeState::Closing(ending) if self.frames.at_boundary() => {
                    let mask = self.masked.then(rand::random::<[u8; 4]>);
                    let frame = ending.frame(mask);
                    self.buf[..frame.len()].copy_from_slice(&frame);
                    self.end = frame.len();
                    self.state = PipeState::Closed;
                    continue;
                }
                PipeState::Closed => {
                    ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                    self.state = PipeState::Draining;
                    continue;
                }
                PipeState::Draining => return self.poll_drain(cx, src),
                PipeState::Done => return Pin::new(&mut *dst).poll_shutdown(cx),
                _ => {}
            }
            let limit = match self.state {
                PipeState::Closing(_) => self.frames.to_boundary().min(self.buf.len()),
                _ => self.buf.len(),
            };
            let mut read = ReadBuf::new(&mut self.buf[..limit]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        // The source is done: so is this direction.
                        self.state = PipeState::Done;
                        return Pin::new(&mut *dst).poll_shutdown(cx);
                    }
                    self.frames.pass(&self.buf[..n]);
                    self.end = n;
                    *moved = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }

    /// Reads and drops what `src` still sends, until it closes.
    fn poll_drain<S: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, src: &mut S) -> Poll<io::Result<()>> {
        loop {
            let mut read = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut *src).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// What bounds a spliced connection.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Ended (1001) when no byte moved either way for this long: a ping
    /// from either side counts.
    pub idle: Duration,
}

/// Why a request that asks to become a WebSocket is not a handshake
/// keygate forwards (RFC 6455 section 4.2.1); `None` when it is one. Every
/// field it needs appears once: two are ambiguous, and refused.
pub fn handshake_problem(method: &Method, version: Version, headers: &HeaderMap) -> Option<&'static str> {
    let once = |name| {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes().trim_ascii()),
            _ => None,
        }
    };
    if method != Method::GET {
        return Some("a WebSocket handshake is a GET");
    }
    if version != Version::HTTP_11 {
        return Some("a WebSocket handshake is made over HTTP/1.1");
    }
    let connection = headers.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if !connection.map(<[u8]>::trim_ascii).any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return Some("a WebSocket handshake says `Connection: upgrade`");
    }
    if !once(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")) {
        return Some("a WebSocket handshake says `Upgrade: websocket`, once and alone");
    }
    if once(header::SEC_WEBSOCKET_VERSION) != Some(b"13") {
        return Some("a WebSocket handshake says `Sec-WebSocket-Version: 13`, once");
    }
    let key = once(header::SEC_WEBSOCKET_KEY).and_then(|k| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(k).ok()
    });
    if key.is_none_or(|k| k.len() != 16) {
        return Some("a WebSocket handshake carries one `Sec-WebSocket-Key` of 16 bytes in base64");
    }
    None
}

/// What the handler of a switched connection leaves for it: when, and
/// why, keygate ends it, and its bounds.
pub struct Watch {
    pub end: Pin<Box<dyn Future<Output = Ending> + Send>>,
    pub bounds: Bounds,
}

/// Copies bytes between `client` and `upstream` (each with the bytes read
/// from it past the handshake) until both sides are done, or `end` says
/// why keygate ends the connection: then each side gets a close frame
/// between two frames, and the connection closes within [`CLOSING`].
pub async fn splice<C, U>(
    client: (&mut C, &[u8]),
    upstream: (&mut U, &[u8]),
    bounds: Bounds,
    end: impl Future<Output = Ending>,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let ((client, from_client), (upstream, from_upstream)) = (client, upstream);
    let mut up = Pipe::new(from_client, true);
    let mut down = Pipe::new(from_upstream, false);
    let mut end = pin!(end);
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(bounds.idle));
    let mut ended: Option<Ending> = None;
    // Set once keygate ends the connection or one side is done: the timer
    // then bounds what is left, not silence.
    let mut finishing = false;
    let (mut up_done, mut down_done) = (false, false);
    std::future::poll_fn(|cx| loop {
        if !finishing {
            let why = match end.as_mut().poll(cx) {
                Poll::Ready(why) => Some(why),
                Poll::Pending => timer.as_mut().poll(cx).is_ready().then_some(Ending::IDLE),
            };
            if let Some(why) = why {
                ended = Some(why);
                up.close(why);
                down.close(why);
            }
        }
        let mut moved = false;
        if !up_done {
            up_done = !matches!(up.poll_pump(cx, &mut *client, &mut *upstream, &mut moved), Poll::Pending);
        }
        if !down_done {
            down_done = !matches!(down.poll_pump(cx, &mut *upstream, &mut *client, &mut moved), Poll::Pending);
        }
        if up_done && down_done {
            return Poll::Ready(());
        }
        if !finishing && (ended.is_some() || up_done || down_done) {
            // One side's end is the connection's: the other gets a little
            // while to follow (a half-closed peer holds nothing longer).
            finishing = true;
            timer.as_mut().reset(Instant::now() + CLOSING);
        } else if moved && !finishing {
            timer.as_mut().reset(Instant::now() + bounds.idle);
        }
        // Polled last, so its deadline wakes this task.
        match timer.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(()) if finishing => return Poll::Ready(()),
            Poll::Ready(()) => continue,
        }
    })
    .await;
    ended.map_or(Spliced::Closed, Spliced::Ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    /// A frame with `payload`, masked or not.
    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(bit | n as u8),
            n if n <= 0xffff => {
                f.push(bit | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(bit | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        let mut body = payload.to_vec();
        if let Some(m) = mask {
            f.extend(m);
            body.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
        }
        f.extend(body);
        f
    }

    #[test]
    fn frame_boundaries_are_found_in_any_split() {
        let mut stream = Vec::new();
        for (len, mask) in [(0, None), (5, Some([1, 2, 3, 4])), (200, None), (70_000, Some([9, 9, 9, 9])), (125, None)] {
            stream.extend(frame(0x2, &vec![7u8; len], mask));
        }
        let ends: Vec<usize> = {
            let mut f = Frames::default();
            let mut ends = Vec::new();
            for (i, b) in stream.iter().enumerate() {
                f.pass(std::slice::from_ref(b));
                if f.at_boundary() {
                    ends.push(i + 1);
                }
            }
            ends
        };
        assert_eq!(ends.len(), 5, "one boundary per frame");
        assert_eq!(*ends.last().unwrap(), stream.len());
        for split in [1, 3, 13, 4096, stream.len()] {
            let mut f = Frames::default();
            for piece in stream.chunks(split) {
                f.pass(piece);
            }
            assert!(f.at_boundary(), "split {split}");
        }
        let mut f = Frames::default();
        f.pass(&stream[..ends[2] + 5]);
        assert!(!f.at_boundary());
        assert_eq!(f.to_boundary(), 9, "the rest of a 14-byte head (64-bit length, mask)");
        f.pass(&stream[ends[2] + 5..ends[2] + 14]);
        assert_eq!(f.to_boundary(), 70_000, "then the payload");
    }

    #[test]
    fn a_handshake_is_a_get_over_http11_with_each_field_once() {
        let good = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let with = |changes: &[(&'static str, Option<&str>)]| {
            let mut h = HeaderMap::new();
            for (name, value) in good {
                h.append(name, value.parse().unwrap());
            }
            for (name, value) in changes {
                match value {
                    Some(v) => drop(h.append(*name, v.parse().unwrap())),
                    None => drop(h.remove(*name)),
                }
            }
            h
        };
        assert_eq!(handshake_problem(&Method::GET, Version::HTTP_11, &with(&[])), None);
        assert!(handshake_problem(&Method::POST, Version::HTTP_11, &with(&[])).is_some());
        assert!(handshake_problem(&Method::GET, Version::HTTP_10, &with(&[])).is_some());
        for bad in [
            [("connection", None), ("x", None)],
            [("upgrade", Some("websocket")), ("x", None)],
            [("sec-websocket-version", Some("8")), ("x", None)],
            [("sec-websocket-key", None), ("sec-websocket-key", Some("c2hvcnQ="))],
            [("sec-websocket-key", Some("dGhlIHNhbXBsZSBub25jZQ==")), ("x", None)],
        ] {
            assert!(handshake_problem(&Method::GET, Version::HTTP_11, &with(&bad)).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn close_frames_carry_the_code_and_reason_and_are_masked_for_servers() {
        let plain = Ending::REVOKED.frame(None);
        assert_eq!(&plain[..4], &[0x88, 13, 0x03, 0xf0]);
        assert_eq!(&plain[4..], b"key revoked");
        let masked = Ending::GOING_AWAY.frame(Some([1, 2, 3, 4]));
        assert_eq!(masked[1], 0x80 | 12);
        let unmasked: Vec<u8> = masked[6..].iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]).collect();
        assert_eq!(&unmasked[..2], &1001u16.to_be_bytes());
        assert_eq!(&unmasked[2..], b"going away");
    }

    const BOUNDS: Bounds = Bounds { idle: Duration::from_secs(60) };

    #[tokio::test]
    async fn bytes_pass_both_ways_and_one_side_s_close_ends_both() {
        let (mut client, mut gw_client) = duplex(64);
        let (mut gw_upstream, mut upstream) = duplex(64);
        let spliced = tokio::spawn(async move {
            splice((&mut gw_client, b"early"), (&mut gw_upstream, b""), BOUNDS, std::future::pending()).await
        });
        let big = vec![5u8; 100_000];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            let mut back = vec![0u8; 3];
            client.read_exact(&mut back).await.unwrap();
            client.shutdown().await.unwrap();
            back
        });
        let mut got = vec![0u8; 5 + big.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"early", "bytes read past the handshake go first");
        assert!(got[5..] == big[..]);
        upstream.write_all(b"ack").await.unwrap();
        assert_eq!(writer.await.unwrap(), b"ack");
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).await.unwrap();
        drop(upstream);
        assert_eq!(spliced.await.unwrap(), Spliced::Closed);
    }

    #[tokio::test]
    async fn an_ending_waits_for_the_frame_in_flight_then_closes_both_sides() {
        let (mut client, mut gw_client) = duplex(1024);
        let (mut gw_upstream, mut upstream) = duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let spliced = tokio::spawn(async move {
            let end = async move {
                let _ = rx.await;
                Ending::REVOKED
            };
            splice((&mut gw_client, b""), (&mut gw_upstream, b""), BOUNDS, end).await
        });
        let whole = frame(0x1, b"0123456789", None);
        upstream.write_all(&whole[..7]).await.unwrap();
        let mut first = vec![0u8; 7];
        client.read_exact(&mut first).await.unwrap();
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        upstream.write_all(&whole[7..]).await.unwrap();
        // The client gets the rest of the frame, then the close frame, then the end.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(&rest[..whole.len() - 7], &whole[7..]);
        assert_eq!(&rest[whole.len() - 7..], &Ending::REVOKED.frame(None)[..]);
        // The upstream gets a masked close frame.
        let mut to_upstream = Vec::new();
        upstream.read_to_end(&mut to_upstream).await.unwrap();
        assert_eq!(&to_upstream[..2], &[0x88, 0x80 | 13]);
        drop((client, upstream));
        assert_eq!(spliced.await.unwrap(), Spliced::Ended(Ending::REVOKED));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_holds_its_half_open_is_let_go_soon_after_the_other_ends() {
        let (client, mut gw_client) = duplex(1024);
        let (mut gw_upstream, upstream) = duplex(1024);
        let started = Instant::now();
        let spliced =
            tokio::spawn(
                async move { splice((&mut gw_client, b""), (&mut gw_upstream, b""), BOUNDS, std::future::pending()).await },
            );
        drop(upstream);
        assert_eq!(spliced.await.unwrap(), Spliced::Closed);
        assert!(started.elapsed() <= CLOSING + Duration::from_millis(10), "{:?}", started.elapsed());
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_both_ways_ends_the_connection_and_traffic_keeps_it() {
        let (mut client, mut gw_client) = duplex(1024);
        let (mut gw_upstream, mut upstream) = duplex(1024);
        let bounds = Bounds { idle: Duration::from_secs(10) };
        let spliced =
            tokio::spawn(
                async move { splice((&mut gw_client, b""), (&mut gw_upstream, b""), bounds, std::future::pending()).await },
            );
        let ping = frame(0x9, b"", Some([1, 1, 1, 1]));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.write_all(&ping).await.unwrap();
            let mut got = vec![0u8; ping.len()];
            upstream.read_exact(&mut got).await.unwrap();
        }
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, Ending::IDLE.frame(None), "idle: a close frame, then the end");
        drop(client);
        let mut to_upstream = Vec::new();
        upstream.read_to_end(&mut to_upstream).await.unwrap();
        drop(upstream);
        assert_eq!(spliced.await.unwrap(), Spliced::Ended(Ending::IDLE));
    }
}
