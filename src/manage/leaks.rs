//! Leaked tokens, however they are reported: GitHub's secret scanning (a
//! signed report on the data listener), another scanner through the admin
//! API, or an operator's file. Each token is hashed and looked up as a
//! request's would be; a match is disabled (or only flagged) and audited
//! as `key.leaked` with where it was found. A token is never logged.

use super::{KeyInput, ManageError, Manager};
use crate::clock;
use crate::config::OnLeak;
use crate::error::GatewayError;
use crate::events::EventKind;
use crate::keys::model::KeyLookup;
use crate::keys::token::{self, TokenHash};
use crate::scanning::GithubKeys;
use http::HeaderMap;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The most tokens one report may carry: enough for any scanner's batch,
/// few enough to be answered within GitHub's wait.
pub const MAX_REPORTED: usize = 10_000;
/// Longest `url` or `source` kept in the audit log.
const MAX_WHERE_CHARS: usize = 2_000;

/// One token as a scanner reports it (GitHub's field names).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Reported {
    pub token: String,
    /// The scanner's name for the kind of token.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Where it was found.
    #[serde(default)]
    pub url: String,
    /// What was scanned (`content`, `commit`, `npm`...).
    #[serde(default)]
    pub source: String,
}

/// Whether a reported token is one of this gateway's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    TruePositive,
    FalsePositive,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::TruePositive => "true_positive",
            Label::FalsePositive => "false_positive",
        }
    }
}

/// What a report did to the key it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakAction {
    /// No key matched.
    None,
    Disabled,
    AlreadyDisabled,
    /// `on_leak = "flag"`: audited only.
    Flagged,
    /// The token is a rotated-out secret that no longer works: the key's
    /// current secret did not leak, so the key is left as it is.
    SecretRetired,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakAction::None => "none",
            LeakAction::Disabled => "disabled",
            LeakAction::AlreadyDisabled => "already_disabled",
            LeakAction::Flagged => "flagged",
            LeakAction::SecretRetired => "secret_retired",
        }
    }
}

/// What became of one reported token.
#[derive(Debug, Clone)]
pub struct LeakFound {
    /// SHA-256 of the token, hex: how a scanner matches the answer to its report.
    pub token_hash: String,
    pub kind: String,
    pub label: Label,
    pub key_id: Option<String>,
    pub action: LeakAction,
}

impl LeakFound {
    /// GitHub's feedback form.
    pub fn github_json(&self) -> Value {
        json!({ "token_hash": self.token_hash, "token_type": self.kind, "label": self.label.as_str() })
    }

    /// The admin API's and the CLI's form.
    pub fn json(&self) -> Value {
        json!({
            "tokenHash": self.token_hash,
            "label": self.label.as_str(),
            "keyId": self.key_id,
            "action": self.action.as_str(),
        })
    }
}

/// How many reported tokens were this gateway's.
pub fn matched(found: &[LeakFound]) -> usize {
    found.iter().filter(|f| f.label == Label::TruePositive).count()
}

/// The admin API's and the CLI's answer to a report: each token's
/// outcome, and `{reported, matched}`.
pub fn report_json(found: &[LeakFound]) -> (Value, Value) {
    let data = found.iter().map(LeakFound::json).collect::<Vec<_>>().into();
    (data, json!({ "reported": found.len(), "matched": matched(found) }))
}

