//! keygate: an API-key gateway. A reverse proxy that finds the API key in
//! each request, resolves it through a local cache backed by a store,
//! checks status, expiry, environment, IP allowlist, route permission and a
//! per-key rate limit, then forwards the request or refuses it with the
//! contract's JSON error. Start reading at [`pipeline`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod background;
pub mod body;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod correlation;
pub mod credentials;
pub mod decide;
pub mod demo;
pub mod envelope;
pub mod error;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http1;
pub mod keys;
pub mod leaks;
pub mod manage;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod realtime;
pub mod scanning;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod webhooks;
pub mod websocket;

/// The hasher of keygate's in-memory maps (key cache, limiter windows,
/// usage, metric children). Their keys are SHA-256 digests and ids that
/// operators or keygate chose, never strings a client picks to collide, so
/// a fast unkeyed hash does the job SipHash would do at several times the cost.
pub type FastHash = rustc_hash::FxBuildHasher;
