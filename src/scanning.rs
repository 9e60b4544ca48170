//! GitHub's secret scanning, as far as trusting its reports goes: the
//! ECDSA keys it signs them with, fetched from GitHub (or read from a
//! file) and fetched again, at most once a minute, when a report names a
//! key not yet seen. What a report then does is [`crate::manage`]'s.

use crate::config::{GithubLeaks, KeyListSource};
use crate::error::GatewayError;
use crate::leaks::{SignatureError, SigningKeys};
use crate::proxy::call::{self, Call};
use arc_swap::ArcSwap;
use http::{HeaderMap, Method};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often GitHub's key list may be fetched again for a report naming
/// a key not yet seen: an unsigned caller cannot make keygate hammer GitHub.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// Longest a fetch of the key list may take, and its largest body.
const KEY_LIST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_KEY_LIST_BYTES: usize = 256 * 1024;
/// The longest a signature header may be (a DER P-256 signature is at
/// most 72 bytes, 96 in base64).
const MAX_SIGNATURE_CHARS: usize = 256;

/// GitHub's signing keys as this node knows them, fetched again (at most
/// once a minute) when a report names a key not in the list.
pub struct GithubKeys {
    source: KeyListSource,
    keys: ArcSwap<SigningKeys>,
    refreshed: Mutex<Option<Instant>>,
}

impl GithubKeys {
    /// A file's keys as the config read them; a URL's at the first report.
    pub fn new(cfg: &GithubLeaks) -> GithubKeys {
        let keys = match &cfg.keys {
            KeyListSource::File { keys, .. } => keys.clone(),
            KeyListSource::Url(_) => SigningKeys::default(),
        };
        GithubKeys { source: cfg.keys.clone(), keys: ArcSwap::from_pointee(keys), refreshed: Mutex::new(None) }
    }

    fn current(&self) -> Arc<SigningKeys> {
        self.keys.load_full()
    }

    /// Checks a report's signature headers over its body as received.
    pub async fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), GatewayError> {
        let key_id = one_header(headers, "github-public-key-identifier")?;
        let signature = one_header(headers, "github-public-key-signature")?;
        if signature.len() > MAX_SIGNATURE_CHARS {
            return Err(GatewayError::BadSignature("Github-Public-Key-Signature is too long".into()));
        }
        if !self.current().knows(key_id) && self.may_refresh() {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "could not read GitHub's secret scanning keys");
            }
        }
        self.current().verify(key_id, signature, body).map_err(|e| match e {
            SignatureError::UnknownKey(_) => GatewayError::BadSignature(format!("{e} among GitHub's signing keys")),
            other => GatewayError::BadSignature(other.to_string()),
        })
    }

    /// Whether a fetch may start now (and, if so, marks that one did).
    fn may_refresh(&self) -> bool {
        let Ok(mut last) = self.refreshed.lock() else { return false };
        if last.is_some_and(|t| t.elapsed() < REFRESH_AT_MOST_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    async fn refresh(&self) -> Result<(), String> {
        let keys = match &self.source {
            KeyListSource::File { path, .. } => SigningKeys::read(path)?,
            KeyListSource::Url(to) => {
                // A pool of its own each time: fetches are rare, and a
                // pooled connection belongs to the worker that opened it.
                let pool = call::pool(to, KEY_LIST_TIMEOUT);
                let target = to.uri.path_and_query().map_or("/", |p| p.as_str());
                let mut head = Call::new(Method::GET, target, &pool);
                head.fields.push((http::header::ACCEPT, http::HeaderValue::from_static("application/json")));
                head.fields.push((http::header::USER_AGENT, http::HeaderValue::from_static("keygate")));
                let answer = call::call(&pool, &head, bytes::Bytes::new(), KEY_LIST_TIMEOUT, MAX_KEY_LIST_BYTES).await?;
                if !answer.status.is_success() {
                    return Err(format!("{} answered {}", to.uri, answer.status));
                }
                SigningKeys::parse(&answer.body)?
            }
        };
        self.keys.store(Arc::new(keys));
        Ok(())
    }
}

/// The one value of a signature header: missing or given twice is refused.
fn one_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, GatewayError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().map_err(|_| GatewayError::BadSignature(format!("{name} is not text"))),
        (None, _) => Err(GatewayError::BadSignature(format!("the report carries no {name}"))),
        (Some(_), Some(_)) => Err(GatewayError::BadSignature(format!("the report carries {name} twice"))),
    }
}
