//! `keygate demo` on the shipped `gateway.toml` (its ports moved to free
//! ones): it serves the printed key through the example backend, opens its
//! console with the printed admin token, listens on loopback only and
//! leaves nothing in the store `keygate serve` uses.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_a_throwaway_store_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (data, admin, backend) = (free_port(), free_port(), free_port());
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let text = shipped
        .replace("listen = \"0.0.0.0:8080\"", &format!("listen = \"0.0.0.0:{data}\""))
        .replace("127.0.0.1:9180", &format!("127.0.0.1:{admin}"))
        .replace("http://127.0.0.1:9000", &format!("http://127.0.0.1:{backend}"));
    assert_ne!(text, shipped);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, text).unwrap();

    let mut child = Command::new(keygate_bin())
        .arg("--config")
        .arg(&config)
        .arg("demo")
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("stop with");
            lines.push(line);
            if done {
                break;
            }
        }
        lines.join("\n")
    });
    let banner = tokio::time::timeout(Duration::from_secs(20), banner).await.expect("no banner").unwrap();
    let word_after = |label: &str| -> String {
        let line = banner.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{label}\n{banner}"));
        line.split_whitespace().nth(label.split_whitespace().count()).unwrap().to_string()
    };
    let key = word_after("your key:");
    assert!(key.starts_with("kg_live_"), "{banner}");
    assert!(banner.contains(&format!("http://127.0.0.1:{admin}/console/")), "{banner}");
    let admin_token = banner.split("sign in with ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_string();

    // The key works through the example backend; the console's token works.
    let c = client();
    let resp = c.get(format!("http://127.0.0.1:{data}/api/lists")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{banner}");
    let resp = c.get(format!("http://127.0.0.1:{admin}/api-keys")).bearer_auth(&admin_token).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the printed admin token does not open the admin API");
    // The example's costly route can be called (its own limit was once
    // below its cost: every send was 429).
    let send = format!("http://127.0.0.1:{data}/api/broadcasts/7/send");
    let resp = c.post(&send).bearer_auth(&key).send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    // Loopback only, although the file says 0.0.0.0.
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_hex = format!(":{data:04X} ");
    let ours: Vec<&str> = listening.lines().filter(|l| l.contains(&port_hex) && l.contains(" 0A ")).collect();
    assert!(!ours.is_empty(), "no listener on {data}");
    assert!(ours.iter().all(|l| l.split_whitespace().nth(1).unwrap().starts_with("0100007F")), "{ours:?}");

    // Stop it: the store `keygate serve` would use holds no demo key.
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let _ = child.wait();
    assert!(!dir.path().join("keygate.db").exists(), "the demo wrote to the config's store");
    let out = Command::new(keygate_bin()).arg("--config").arg(&config).args(["keys", "list", "--json"]).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");
}
