//! The command line (docs/interface.md, "CLI"). Every command opens the
//! configured store directly, so none needs a running gateway; a running
//! gateway sees the changes through the store's change feed.

mod events;
mod keys;
mod output;
mod roles;
mod serve;
pub use serve::prepare_demo_admin_token;

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::manage::Manager;
use crate::state::seed_roles;
use crate::store::{self, SharedStore, StoreError};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use output::Failure;

/// `keygate [--config FILE] <command>`.
#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "An API-key gateway: a reverse proxy that enforces API keys, permissions and rate limits"
)]
pub struct Cli {
    /// Config file (or the KEYGATE_CONFIG variable; --config wins).
    #[arg(long, short = 'c', global = true, env = "KEYGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default command).
    Serve,
    /// Run the gateway with a built-in example backend and print a fresh key to try it with.
    Demo,
    /// Check the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: Box<keys::KeysCommand>,
    },
    /// Manage roles.
    Roles {
        #[command(subcommand)]
        command: roles::RolesCommand,
    },
    /// Named admin tokens with scopes.
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Ask the running gateway's admin listener whether it is up (`/healthz`)
    /// or, with --ready, taking traffic (`/readyz`): exit 0 if so. For
    /// container health checks, where no HTTP client may be installed.
    Health {
        #[arg(long)]
        ready: bool,
    },
    /// Addresses blocked for failed credentials ([abuse] failed_credentials).
    Blocks {
        #[command(subcommand)]
        command: BlocksCommand,
    },
    /// Lifecycle events and their webhook deliveries.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Leaked keys.
    Leaks {
        #[command(subcommand)]
        command: LeaksCommand,
    },
    /// Print a shell's completion script: `keygate completions bash >
    /// /etc/bash_completion.d/keygate` (zsh: a `_keygate` file on $fpath;
    /// fish: ~/.config/fish/completions/keygate.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `keygate man > /usr/local/share/man/man1/keygate.1`.
    Man,
    /// Show the audit log of management changes, newest first.
    AuditLog {
        /// Only entries about this key or role id.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 1)]
        page: u64,
        #[arg(long, default_value_t = 50)]
        per_page: u64,
        #[arg(long)]
        json: bool,
    },
}

