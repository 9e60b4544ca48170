//! The deployment kit in deploy/ holds together: Prometheus' config and
//! alert rules pass promtool (and their unit tests), the metrics a real
//! Redis-backed gateway exports pass `promtool check metrics` and hold
//! every series the rules and the Grafana dashboard read, the Kubernetes
//! manifests pass a schema validator, and every config shipped passes
//! `keygate config check`.

use crate::common::redis::RedisServer;
use crate::common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The validator, run as a module (its script may not be on PATH).
const K8S_VALIDATE: [&str; 3] = ["python3", "-m", "kubernetes_validate"];

/// Whether `tool` runs here; if not, the test fails unless the operator
/// named `what` in KEYGATE_TEST_SKIP (never under CI).
fn have(tool: &[&str], what: &str, package: &str) -> bool {
    let found = Command::new(tool[0]).args(&tool[1..]).arg("--version").output().is_ok_and(|o| o.status.success());
    found || !may_skip(what, &format!("`{}` does not run ({package})", tool.join(" ")))
}

fn run(tool: &[&str], args: &[&str], dir: &Path) -> String {
    let out = Command::new(tool[0]).args(&tool[1..]).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{tool:?} {args:?}:\n{text}");
    text
}

fn config_check(path: &Path) {
    let out = Command::new(keygate_bin()).arg("--config").arg(path).args(["config", "check"]).output().unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
}

/// Metric names (`keygate_*`, `process_*`, `up`) a PromQL text reads.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &promql[i..];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (rest.starts_with("keygate_") || rest.starts_with("process_")) {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
#[cfg_attr(skip_promtool, ignore = "promtool named in KEYGATE_TEST_SKIP")]
fn prometheus_config_and_alert_rules_pass_promtool() {
    if !have(&["promtool"], "promtool", "Debian's prometheus package") {
        return;
    }
    let dir = repo("deploy/prometheus");
    assert!(run(&["promtool"], &["check", "rules", "alerts.yml"], &dir).contains("SUCCESS: 9 rules found"));
    run(&["promtool"], &["check", "config", "prometheus.yml"], &dir);
    run(&["promtool"], &["test", "rules", "alerts_test.yml"], &dir);
    // The rules the issue asks for are all there.
    let rules = read("deploy/prometheus/alerts.yml");
    for alert in [
        "KeygateHigh5xxRatio",
        "KeygateStoreUnavailable",
        "KeygateRevocationLagHigh",
        "KeygateRateLimitFallbackActive",
        "KeygateConfigReloadFailed",
        "KeygateUpstreamTargetEjected",
    ] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(skip_redis, ignore = "redis named in KEYGATE_TEST_SKIP")]
#[cfg_attr(skip_promtool, ignore = "promtool named in KEYGATE_TEST_SKIP")]
async fn rules_and_dashboard_read_only_series_a_gateway_exports() {
    if !have(&["promtool"], "promtool", "Debian's prometheus package") {
        return;
    }
    let Some(redis) = RedisServer::start() else { return };
    let up = upstream::start().await;
    let s = Setup::redis(&up.url(), &redis.url(), "");
    let (_, token) = s.create_key(&["--name", "kit", "--role", "read-only"]);
    let _gw = s.start();
    let c = client();
    c.get(s.url("/api/lists")).bearer_auth(&token).send().await.unwrap();
    c.get(s.url("/api/lists")).send().await.unwrap();
    let metrics = c.get(s.admin_url("/metrics")).send().await.unwrap().text().await.unwrap();

    // promtool's linter on the exposition itself.
    let mut lint =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(lint.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let linted = lint.wait_with_output().unwrap();
    assert!(linted.status.success(), "promtool check metrics:\n{}", String::from_utf8_lossy(&linted.stdout));

    let exported: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or("").to_string())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/grafana/keygate.json")).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let rules = read("deploy/prometheus/alerts.yml");
    let read_by_kit: BTreeSet<String> = exprs.iter().chain([&rules]).flat_map(|e| metric_names(e)).collect();
    for name in read_by_kit {
        assert!(exported.contains(&name), "`{name}` is read by the kit but not exported:\n{metrics}");
    }
    // What the issue names on the dashboard.
    let all = exprs.join("\n");
    for needed in [
        "keygate_gateway_latency_seconds_bucket",
        "keygate_upstream_latency_seconds_bucket",
        "keygate_cache_hits_total",
        "keygate_ratelimit_fallback_total",
        "keygate_revocation_lag_seconds_bucket",
        "keygate_redis_calls_total",
        "keygate_open_connections",
        "keygate_config_reloads_total",
        "sum by (code)",
    ] {
        assert!(all.contains(needed), "the dashboard shows no {needed}");
    }
}

