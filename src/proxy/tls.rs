//! TLS to upstreams: whose certificates are trusted, which certificate
//! keygate shows (mTLS), which name the upstream's certificate must carry.
//! Built when the config is validated, so a bad file stops the start (or
//! reload) with its field named. There is no switch to skip verification.

use crate::http1::client::stream::TlsTarget;
use crate::server::tls::{read_certs, read_key};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Which setting a problem belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    CaFile(String),
    Cert(String),
    Key(String),
    ServerName(String),
}

impl TlsProblem {
    /// What is wrong, whichever setting it is.
    pub fn message(self) -> String {
        match self {
            TlsProblem::CaFile(m) | TlsProblem::Cert(m) | TlsProblem::Key(m) | TlsProblem::ServerName(m) => m,
        }
    }
}

/// The TLS settings of one upstream, checked.
pub fn target(ca_file: Option<&Path>, client_cert: Option<(&Path, &Path)>, server_name: &str) -> Result<TlsTarget, TlsProblem> {
    let roots = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path).map_err(TlsProblem::CaFile)? {
                roots.add(cert).map_err(|e| TlsProblem::CaFile(format!("{}: {e}", path.display())))?;
            }
            Arc::new(roots)
        }
        None => system_roots().map_err(TlsProblem::CaFile)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsProblem::CaFile(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert).map_err(TlsProblem::Cert)?;
            let key = read_key(key).map_err(TlsProblem::Key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsProblem::Key(format!("the key does not fit the certificate: {e}")))?
        }
    };
    // HTTP/1.1 is what keygate's upstream client speaks.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let server_name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsProblem::ServerName(format!("`{server_name}` is not a DNS name or IP address")))?;
    Ok(TlsTarget { config: Arc::new(config), server_name })
}

/// The system's trusted roots (read once: a reload does not re-read them).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no trusted roots found on this system (install ca-certificates, or set ca_file)".into());
            }
            Ok(Arc::new(roots))
        })
        .clone()
}
