//! `keygate serve` and `keygate demo`.

use super::output::Failure;
use crate::config::Config;
use crate::manage::{KeyInput, Manager};
use crate::pipeline::{self, ConnInfo};
use crate::server::{self, Limits};
use crate::state::App;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Limits of the admin listener: operators and scrapers, few connections.
const ADMIN_LIMITS: Limits = Limits {
    header_read_timeout: std::time::Duration::from_secs(10),
    max_header_bytes: 16 * 1024,
    max_headers: 100,
    idle_timeout: std::time::Duration::from_secs(60),
    max_connections: 256,
    drain_timeout: std::time::Duration::from_secs(5),
    refusal: crate::server::refusal,
    spellings: crate::server::SPELLINGS,
};

fn io_failure(what: String, e: std::io::Error) -> Failure {
    Failure { message: format!("{what}: {e}"), code: "io_error", json: false, exit: 1 }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, Failure> {
    TcpListener::bind(addr).await.map_err(|e| io_failure(format!("cannot listen on {addr} ({what})"), e))
}

/// Where a person on this machine reaches a listener bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        _ => addr,
    }
}

/// The admin token `keygate demo` made for its console, when the
/// operator's environment had none.
static DEMO_ADMIN_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Gives `keygate demo` an admin token when the config's `token_env` holds
/// none, so its console can be opened. Must run before any other thread
/// starts (it sets an environment variable).
pub fn prepare_demo_admin_token(config_path: &Path) {
    let token_env = Config::load(config_path).map(|c| c.admin.token_env).unwrap_or_else(|_| "KEYGATE_ADMIN_TOKEN".into());
    if crate::admin::usable_env_token(&token_env).is_some() {
        return;
    }
    let token = crate::keys::token::new_admin_token();
    std::env::set_var(&token_env, &token);
    let _ = DEMO_ADMIN_TOKEN.set(token);
}

/// What `keygate demo` changes in the config it runs: a store of its own
/// (SQLite in a fresh temporary folder, removed at exit) and the local
/// limiter, so its full-access key never lands in the store `serve` uses;
/// and every listener on loopback, so that key is not reachable from the
/// network.
struct DemoSandbox {
    dir: std::path::PathBuf,
}

impl DemoSandbox {
    fn apply(config: &mut Config) -> Result<DemoSandbox, Failure> {
        let dir = std::env::temp_dir().join(format!("keygate-demo-{}-{}", std::process::id(), crate::keys::token::new_key_id()));
        std::fs::create_dir_all(&dir).map_err(|e| io_failure(format!("cannot create the demo's folder {}", dir.display()), e))?;
        config.store.backend = crate::config::StoreBackend::Sqlite { path: dir.join("demo.db") };
        config.rate_limit.backend = crate::config::LimiterBackend::Local;
        for listen in [&mut config.server.listen, &mut config.admin.listen] {
            if !listen.ip().is_loopback() {
                let loopback: std::net::IpAddr =
                    if listen.is_ipv6() { std::net::Ipv6Addr::LOCALHOST.into() } else { std::net::Ipv4Addr::LOCALHOST.into() };
                listen.set_ip(loopback);
            }
        }
        Ok(DemoSandbox { dir })
    }
}

