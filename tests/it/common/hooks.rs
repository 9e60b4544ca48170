//! A webhook endpoint for the tests: records every delivery it is sent,
//! and can go down (its port refuses connections) and come back on the
//! same port, or hold its answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Milliseconds each answer is held after its request is recorded.
    hold_ms: AtomicU64,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Mutex<Option<JoinSet<()>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver { addr, shared: Arc::default(), serving: Mutex::new(None) };
        r.serve(listener);
        r
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/keygate", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let mut set = JoinSet::new();
        let shared = Arc::clone(&self.shared);
        set.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((conn, _)) = listener.accept().await {
                conns.spawn(answer(conn, Arc::clone(&shared)));
            }
        });
        *self.serving.lock().unwrap() = Some(set);
    }

    /// Closes the port and every open connection: connections are refused.
    pub fn down(&self) {
        if let Some(mut set) = self.serving.lock().unwrap().take() {
            set.abort_all();
        }
    }

    /// Listens on the same port again.
    pub async fn up(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// Holds each answer this long after recording its request.
    pub fn hold(&self, d: Duration) {
        self.shared.hold_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

/// Serves one keep-alive connection: each request recorded, then 204.
async fn answer(mut conn: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| {
                    l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let length: usize = field("content-length").parse().unwrap_or(0);
        while buf.len() < end + 4 + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end + 4..end + 4 + length].to_vec();
        buf.drain(..end + 4 + length);
        let received = Received {
            id: field("webhook-id"),
            timestamp: field("webhook-timestamp"),
            signature: field("webhook-signature"),
            body,
        };
        shared.received.lock().unwrap().push(received);
        let hold = shared.hold_ms.load(Ordering::SeqCst);
        if hold > 0 {
            tokio::time::sleep(Duration::from_millis(hold)).await;
        }
        if conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}
