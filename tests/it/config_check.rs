//! `keygate config check` refuses bad files, naming file, line and field.

use crate::common::*;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::with_text(dir, text, free_port(), free_port());
    let out = s.cli(&["config", "check"]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Each table, put before the shared catalogue, is refused naming `field`.
fn refused_with<T: AsRef<str>>(cases: &[(T, &str)]) {
    for (table, field) in cases {
        let table = table.as_ref();
        let (ok, out) = check(&format!("{table}\n{}", base()));
        assert!(!ok, "{table}");
        assert!(out.contains(field), "{table}: {out}");
    }
}

fn base() -> String {
    CATALOGUE.replace("{upstream}", "http://127.0.0.1:9000")
}

#[test]
fn the_shipped_example_is_valid() {
    let out = std::process::Command::new(keygate_bin())
        .args(["--config", concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"), "config", "check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_route_that_costs_more_than_its_own_limit_is_refused() {
    let text = base().replace(
        "match = \"POST /api/broadcasts/{id}/send\"",
        "match = \"POST /api/broadcasts/{id}/send\"\ncost = 10\nrate_limit = { per_minute = 5 }",
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::with_text(dir, &text, free_port(), free_port());
    let out = s.cli(&["config", "check"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    let line = text.lines().position(|l| l == "cost = 10").unwrap() + 1;
    assert!(said.contains(&format!("gateway.toml:{line}: routes[5].cost:")), "{said}");
    assert!(said.contains("every request would be refused"), "{said}");
    // Within its own limit it loads; a plan whose smallest window is below
    // the cost is named in a warning (the file still loads: other keys may
    // have their own limits).
    let text = text.replace("per_minute = 5 }", "per_minute = 50 }")
        + "\n[plans.tiny]\nper_minute = 5\n\n[plans.daily]\nper_minute = 100\nper_day = 8\n";
    let (ok, out) = check(&text);
    assert!(ok, "{out}");
    for plan in ["plans.tiny: its smallest window (5 per minute)", "plans.daily: its smallest window (8 per day)"] {
        assert!(out.contains(plan) && out.contains("`POST /api/broadcasts/{id}/send` (10)"), "{plan}: {out}");
    }
    assert!(!out.contains("default_per_minute"), "{out}");
}

#[test]
fn an_admin_listener_off_loopback_without_allowed_hosts_is_named() {
    let (ok, out) = check(&format!("[admin]\nlisten = \"0.0.0.0:9180\"\n{}", base()));
    assert!(ok && out.contains("warning") && out.contains("admin.allowed_hosts"), "{out}");
    let (ok, out) = check(&format!("[admin]\nlisten = \"0.0.0.0:9180\"\nallowed_hosts = [\"admin.internal\"]\n{}", base()));
    assert!(ok && !out.contains("warning"), "{out}");
}

#[test]
fn the_multi_node_example_is_valid() {
    let out = std::process::Command::new(keygate_bin())
        .args(["--config", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redis-node.toml"), "config", "check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn redis_settings_are_checked() {
    let (ok, out) = check(&format!("[store]\nbackend = \"redis\"\n{}", base()));
    assert!(!ok);
    assert!(out.contains("store.url"), "{out}");
    let (ok, out) = check(&format!("[store]\nbackend = \"redis\"\nurl = \"redis://a:1,redis://b:2\"\n{}", base()));
    assert!(!ok);
    assert!(out.contains("cluster = true"), "{out}");
    for (url, why) in [("http://a:1", "not a redis:// or rediss:// URL"), ("rediss://a:1/#insecure", "refused")] {
        let (ok, out) = check(&format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\n{}", base()));
        assert!(!ok && out.contains("store.url") && out.contains(why), "{url}: {out}");
    }
    let (ok, _) = check(&format!("[store]\nbackend = \"redis\"\nurl = \"rediss://a:6380/0\"\n{}", base()));
    assert!(ok, "TLS to Redis is a valid setting");
    let (ok, out) = check(&format!("[rate_limit]\nbackend = \"redis\"\non_redis_error = \"maybe\"\n{}", base()));
    assert!(!ok);
    assert!(out.contains("rate_limit.url") && out.contains("rate_limit.on_redis_error"), "{out}");
    let (ok, out) =
        check(&base().replace("match = \"GET /api/ping\"", "match = \"GET /api/ping\"\non_redis_error = \"sometimes\""));
    assert!(!ok);
    assert!(out.contains("on_redis_error"), "{out}");
}

#[test]
fn a_good_file_passes() {
    let (ok, out) = check(&base());
    assert!(ok, "{out}");
}

#[test]
fn unknown_fields_are_named_with_their_line() {
    let (ok, out) = check(&format!("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n{}", base()));
    assert!(!ok);
    assert!(out.contains("gateway.toml:3"), "{out}");
    assert!(out.contains("lisen"), "{out}");
}

#[test]
fn an_unknown_field_in_a_table_array_is_named_by_its_full_path() {
    let text = base().replace("permission = \"lists.create\"", "permision = \"lists.create\"");
    let line = text.lines().position(|l| l.contains("permision")).unwrap() + 1;
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(out.contains(&format!("gateway.toml:{line}: routes[0].permision: unknown field")), "{out}");
    let (ok, out) = check(&format!("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n{}", base()));
    assert!(!ok && out.contains(": server.lisen: "), "{out}");
    let (ok, out) = check(&format!("[server]\nlisten = 5\n{}", base()));
    assert!(!ok && out.contains(": server.listen: invalid type"), "{out}");
    // A wrong type is named by its path too.
    let (ok, out) = check(&base().replace("public = true", "public = \"yes\""));
    assert!(!ok && out.contains("routes[") && out.contains("].public"), "{out}");
}

#[test]
fn a_route_with_a_method_no_one_sends_is_refused() {
    for method in ["GIT", "get", "FETCH"] {
        let text = base().replace("match = \"GET /api/ping\"", &format!("match = \"{method} /api/ping\""));
        assert_ne!(text, base());
        let (ok, out) = check(&text);
        assert!(!ok && out.contains(".match") && out.contains(&format!("`{method}` is not an HTTP method")), "{method}: {out}");
    }
    for method in ["PATCH", "OPTIONS", "*"] {
        let (ok, out) = check(&base().replace("match = \"GET /api/ping\"", &format!("match = \"{method} /api/ping\"")));
        assert!(ok, "{method}: {out}");
    }
}

#[test]
fn undeclared_permissions_are_refused() {
    let text = base().replace("permission = \"lists.create\"", "permission = \"lists.fly\"");
    let line = text.lines().position(|l| l.contains("lists.fly")).unwrap() + 1;
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(out.contains(&format!("gateway.toml:{line}: routes[0].permission")), "{out}");
    assert!(out.contains("lists.fly"), "{out}");
    let (ok, out) = check(&base().replace("permissions = [\"*\"]", "permissions = [\"nope.*\"]"));
    assert!(!ok);
    assert!(out.contains("roles[1].permissions[0]"), "{out}");
}

#[test]
fn bad_cidrs_missing_upstreams_and_bad_values_are_refused() {
    let (ok, out) = check(&format!("[server]\ntrusted_proxies = [\"10.0.0.0/99\"]\n{}", base()));
    assert!(!ok);
    assert!(out.contains("gateway.toml:2: server.trusted_proxies[0]"), "{out}");
    let (ok, out) = check(&format!("{}\n[[routes]]\nmatch = \"GET /x\"\nupstream = \"ghost\"\n", base()));
    assert!(!ok);
    assert!(out.contains("upstream") && out.contains("ghost"), "{out}");
    let (ok, out) = check(&format!("[rate_limit]\nalgorithm = \"leaky\"\ndefault_per_minute = 0\n{}", base()));
    assert!(!ok);
    assert!(
        out.contains("rate_limit.algorithm") && out.contains("rate_limit.default_per_minute"),
        "both problems are listed: {out}"
    );
    let (ok, out) = check(&base().replace("match = \"GET /api/ping\"", "match = \"GET api/ping\""));
    assert!(!ok);
    assert!(out.contains(".match"), "{out}");
    let (ok, out) = check("this is not toml");
    assert!(!ok);
    assert!(out.contains("gateway.toml:1"), "{out}");
}

#[test]
fn unreadable_tls_files_are_refused() {
    let (ok, out) =
        check(&format!("[server]\ntls = {{ cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }}\n{}", base()));
    assert!(!ok);
    assert!(out.contains("gateway.toml:2: server.tls.cert"), "{out}");
    assert!(out.contains("/nonexistent/cert.pem"), "{out}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = std::process::Command::new(keygate_bin())
        .args(["--config", "/nonexistent/gateway.toml", "config", "check"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml"));
}

#[test]
fn upstream_tls_and_target_settings_are_checked() {
    let upstream = |lines: &str| CATALOGUE.replace("url = \"{upstream}\"", lines);
    let cases = [
        ("url = \"https://api.internal\"\nca_file = \"/nonexistent/ca.pem\"", "upstreams[0].ca_file", "/nonexistent/ca.pem"),
        ("url = \"http://api.internal\"\nca_file = \"ca.pem\"", "upstreams[0].ca_file", "only applies to an https://"),
        (
            "url = \"https://api.internal\"\nclient_cert = { cert = \"/nonexistent/gw.pem\", key = \"/nonexistent/gw.key\" }",
            "upstreams[0].client_cert.cert",
            "/nonexistent/gw.pem",
        ),
        ("url = \"https://api.internal\"\nserver_name = \"not a name!\"", "upstreams[0].server_name", "not a DNS name"),
        ("url = \"ftp://api.internal\"", "upstreams[0].url", "http:// or https://"),
        ("url = \"http://api.internal\"\ntargets = [\"https://10.0.0.5\"]", "upstreams[0].targets[0]", "the url's scheme"),
        (
            "url = \"http://api.internal\"\ntargets = [\"http://10.0.0.5/v1\"]",
            "upstreams[0].targets[0]",
            "the path comes from url",
        ),
        ("url = \"http://api.internal\"\ntargets = [\"10.0.0.5:80\"]", "upstreams[0].targets[0]", "not a URL"),
        (
            "url = \"http://api.internal\"\ntargets = [\"http://10.0.0.5\", \"http://10.0.0.5\"]",
            "upstreams[0].targets[1]",
            "listed twice",
        ),
        ("url = \"http://api.internal\"\nbalance = \"random\"", "upstreams[0].balance", "round_robin"),
        ("url = \"http://api.internal\"\nhealth = { failures = 0 }", "upstreams[0].health.failures", "greater than zero"),
        ("url = \"http://api.internal\"\nhealth = { eject = \"soon\" }", "upstreams[0].health.eject", ""),
    ];
    for (lines, field, message) in cases {
        let (ok, out) = check(&upstream(lines));
        assert!(!ok, "{lines}");
        assert!(out.contains(&format!(": {field}")) && out.contains(message), "{lines}:\n{out}");
    }
    let good = "url = \"https://api.internal/v1\"\ntargets = [\"https://10.0.0.5:8443\", \"https://10.0.0.6:8443\"]\n\
                server_name = \"api.internal\"\nbalance = \"least_outstanding\"\nhealth = { failures = 3, eject = \"10s\" }";
    let (ok, out) = check(&upstream(good));
    assert!(ok, "{out}");
}

#[test]
fn cors_settings_are_checked() {
    let (ok, out) = check(&format!("{}\n[cors]\nallowed_origins = [\"https://app.example.com\", \"app.example.com\"]\n", base()));
    assert!(!ok);
    assert!(out.contains("cors.allowed_origins[1]") && out.contains("is not an origin"), "{out}");
    let (ok, out) = check(&format!("{}\n[cors]\nallowed_origins = [\"*\"]\nallow_credentials = true\n", base()));
    assert!(!ok);
    assert!(out.contains("cors.allow_credentials"), "{out}");
    let (ok, out) = check(&base().replace("match = \"GET /api/ping\"", "match = \"GET /api/ping\"\ncors = true"));
    assert!(!ok);
    assert!(out.contains(".cors") && out.contains("needs a [cors] table"), "{out}");
    let (ok, out) = check(&format!("{}\n[cors]\nallowed_origins = [\"https://*.example.com\"]\nmax_age = \"2h\"\n", base()));
    assert!(ok, "{out}");
}

#[test]
fn the_log_format_is_one_of_two() {
    let (ok, out) = check(&format!("[log]\nformat = \"xml\"\n{}", base()));
    assert!(!ok);
    assert!(out.contains("gateway.toml:2: log.format") && out.contains("\"json\""), "{out}");
}

#[test]
fn tracing_settings_are_checked() {
    refused_with(&[
        ("[tracing]\notlp_endpoint = \"collector:4318\"", "tracing.otlp_endpoint"),
        ("[tracing]\notlp_endpoint = \"grpc://collector:4317\"", "tracing.otlp_endpoint"),
        ("[tracing]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 1.5", "tracing.sample_ratio"),
        ("[tracing]\notlp_endpoint = \"https://collector:4318\"\nca_file = \"/nonexistent/ca.pem\"", "tracing.ca_file"),
    ]);
    let (ok, out) = check(&format!("[tracing]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.1\n{}", base()));
    assert!(ok, "{out}");
}

#[test]
fn leak_report_settings_are_checked() {
    let keys = tempfile::tempdir().unwrap();
    let empty = keys.path().join("empty.json");
    std::fs::write(&empty, r#"{"public_keys": []}"#).unwrap();
    let rsa = keys.path().join("rsa.json");
    std::fs::write(
        &rsa,
        r#"{"public_keys": [{"key_identifier": "a", "key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}]}"#,
    )
    .unwrap();
    let (empty, rsa) = (empty.display(), rsa.display());
    refused_with(&[
        ("[leaks]\non_leak = \"delete\"".to_string(), "gateway.toml:2: leaks.on_leak"),
        ("[leaks.github]\non_leak = \"ignore\"".into(), "gateway.toml:2: leaks.github.on_leak"),
        ("[leaks.github]\npath = \"relative/path\"".into(), "gateway.toml:2: leaks.github.path"),
        ("[leaks.github]\npath = \"/a/../whoami\"".into(), "gateway.toml:2: leaks.github.path"),
        ("[leaks.github]\npublic_keys_url = \"ftp://example.com/keys\"".into(), "gateway.toml:2: leaks.github.public_keys_url"),
        ("[leaks.github]\npublic_keys_file = \"/nonexistent/keys.json\"".into(), "gateway.toml:2: leaks.github.public_keys_file"),
        (format!("[leaks.github]\npublic_keys_file = \"{empty}\""), "holds no keys"),
        (format!("[leaks.github]\npublic_keys_file = \"{rsa}\""), "leaks.github.public_keys_file"),
        (
            format!("[leaks.github]\npublic_keys_url = \"https://api.github.com/x\"\npublic_keys_file = \"{empty}\""),
            "gateway.toml:3: leaks.github.public_keys_file",
        ),
        ("[leaks.github]\npublic_keys_url = \"http://127.0.0.1:1/k\"\nca_file = \"ca.pem\"".into(), "leaks.github.ca_file"),
        ("[leaks.github]\nsecret = \"x\"".into(), "leaks.github.secret"),
    ]);
    let (ok, out) =
        check(&format!("[leaks]\non_leak = \"flag\"\n[leaks.github]\npublic_keys_url = \"http://127.0.0.1:1/k\"\n{}", base()));
    assert!(ok, "{out}");
}

#[test]
fn webhook_settings_are_checked() {
    const OK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let check_with_secret = |text: &str, value: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Setup::with_text(dir, text, free_port(), free_port());
        s.env.push(("HOOK_SECRET".into(), value.into()));
        let out = s.cli(&["config", "check"]);
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let hook = |extra: &str| {
        format!("[[webhooks]]\nurl = \"https://hooks.example.com/keygate\"\nsecret_env = \"HOOK_SECRET\"\n{extra}\n")
    };
    for (table, field) in [
        (
            "[[webhooks]]\nurl = \"http://hooks.example.com/k\"\nsecret_env = \"HOOK_SECRET\"".to_string(),
            "gateway.toml:2: webhooks[0].url",
        ),
        ("[[webhooks]]\nurl = \"ftp://127.0.0.1/k\"\nsecret_env = \"HOOK_SECRET\"".into(), "webhooks[0].url"),
        (hook("events = [\"key.exploded\"]"), "gateway.toml:4: webhooks[0].events"),
        (hook("events = []"), "webhooks[0].events"),
        (hook("timeout = \"2m\""), "webhooks[0].timeout"),
        (hook("retry_for = \"30d\""), "webhooks[0].retry_for"),
        (hook("retry_for = \"1m\"\nmax_retry_interval = \"1h\""), "webhooks[0].max_retry_interval"),
        (hook("name = \"has space\""), "webhooks[0].name"),
        (format!("{}{}", hook("name = \"a\""), hook("name = \"a\"")), "webhooks[1].name"),
        (hook("secret = \"whsec_inline\""), "webhooks[0].secret"),
    ] {
        let (ok, out) = check_with_secret(&format!("{table}\n{}", base()), OK_SECRET);
        assert!(!ok, "{table}");
        assert!(out.contains(field), "{table}: {out}");
    }
    // The secret must be set, and be one.
    let (ok, out) = check_with_secret(&format!("{}\n{}", hook("").replace("HOOK_SECRET", "NO_SUCH_VARIABLE"), base()), OK_SECRET);
    assert!(!ok && out.contains("gateway.toml:3: webhooks[0].secret_env") && out.contains("not set"), "{out}");
    let (ok, out) = check_with_secret(&format!("{}\n{}", hook(""), base()), "not-a-secret");
    assert!(!ok && out.contains("webhooks[0].secret_env") && out.contains("whsec_"), "{out}");
    assert!(!out.contains("not-a-secret"), "the secret's value is shown: {out}");
    let loopback = "[[webhooks]]\nurl = \"http://127.0.0.1:9000/k\"\nsecret_env = \"HOOK_SECRET\"\nevents = [\"key.leaked\"]\n";
    let (ok, out) = check_with_secret(&format!("{}{loopback}\n{}", hook("name = \"billing\""), base()), OK_SECRET);
    assert!(ok, "{out}");
}

#[test]
fn event_settings_are_checked() {
    refused_with(&[
        ("[events]\nexpiry_notice = [\"soon\"]", "gateway.toml:2: events.expiry_notice"),
        ("[events]\nexpiry_notice = [\"0s\"]", "events.expiry_notice"),
        ("[events]\nquota_thresholds = [0]", "events.quota_thresholds"),
        ("[events]\nquota_thresholds = [101]", "events.quota_thresholds"),
        ("[events]\ncredits_low = \"ten\"", "events.credits_low"),
        ("[events]\ncredits_low = \"150%\"", "events.credits_low"),
        ("[events]\ncredits_low = -1", "events.credits_low"),
        ("[events]\ncheck_interval = \"0s\"", "events.check_interval"),
        ("[events]\nnotify = true", "events.notify"),
    ]);
    let fine = "[events]\nexpiry_notice = [\"30d\", \"1h\"]\nquota_thresholds = [50, 90, 100]\ncredits_low = 25\n";
    let (ok, out) = check(&format!("{fine}\n{}", base()));
    assert!(ok, "{out}");
}

#[test]
fn deny_lists_are_checked_and_a_deny_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-deny.txt");
    std::fs::write(&bad, "# ok so far\n203.0.113.0/24\n203.0.113.999\n").unwrap();
    let with_server = |extra: &str| base().replacen("[[upstreams]]", &format!("[server]\n{extra}\n\n[[upstreams]]"), 1);
    for (text, want) in [
        (with_server("deny = [\"10.0.0.0/8\", \"nope\"]"), "server.deny[1]".to_string()),
        (with_server(&format!("deny_file = \"{}\"", bad.display())), format!("server.deny_file: {}: line 3:", bad.display())),
        (with_server("deny_file = \"/nonexistent/deny.txt\""), "server.deny_file".to_string()),
        (
            base().replacen("match = \"GET /api/ping\"", "match = \"GET /api/ping\"\ndeny = [\"300.1.2.3\"]", 1),
            "routes[".to_string(),
        ),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "{text}");
        assert!(out.contains(&want), "want {want}: {out}");
    }
}

#[test]
fn shadow_settings_are_checked() {
    for (text, want) in [
        (base().replacen("match = \"GET /api/ping\"", "match = \"GET /api/ping\"\nshadow = true", 1), "routes["),
        (format!("{}\n[plans.trial]\nper_minute = 5\nshadow = \"yes\"\n", base()), "plans.trial.shadow"),
        (format!("{}\n[plans.trial]\nper_minute = 5\nshdow = true\n", base()), "plans.trial.shdow"),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "{text}");
        assert!(out.contains(want), "want {want}: {out}");
    }
    let (ok, out) = check(&format!("{}\n[plans.trial]\nper_minute = 5\nshadow = true\n", base()));
    assert!(ok, "{out}");
}

#[test]
fn the_failed_credential_guard_is_checked() {
    refused_with(&[
        ("[abuse]\nfailed_credentials = { per_minute = 0 }", "gateway.toml:2: abuse.failed_credentials.per_minute"),
        ("[abuse]\nfailed_credentials = { per_minute = 5, block_for = \"2d\" }", "abuse.failed_credentials.block_for"),
        ("[abuse]\nfailed_credentials = { per_minute = 5, block_for = \"soon\" }", "abuse.failed_credentials.block_for"),
        ("[abuse]\nfailed_credentials = { per_minute = 5, blok_for = \"1m\" }", "abuse.failed_credentials.blok_for"),
    ]);
    let (ok, out) = check(&format!("[abuse]\nfailed_credentials = {{ per_minute = 30 }}\n{}", base()));
    assert!(ok, "{out}");
}

#[test]
fn a_cost_header_is_checked() {
    let on = |pattern: &str, value: &str| {
        base().replacen(&format!("match = \"{pattern}\""), &format!("match = \"{pattern}\"\ncost_header = {value}"), 1)
    };
    let send = "POST /api/broadcasts/{id}/send";
    for (text, want) in [
        (on(send, "\"X Cost\""), "cost_header: `X Cost` is not a header field name"),
        (on(send, "\"Content-Length\""), "cost_header: `Content-Length` carries the answer itself"),
        (on(send, "5"), "cost_header"),
        (on("GET /api/ping", "\"X-Keygate-Cost\""), "cost_header: a public route has no key to charge"),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "{text}");
        assert!(out.contains(want) && out.contains("routes["), "want {want}: {out}");
    }
    let (ok, out) = check(&on(send, "\"X-Keygate-Cost\""));
    assert!(ok, "{out}");
}

#[test]
fn a_websocket_route_must_take_gets() {
    let on = |pattern: &str, value: &str| {
        base().replacen(&format!("match = \"{pattern}\""), &format!("match = \"{pattern}\"\nwebsocket = {value}"), 1)
    };
    let send = "POST /api/broadcasts/{id}/send";
    for (text, want) in [
        (on(send, "true"), "websocket: a WebSocket handshake is a GET: the route must match GET or *"),
        (on(send, "\"yes\""), "websocket"),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "{text}");
        assert!(out.contains(want) && out.contains("routes["), "want {want}: {out}");
    }
    for fine in [on(send, "false"), on("GET /api/ping", "true")] {
        let (ok, out) = check(&fine);
        assert!(ok, "{out}");
    }
}

#[test]
fn in_flight_limits_are_checked() {
    let with_limits = |extra: &str| base().replacen("[[upstreams]]", &format!("[rate_limit]\n{extra}\n\n[[upstreams]]"), 1);
    for (text, want) in [
        (with_limits("max_in_flight = 0"), "rate_limit.max_in_flight: must be a whole number"),
        (with_limits("max_in_flight = 5\nslot_ttl = \"1s\""), "rate_limit.slot_ttl: must be from 3s to 1h"),
        (with_limits("slot_ttl = \"forever\""), "rate_limit.slot_ttl"),
        (format!("{}\n[plans.trial]\nper_minute = 5\nmax_in_flight = -1\n", base()), "plans.trial.max_in_flight"),
    ] {
        let (ok, out) = check(&text);
        assert!(!ok, "{text}");
        assert!(out.contains(want), "want {want}: {out}");
    }
    let (ok, out) = check(&format!("{}\n[plans.trial]\nper_minute = 5\nmax_in_flight = 2\n", with_limits("max_in_flight = 10")));
    assert!(ok, "{out}");
}

#[test]
fn a_route_that_could_never_apply_is_refused_naming_both() {
    let dup = format!("{}\n[[routes]]\nmatch = \"GET  /api/lists/{{list}}\"\npermission = \"lists.create\"\n", base());
    let dir = tempfile::tempdir().unwrap();
    let s = Setup::with_text(dir, &dup, free_port(), free_port());
    let out = s.cli(&["config", "check"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("routes[8].match: `GET /api/lists/{list}` matches what routes[2] does"), "{text}");
    // Another method, or another shape, is another route.
    for fine in ["POST /api/lists/{list}", "GET /api/lists/{list}/members", "* /api/lists/{list}"] {
        let (ok, out) = check(&format!("{}\n[[routes]]\nmatch = \"{fine}\"\npermission = \"lists.view\"\n", base()));
        assert!(ok, "{fine}: {out}");
    }
}

#[test]
fn a_bad_upstream_is_reported_once_not_by_every_route_after_it() {
    let text = base().replacen("url = \"http://127.0.0.1:9000\"", "url = \"127.0.0.1:9000\"", 1);
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(out.contains("upstreams[0].url: must be absolute"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(".toml:")).count(), 1, "one problem, its root: {out}");
    // A route naming an upstream nobody declared is still reported.
    let (ok, out) = check(&base().replacen("match = \"GET /api/ping\"", "match = \"GET /api/ping\"\nupstream = \"nowhere\"", 1));
    assert!(!ok && out.contains("no upstream named `nowhere`"), "{out}");
}
