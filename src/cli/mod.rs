//! The command line (docs/interface.md, "CLI"). Every command opens the
//! configured store directly, so none needs a running gateway; a running
//! gateway sees the changes through the store's change feed.

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
    /// Config file.
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG_PATH)]
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
        Command::Keys { command } => match open(&cli.config).await {
            Ok((config, store)) => {
                keys::run(&Manager { store: store.as_ref(), config: &config, actor: cli_actor() }, *command).await
            }
            Err(f) => Err(f),
        },
        Command::Roles { command } => match open(&cli.config).await {
            Ok((config, store)) => {
                roles::run(&Manager { store: store.as_ref(), config: &config, actor: cli_actor() }, command).await
            }
            Err(f) => Err(f),
        },
        Command::AuditLog { target, page, per_page, json } => match open(&cli.config).await {
            Ok((config, store)) => {
                let m = Manager { store: store.as_ref(), config: &config, actor: cli_actor() };
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
fn cli_actor() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    format!("cli ({user})")
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
    Ok(())
}

/// Loads the config, opens its store and seeds the config's roles.
async fn open(path: &std::path::Path) -> Result<(Config, SharedStore), Failure> {
    let config = Config::load(path).map_err(Failure::config)?;
    let metrics = crate::metrics::Metrics::new().map_err(|e| Failure::store(StoreError::Unavailable(e.to_string())))?;
    let store = store::open(&config.store, &metrics).await.map_err(Failure::store)?.store;
    seed_roles(store.as_ref(), &config.roles).await.map_err(Failure::store)?;
    Ok((config, store))
}
