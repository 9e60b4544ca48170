//! TLS handshakes on the data listener. The certificate itself is loaded
//! by [`crate::tls`] when the config is validated.

use rustls::server::{Acceptor, ClientHello};
use rustls::{ServerConfig, SignatureAlgorithm};
use std::io;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// Where each new TLS connection takes its certificate from: the running
/// config's, so a SIGHUP after a renewal serves the new certificate to new
/// connections without a restart.
pub type ConfigSource = Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

/// Completes a TLS handshake on a new connection. With an RSA key, the
/// server's first flight (its key share and the certificate's signature:
/// about a millisecond of CPU with RSA-2048) is computed on a blocking
/// thread, one at a time per worker (`signing`), so a burst of new clients
/// does not hold up the requests of connected ones on the worker's event
/// loop. An ECDSA or Ed25519 first flight costs less than the two thread
/// switches that would move it (tens of microseconds), so it runs in place.
/// Reading the client's hello and the rest of the exchange stay on the loop.
pub async fn accept(config: Arc<ServerConfig>, stream: TcpStream, signing: &Semaphore) -> io::Result<TlsStream<TcpStream>> {
    let hello = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
    if !signs_slowly(&config, hello.client_hello()) {
        return hello.into_stream(config).await;
    }
    let rest = {
        let _turn = signing.acquire().await.map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || hello.into_stream(config)).await.map_err(io::Error::other)?
    };
    rest.await
}

/// Whether the certificate this hello gets signs with RSA (or cannot be
/// told: then the costly path is the safe one).
fn signs_slowly(config: &ServerConfig, hello: ClientHello<'_>) -> bool {
    config.cert_resolver.resolve(hello).is_none_or(|key| key.key.algorithm() == SignatureAlgorithm::RSA)
}
