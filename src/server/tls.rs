//! TLS for the data listener, with rustls. Certificates are loaded when the
//! config is validated, so an unreadable file stops the start (or reload)
//! with the field named, not the first handshake.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::Acceptor;
use rustls::ServerConfig;
use std::io;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// Which file failed, and why.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Completes a TLS handshake on a new connection. The server's first
/// flight (its key share and the certificate's signature: about a
/// millisecond of CPU with an RSA-2048 key) is computed on a blocking
/// thread, one at a time per worker (`signing`), so a burst of new clients
/// does not hold up the requests of connected ones on the worker's event
/// loop. Reading the client's hello and the rest of the exchange stay on it.
/// Where each new TLS connection takes its certificate from: the running
/// config's, so a SIGHUP after a renewal serves the new certificate to new
/// connections without a restart.
pub type ConfigSource = Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

pub async fn accept(config: Arc<ServerConfig>, stream: TcpStream, signing: &Semaphore) -> io::Result<TlsStream<TcpStream>> {
    let hello = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
    let rest = {
        let _turn = signing.acquire().await.map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || hello.into_stream(config)).await.map_err(io::Error::other)?
    };
    rest.await
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