/// `keygate admin-token ...`.
#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Make a token: printed once, with the [[admin.tokens]] block (its hash) to paste into the config.
    New {
        /// 1-64 lowercase letters, digits, '-', '_' or '.' (shown in the audit log).
        #[arg(long)]
        name: String,
        /// read, write, verify, leaks or admin (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// `keygate blocks ...`.
#[derive(Debug, Subcommand)]
pub enum BlocksCommand {
    /// The blocks in force, by address.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift an address's block, on every node.
    Remove {
        address: String,
        #[arg(long)]
        json: bool,
    },
}

/// `keygate leaks ...`.
#[derive(Debug, Subcommand)]
pub enum LeaksCommand {
    /// Print the rules secret scanners find this gateway's tokens by: the
    /// text to enrol with GitHub's partner program, a gitleaks rule, or a
    /// TruffleHog custom detector.
    Rules {
        #[arg(long, value_parser = ["github", "gitleaks", "trufflehog"])]
        format: String,
    },
}

/// `keygate config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and exit non-zero, naming file, line and field, if it is wrong.
    Check,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::serve(&cli.config, false).await,
        Command::Demo => serve::serve(&cli.config, true).await,
        Command::Config { command: ConfigCommand::Check } => check_config(&cli.config),
        Command::Health { ready } => health(&cli.config, ready).await,
        Command::Leaks { command: LeaksCommand::Rules { format } } => leak_rules(&cli.config, &format),
        Command::AdminToken { command: AdminTokenCommand::New { name, scopes, json } } => new_admin_token(&name, &scopes, json),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "keygate", &mut script);
            print_generated(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            // Made from the parser that reads the command line: it cannot fall behind it.
            let rendered = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page);
            rendered.map_err(|e| generated_failure(&e)).and_then(|()| print_generated(&page))
        }
        Command::Keys { command } => match open(&cli.config).await {
            Ok((config, store)) => {
                {
                    // On Redis the windows' counts live there: read them live.
                    let metrics = crate::metrics::Metrics::new().ok();
                    let limiter = match (&config.rate_limit.backend, &metrics, command.as_ref()) {
                        (crate::config::LimiterBackend::Redis(target), Some(metrics), keys::KeysCommand::Usage { .. }) => {
                            match crate::ratelimit::Limiter::connect_redis(target, &config.rate_limit, metrics).await {
                                Ok(l) => Some(l),
                                Err(e) => return Failure::store(StoreError::Unavailable(e)).report(),
                            }
                        }
                        _ => None,
                    };
                    let credits = crate::ratelimit::credits::Credits::default();
                    // Read only: no CLI command charges a key.
                    let usage = crate::cache::UsageRecorder::default();
                    let mut m = Manager::new(store.as_ref(), &config, cli_actor());
                    if let (Some(limiter), Some(metrics)) = (&limiter, &metrics) {
                        m.meter = Some(crate::manage::Live {
                            limiter,
                            credits: &credits,
                            metrics,
                            usage: &usage,
                            notices: None,
                            in_flight: None,
                        });
                    }
                    keys::run(&m, *command).await
                }
            }
            Err(f) => Err(f),
        },
        Command::Roles { command } => match open(&cli.config).await {
            Ok((config, store)) => roles::run(&Manager::new(store.as_ref(), &config, cli_actor()), command).await,
            Err(f) => Err(f),
        },
        Command::Blocks { command } => match open(&cli.config).await {
            Ok((config, store)) => blocks(&Manager::new(store.as_ref(), &config, cli_actor()), command).await,
            Err(f) => Err(f),
        },
        Command::Events { command } => match open(&cli.config).await {
            Ok((config, store)) => events::run(&Manager::new(store.as_ref(), &config, cli_actor()), command).await,
            Err(f) => Err(f),
        },
        Command::AuditLog { target, page, per_page, json } => match open(&cli.config).await {
            Ok((config, store)) => {
                let m = Manager::new(store.as_ref(), &config, cli_actor());
                audit_log(&m, target.as_deref(), page.max(1), per_page.max(1), json).await
            }
            Err(f) => Err(f),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

/// Writes a generated text (completions, the man page) to stdout; a
/// reader that stops early (`| head`) is no failure.
fn print_generated(text: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    match std::io::stdout().write_all(text) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(generated_failure(&e)),
        _ => Ok(()),
    }
}

fn generated_failure(e: &std::io::Error) -> Failure {
    Failure { message: format!("cannot write it out: {e}"), code: "io_error", json: false, exit: 1 }
}

async fn blocks(m: &Manager<'_>, command: BlocksCommand) -> Result<(), Failure> {
    match command {
        BlocksCommand::List { json } => {
            let blocks = m.blocks().await.map_err(|e| Failure::manage(e, json))?;
            if json {
                output::print_json(blocks.into(), serde_json::json!({}));
            } else {
                let rows: Vec<Vec<String>> = blocks
                    .iter()
                    .map(|b| vec![b["address"].as_str().unwrap_or("").into(), b["until"].as_str().unwrap_or("").into()])
                    .collect();
                output::print_table(&["ADDRESS", "BLOCKED UNTIL"], &rows);
            }
        }
        BlocksCommand::Remove { address, json } => {
            m.unblock(&address).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                output::print_json(serde_json::json!({ "address": address, "removed": true }), serde_json::json!({}));
            } else {
                println!("unblocked {address}: every node lets it try again within a second");
            }
        }
    }
    Ok(())
}

