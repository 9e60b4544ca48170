//! The CLI of docs/interface.md, on the embedded store, with no gateway running.

use crate::common::*;

fn setup() -> Setup {
    Setup::new("http://127.0.0.1:9", "", "")
}

fn fail(s: &Setup, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--json");
    let out = s.cli(&all);
    assert!(!out.status.success(), "{args:?} should fail");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["success"], false);
    v
}

#[test]
fn create_shows_the_secret_once_and_never_again() {
    let s = setup();
    let out = s.cli(&["keys", "create", "--name", "Zapier", "--role", "read-only", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["success"], true);
    assert!(v["meta"]["warning"].as_str().unwrap().contains("only be shown once"));
    let secret = v["data"]["apiKey"].as_str().unwrap().to_string();
    assert!(secret.starts_with("kg_live_"));
    let id = v["data"]["keyId"].as_str().unwrap().to_string();
    assert!(id.starts_with("key_") && id.len() == 20);
    assert_eq!(v["data"]["keyPrefix"].as_str().unwrap(), format!("{}****", &secret[..12]));
    assert_eq!(v["data"]["rateLimit"], 60);
    assert_eq!(v["data"]["status"], "active");

    for args in
        [vec!["keys", "list"], vec!["keys", "list", "--json"], vec!["keys", "show", &id], vec!["keys", "show", &id, "--json"]]
    {
        let out = s.cli(&args);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Zapier"), "{text}");
        assert!(!text.contains(&secret[12..]), "{args:?} showed the secret: {text}");
    }
}

#[test]
fn every_field_round_trips() {
    let s = setup();
    let data = s.cli_json(&[
        "keys",
        "create",
        "--name",
        "CRM",
        "--description",
        "CRM sync",
        "--owner",
        "ops@example.com",
        "--role",
        "full-access",
        "--permission",
        "lists.view",
        "--plan",
        "pro",
        "--allow-ip",
        "203.0.113.0/24",
        "--allow-ip",
        "2001:db8::/32",
        "--env",
        "test",
        "--expires-in-days",
        "30",
        "--meta",
        "default_optin_mailing=12",
    ]);
    assert_eq!(data["description"], "CRM sync");
    assert_eq!(data["owner"], "ops@example.com");
    assert_eq!(data["role"], "full-access");
    assert_eq!(data["permissions"], serde_json::json!(["lists.view"]));
    assert_eq!(data["plan"], "pro");
    assert_eq!(data["rateLimit"], 100);
    assert_eq!(data["allowedIps"], serde_json::json!(["203.0.113.0/24", "2001:db8::/32"]));
    assert_eq!(data["env"], "test");
    assert!(data["apiKey"].as_str().unwrap().starts_with("kg_test_"));
    assert_eq!(data["metadata"]["default_optin_mailing"], "12");
    let expires = keygate::clock::parse_rfc3339(data["expiresAt"].as_str().unwrap()).unwrap();
    let in_30_days = keygate::clock::now_unix() + 30 * 86400;
    assert!((expires - in_30_days).abs() < 60);

    let id = data["keyId"].as_str().unwrap();
    let edited = s.cli_json(&["keys", "edit", id, "--rate-limit", "7", "--role", "", "--plan", "", "--allow-ip", ""]);
    assert_eq!(edited["rateLimit"], 7);
    assert_eq!(edited["role"], serde_json::Value::Null);
    assert_eq!(edited["plan"], serde_json::Value::Null);
    assert_eq!(edited["allowedIps"], serde_json::json!([]));
    assert_eq!(edited["owner"], "ops@example.com", "fields not given are kept");
    // Expiry to the minute: a span, an exact time, and none.
    let at = |v: &serde_json::Value| keygate::clock::parse_rfc3339(v["expiresAt"].as_str().unwrap()).unwrap();
    let soon = s.cli_json(&["keys", "edit", id, "--expires-in", "90m"]);
    assert!((at(&soon) - (keygate::clock::now_unix() + 5400)).abs() < 60, "{soon}");
    let exact = s.cli_json(&["keys", "edit", id, "--expires-at", "2031-06-01T17:45:00+02:00"]);
    assert_eq!(exact["expiresAt"], "2031-06-01T15:45:00Z");
    assert_eq!(s.cli_json(&["keys", "edit", id, "--expires-at", "never"])["expiresAt"], serde_json::Value::Null);
    assert_eq!(s.cli(&["keys", "edit", id, "--expires-at", "2031-06-01T17:45:00Z", "--expires-in", "2h"]).status.code(), Some(2));
    let disabled = s.cli_json(&["keys", "disable", id]);
    assert_eq!(disabled["status"], "disabled");
    let listed = s.cli_json(&["keys", "list", "--search", "crm"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(s.cli_json(&["keys", "list", "--search", "nothing-matches"]).as_array().unwrap().len(), 0);
    let deleted = s.cli_json(&["keys", "delete", id]);
    assert_eq!(deleted, serde_json::json!({ "keyId": id, "revoked": true }));
    assert_eq!(fail(&s, &["keys", "show", id])["code"], "not_found");
}

#[test]
fn bad_input_names_the_field() {
    let s = setup();
    let long = "x".repeat(101);
    for (args, field) in [
        (vec!["keys", "create", "--role", "read-only"], "name"),
        (vec!["keys", "create", "--name", &long], "name"),
        (vec!["keys", "create", "--name", "a", "--role", "ghost"], "role"),
        (vec!["keys", "create", "--name", "a", "--permission", "lists.fly"], "permissions"),
        (vec!["keys", "create", "--name", "a", "--allow-ip", "300.1.1.1"], "allowedIps"),
        (vec!["keys", "create", "--name", "a", "--expires-in-days", "366"], "expirationDays"),
        (vec!["keys", "create", "--name", "a", "--plan", "platinum"], "plan"),
        (vec!["keys", "create", "--name", "a", "--env", "staging"], "env"),
        (vec!["keys", "create", "--name", "a", "--meta", "bad name=1"], "metadata"),
        (vec!["keys", "import", "--token", "short", "--name", "a"], "token"),
        (vec!["keys", "create", "--name", "a", "--expires-at", "yesterday"], "expiresAt"),
        (vec!["keys", "create", "--name", "a", "--expires-at", "2020-01-01T00:00:00Z"], "expiresAt"),
        (vec!["keys", "create", "--name", "a", "--expires-in", "5 fortnights"], "expiresAt"),
        // keygate's layout with a checksum the gateway would refuse.
        (vec!["keys", "import", "--token", "kg_live_0123456789abcdefghijABCDEFGHIJ0123456789", "--name", "a"], "token"),
    ] {
        let v = fail(&s, &args);
        assert_eq!(v["code"], "invalid_request", "{args:?}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(&format!("{field}:")), "{args:?}: {v}");
        // A usage error, as clap's own: exit 2.
        assert_eq!(s.cli(&args).status.code(), Some(2), "{args:?}");
    }
    // Nothing was created by any of them.
    assert_eq!(s.cli_json(&["keys", "list"]).as_array().unwrap().len(), 0);
    // Without --json the error goes to stderr.
    let out = s.cli(&["keys", "create", "--name", "a", "--role", "ghost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("role: no role `ghost` exists"));
}

#[test]
fn roles_lifecycle_and_role_in_use() {
    let s = setup();
    let roles = s.cli_json(&["roles", "list"]);
    let ids: Vec<&str> = roles.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["full-access", "read-only"], "config roles are seeded before the first serve");
    let role = s.cli_json(&[
        "roles",
        "create",
        "--id",
        "sync",
        "--name",
        "Contact Sync",
        "--permission",
        "lists.*",
        "--permission",
        "contacts.view",
    ]);
    assert_eq!(role["permissions"], serde_json::json!(["lists.*", "contacts.view"]));
    assert_eq!(fail(&s, &["roles", "create", "--id", "sync", "--permission", "lists.view"])["code"], "conflict");
    assert!(fail(&s, &["roles", "create", "--id", "bad", "--permission", "nope.view"])["error"]
        .as_str()
        .unwrap()
        .starts_with("permissions:"));
    let (id, _) = s.create_key(&["--name", "uses sync", "--role", "sync"]);
    let v = fail(&s, &["roles", "delete", "sync"]);
    assert_eq!(v["code"], "role_in_use");
    s.cli_json(&["keys", "delete", &id]);
    assert_eq!(s.cli_json(&["roles", "delete", "sync"]), serde_json::json!({ "id": "sync", "deleted": true }));
    assert_eq!(fail(&s, &["roles", "show", "sync"])["code"], "not_found");
}

#[test]
fn import_reads_the_token_from_stdin() {
    use std::io::Write;
    let s = setup();
    let mut child = std::process::Command::new(keygate_bin())
        .args(["--config", s.config.to_str().unwrap(), "keys", "import", "--token", "-", "--name", "piped", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pfx.abcdefghijklmnopqrstuvwx\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["keyPrefix"], "pfx.****");
    // The same token cannot be imported twice.
    assert_eq!(fail(&s, &["keys", "import", "--token", "pfx.abcdefghijklmnopqrstuvwx", "--name", "again"])["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_the_running_gateway() {
    let s = setup();
    let down = s.cli(&["health"]);
    assert_eq!(down.status.code(), Some(1), "nothing is listening yet");
    assert!(String::from_utf8_lossy(&down.stderr).contains("/healthz"));
    let gw = s.start();
    for args in [&["health"][..], &["health", "--ready"]] {
        let out = s.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    drop(gw);
}

#[test]
fn leak_rules_find_the_gateway_s_own_tokens_in_each_scanner_s_format() {
    let s = setup();
    let token = s.cli_json(&["keys", "create", "--name", "leaky"])["apiKey"].as_str().unwrap().to_string();
    let out = s.cli(&["leaks", "rules", "--format", "gitleaks"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rules: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let pattern = regex::Regex::new(rules["rules"][0]["regex"].as_str().unwrap()).unwrap();
    assert!(pattern.is_match(&format!("token = \"{token}\"")), "gitleaks' rule misses {token}");
    for format in ["github", "trufflehog"] {
        let out = s.cli(&["leaks", "rules", "--format", format]);
        assert!(out.status.success());
        assert!(String::from_utf8(out.stdout).unwrap().contains(pattern.as_str()), "{format} carries the same pattern");
    }
    let out = s.cli(&["leaks", "rules", "--format", "semgrep"]);
    assert_eq!(out.status.code(), Some(2), "an unknown format is a usage error");
}

/// Runs the CLI with a terminal for its stdin (`script`), answering `answer`.
fn on_a_terminal(s: &Setup, args: &str, answer: &str) -> (bool, String) {
    use std::io::Write;
    let command = format!("{} --config {} {args}", keygate_bin(), s.config.display());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Answered once the question is out, as a person would.
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn delete_asks_on_a_terminal_and_never_without_one() {
    let s = setup();
    let id = |name: &str| s.create_key(&["--name", name, "--role", "read-only"]).0;
    let (asked, kept) = (id("asked"), id("kept"));
    let (ok, text) = on_a_terminal(&s, &format!("keys delete {kept}"), "n\n");
    assert!(!ok && text.contains("for good? ") && text.contains("not deleted"), "{text}");
    assert_eq!(s.cli_json(&["keys", "show", &kept])["keyId"], kept.as_str());
    let (ok, text) = on_a_terminal(&s, &format!("keys delete {asked}"), "y\n");
    assert!(ok && text.contains(&format!("deleted {asked}")), "{text}");
    // --yes skips the question; without a terminal none is asked.
    let (ok, text) = on_a_terminal(&s, &format!("keys delete {kept} --yes"), "");
    assert!(ok && !text.contains("for good?"), "{text}");
    let piped = id("piped");
    let out = s.cli(&["keys", "delete", &piped]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.cli_json(&["keys", "list"]).as_array().unwrap().len(), 0);
}

#[test]
fn the_text_of_a_key_shows_its_quotas_and_credits() {
    let s = setup();
    let args = ["keys", "create", "--name", "metered", "--role", "read-only", "--per-day", "50", "--credits", "5"];
    let out = s.cli(&[&args[..], &["--refill", "10", "--refill-interval", "day", "--max-in-flight", "4"]].concat());
    let created = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(created.contains("quota:       perDay=50"), "{created}");
    assert!(created.contains("credits:     refillAmount=10, refillInterval=day") && created.contains("remaining=5"), "{created}");
    assert!(created.contains("maxInFlight: 4"), "{created}");
    let id = created.lines().find_map(|l| l.strip_prefix("keyId:")).unwrap().trim().to_string();
    let shown = String::from_utf8_lossy(&s.cli(&["keys", "show", &id]).stdout).to_string();
    assert!(shown.contains("quota:       perDay=50") && shown.contains("remaining=5"), "{shown}");
    let plain = String::from_utf8_lossy(&s.cli(&["keys", "create", "--name", "plain", "--role", "read-only"]).stdout).to_string();
    assert!(plain.contains("quota:       -") && plain.contains("credits:     -"), "{plain}");
}

#[test]
fn completions_a_man_page_and_the_config_from_keygate_config() {
    let run = |args: &[&str], env: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(keygate_bin());
        c.args(args).env_remove("KEYGATE_CONFIG").current_dir(std::env::temp_dir());
        if let Some(path) = env {
            c.env("KEYGATE_CONFIG", path);
        }
        let out = c.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    for (shell, mark) in [("bash", "_keygate()"), ("zsh", "#compdef keygate"), ("fish", "complete -c keygate")] {
        let (code, text, err) = run(&["completions", shell], None);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(text.contains(mark) && text.contains("credits") && text.contains("if-version"), "{shell}: {text}");
    }
    let (code, _, err) = run(&["completions", "tcsh"], None);
    assert_eq!(code, Some(2), "an unknown shell is a usage error: {err}");
    let (code, page, _) = run(&["man"], None);
    assert_eq!(code, Some(0));
    assert!(page.starts_with(".ie") && page.contains(".TH keygate 1") && page.contains("KEYGATE_CONFIG"), "{page}");

    // KEYGATE_CONFIG names the config when --config is not given; --config wins.
    let s = setup();
    let (code, text, err) = run(&["keys", "create", "--name", "from-env", "--role", "read-only", "--json"], Some(&s.config));
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("from-env"), "{text}");
    assert_eq!(s.cli_json(&["keys", "list"]).as_array().unwrap().len(), 1, "the same store");
    let missing = s.dir.path().join("missing.toml");
    let (code, _, err) = run(&["config", "check"], Some(&missing));
    assert!(code == Some(2) && err.contains("missing.toml"), "{err}");
    let config = s.config.display().to_string();
    let (code, _, err) = run(&["--config", &config, "config", "check"], Some(&missing));
    assert_eq!(code, Some(0), "{err}");
}
