//! `keygate keys ...`.

use super::output::{print_json, print_table, read_input, write_export, Failure};
use crate::clock;
use crate::keys::model::ApiKey;
use crate::manage::{CreditsInput, KeyInput, Manager, QuotaInput, SECRET_WARNING};
use crate::store::KeyQuery;
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::io::IsTerminal;

/// The key fields create, import and edit accept.
#[derive(Debug, Args, Default, PartialEq)]
pub struct KeyArgs {
    /// Display name (1-100 characters; required to create).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// The account or user the key belongs to.
    #[arg(long)]
    pub owner: Option<String>,
    /// Role id ("" removes the role).
    #[arg(long)]
    pub role: Option<String>,
    /// A permission of the key's own, beyond its role's (repeatable; `module.*` and `*` allowed).
    #[arg(long = "permission")]
    pub permissions: Vec<String>,
    /// Requests per minute (0 falls back to the plan or the default).
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Plan name from [plans] ("" removes it).
    #[arg(long)]
    pub plan: Option<String>,
    /// Allowed client address or CIDR (repeatable; one "" clears the list).
    #[arg(long = "allow-ip")]
    pub allow_ips: Vec<String>,
    /// live or test.
    #[arg(long)]
    pub env: Option<String>,
    /// Days until the key expires, 1-365 (0 removes the expiry).
    #[arg(long, conflicts_with_all = ["expires_at", "expires_in"])]
    pub expires_in_days: Option<u32>,
    /// When the key expires, RFC 3339 (2026-12-31T18:00:00Z), or `never`:
    /// the key never expires (an expiry set before is removed).
    #[arg(long, conflicts_with = "expires_in")]
    pub expires_at: Option<String>,
    /// How long until the key expires: 90m, 2h, 30d, ...
    #[arg(long)]
    pub expires_in: Option<String>,
    /// Metadata entry NAME=VALUE (repeatable), forwarded as X-Keygate-Meta-Name.
    #[arg(long = "meta")]
    pub meta: Vec<String>,
    /// Requests (units of cost) per UTC hour (0 falls back to the plan).
    #[arg(long)]
    pub per_hour: Option<u32>,
    /// Requests per UTC day (0 falls back to the plan).
    #[arg(long)]
    pub per_day: Option<u32>,
    /// Requests per UTC month (0 falls back to the plan).
    #[arg(long)]
    pub per_month: Option<u32>,
    /// Sets the key's credit balance: every request then spends its cost from it.
    #[arg(long)]
    pub credits: Option<u64>,
    /// Credits the balance is set back to at each refill (0 removes the refill).
    #[arg(long)]
    pub refill: Option<u64>,
    /// When credits are refilled: day or month (UTC).
    #[arg(long)]
    pub refill_interval: Option<String>,
    /// The key stops spending credits.
    #[arg(long, conflicts_with_all = ["credits", "refill", "refill_interval"])]
    pub no_credits: bool,
    /// Try the key's permissions, IP allowlist and limits without enforcing
    /// them (`--shadow=false` enforces them again).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    pub shadow: Option<bool>,
    /// Requests of the key in flight at once (0 falls back to the plan or [rate_limit]).
    #[arg(long)]
    pub max_in_flight: Option<u32>,
}

impl KeyArgs {
    fn into_input(self) -> Result<KeyInput, String> {
        let metadata = if self.meta.is_empty() {
            None
        } else {
            let mut m = BTreeMap::new();
            for entry in &self.meta {
                let (k, v) = entry.split_once('=').ok_or_else(|| format!("--meta `{entry}` must be NAME=VALUE"))?;
                m.insert(k.to_string(), v.to_string());
            }
            Some(m)
        };
        let expires_at = match (self.expires_at.as_deref(), self.expires_in.as_deref()) {
            (Some("never" | ""), _) => Some(None),
            (Some(at), _) => Some(Some(clock::parse_rfc3339(at).map_err(|m| format!("expiresAt: --expires-at {m}"))?)),
            (None, Some(span)) => {
                let span = crate::config::parse_duration(span).map_err(|e| format!("expiresAt: --expires-in: {e}"))?;
                Some(Some(clock::now_unix().saturating_add(i64::try_from(span.as_secs()).unwrap_or(i64::MAX))))
            }
            (None, None) => None,
        };
        Ok(KeyInput {
            name: self.name,
            description: self.description,
            owner: self.owner,
            role: self.role,
            permissions: (!self.permissions.is_empty()).then_some(self.permissions),
            rate_limit: self.rate_limit,
            plan: self.plan,
            allowed_ips: (!self.allow_ips.is_empty()).then_some(self.allow_ips),
            env: self.env,
            expires_in_days: self.expires_in_days,
            expires_at,
            metadata,
            enabled: None,
            quota: QuotaInput {
                per_hour: self.per_hour.map(|n| (n > 0).then_some(n)),
                per_day: self.per_day.map(|n| (n > 0).then_some(n)),
                per_month: self.per_month.map(|n| (n > 0).then_some(n)),
            },
            shadow: self.shadow,
            max_in_flight: self.max_in_flight,
            credits: if self.no_credits {
                Some(None)
            } else if self.credits.is_some() || self.refill.is_some() || self.refill_interval.is_some() {
                Some(Some(CreditsInput {
                    remaining: self.credits,
                    refill_amount: self.refill.map(Some),
                    refill_interval: self.refill_interval.map(Some),
                }))
            } else {
                None
            },
        })
    }
}