#[test]
fn the_committed_dashboard_is_the_generators_output() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("keygate.json");
    let status =
        Command::new("python3").arg(repo("tools/gen_dashboard.py")).env("KEYGATE_DASHBOARD_OUT", &path).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        read("deploy/grafana/keygate.json"),
        "run python3 tools/gen_dashboard.py"
    );
}

#[test]
#[cfg_attr(skip_k8s, ignore = "k8s named in KEYGATE_TEST_SKIP")]
fn kubernetes_manifests_pass_the_schema_and_match_the_config() {
    if !have(&K8S_VALIDATE, "k8s", "pip install kubernetes-validate") {
        return;
    }
    let files = ["configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "networkpolicy.yaml"];
    let dir = repo("deploy/k8s");
    let mut args = vec!["--strict"];
    args.extend(files);
    let text = run(&K8S_VALIDATE, &args, &dir);
    assert!(!text.contains("ERROR") && text.matches("passed").count() == 7, "{text}");
    let kustomization = read("deploy/k8s/kustomization.yaml");
    for f in files {
        assert!(kustomization.contains(&format!("- {f}")), "kustomization.yaml does not list {f}");
    }

    // The ConfigMap's gateway.toml is a valid config.
    let configmap = read("deploy/k8s/configmap.yaml");
    let toml: String = configmap
        .split_once("gateway.toml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("gateway.toml");
    std::fs::write(&file, &toml).unwrap();
    config_check(&file);

    // SIGKILL only after preStop and the whole drain.
    let number = |text: &str, key: &str| -> u64 {
        let at = text.find(key).unwrap_or_else(|| panic!("no {key}"));
        text[at + key.len()..]
            .trim_start_matches([' ', ':', '"'])
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let deployment = read("deploy/k8s/deployment.yaml");
    let grace = number(&deployment, "terminationGracePeriodSeconds");
    let pre_stop = number(&deployment, "command: [\"sleep\", \"");
    let drain = number(&toml, "drain_timeout = ");
    assert!(grace > pre_stop + drain, "grace {grace} s <= preStop {pre_stop} s + drain {drain} s");
    assert!(deployment.contains("path: /readyz") && deployment.contains("path: /healthz"));
    assert!(deployment.contains("name: keygate-admin"), "the admin token comes from the Secret");
    // The admin port admits only the scrape and the operators' namespace.
    let policy = read("deploy/k8s/networkpolicy.yaml");
    let admin_rule = policy.split("- port: admin").nth(1).expect("no rule for the admin port");
    assert!(admin_rule.contains("from:") && admin_rule.contains("prometheus") && admin_rule.contains("operators"), "{policy}");
    // The admin listener answers the names the cluster reaches it by, and
    // nothing else (no warning left).
    let out = std::process::Command::new(keygate_bin()).arg("--config").arg(&file).args(["config", "check"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_compose_file_and_image_hold_together() {
    config_check(&repo("deploy/compose/gateway.toml"));
    config_check(&repo("deploy/redis-node.toml"));
    let compose = read("deploy/docker-compose.yml");
    for service in ["keygate:", "redis:", "backend:", "prometheus:", "grafana:"] {
        assert!(compose.contains(&format!("\n  {service}")), "no {service} service");
    }
    // Every file the compose file mounts is in the repository.
    for line in compose.lines().map(str::trim).filter(|l| l.starts_with("- ./")) {
        let host = line.trim_start_matches("- ").split(':').next().unwrap();
        assert!(repo("deploy").join(host).exists(), "{host} is mounted but missing");
    }
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("ca-certificates"), "https upstreams need the system roots");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"health\", \"--ready\""));
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/"), "the build context must not carry target/");
    // The image's config edit still finds the lines it rewrites.
    let example = read("gateway.toml");
    assert!(example.contains("\npath = \"keygate.db\"") && example.contains("\nlisten = \"127.0.0.1:9180\""));
}
