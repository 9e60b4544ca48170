//! Shared test harness: a real upstream (a small hyper server), the real
//! `keygate` binary started on loopback ports with a config written for the
//! test, and helpers to drive its CLI.
#![allow(dead_code)]

pub mod conformance;
pub mod hooks;
pub mod otlp;
pub mod recorder;
pub mod redis;
pub mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Ports handed to gateways and Redis servers come from below the kernel's
/// ephemeral range (32768 and up on Linux): a port picked by binding to
/// port 0 can be taken by another test's outgoing connection before the
/// process it is meant for binds it ("Address already in use").
const TEST_PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port nothing listens on right now, never the same one twice
/// in a test binary.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Test binaries run one after another; each starts at its own offset.
    let offset = std::process::id().wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free test port left in {TEST_PORTS:?}");
        let port = (TEST_PORTS.start + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The path of the binary under test: this build's, or the one named by
/// `KEYGATE_TEST_BIN` (to show that a new test fails on an older build).
pub fn keygate_bin() -> &'static str {
    static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var("KEYGATE_TEST_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_keygate").to_string())
    });
    &BIN
}

/// Whether a test whose dependency `what` (`redis`, `browser`) is missing
/// may skip: only when `KEYGATE_TEST_SKIP` names it, and never under CI. A
/// skip the operator did not ask for fails the test, so a summary of `ok`
/// always means the test ran.
pub fn may_skip(what: &str, why: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if let Err(refusal) = skip_allowed(ci, &std::env::var("KEYGATE_TEST_SKIP").unwrap_or_default(), what, why) {
        panic!("{refusal}");
    }
    // Straight to the terminal: the test harness keeps what `eprintln!`
    // says of a passing test to itself, and this must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED ({what} named in KEYGATE_TEST_SKIP): {why} ***");
    true
}

/// [`may_skip`]'s rule, apart from the environment.
pub fn skip_allowed(ci: bool, allowed: &str, what: &str, why: &str) -> Result<(), String> {
    let named = allowed.split(',').any(|w| w.trim() == what);
    match (ci, named) {
        (true, _) => Err(format!("{why}; CI must install it (see .ci/run)")),
        (false, false) => Err(format!("{why}; install it, or set KEYGATE_TEST_SKIP={what} to skip the tests that need it")),
        (false, true) => Ok(()),
    }
}

/// Admin token the harness exports to every gateway it starts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The modules, routes and roles most tests use; `{upstream}` is filled in.
pub const CATALOGUE: &str = r#"
[plans]
free = 3
pro = 100

[[upstreams]]
name = "backend"
url = "{upstream}"
timeout = "2s"
connect_timeout = "1s"

[[modules]]
id = "lists"
name = "List Management"
permissions = [ { id = "lists.create", label = "Add New List" },
                { id = "lists.view", label = "View List" } ]

[[modules]]
id = "contacts"
name = "Contact Management"
permissions = [ { id = "contacts.view", label = "View Contacts" },
                { id = "contacts.create", label = "Add Contact" } ]

[[modules]]
id = "broadcasts"
name = "Broadcasts"
permissions = [ { id = "broadcasts.send", label = "Send" } ]

[[routes]]
match = "POST /api/lists"
permission = "lists.create"

[[routes]]
match = "GET /api/lists"
permission = "lists.view"

[[routes]]
match = "GET /api/lists/{id}"
permission = "lists.view"

[[routes]]
match = "* /api/contacts/*"
permission = "contacts.view"

[[routes]]
match = "POST /api/upload"
permission = "contacts.create"

[[routes]]
match = "POST /api/broadcasts/{id}/send"
permission = "broadcasts.send"

[[routes]]
match = "GET /api/slow/{ms}"

[[routes]]
match = "GET /api/ping"
public = true

[[roles]]
id = "read-only"
permissions = ["lists.view", "contacts.view"]

[[roles]]
id = "full-access"
permissions = ["*"]
"#;

/// A temporary folder with a config file in it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub data_port: u16,
    pub admin_port: u16,
    /// Environment variables for every keygate process of this setup.
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// Writes a config: `[server]` and `[rate_limit]` extras go in their
    /// tables, then the shared catalogue pointing at `upstream`.
    pub fn new(upstream: &str, server_extra: &str, rate_limit_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (data_port, admin_port) = (free_port(), free_port());
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{data_port}\"\n{server_extra}\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [store]\npath = \"keygate.db\"\npoll_interval = \"50ms\"\n\n\
             [rate_limit]\n{rate_limit_extra}\n\n{}",
            CATALOGUE.replace("{upstream}", upstream)
        );
        Setup::with_text(dir, &text, data_port, admin_port)
    }

    /// A config whose keys, roles and rate-limit counters live in Redis.
    pub fn redis(upstream: &str, redis_url: &str, rate_limit_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (data_port, admin_port) = (free_port(), free_port());
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{data_port}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
             [store]\nbackend = \"redis\"\nurl = \"{redis_url}\"\npoll_interval = \"1s\"\n\n\
             [rate_limit]\nbackend = \"redis\"\n{rate_limit_extra}\n\n{}",
            CATALOGUE.replace("{upstream}", upstream)
        );
        Setup::with_text(dir, &text, data_port, admin_port)
    }

    /// Another node with the same config on its own ports.
    pub fn another_node(&self) -> Setup {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let (data_port, admin_port) = (free_port(), free_port());
        let text = text
            .replace(&format!("127.0.0.1:{}", self.data_port), &format!("127.0.0.1:{data_port}"))
            .replace(&format!("127.0.0.1:{}", self.admin_port), &format!("127.0.0.1:{admin_port}"));
        Setup::with_text(tempfile::tempdir().unwrap(), &text, data_port, admin_port)
    }

    /// A config with exactly this text.
    pub fn with_text(dir: tempfile::TempDir, text: &str, data_port: u16, admin_port: u16) -> Setup {
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        Setup { dir, config, data_port, admin_port, env: Vec::new() }
    }

    /// Runs `keygate --config <file> args...` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(keygate_bin()).arg("--config").arg(&self.config).args(args).envs(self.env.iter().cloned()).output().unwrap()
    }

    /// Runs a CLI command with `--json` and returns its parsed envelope's `data`,
    /// failing the test if it did not succeed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "keygate {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
        assert_eq!(v["success"], true, "{v}");
        v["data"].clone()
    }

    /// Creates a key with the CLI and returns (keyId, secret).
    pub fn create_key(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let data = self.cli_json(&all);
        (data["keyId"].as_str().unwrap().to_string(), data["apiKey"].as_str().unwrap().to_string())
    }

    /// Starts the gateway and waits until it answers.
    pub fn start(&self) -> Gateway {
        Gateway::start(self)
    }

    /// `http://127.0.0.1:<data port>` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.data_port)
    }

    /// `http://127.0.0.1:<admin port>` + path.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