/// `keygate keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown once).
    Create {
        #[command(flatten)]
        fields: KeyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Register an existing token of any format (`--token -` reads it from
    /// stdin), or restore keys from JSON lines (`--file F`, `-` for stdin):
    /// an export, or lines with a `token` field.
    Import {
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        token: Option<String>,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Create again keys of the file that were deleted from the store
        /// (without it, such lines are reported as conflicts).
        #[arg(long, requires = "file")]
        recreate_deleted: bool,
        #[command(flatten)]
        fields: KeyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write every key as one JSON line (every field, secrets by SHA-256 only).
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List keys (masked).
    List {
        /// Substring of name, description, owner, key prefix, role or id.
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change fields of a key.
    Edit {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        #[command(flatten)]
        fields: KeyArgs,
        #[arg(long)]
        json: bool,
    },
    /// Let a disabled key work again.
    Enable {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Refuse every request with this key (401 key_disabled).
    Disable {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a key for good. On a terminal it asks first.
    Delete {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        /// Do not ask (a script's stdin is not a terminal: it is never asked).
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// A key's use of each window (minute, hour, day, month) and its credits.
    Usage {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Add to or set a key's credit balance.
    Credits {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        /// Credits to add (negative to take away).
        #[arg(long, allow_hyphen_values = true, required_unless_present = "set", conflicts_with = "set")]
        add: Option<i64>,
        /// The new balance.
        #[arg(long)]
        set: Option<u64>,
        /// Start a key that spends no credits spending them (every request
        /// it makes then spends its cost); without it such a key is refused.
        #[arg(long)]
        start: bool,
        #[arg(long)]
        json: bool,
    },
    /// Report leaked tokens (one per line in the file, `-` for stdin): each
    /// that is one of this gateway's disables its key (or, with
    /// `[leaks] on_leak = "flag"`, is only audited) as a scanner's report would.
    Leaked {
        #[arg(long)]
        token_file: std::path::PathBuf,
        /// Where the tokens were found (kept in the audit log).
        #[arg(long, default_value = "")]
        url: String,
        /// What was scanned, or who found them.
        #[arg(long, default_value = "cli")]
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Give a key a new secret; the old one keeps working for the grace period.
    Rotate {
        id: String,
        /// Only if the key is still at this version (as `keys show` gives it).
        #[arg(long)]
        if_version: Option<u64>,
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
        #[arg(long)]
        json: bool,
    },
}

/// What an import did, as the envelope or a sentence; a failure (exit 1)
/// when some lines were not written, after saying which and why.
pub fn print_summary(summary: crate::manage::ImportSummary, what: &str, json: bool) -> Result<(), Failure> {
    let conflicts = summary.conflicts.len();
    if json {
        print_json(serde_json::to_value(&summary).unwrap_or_default(), json!({}));
    } else {
        println!("imported: {} {what}(s) created, {} updated", summary.created, summary.updated);
        for c in &summary.conflicts {
            println!("not imported: line {} ({}): {}", c.line, c.key_id, c.reason);
        }
    }
    if conflicts == 0 {
        return Ok(());
    }
    // Said already, in the envelope or above: only the exit status is left.
    Err(Failure { message: format!("{conflicts} line(s) were not imported"), code: "import_conflicts", json: false, exit: 1 })
}

fn read_token(arg: String) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| usage(false)(format!("cannot read the token from stdin: {e}")))?;
    Ok(line.trim().to_string())
}

/// A refused option value, in the envelope when `--json` was asked.
fn usage(json: bool) -> impl Fn(String) -> Failure {
    move |message| Failure { message, code: "invalid_request", json, exit: 2 }
}

async fn print_secret(m: &Manager<'_>, key: &ApiKey, secret: &str, json: bool) {
    if json {
        let mut data = m.key_json(key);
        data["apiKey"] = secret.into();
        print_json(data, json!({ "warning": SECRET_WARNING }));
    } else {
        print_key(m, key).await;
        println!("apiKey:      {secret}");
        println!("\n{SECRET_WARNING}");
    }
}

/// A key as text, a field a line: its limits, quotas and credits (with
/// the balance) among them.
async fn print_key(m: &Manager<'_>, key: &ApiKey) {
    let mut v = m.key_json(key);
    if key.credits.is_some() {
        // The balance is the store's: a key shown without it would hide
        // what its next request spends from.
        if let Ok(credits) = m.credits_json(key).await {
            v["credits"] = credits;
        }
    }
    for field in [
        "keyId",
        "name",
        "description",
        "owner",
        "role",
        "permissions",
        "plan",
        "rateLimit",
        "quota",
        "credits",
        "maxInFlight",
        "shadow",
        "allowedIps",
        "env",
        "status",
        "expiresAt",
        "createdAt",
        "lastUsed",
        "usageCount",
        "metadata",
        "keyPrefix",
        "version",
    ] {
        println!("{:<12} {}", format!("{field}:"), text_of(&v[field]));
    }
}

/// A JSON value as one line of text: `-` for nothing, an object's set
/// fields as `name=value`.
fn text_of(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) if s.is_empty() => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Object(map) => {
            let set: Vec<String> = map.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| format!("{k}={}", text_of(v))).collect();
            if set.is_empty() {
                "-".to_string()
            } else {
                set.join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// `keys usage`: each window, then the credits.
async fn print_usage(m: &Manager<'_>, id: &str, json: bool) -> Result<(), Failure> {
    let key = m.get_key(id).await.map_err(|e| Failure::manage(e, json))?;
    let (windows, credits) = m.key_meter(&key).await.map_err(|e| Failure::manage(e, json))?;
    if json {
        print_json(json!({ "keyId": id, "windows": windows, "credits": credits }), json!({}));
        return Ok(());
    }
    let text = |v: &serde_json::Value| if v.is_null() { "-".to_string() } else { v.to_string().trim_matches('"').to_string() };
    let rows: Vec<Vec<String>> = windows
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| ["window", "used", "limit", "remaining", "resetsAt"].iter().map(|f| text(&w[*f])).collect())
        .collect();
    print_table(&["WINDOW", "USED", "LIMIT", "REMAINING", "RESETS AT"], &rows);
    if !credits.is_null() {
        println!(
            "credits: {} remaining, refill {} per {} (next {})",
            text(&credits["remaining"]),
            text(&credits["refillAmount"]),
            text(&credits["refillInterval"]),
            text(&credits["refillsAt"])
        );
    }
    Ok(())
}

/// Runs a `keys` subcommand.
pub async fn run(m: &Manager<'_>, command: KeysCommand) -> Result<(), Failure> {
    match command {
        KeysCommand::Usage { id, json } => print_usage(m, &id, json).await?,
        KeysCommand::Credits { id, if_version, add, set, start, json } => {
            let change = match (add, set) {
                (Some(n), _) => crate::store::CreditChange::Add(n),
                (None, Some(n)) => crate::store::CreditChange::Set(i64::try_from(n).unwrap_or(i64::MAX)),
                (None, None) => return Err(usage(json)("give --add N or --set N".into())),
            };
            let credits = m.change_credits(&id, change, start, if_version).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(json!({ "keyId": id, "credits": credits }), json!({}));
            } else {
                println!("{id}: {} credits remaining", credits["remaining"]);
            }
        }
        KeysCommand::Create { fields, json } => {
            let input = fields.into_input().map_err(usage(json))?;
            let (key, secret) = m.create_key(input, None).await.map_err(|e| Failure::manage(e, json))?;
            print_secret(m, &key, &secret, json).await;
        }
        KeysCommand::Import { file: Some(file), fields, recreate_deleted, json, .. } => {
            if fields != KeyArgs::default() {
                return Err(usage(json)("--file takes the fields from its lines: give no other key option".into()));
            }
            let text = read_input(&file)?;
            let summary = m.import_keys(&text, recreate_deleted).await.map_err(|e| Failure::manage(e, json))?;
            print_summary(summary, "key", json)?;
        }
        KeysCommand::Export { file } => {
            let lines = m.export_keys().await.map_err(|e| Failure::manage(e, false))?;
            write_export(file.as_deref(), &crate::manage::json_lines(&lines))?;
        }
        KeysCommand::Import { token, fields, json, .. } => {
            let token = read_token(token.unwrap_or_default())?;
            let input = fields.into_input().map_err(usage(json))?;
            let (key, _) = m.create_key(input, Some(token)).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(m.key_json(&key), json!({}));
            } else {
                print_key(m, &key).await;
            }
        }
        KeysCommand::List { search, json } => {
            let page = m.list_keys(&KeyQuery { search, ..KeyQuery::default() }).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(page.keys.iter().map(|k| m.key_json(k)).collect(), json!({ "total": page.total }));
            } else {
                let rows: Vec<Vec<String>> = page
                    .keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.key_id.clone(),
                            k.key_prefix.clone(),
                            k.name.clone(),
                            k.role.clone().unwrap_or_else(|| "-".into()),
                            k.owner.clone(),
                            m.config.limit_for(k.rate_limit, k.plan.as_deref()).to_string(),
                            k.env.as_str().into(),
                            m.key_json(k)["status"].as_str().unwrap_or("").to_string(),
                            k.last_used.map(clock::rfc3339).unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                print_table(&["KEY ID", "KEY", "NAME", "ROLE", "OWNER", "RPM", "ENV", "STATUS", "LAST USED"], &rows);
                println!("{} key(s)", page.total);
            }
        }
        KeysCommand::Show { id, json } => {
            let key = m.get_key(&id).await.map_err(|e| Failure::manage(e, json))?;
            let history = m.audit_log(Some(&id), 0, 10).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(m.key_json(&key), json!({ "history": history.entries }));
            } else {
                print_key(m, &key).await;
                println!("\nhistory (newest first; `keygate audit-log --target {id}` for all):");
                for e in &history.entries {
                    println!("  {}  {:<12} {}", clock::rfc3339(e.at_ms / 1000), e.action, e.actor);
                }
            }
        }
        KeysCommand::Edit { id, if_version, fields, json } => {
            let input = fields.into_input().map_err(usage(json))?;
            let key = m.edit_key(&id, input, if_version).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(m.key_json(&key), json!({}));
            } else {
                print_key(m, &key).await;
            }
        }
        KeysCommand::Enable { id, if_version, json } => toggle(m, &id, true, if_version, json).await?,
        KeysCommand::Disable { id, if_version, json } => toggle(m, &id, false, if_version, json).await?,
        KeysCommand::Delete { id, if_version, yes, json } => {
            if !yes && std::io::stdin().is_terminal() {
                let key = m.get_key(&id).await.map_err(|e| Failure::manage(e, json))?;
                if !confirm(&format!("Delete key {id} ({}) for good? Requests with it will fail. [y/N] ", key.name)) {
                    return Err(Failure { message: format!("{id} was not deleted"), code: "not_confirmed", json, exit: 1 });
                }
            }
            m.delete_key(&id, if_version).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(json!({ "keyId": id, "revoked": true }), json!({}));
            } else {
                println!("deleted {id}");
            }
        }
        KeysCommand::Leaked { token_file, url, source, json } => leaked(m, &token_file, url, source, json).await?,
        KeysCommand::Rotate { id, if_version, grace_seconds, json } => {
            let (key, secret) = m.rotate_key(&id, grace_seconds, if_version).await.map_err(|e| Failure::manage(e, json))?;
            print_secret(m, &key, &secret, json).await;
        }
    }
    Ok(())
}

