//! Loading TLS material, for every side that speaks TLS: the data
//! listener's certificate, and the roots, client certificate and server
//! name of an upstream. Loaded when the config is validated, so a bad file
//! stops the start (or reload) with its field named, not the first
//! handshake. There is no switch to skip verification.

use crate::http1::TlsTarget;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Which file failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Builds a server config (HTTP/2 and HTTP/1.1 offered by ALPN).
pub fn load_server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert_path).map_err(TlsError::Cert)?;
    let key = read_key(key_path).map_err(TlsError::Key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key(format!("the key does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption by tickets the client keeps (encrypted under keys drawn at
    // load, rotated every 6 hours), not by a 256-entry cache every worker
    // locks: a returning client skips the signature however many clients
    // there are. TLS 1.3 resumes only with a fresh key exchange (rustls
    // offers no PSK-only mode), so a ticket key reveals no traffic.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Cert(format!("cannot make session tickets: {e}")))?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{} is not a PEM private key: {e}", path.display()))?
        .ok_or_else(|| format!("{} holds no PEM private key", path.display()))
}

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
