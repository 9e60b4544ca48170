//! `[[webhooks]]`: where lifecycle events are delivered, signed with a
//! secret read from the environment now, so that an endpoint that could
//! never be signed for is refused at load rather than at its first event;
//! and `[events]`: when expiries and usage thresholds are told.

use super::{outbound, Checker};
use crate::config::raw::RawWebhook;
use crate::config::*;
use crate::events::EventKind;
use toml::Spanned;

/// The most endpoints, and the longest name.
const MAX_WEBHOOKS: usize = 16;
const MAX_NAME: usize = 64;

pub(super) fn webhooks(c: &mut Checker, path: &Path, raw: &[RawWebhook]) -> Vec<Webhook> {
    if raw.len() > MAX_WEBHOOKS {
        c.problem(Some(&raw[MAX_WEBHOOKS].url), format!("webhooks[{MAX_WEBHOOKS}]"), format!("at most {MAX_WEBHOOKS} webhooks"));
    }
    let mut out: Vec<Webhook> = Vec::new();
    for (i, w) in raw.iter().enumerate().take(MAX_WEBHOOKS) {
        let field = format!("webhooks[{i}]");
        let Some(hook) = webhook(c, path, &field, w) else { continue };
        if out.iter().any(|o| o.name == hook.name) {
            let at = w.name.as_ref().map(|n| n.span()).unwrap_or(w.url.span());
            c.problem_at(
                Some(at),
                format!("{field}.name"),
                format!("`{}` names two webhooks: give each its own name", hook.name),
            );
            continue;
        }
        out.push(hook);
    }
    out
}

fn webhook(c: &mut Checker, path: &Path, field: &str, w: &RawWebhook) -> Option<Webhook> {
    let to = outbound(c, path, (w.url.get_ref(), Some(w.url.span())), &format!("{field}.url"), w.ca_file.as_ref())?;
    if to.tls.is_none() && !loopback(to.authority.host()) {
        c.problem(Some(&w.url), format!("{field}.url"), "must be https:// (http:// only to a loopback address)");
        return None;
    }
    let name = match &w.name {
        Some(n) if valid_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            c.problem(Some(n), format!("{field}.name"), format!("must be 1-{MAX_NAME} letters, digits, '-', '_' or '.'"));
            return None;
        }
        None => w.url.get_ref().clone(),
    };
    let secret = secret(c, field, &w.secret_env)?;
    let events = event_types(c, field, w.events.as_ref())?;
    let timeout = c.duration(&w.timeout, &format!("{field}.timeout"), DEFAULT_WEBHOOK_TIMEOUT);
    if timeout > MAX_WEBHOOK_TIMEOUT {
        c.problem(w.timeout.as_ref(), format!("{field}.timeout"), format!("must be at most {}s", MAX_WEBHOOK_TIMEOUT.as_secs()));
    }
    let retry_for = c.duration(&w.retry_for, &format!("{field}.retry_for"), DEFAULT_WEBHOOK_RETRY_FOR);
    if retry_for > MAX_WEBHOOK_RETRY_FOR {
        c.problem(w.retry_for.as_ref(), format!("{field}.retry_for"), "must be at most 7d");
    }
    let max_retry_interval =
        c.duration(&w.max_retry_interval, &format!("{field}.max_retry_interval"), DEFAULT_WEBHOOK_MAX_RETRY_INTERVAL);
    if max_retry_interval > retry_for {
        c.problem(w.max_retry_interval.as_ref(), format!("{field}.max_retry_interval"), "must be at most retry_for");
    }
    Some(Webhook { name, to, secret, events, timeout, retry_for, max_retry_interval })
}

fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The signing secret in the variable `secret_env` names.
fn secret(c: &mut Checker, field: &str, env: &Spanned<String>) -> Option<Arc<crate::webhooks::SigningSecret>> {
    let Ok(value) = std::env::var(env.get_ref()) else {
        c.problem(Some(env), format!("{field}.secret_env"), format!("the variable `{}` is not set", env.get_ref()));
        return None;
    };
    match crate::webhooks::SigningSecret::parse(value.trim()) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            c.problem(Some(env), format!("{field}.secret_env"), format!("`{}`: {e}", env.get_ref()));
            None
        }
    }
}

/// `events`: known types, each once (absent: every type).
fn event_types(c: &mut Checker, field: &str, raw: Option<&Spanned<Vec<String>>>) -> Option<Vec<String>> {
    let Some(list) = raw else { return Some(Vec::new()) };
    if list.get_ref().is_empty() {
        c.problem(Some(list), format!("{field}.events"), "an empty list hears of nothing: leave it out for every event");
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for name in list.get_ref().iter() {
        if EventKind::parse(name).is_none() {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            c.problem(Some(list), format!("{field}.events"), format!("`{name}` is not an event type ({})", known.join(", ")));
            return None;
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    }
    Some(out)
}

/// The most expiry notices and thresholds, and the longest notice.
const MAX_NOTICES: usize = 8;
const MAX_NOTICE: Duration = Duration::from_secs(365 * 86_400);

pub(super) fn events_table(c: &mut Checker, raw: &crate::config::raw::RawEvents) -> EventsConfig {
    let defaults = EventsConfig::default();
    let mut expiry_notice = match &raw.expiry_notice {
        None => defaults.expiry_notice.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for text in list.get_ref() {
                match parse_duration(text) {
                    Ok(d) if !d.is_zero() && d <= MAX_NOTICE => out.push(d),
                    _ => {
                        c.problem(Some(list), "events.expiry_notice", format!("`{text}` is not a span from 1s to 365d, like 7d"))
                    }
                }
            }
            if out.len() > MAX_NOTICES {
                c.problem(Some(list), "events.expiry_notice", format!("at most {MAX_NOTICES} notices"));
            }
            out
        }
    };
    expiry_notice.sort_by(|a, b| b.cmp(a));
    expiry_notice.dedup();
    let mut quota_thresholds = match &raw.quota_thresholds {
        None => defaults.quota_thresholds.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for n in list.get_ref() {
                match u8::try_from(*n) {
                    Ok(p) if (1..=100).contains(&p) => out.push(p),
                    _ => c.problem(Some(list), "events.quota_thresholds", format!("`{n}` is not a percentage from 1 to 100")),
                }
            }
            if out.len() > MAX_NOTICES {
                c.problem(Some(list), "events.quota_thresholds", format!("at most {MAX_NOTICES} thresholds"));
            }
            out
        }
    };
    quota_thresholds.sort_unstable();
    quota_thresholds.dedup();
    let credits_low = match &raw.credits_low {
        None => defaults.credits_low,
        Some(v) => match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => CreditsLow::Units(*n as u64),
            toml::Value::String(s) => match s.strip_suffix('%').and_then(|p| p.trim().parse::<u8>().ok()) {
                Some(p) if p <= 100 => CreditsLow::Percent(p),
                _ => {
                    c.problem(Some(v), "events.credits_low", format!("`{s}` is not a percentage like \"10%\""));
                    defaults.credits_low
                }
            },
            _ => {
                c.problem(Some(v), "events.credits_low", "must be a percentage of the refill (\"10%\") or a number of credits");
                defaults.credits_low
            }
        },
    };
    let check_interval = c.duration(&raw.check_interval, "events.check_interval", defaults.check_interval);
    EventsConfig { expiry_notice, quota_thresholds, credits_low, check_interval }
}