impl Drop for DemoSandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the gateway until SIGINT or SIGTERM; SIGHUP reloads the config.
pub async fn serve(path: &Path, demo: bool) -> Result<(), Failure> {
    let mut config = Config::load(path).map_err(Failure::config)?;
    let _sandbox = if demo { Some(DemoSandbox::apply(&mut config)?) } else { None };
    let backend = if demo { Some(start_demo_backend(&config).await?) } else { None };
    let app = App::new(config, path.to_path_buf()).await.map_err(|e| Failure {
        message: e.to_string(),
        code: "start_failed",
        json: false,
        exit: 1,
    })?;
    let rt = app.runtime.load_full();
    let cfg = &rt.config;
    let token_env = &cfg.admin.token_env;
    if crate::admin::usable_env_token(token_env).is_none() && cfg.admin.tokens.is_empty() {
        tracing::warn!(
            "the admin API and console are disabled: set {token_env} to a token of at least {} characters",
            crate::admin::MIN_ADMIN_TOKEN_LEN
        );
    }
    for (field, message) in cfg.warnings() {
        tracing::warn!(field, "config: {message}");
    }
    // Before the listeners bind: a signal sent as soon as the port answers
    // is then caught and drains, where the default action would end the
    // process at once, usage unwritten.
    let signals = Signals::install();
    let data = bind(cfg.server.listen, "server.listen").await?;
    let admin = bind(cfg.admin.listen, "admin.listen").await?;
    let data_addr = data.local_addr().map_err(|e| io_failure("data listener".into(), e))?;
    let admin_addr = admin.local_addr().map_err(|e| io_failure("admin listener".into(), e))?;
    let scheme = if cfg.server.tls.is_some() { "https" } else { "http" };
    tracing::info!(data = %data_addr, admin = %admin_addr, tls = cfg.server.tls.is_some(), "keygate listening");
    if let Some(backend) = backend {
        print_demo_banner(&app, cfg, reachable(data_addr), scheme, reachable(admin_addr), backend).await?;
    }
    let background = crate::background::Background::start(&app);

    // The data plane stops at the signal; the admin listener only once the
    // data plane has drained, so `/readyz` can say `draining` meanwhile.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    tokio::spawn(handle_signals(Arc::clone(&app), stop_tx, signals));
    // Each new TLS connection takes the running config's certificate, so a
    // reload rotates it; a reload that drops `[server.tls]` keeps the last
    // one (a listener changes between TLS and clear text only at a restart).
    let tls = cfg.server.tls.as_ref().map(|first| {
        let (app, first) = (Arc::clone(&app), Arc::clone(&first.server_config));
        let source: server::tls::ConfigSource = Arc::new(move || match &app.runtime.load().config.server.tls {
            Some(t) => Arc::clone(&t.server_config),
            None => Arc::clone(&first),
        });
        source
    });
    // Thread per core: each worker runs its own single-threaded event loop and
    // keeps a connection (and the upstream connections it uses) to itself,
    // so a request never wakes another thread. The main runtime accepts and
    // hands connections out in turn; it also runs the admin listener and the
    // background tasks.
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for worker in 0..cfg.server.workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let (app, tls, stop, limits) = (Arc::clone(&app), tls.clone(), stop_rx.clone(), Limits::from_server(&cfg.server));
        let gauge = Some(app.metrics.open_connections.clone());
        let thread = std::thread::Builder::new().name(format!("keygate-worker-{worker}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(worker, error = %e, "cannot start a worker runtime");
                    return;
                }
            };
            let handler = move |req, conn: ConnInfo| pipeline::handle(Arc::clone(&app), req, conn);
            runtime.block_on(server::serve_worker(rx, tls, limits, handler, stop, gauge, worker));
        });
        workers.push(thread.map_err(|e| io_failure("cannot start a worker thread".into(), e))?);
    }
    let data_task = tokio::spawn(server::dispatch(data, senders, Limits::from_server(&cfg.server), stop_rx.clone()));
    let admin_app = Arc::clone(&app);
    let admin_task = tokio::spawn(server::serve(
        admin,
        None,
        ADMIN_LIMITS,
        move |req, conn: ConnInfo| crate::admin::handle(Arc::clone(&admin_app), req, conn.peer),
        admin_stop_rx,
        None,
    ));
    drop(stop_rx);
    let _ = data_task.await;
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    let _ = admin_stop_tx.send(true);
    let _ = admin_task.await;
    drop(rt);
    background.stop().await;
    tracing::info!("keygate stopped");
    Ok(())
}

