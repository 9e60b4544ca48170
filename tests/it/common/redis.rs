//! Real `redis-server` processes for tests: each test starts its own on a
//! free loopback port and the process is killed when the handle drops. When
//! `redis-server` is missing the test fails, unless `KEYGATE_TEST_SKIP`
//! names `redis` (never under CI).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// Whether `redis-server` can be run; when it cannot, the test fails
/// unless `KEYGATE_TEST_SKIP` names `redis` (see [`super::may_skip`]).
pub fn available() -> bool {
    let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    found || !super::may_skip("redis", "redis-server is not installed (apt-get install -y redis-server)")
}

/// Sends one inline command and returns the raw reply.
pub fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    command_within(port, cmd, Duration::from_secs(5))
}

/// [`command`] for one that may take long (`DEBUG POPULATE`, `SAVE`) on a
/// loaded machine.
pub fn command_within(port: u16, cmd: &str, wait: Duration) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A port for a cluster node: its bus listens on the port + 10000, which
/// must also be free and below the kernel's ephemeral range (32768 and up),
/// or an outgoing connection may take it first ("Address already in use").
fn cluster_port() -> u16 {
    loop {
        let port = super::free_port();
        if port < 22_768 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a redis-server on a free port, or `None` (skipped) when there is none.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(&[])
    }

    /// Starts with extra command-line options (e.g. `--cluster-enabled yes`).
    pub fn start_with(extra: &[&str]) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let cluster = extra.windows(2).any(|w| w == ["--cluster-enabled", "yes"]);
        let mut server = RedisServer {
            child: None,
            port: if cluster { cluster_port() } else { super::free_port() },
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let log = self.spawn_child();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if command(self.port, "PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start: {}", self.port, std::fs::read_to_string(&log).unwrap_or_default());
    }

    /// Starts the process; returns its log file.
    fn spawn_child(&mut self) -> PathBuf {
        let log: PathBuf = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        log
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (all data is lost, unless a `SAVE` wrote it to its folder).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port and returns as soon as it accepts
    /// connections, while it may still be loading its data set (`-LOADING`).
    pub fn restart_loading(&mut self) {
        self.kill();
        let log = self.spawn_child();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not come back: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
