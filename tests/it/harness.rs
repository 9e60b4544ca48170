//! The test harness's own rules: a test whose dependency is missing fails
//! unless the operator named it in `KEYGATE_TEST_SKIP`, and always under CI;
//! a named one is compiled as ignored, so the summary counts it.

use crate::common::skip_allowed;

#[test]
fn a_missing_dependency_fails_unless_named_and_always_under_ci() {
    let why = "redis-server is not installed";
    assert!(skip_allowed(false, "", "redis", why).is_err());
    assert!(skip_allowed(false, "browser", "redis", why).is_err());
    assert!(skip_allowed(false, "redisx", "redis", why).is_err());
    assert!(skip_allowed(false, "browser, redis", "redis", why).is_ok());
    assert!(skip_allowed(true, "redis", "redis", why).unwrap_err().contains("CI must install it"));
    assert!(skip_allowed(false, "", "browser", why).unwrap_err().contains("KEYGATE_TEST_SKIP=browser"));
}

/// A test that needs a dependency `KEYGATE_TEST_SKIP` can name carries
/// `cfg_attr(skip_<what>, ignore = ...)`, so that naming it shows the test
/// as ignored in the summary (build.rs sets the cfg), never as `ok`. Read
/// from the sources: a new Redis test without the attribute fails here.
#[test]
fn every_test_that_needs_a_skippable_dependency_is_marked() {
    let needs: [(&str, &[&str]); 4] = [
        ("redis", &["RedisServer::start", "Cluster::start(", "tls_redis()"]),
        ("browser", &["missing(\""]),
        ("promtool", &["have(&[\"promtool\"]"]),
        ("k8s", &["have(&K8S_VALIDATE"]),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut unmarked = Vec::new();
    let mut marked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // This file names the calls it looks for.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("harness.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line.strip_prefix("async fn ").or_else(|| line.strip_prefix("fn ")) else { continue };
            let attributes: Vec<&str> =
                lines[..i].iter().rev().take_while(|l| l.starts_with("#[") || l.starts_with("///")).copied().collect();
            if !attributes.iter().any(|a| a.starts_with("#[test]") || a.starts_with("#[tokio::test")) {
                continue;
            }
            let end = lines[i..].iter().position(|l| *l == "}").map_or(lines.len(), |n| i + n);
            let body = lines[i..end].join("\n");
            for (what, calls) in needs {
                if calls.iter().any(|c| body.contains(c)) {
                    let attribute = format!("#[cfg_attr(skip_{what}, ignore");
                    if attributes.iter().any(|a| a.starts_with(&attribute)) {
                        marked += 1;
                    } else {
                        unmarked.push(format!("{}: {} needs {what}", path.display(), name.split('(').next().unwrap_or(name)));
                    }
                }
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "add #[cfg_attr(skip_<what>, ignore = \"<what> named in KEYGATE_TEST_SKIP\")] to:\n{}",
        unmarked.join("\n")
    );
    assert!(marked >= 30, "only {marked} marked tests found: has the harness's layout changed?");
}
