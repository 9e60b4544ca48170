//! Leaked keys revoke themselves: GitHub's secret scanning reports
//! (signed with a test P-256 key whose public half is in
//! `public_keys_file`), `POST /v1/leaks` for other scanners, and
//! `keygate keys leaked` for a person.

use crate::common::redis::RedisServer;
use crate::common::*;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use sha2::Digest;
use std::time::{Duration, Instant};

const REPORT_PATH: &str = "/.well-known/keygate/github-secret-scanning";

/// A signing key as GitHub holds one: its identifier and P-256 pair.
struct Signer {
    id: String,
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new(id: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        Signer { id: id.into(), pair }
    }

    /// The public key as GitHub publishes it: PEM SubjectPublicKeyInfo.
    fn pem(&self) -> String {
        const PREFIX: [u8; 26] = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
            0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn sign(&self, body: &[u8]) -> String {
        let sig = self.pair.sign(&SystemRandom::new(), body).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig.as_ref())
    }
}

/// GitHub's key list holding these signers' public keys.
fn key_list(signers: &[&Signer]) -> String {
    let keys: Vec<Value> =
        signers.iter().map(|s| json!({ "key_identifier": s.id, "key": s.pem(), "is_current": true })).collect();
    json!({ "public_keys": keys }).to_string()
}

/// Adds `[leaks.github]` (keys from a file beside the config) and `extra`.
fn with_github_reports(s: &Setup, signers: &[&Signer], extra: &str) {
    std::fs::write(s.dir.path().join("github-keys.json"), key_list(signers)).unwrap();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n[leaks.github]\npublic_keys_file = \"github-keys.json\"\n{extra}\n"));
    std::fs::write(&s.config, text).unwrap();
}

