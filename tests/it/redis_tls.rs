//! keygate against a redis-server reached over TLS (`rediss://`), as managed
//! Redis services require: keys and rate-limit counters go over TLS when the
//! server's certificate is trusted (the system's roots, or `SSL_CERT_FILE`),
//! and nothing is served on a certificate keygate cannot check.

use crate::common::redis::{command, RedisServer};
use crate::common::{client, free_port, upstream, Setup};

/// A redis-server with a TLS port (and its plain port, used here only to
/// look at what keygate stored), its certificate made for `localhost`.
fn tls_redis() -> Option<(RedisServer, u16, tempfile::TempDir)> {
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (certs.path().join("redis.pem"), certs.path().join("redis.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let tls_port = free_port();
    let (tls_port_arg, cert_arg, key_arg) =
        (tls_port.to_string(), cert_file.display().to_string(), key_file.display().to_string());
    let args =
        ["--tls-port", &tls_port_arg, "--tls-cert-file", &cert_arg, "--tls-key-file", &key_arg, "--tls-ca-cert-file", &cert_arg];
    let redis = RedisServer::start_with(&[&args[..], &["--tls-auth-clients", "no"]].concat())?;
    Some((redis, tls_port, certs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn keys_and_limits_go_over_tls_to_a_trusted_redis() {
    let Some((redis, tls_port, certs)) = tls_redis() else { return };
    let up = upstream::start().await;
    let url = format!("rediss://localhost:{tls_port}");
    let mut s = Setup::redis(&up.url(), &url, "");
    let ca = certs.path().join("redis.pem").display().to_string();
    s.env.push(("SSL_CERT_FILE".into(), ca));

    let (_, token) = s.create_key(&["--name", "over tls", "--role", "read-only", "--rate-limit", "2"]);
    let stored = command(redis.port, "DBSIZE").unwrap();
    assert!(stored.starts_with(':') && stored.trim() != ":0", "nothing reached Redis: {stored}");

    let gw = s.start();
    let statuses = {
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(client().get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap().status().as_u16());
        }
        all
    };
    assert_eq!(statuses, [200, 200, 429], "the key resolved and its counter kept over TLS");
    assert!(!gw.log_text().contains(&token), "a token reached the log");

    // The same Redis without trusting its certificate: refused, and said so.
    let mut untrusted = s.another_node();
    untrusted.env.push(("SSL_CERT_FILE".into(), "/dev/null".into()));
    let out = untrusted.cli(&["keys", "list"]);
    let said = String::from_utf8_lossy(&out.stderr).to_lowercase() + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(!out.status.success(), "an unchecked certificate was accepted: {said}");
    assert!(said.contains("certificate"), "the refusal does not say why: {said}");
}