impl Manager<'_> {
    /// Handles reported tokens in order. A token met twice in one report
    /// is handled once. A store failure stops the report (the scanner
    /// sends it again; what was done is done and audited).
    pub async fn report_leaks(&self, reported: &[Reported], on_leak: OnLeak) -> Result<Vec<LeakFound>, ManageError> {
        let mut seen: HashMap<[u8; 32], LeakFound> = HashMap::new();
        let mut out = Vec::with_capacity(reported.len());
        for r in reported {
            let hash = TokenHash::of(&r.token);
            let found = match seen.get(&hash.0) {
                Some(f) => LeakFound { kind: r.kind.clone(), ..f.clone() },
                None => {
                    let found = self.report_one(r, &hash, on_leak).await?;
                    seen.insert(hash.0, found.clone());
                    found
                }
            };
            out.push(found);
        }
        Ok(out)
    }

    async fn report_one(&self, r: &Reported, hash: &TokenHash, on_leak: OnLeak) -> Result<LeakFound, ManageError> {
        let mut found = LeakFound {
            token_hash: hash.to_hex(),
            kind: r.kind.clone(),
            label: Label::FalsePositive,
            key_id: None,
            action: LeakAction::None,
        };
        // A bad checksum or a malformed token is no key of ours: no lookup.
        if !token::shape(&r.token, &self.config.keys.brand).may_be_known() {
            return Ok(found);
        }
        let Some(lookup) = self.store.key_by_hash(hash).await.map_err(ManageError::Store)? else {
            return Ok(found);
        };
        found.label = Label::TruePositive;
        found.key_id = Some(lookup.key.key_id.clone());
        found.action = self.act_on_leak(&lookup, r, on_leak).await?;
        Ok(found)
    }

    /// Disables (or flags) the key of a leaked secret, and audits the leak
    /// and writes its `key.leaked` event (with the disabling, when it
    /// disables).
    async fn act_on_leak(&self, lookup: &KeyLookup, r: &Reported, on_leak: OnLeak) -> Result<LeakAction, ManageError> {
        let key_id = &lookup.key.key_id;
        let retired = lookup.secret_expires_at.is_some_and(|t| t <= clock::now_unix());
        let leak = |action: LeakAction| {
            json!({
                "type": bounded(&r.kind),
                "url": bounded(&r.url),
                "source": bounded(&r.source),
                "action": action.as_str(),
            })
        };
        let (action, before, after) = match on_leak {
            _ if retired => (LeakAction::SecretRetired, lookup.key.clone(), lookup.key.clone()),
            OnLeak::Flag => (LeakAction::Flagged, lookup.key.clone(), lookup.key.clone()),
            OnLeak::Disable if !lookup.key.enabled => (LeakAction::AlreadyDisabled, lookup.key.clone(), lookup.key.clone()),
            OnLeak::Disable => {
                let off = KeyInput { enabled: Some(false), ..KeyInput::default() };
                match self.write_key_change(key_id, off, None, Some(&leak(LeakAction::Disabled))).await {
                    Ok((before, after)) => (LeakAction::Disabled, before, after),
                    // Deleted since it was looked up: nothing left to stop.
                    Err(ManageError::NotFound(_)) => return Ok(LeakAction::None),
                    Err(e) => return Err(e),
                }
            }
        };
        if action != LeakAction::Disabled {
            let event = self.key_event(EventKind::KeyLeaked, &after, Some(("leak", leak(action))));
            self.store.emit(&event).await.map_err(ManageError::Store)?;
        }
        let mut noted = self.key_json(&after);
        noted["leak"] = leak(action);
        self.audit("key.leaked", key_id, Some(self.key_json(&before)), Some(noted)).await;
        Ok(action)
    }
}

/// A scanner's free text as the audit log keeps it: printable, bounded.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_WHERE_CHARS).collect()
}

/// Answers a report GitHub posted: its signature checked over the body as
/// received, then each token handled; GitHub's feedback array.
pub async fn answer_github(
    m: &Manager<'_>,
    keys: &GithubKeys,
    headers: &HeaderMap,
    body: &[u8],
    on_leak: OnLeak,
) -> Result<Value, GatewayError> {
    keys.check(headers, body).await?;
    let reported: Vec<Reported> = serde_json::from_slice(body)
        .map_err(|e| GatewayError::BadRequest(format!("the report is not a JSON array of tokens: {e}")))?;
    if reported.len() > MAX_REPORTED {
        return Err(GatewayError::BadRequest(format!("a report may carry at most {MAX_REPORTED} tokens")));
    }
    let found = m.report_leaks(&reported, on_leak).await.map_err(|e| match e {
        ManageError::Store(_) => GatewayError::StoreUnavailable,
        other => GatewayError::BadRequest(other.to_string()),
    })?;
    tracing::info!(tokens = found.len(), ours = matched(&found), "GitHub secret scanning report");
    Ok(Value::Array(found.iter().map(LeakFound::github_json).collect()))
}
