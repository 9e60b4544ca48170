//! Every integration test in one crate: each file is a module (named as
//! the file it was), so a change to keygate links one test binary, not one
//! per file. `cargo test --test it <module>::` runs one file's tests.
//! What the tests share is in `common/`.

mod common;

mod abuse;
mod admin_api;
mod admin_scopes;
mod cli;
mod client_http1;
mod config_check;
mod console;
mod correlation;
mod cors;
mod demo;
mod deploy_kit;
mod docs;
mod edge_policy;
mod edge_timeouts;
mod fuzz;
mod harness;
mod in_flight;
mod leak_reports;
mod listener;
mod management_races;
mod module_graph;
mod paths;
mod quotas;
mod realtime;
mod redis_cluster;
mod redis_faults;
mod redis_limits;
mod redis_nodes;
mod redis_quotas;
mod redis_tls;
mod reported_cost;
mod request_path;
mod runtime_changes;
mod shadow;
mod shutdown;
mod sqlite_locks;
mod store_conformance;
mod tracing_export;
mod transfer;
mod upstream_framing;
mod upstreams;
mod webhooks;
mod websocket;
