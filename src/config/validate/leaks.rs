//! `[leaks]` and `[leaks.github]`: what a leak report does, and where
//! GitHub's reports are taken and their signing keys read.

use super::{outbound, relative_to, Checker};
use crate::config::raw::{RawGithubLeaks, RawLeaks};
use crate::config::*;
use toml::Spanned;

pub(super) fn leaks(c: &mut Checker, path: &Path, raw: &RawLeaks) -> LeaksConfig {
    let on_leak = c.choice(&raw.on_leak, "leaks.on_leak", &OnLeak::CHOICES, OnLeak::Disable);
    let github = raw.github.as_ref().and_then(|g| github(c, path, g, on_leak));
    LeaksConfig { on_leak, github }
}

/// `[leaks.github]`: a path of the data listener's own, and one source of
/// signing keys, read now so that a file that can never verify a report
/// is refused at load.
fn github(c: &mut Checker, path: &Path, raw: &RawGithubLeaks, on_leak: OnLeak) -> Option<GithubLeaks> {
    let on_leak = c.choice(&raw.on_leak, "leaks.github.on_leak", &OnLeak::CHOICES, on_leak);
    let report_path = report_path(c, raw.path.as_ref())?;
    let keys = match (&raw.public_keys_url, &raw.public_keys_file) {
        (Some(_), Some(file)) => {
            c.problem(Some(file), "leaks.github.public_keys_file", "give public_keys_url or public_keys_file, not both");
            return None;
        }
        (None, Some(file)) => {
            if raw.ca_file.is_some() {
                c.problem(raw.ca_file.as_ref(), "leaks.github.ca_file", "only applies to public_keys_url");
            }
            key_file(c, path, file)?
        }
        (url, None) => {
            let given = url.as_ref().map(|u| (u.get_ref().as_str(), Some(u.span())));
            let url = given.unwrap_or((DEFAULT_GITHUB_KEYS_URL, None));
            KeyListSource::Url(outbound(c, path, url, "leaks.github.public_keys_url", raw.ca_file.as_ref())?)
        }
    };
    Some(GithubLeaks { path: report_path, keys, on_leak })
}

/// The path GitHub posts to: absolute, already in normal form (so the
/// request path's normalising cannot make another path match it), and not
/// keygate's own `/whoami`.
fn report_path(c: &mut Checker, raw: Option<&Spanned<String>>) -> Option<String> {
    let Some(at) = raw else { return Some(DEFAULT_GITHUB_LEAKS_PATH.into()) };
    let given = at.get_ref();
    match crate::policy::path::normalise(given) {
        Ok(p) if p == *given && given.starts_with('/') && given.len() > 1 && given != "/whoami" => Some(p.into_owned()),
        _ => {
            c.problem(Some(at), "leaks.github.path", "must be an absolute path in normal form, like /.well-known/keygate/leaks");
            None
        }
    }
}

/// `public_keys_file`, read and parsed as GitHub's key list.
fn key_file(c: &mut Checker, path: &Path, file: &Spanned<String>) -> Option<KeyListSource> {
    let full = relative_to(path, file.get_ref());
    match crate::leaks::SigningKeys::read(&full) {
        Ok(keys) if keys.is_empty() => {
            c.problem(Some(file), "leaks.github.public_keys_file", "holds no keys: no report could ever be believed");
            None
        }
        Ok(keys) => Some(KeyListSource::File { path: full, keys }),
        Err(e) => {
            c.problem(Some(file), "leaks.github.public_keys_file", e);
            None
        }
    }
}
