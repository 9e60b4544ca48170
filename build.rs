//! Turns `KEYGATE_TEST_SKIP` (say `redis,browser`) into `skip_<what>` cfgs,
//! so each integration test that needs what is named is compiled as
//! ignored, and the test summary counts it as such, never as `ok`. Never
//! under `CI=true`, where nothing may be skipped (tests/it/common's
//! `may_skip` fails a test whose dependency is missing).

/// What a developer may name; a test marks itself with `skip_<what>`.
const SKIPPABLE: [&str; 4] = ["redis", "browser", "promtool", "k8s"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=KEYGATE_TEST_SKIP");
    println!("cargo::rerun-if-env-changed=CI");
    for what in SKIPPABLE {
        println!("cargo::rustc-check-cfg=cfg(skip_{what})");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return;
    }
    let named = std::env::var("KEYGATE_TEST_SKIP").unwrap_or_default();
    for what in named.split(',').map(str::trim).filter(|w| SKIPPABLE.contains(w)) {
        println!("cargo::rustc-cfg=skip_{what}");
    }
}
