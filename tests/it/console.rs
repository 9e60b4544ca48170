//! The web console in a real headless Chromium (Debian's `chromium`, driven
//! by playwright-core from `tests/e2e`): create a key, use it on the data
//! port, disable it and see it refused, create and delete a role, at 1280x800
//! and 390 px. Screenshots land in `target/console-screenshots/`.
//! The driver is installed from the committed lockfile on first run; missing
//! Chromium or Node fails the test unless `KEYGATE_TEST_SKIP` names
//! `browser` (never under CI).

use crate::common::*;
use std::path::Path;
use std::process::Command;

fn missing(what: &str) -> bool {
    may_skip("browser", &format!("{what} is missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_browser, ignore = "browser named in KEYGATE_TEST_SKIP")]
async fn console_end_to_end_in_chromium() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    if !Path::new("/usr/bin/chromium").exists() && missing("chromium (apt-get install -y chromium)") {
        return;
    }
    if Command::new("node").arg("--version").output().is_err() && missing("node") {
        return;
    }
    if !e2e.join("node_modules/playwright-core").exists() {
        // Install the pinned driver from the committed lockfile.
        let ok =
            Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&e2e).status().is_ok_and(|s| s.success());
        if !ok && missing("playwright-core (npm ci --prefix tests/e2e failed)") {
            return;
        }
    }
    let up = upstream::start().await;
    let mut s = Setup::new(&up.url(), "", "");
    // An endpoint that refuses connections: deliveries fail, with attempts to show.
    let closed = free_port();
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n[[webhooks]]\nurl = \"http://127.0.0.1:{closed}/hooks\"\nsecret_env = \"E2E_HOOK_SECRET\"\n"));
    std::fs::write(&s.config, text).unwrap();
    s.env.push(("E2E_HOOK_SECRET".into(), "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into()));
    // An expired key (no API makes one: an expiry in the past is refused)
    // and one whose name is a single 100-character word.
    let (expired, _) = s.create_key(&["--name", "E2E expired", "--expires-in-days", "1"]);
    let db = rusqlite::Connection::open(s.config.with_file_name("keygate.db")).unwrap();
    db.execute("UPDATE keys SET expires_at = 1000 WHERE key_id = ?1", [&expired]).unwrap();
    drop(db);
    s.create_key(&["--name", &"W".repeat(100)]);
    // A token that may only read: the console must hide every change.
    let reader = s.cli_json(&["admin-token", "new", "--name", "e2e-reader", "--scope", "read"]);
    let mut text = std::fs::read_to_string(&s.config).unwrap();
    text.push_str(&format!("\n{}", reader["config"].as_str().unwrap()));
    std::fs::write(&s.config, text).unwrap();
    let _gw = s.start();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let out = tokio::process::Command::new("node")
        .arg(e2e.join("console.mjs"))
        .env("ADMIN_URL", s.admin_url(""))
        .env("DATA_URL", s.url(""))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("READ_TOKEN", reader["token"].as_str().unwrap())
        .env("SHOT_DIR", &shots)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed:\n{text}");
    assert!(text.contains("all steps passed"), "{text}");
    for shot in ["console-keys.png", "console-roles.png", "console-audit.png", "console-events.png", "console-keys-narrow.png"] {
        assert!(shots.join(shot).metadata().is_ok_and(|m| m.len() > 10_000), "no screenshot {shot}");
    }
}