/// Asks `question` on the terminal; true for `y` or `yes`.
fn confirm(question: &str) -> bool {
    use std::io::Write;
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok() && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

async fn leaked(m: &Manager<'_>, file: &std::path::Path, url: String, source: String, json: bool) -> Result<(), Failure> {
    let text = read_input(file)?;
    let reported: Vec<crate::manage::Reported> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|token| crate::manage::Reported {
            token: token.into(),
            kind: String::new(),
            url: url.clone(),
            source: source.clone(),
        })
        .collect();
    if reported.is_empty() || reported.len() > crate::manage::MAX_REPORTED {
        let max = crate::manage::MAX_REPORTED;
        return Err(usage(json)(format!("{} must hold 1 to {max} tokens, one per line", file.display())));
    }
    let found = m.report_leaks(&reported, m.config.leaks.on_leak).await.map_err(|e| Failure::manage(e, json))?;
    if json {
        let (data, meta) = crate::manage::report_json(&found);
        print_json(data, meta);
        return Ok(());
    }
    for f in &found {
        // A prefix of the hash names the line without showing the token.
        let id = f.key_id.as_deref().unwrap_or("-");
        println!("{}  {:<14}  {:<22}  {}", &f.token_hash[..12], f.label.as_str(), id, f.action.as_str());
    }
    println!("{} of {} token(s) are this gateway's", crate::manage::matched(&found), found.len());
    Ok(())
}

async fn toggle(m: &Manager<'_>, id: &str, enabled: bool, if_version: Option<u64>, json: bool) -> Result<(), Failure> {
    let key = m.set_enabled(id, enabled, if_version).await.map_err(|e| Failure::manage(e, json))?;
    if json {
        print_json(m.key_json(&key), json!({}));
    } else {
        println!("{} {id}", if enabled { "enabled" } else { "disabled" });
    }
    Ok(())
}