async fn audit_log(m: &Manager<'_>, target: Option<&str>, page: u64, per_page: u64, json: bool) -> Result<(), Failure> {
    let result = m.audit_log(target, (page - 1) * per_page, per_page).await.map_err(|e| Failure::manage(e, json))?;
    if json {
        let data = serde_json::to_value(&result.entries).unwrap_or_default();
        output::print_json(data, serde_json::json!({ "total": result.total, "page": page, "perPage": per_page }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = result
        .entries
        .iter()
        .map(|e| vec![crate::clock::rfc3339(e.at_ms / 1000), e.actor.clone(), e.action.clone(), e.target.clone()])
        .collect();
    output::print_table(&["WHEN", "WHO", "WHAT", "TARGET"], &rows);
    println!("{} entr{} in all", result.total, if result.total == 1 { "y" } else { "ies" });
    Ok(())
}

/// How CLI changes are signed in the audit log.
/// `cli (<user>)`: `$USER` or `$LOGNAME`, else the uid (services and
/// containers often run without either).
fn cli_actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty());
    let user = user.unwrap_or_else(|| format!("uid {}", current_uid()));
    format!("cli ({user})")
}

/// The real uid, read from `/proc` (no libc call needed).
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next().map(str::to_string)))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Prints a fresh admin token once, and the config block that grants it.
fn new_admin_token(name: &str, scopes: &[String], json: bool) -> Result<(), Failure> {
    let refuse = |message: String| Failure { message, code: "invalid_request", json, exit: 2 };
    crate::config::AdminToken::check_name(name).map_err(|e| refuse(format!("name: `{name}` {e}")))?;
    if let Some(bad) = scopes.iter().find(|s| crate::config::Scopes::parse(s).is_none()) {
        return Err(refuse(format!("scopes: unknown scope `{bad}` (read, write, verify, leaks or admin)")));
    }
    let token = crate::keys::token::new_admin_token();
    let sha256 = crate::keys::token::TokenHash::of(&token).to_hex();
    let quoted: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    let block = format!("[[admin.tokens]]\nname = \"{name}\"\nsha256 = \"{sha256}\"\nscopes = [{}]\n", quoted.join(", "));
    if json {
        output::print_json(
            serde_json::json!({ "name": name, "token": token, "sha256": sha256, "scopes": scopes, "config": block }),
            serde_json::json!({ "warning": "the token is shown once; the config keeps only its hash" }),
        );
    } else {
        println!("token (shown once; keep it in a secret store): {token}\n\nadd to the config, then reload (SIGHUP):\n\n{block}");
    }
    Ok(())
}

/// `keygate leaks rules`: the scanner rules for the config's brand.
fn leak_rules(path: &std::path::Path, format: &str) -> Result<(), Failure> {
    let config = Config::load(path).map_err(Failure::config)?;
    // clap already holds --format to the three names.
    let unknown =
        || Failure { message: format!("--format: unknown format `{format}`"), code: "invalid_request", json: false, exit: 2 };
    let format = crate::leaks::RulesFormat::parse(format).ok_or_else(unknown)?;
    print!("{}", crate::leaks::scanner_rules(&config.keys.brand, format));
    Ok(())
}

fn check_config(path: &std::path::Path) -> Result<(), Failure> {
    let config = Config::load(path).map_err(Failure::config)?;
    println!(
        "{}: ok ({} upstream(s), {} module(s), {} route(s), {} role(s))",
        path.display(),
        config.upstreams.len(),
        config.catalogue.modules().len(),
        config.routes.routes().len(),
        config.roles.len()
    );
    for (field, message) in config.warnings() {
        eprintln!("warning: {}: {field}: {message}", path.display());
    }
    Ok(())
}

/// `keygate health`: one GET to the admin listener, within two seconds.
async fn health(path: &std::path::Path, ready: bool) -> Result<(), Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = Config::load(path).map_err(Failure::config)?;
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv6() { std::net::Ipv6Addr::LOCALHOST.into() } else { std::net::Ipv4Addr::LOCALHOST.into() });
    }
    let probe = if ready { "/readyz" } else { "/healthz" };
    let failed = |why: String| Failure { message: format!("{probe} on {addr}: {why}"), code: "unhealthy", json: false, exit: 1 };
    let asked = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // A loopback name: the probe runs beside the gateway, whatever
        // address it listens on (see admin.allowed_hosts).
        let request = format!("GET {probe} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 256];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let answer = match tokio::time::timeout(std::time::Duration::from_secs(2), asked).await {
        Err(_) => return Err(failed("no answer within 2 s".into())),
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Ok(Ok(a)) => a,
    };
    let status = answer.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        println!("{probe}: ok");
        Ok(())
    } else {
        Err(failed(format!("answered `{status}`")))
    }
}

/// Loads the config, opens its store and seeds the config's roles.
async fn open(path: &std::path::Path) -> Result<(Config, SharedStore), Failure> {
    let config = Config::load(path).map_err(Failure::config)?;
    let metrics = crate::metrics::Metrics::new().map_err(|e| Failure::store(StoreError::Unavailable(e.to_string())))?;
    let store = store::open(&config.store, &metrics).await.map_err(Failure::store)?;
    seed_roles(store.as_ref(), &config.roles).await.map_err(Failure::store)?;
    crate::state::register_webhooks(store.as_ref(), &config.webhooks).await.map_err(Failure::store)?;
    Ok((config, store))
}