/// A running `keygate serve`, killed when dropped.
pub struct Gateway {
    child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    fn start(setup: &Setup) -> Gateway {
        let mut gw = Gateway::spawn(setup);
        gw.wait_ready();
        gw
    }

    /// Starts `keygate serve` without waiting for it to listen.
    pub fn spawn(setup: &Setup) -> Gateway {
        let log = setup.dir.path().join(format!("gateway-{}.log", free_port()));
        let child = Command::new(keygate_bin())
            .arg("--config")
            .arg(&setup.config)
            .arg("serve")
            .envs(setup.env.iter().cloned())
            .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEYGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Gateway {
            child,
            data: SocketAddr::from(([127, 0, 0, 1], setup.data_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], setup.admin_port)),
            log,
        }
    }

    /// The process, to signal it without starting another (`kill`).
    pub fn process(&self) -> &Child {
        &self.child
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("keygate exited early ({status}):\n{}", self.log_text());
            }
            if std::net::TcpStream::connect(self.data).is_ok() && std::net::TcpStream::connect(self.admin).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("keygate did not start listening:\n{}", self.log_text());
    }

    /// Peak resident memory of the gateway process, in KiB (Linux).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// What the gateway logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (SIGHUP reloads).
    pub fn signal(&self, sig: &str) {
        Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
    }

    /// Stops with SIGTERM and waits for the process to end.
    pub fn stop(self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits for the process to end (after a signal sent before).
    pub fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "keygate did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that neither pools across tests nor follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(20)).build().unwrap()
}

/// Polls `f` until it returns true or `within` passes; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Waits until at least `margin` remains in the current rate-limit minute,
/// so a test that counts requests is not split across two windows.
pub async fn away_from_window_edge(margin: Duration) {
    let now_ms = keygate::clock::now_ms();
    let left = 60_000 - now_ms.rem_euclid(60_000);
    if left < margin.as_millis() as i64 {
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }
}

/// Parses a JSON body.
pub async fn json_of(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends `requests` at once: how many were admitted (200), and the codes
/// of the 429s, each checked by `refused` first; any other status fails.
pub async fn admitted_and_refused<F>(
    requests: impl Iterator<Item = F>,
    refused: impl Fn(&reqwest::Response),
) -> (usize, Vec<String>)
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut admitted = 0;
    let mut codes = Vec::new();
    for r in futures_util::future::join_all(requests).await {
        let r = r.unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => {
                refused(&r);
                codes.push(json_of(r).await["code"].as_str().unwrap_or("").to_string());
            }
            other => panic!("unexpected status {other}"),
        }
    }
    (admitted, codes)
}

/// One series' value in a node's `/metrics` ("absent" when it has none).
pub async fn metric_value(s: &Setup, series: &str) -> String {
    let text = client().get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)).unwrap_or("absent").trim().to_string()
}

/// A self-signed certificate for `localhost` (ECDSA P-256), written into
/// `dir`, for a gateway's TLS listener: the `[server]` line that serves it,
/// and a connector that trusts it and offers `alpn`.
pub fn self_signed_listener(dir: &std::path::Path, alpn: &[&[u8]]) -> (String, tokio_rustls::TlsConnector) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    listener_with(dir, &cert.cert.pem(), &cert.key_pair.serialize_pem(), alpn)
}

/// [`self_signed_listener`] with the RSA-2048 certificate of
/// `tests/it/fixtures` (rcgen makes no RSA keys).
pub fn rsa_listener(dir: &std::path::Path, alpn: &[&[u8]]) -> (String, tokio_rustls::TlsConnector) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures");
    let cert = std::fs::read_to_string(fixtures.join("rsa-localhost.pem")).unwrap();
    let key = std::fs::read_to_string(fixtures.join("rsa-localhost.key")).unwrap();
    listener_with(dir, &cert, &key, alpn)
}

/// A listener line serving `cert_pem` with `key_pem` (written into `dir`),
/// and a connector that trusts that certificate and offers `alpn`.
fn listener_with(dir: &std::path::Path, cert_pem: &str, key_pem: &str, alpn: &[&[u8]]) -> (String, tokio_rustls::TlsConnector) {
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert_pem).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    let line = format!("tls = {{ cert = \"{}\", key = \"{}\" }}", cert_file.display(), key_file.display());
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile::certs(&mut cert_pem.as_bytes()).next().unwrap().unwrap();
    roots.add(der).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (line, tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// A TLS connection to `localhost` on a gateway's data port.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}
