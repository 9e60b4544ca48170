//! API keys: what a key is (`model`), how tokens look and are hashed
//! (`token`), and the per-node cache that keeps the hot path off the store
//! (`cache`, `roles`, `usage`).

pub mod cache;
pub mod model;
pub mod roles;
pub mod token;
pub mod usage;