/// The signals `serve` acts on, listened for from when they are installed.
#[cfg(unix)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    /// `None` when they cannot be (then the default actions stay).
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let installed = (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        match installed {
            (Ok(hup), Ok(term), Ok(int)) => Some(Signals { hup, term, int }),
            _ => {
                tracing::error!("cannot install signal handlers");
                None
            }
        }
    }
}

/// Reloads on SIGHUP; on SIGTERM or SIGINT, starts the drain.
#[cfg(unix)]
async fn handle_signals(app: Arc<App>, stop: watch::Sender<bool>, signals: Option<Signals>) {
    let Some(Signals { mut hup, mut term, mut int }) = signals else { return };
    loop {
        tokio::select! {
            _ = hup.recv() => match app.reload().await {
                Ok(()) => tracing::info!("config reloaded"),
                Err(e) => tracing::error!("config reload refused, keeping the running config:\n{e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    app.start_draining();
    let _ = stop.send(true);
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Option<Signals> {
        Some(Signals)
    }
}

#[cfg(not(unix))]
async fn handle_signals(_app: Arc<App>, stop: watch::Sender<bool>, _signals: Option<Signals>) {
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop.send(true);
}

/// Starts the example backend on the first upstream's address.
async fn start_demo_backend(config: &Config) -> Result<SocketAddr, Failure> {
    let upstream = config.upstreams.first().ok_or_else(|| Failure {
        message: "the demo needs an [[upstreams]] entry to stand in for".into(),
        code: "invalid_config",
        json: false,
        exit: 2,
    })?;
    let port = upstream.origin.port_u16().unwrap_or(80);
    let addr: SocketAddr = match upstream.origin.host() {
        "localhost" => SocketAddr::from(([127, 0, 0, 1], port)),
        host => host.parse().map(|ip| SocketAddr::new(ip, port)).map_err(|_| Failure {
            message: format!(
                "the demo backend must run on this machine, but upstream `{}` is {}",
                upstream.name, upstream.origin
            ),
            code: "invalid_config",
            json: false,
            exit: 2,
        })?,
    };
    let listener = bind(addr, "demo backend").await?;
    tokio::spawn(crate::demo::serve_backend(listener));
    Ok(addr)
}

async fn print_demo_banner(
    app: &App,
    cfg: &Config,
    data: SocketAddr,
    scheme: &str,
    admin: SocketAddr,
    backend: SocketAddr,
) -> Result<(), Failure> {
    let m = Manager::new(app.store.as_ref(), cfg, "demo");
    let role = cfg.roles.iter().find(|r| r.permissions.iter().any(|p| p == "*")).map(|r| r.id.clone());
    let input = KeyInput {
        name: Some("demo key".into()),
        description: Some("created by `keygate demo`".into()),
        owner: Some("demo".into()),
        permissions: role.is_none().then(|| vec!["*".to_string()]),
        role,
        ..KeyInput::default()
    };
    let (_, secret) = m.create_key(input, None).await.map_err(|e| Failure::manage(e, false))?;
    let base = format!("{scheme}://{data}");
    let admin_token = match DEMO_ADMIN_TOKEN.get() {
        Some(t) => format!("{t}   (made for this run)"),
        None => format!("the token in ${}", cfg.admin.token_env),
    };
    println!(
        "\nkeygate demo is running (its own throwaway store; listening on loopback only)\n\
         \x20 gateway:  {base}\n\
         \x20 backend:  http://{backend}  (built-in example email-marketing API)\n\
         \x20 metrics:  http://{admin}/metrics\n\
         \x20 console:  http://{admin}/console/   sign in with {admin_token}\n\
         \x20 your key: {secret}   (shown once; gone when the demo stops)\n\n\
         try:\n\
         \x20 curl -H 'Authorization: Bearer {secret}' {base}/api/lists\n\
         \x20 curl -H 'X-API-Key: {secret}' {base}/whoami\n\
         \x20 curl '{base}/api/lists?api_token={secret}'\n\
         \x20 curl -i {base}/api/lists          # 401 missing_key\n\
         stop with Ctrl-C\n"
    );
    Ok(())
}