fn report_of(tokens: &[&str]) -> Vec<u8> {
    let entries: Vec<Value> = tokens
        .iter()
        .map(|t| json!({ "token": t, "type": "keygate_api_key", "url": "https://github.com/octo/app/blob/main/.env", "source": "content" }))
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

/// Posts a report with the given signature headers.
async fn post_report(s: &Setup, body: &[u8], key_id: Option<&str>, signature: Option<&str>) -> (u16, Value) {
    let mut req = client().post(s.url(REPORT_PATH)).header("content-type", "application/json").body(body.to_vec());
    if let Some(id) = key_id {
        req = req.header("Github-Public-Key-Identifier", id);
    }
    if let Some(sig) = signature {
        req = req.header("Github-Public-Key-Signature", sig);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn signed(s: &Setup, signer: &Signer, body: &[u8]) -> (u16, Value) {
    post_report(s, body, Some(&signer.id), Some(&signer.sign(body))).await
}

async fn lists_status(s: &Setup, token: &str) -> u16 {
    client().get(s.url("/api/lists")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A token of the gateway's layout whose checksum is wrong.
fn with_bad_checksum(token: &str) -> String {
    let mut t = token.to_string();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_github_report_disables_the_key_and_an_unsigned_one_changes_nothing() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let github = Signer::new("4fe6b016179b74078ade7581abf4e84fb398c6fae4fb973972235b84fcd70ca3");
    with_github_reports(&s, &[&github], "");
    let (leaked_id, leaked) = s.create_key(&["--name", "leaked", "--role", "read-only"]);
    let (_, bystander) = s.create_key(&["--name", "bystander", "--role", "read-only"]);
    let _gw = s.start();
    assert_eq!(lists_status(&s, &leaked).await, 200);

    let body = report_of(&[&leaked]);
    // Unsigned, signed over another body, changed after signing, a
    // signature split over two fields, garbage: 401 each, nothing changed.
    assert_eq!(post_report(&s, &body, None, None).await.0, 401);
    assert_eq!(post_report(&s, &body, Some(&github.id), None).await.0, 401);
    let other = report_of(&[&bystander]);
    assert_eq!(post_report(&s, &body, Some(&github.id), Some(&github.sign(&other))).await.0, 401);
    let mut changed = body.clone();
    let at = changed.len() - 3;
    changed[at] = b' ';
    assert_eq!(post_report(&s, &changed, Some(&github.id), Some(&github.sign(&body))).await.0, 401);
    let (status, v) = post_report(&s, &body, Some(&github.id), Some("not base64!")).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("invalid_signature")), "{v}");
    let twice = client()
        .post(s.url(REPORT_PATH))
        .header("Github-Public-Key-Identifier", &github.id)
        .header("Github-Public-Key-Signature", github.sign(&body))
        .header("Github-Public-Key-Signature", github.sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status().as_u16(), 401, "two signatures are ambiguous");
    assert_eq!(lists_status(&s, &leaked).await, 200, "an unbelieved report changed the key");

    // Signed: the leaked key stops at once; the feedback labels each token.
    let bad_checksum = with_bad_checksum(&bystander);
    let unknown = "kg_live_".to_string() + &"a".repeat(40);
    let other_brand = format!("zz{}", &leaked[2..]);
    let body = report_of(&[&leaked, &bad_checksum, &unknown, &other_brand]);
    let (status, feedback) = signed(&s, &github, &body).await;
    assert_eq!(status, 200, "{feedback}");
    let labels: Vec<(String, String)> = feedback
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["token_hash"].as_str().unwrap().to_string(), f["label"].as_str().unwrap().to_string()))
        .collect();
    let expect = |t: &str, label: &str| (sha256_hex(t), label.to_string());
    assert_eq!(
        labels,
        vec![
            expect(&leaked, "true_positive"),
            expect(&bad_checksum, "false_positive"),
            expect(&unknown, "false_positive"),
            expect(&other_brand, "false_positive"),
        ]
    );
    assert_eq!(feedback[0]["token_type"], "keygate_api_key");
    let waited = eventually(Duration::from_secs(1), || async { lists_status(&s, &leaked).await == 401 }).await;
    assert!(waited.is_some(), "the leaked key still works a second after the report");
    assert_eq!(lists_status(&s, &bystander).await, 200, "a key that was not reported stopped");

    // Audited with where it was found; the token itself is nowhere.
    let audit = s.cli_json(&["audit-log", "--target", &leaked_id]);
    let entry = audit.as_array().unwrap().iter().find(|e| e["action"] == "key.leaked").expect("no key.leaked entry");
    assert_eq!(entry["actor"], "github-secret-scanning");
    assert_eq!(entry["after"]["leak"]["url"], "https://github.com/octo/app/blob/main/.env");
    assert_eq!(entry["after"]["leak"]["source"], "content");
    assert_eq!(entry["after"]["leak"]["action"], "disabled");
    assert_eq!(entry["after"]["enabled"], false);
    assert!(!audit.to_string().contains(&leaked), "the audit log holds the token");
    // And the backend hears of it: one key.leaked event, written with the disabling.
    let events = client()
        .get(s.admin_url(&format!("/events?keyId={leaked_id}&type=key.leaked")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let told = events["data"].as_array().unwrap();
    assert_eq!(told.len(), 1, "{events}");
    assert_eq!(told[0]["data"]["leak"]["url"], "https://github.com/octo/app/blob/main/.env");
    assert_eq!(
        (told[0]["data"]["leak"]["action"].as_str(), told[0]["data"]["enabled"].as_bool()),
        (Some("disabled"), Some(false))
    );
    assert!(!events.to_string().contains(&leaked), "an event holds the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_github_rotated_in_is_fetched_once_and_a_thousand_tokens_are_answered_fast() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let (old, new) = (Signer::new("old-key"), Signer::new("new-key"));
    with_github_reports(&s, &[&old], "");
    let (_, leaked) = s.create_key(&["--name", "leaked", "--role", "read-only"]);
    let _gw = s.start();

    // GitHub rotates: a report under the new key makes the node read the
    // list again, once.
    std::fs::write(s.dir.path().join("github-keys.json"), key_list(&[&old, &new])).unwrap();
    let filler: Vec<String> = (0..999).map(|i| format!("kg_live_{i:040}")).collect();
    let mut tokens: Vec<&str> = filler.iter().map(String::as_str).collect();
    tokens.insert(500, &leaked);
    let body = report_of(&tokens);
    let started = Instant::now();
    let (status, feedback) = signed(&s, &new, &body).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{feedback}");
    let feedback = feedback.as_array().unwrap();
    assert_eq!(feedback.len(), 1000);
    assert_eq!(feedback[500]["label"], "true_positive");
    assert_eq!(feedback.iter().filter(|f| f["label"] == "true_positive").count(), 1);
    assert!(took < Duration::from_secs(5), "1,000 tokens took {took:?}");
    let stopped = eventually(Duration::from_secs(1), || async { lists_status(&s, &leaked).await == 401 }).await;
    assert!(stopped.is_some(), "the reported key still works");

    // A key id still unknown after the one allowed fetch: 401, and the
    // list is not read again for every such report.
    let stranger = Signer::new("never-published");
    std::fs::write(s.dir.path().join("github-keys.json"), key_list(&[&old, &new, &stranger])).unwrap();
    let (status, v) = signed(&s, &stranger, &report_of(&[&leaked])).await;
    assert_eq!((status, v["code"].as_str()), (401, Some("invalid_signature")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
async fn a_report_to_one_redis_node_stops_the_key_on_every_node_within_a_second() {
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let github = Signer::new("github-1");
    let first = Setup::redis(&up.url(), &redis.url(), "");
    with_github_reports(&first, &[&github], "");
    let second = first.another_node();
    std::fs::write(second.dir.path().join("github-keys.json"), key_list(&[&github])).unwrap();
    let (_, leaked) = first.create_key(&["--name", "leaked", "--role", "read-only"]);
    let _g1 = first.start();
    let _g2 = second.start();
    assert_eq!(lists_status(&second, &leaked).await, 200);

    let reported = Instant::now();
    let (status, feedback) = signed(&first, &github, &report_of(&[&leaked])).await;
    assert_eq!((status, feedback[0]["label"].as_str()), (200, Some("true_positive")), "{feedback}");
    let stopped = eventually(Duration::from_secs(1), || async {
        lists_status(&first, &leaked).await == 401 && lists_status(&second, &leaked).await == 401
    })
    .await;
    assert!(stopped.is_some(), "still working {:?} after the report on one node or the other", reported.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_scanners_report_through_the_admin_api_and_people_through_the_cli() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let add_token = |name: &str, scope: &str| {
        let made = s.cli_json(&["admin-token", "new", "--name", name, "--scope", scope]);
        let mut text = std::fs::read_to_string(&s.config).unwrap();
        text.push_str(&format!("\n{}", made["config"].as_str().unwrap()));
        std::fs::write(&s.config, text).unwrap();
        made["token"].as_str().unwrap().to_string()
    };
    let scanner = add_token("trufflehog", "leaks");
    let reader = add_token("reader", "read");
    let (api_id, by_api) = s.create_key(&["--name", "by-api", "--role", "read-only"]);
    let (cli_id, by_cli) = s.create_key(&["--name", "by-cli", "--role", "read-only"]);
    let gw = s.start();

    let report = json!({ "tokens": [by_api, "kg_live_nothing"], "url": "https://pastebin.example/x", "source": "paste" });
    let post = |token: String| {
        let s = &s;
        let report = report.clone();
        async move {
            let resp = client().post(s.admin_url("/v1/leaks")).bearer_auth(token).json(&report).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    // Only a token with the `leaks` scope (or `admin`) may report.
    let (status, v) = post(reader).await;
    assert_eq!((status, v["required"].as_str()), (403, Some("leaks")), "{v}");
    assert_eq!(lists_status(&s, &by_api).await, 200);
    let (status, v) = post(scanner.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["label"], "true_positive");
    assert_eq!(v["data"][0]["keyId"], api_id.as_str());
    assert_eq!(v["data"][0]["action"], "disabled");
    assert_eq!(v["data"][1]["label"], "false_positive");
    assert_eq!(v["meta"]["matched"], 1);
    let stopped = eventually(Duration::from_secs(1), || async { lists_status(&s, &by_api).await == 401 }).await;
    assert!(stopped.is_some(), "the reported key still works");
    // Reported again: already disabled, still a true positive.
    assert_eq!(post(scanner.clone()).await.1["data"][0]["action"], "already_disabled");
    let missing =
        client().post(s.admin_url("/v1/leaks")).bearer_auth(&scanner).json(&json!({ "url": "x" })).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 400);
    // The scanner's token can do nothing else.
    let listing = client().get(s.admin_url("/api-keys")).bearer_auth(&scanner).send().await.unwrap();
    assert_eq!(listing.status().as_u16(), 403);
    drop(gw);

    // A person with a file of tokens.
    let file = s.dir.path().join("found.txt");
    std::fs::write(&file, format!("# found in a support ticket\n{by_cli}\n\nkg_test_unknown\n")).unwrap();
    let data = s.cli_json(&["keys", "leaked", "--token-file", file.to_str().unwrap(), "--source", "support ticket"]);
    assert_eq!(data[0]["keyId"], cli_id.as_str());
    assert_eq!(data[0]["action"], "disabled");
    assert_eq!(data[1]["label"], "false_positive");
    let shown = s.cli_json(&["keys", "show", &cli_id]);
    assert_eq!(shown["enabled"], false);
    let audit = s.cli_json(&["audit-log", "--target", &cli_id]);
    assert_eq!(audit[0]["action"], "key.leaked");
    assert_eq!(audit[0]["after"]["leak"]["source"], "support ticket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagged_leaks_are_audited_and_the_key_keeps_working() {
    let up = upstream::start().await;
    let s = Setup::new(&up.url(), "", "");
    let github = Signer::new("github-1");
    with_github_reports(&s, &[&github], "on_leak = \"flag\"");
    let (id, leaked) = s.create_key(&["--name", "flagged", "--role", "read-only"]);
    let _gw = s.start();
    let (status, feedback) = signed(&s, &github, &report_of(&[&leaked])).await;
    assert_eq!((status, feedback[0]["label"].as_str()), (200, Some("true_positive")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lists_status(&s, &leaked).await, 200, "a flagged key stopped");
    let audit = s.cli_json(&["audit-log", "--target", &id]);
    assert_eq!(audit[0]["action"], "key.leaked");
    assert_eq!(audit[0]["after"]["leak"]["action"], "flagged");
}

/// Serves GitHub's key list over plain HTTP on loopback, counting fetches.
async fn key_list_server(list: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/meta/public_keys/secret_scanning", listener.local_addr().unwrap());
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&fetches);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut head = vec![0u8; 4096];
            let n = conn.read(&mut head).await.unwrap_or(0);
            if String::from_utf8_lossy(&head[..n]).starts_with("GET /meta/public_keys/secret_scanning ") {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{list}",
                list.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    (url, fetches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_list_is_fetched_from_its_url_at_the_first_report_and_kept() {
    let up = upstream::start().await;
    let github = Signer::new("github-1");
    let (url, fetches) = key_list_server(key_list(&[&github])).await;
    let s = Setup::new(&up.url(), "", "");
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n[leaks.github]\npublic_keys_url = \"{url}\"\n"));
    std::fs::write(&s.config, text).unwrap();
    let (_, first) = s.create_key(&["--name", "first", "--role", "read-only"]);
    let (_, second) = s.create_key(&["--name", "second", "--role", "read-only"]);
    let _gw = s.start();
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 0, "fetched before any report");
    for token in [&first, &second] {
        let (status, feedback) = signed(&s, &github, &report_of(&[token])).await;
        assert_eq!((status, feedback[0]["label"].as_str()), (200, Some("true_positive")), "{feedback}");
    }
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "the list is read once and kept");
}
