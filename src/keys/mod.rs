//! API keys: what a key and a role are (`model`), and how tokens look and
//! are hashed (`token`). What a node caches of them is [`crate::cache`].

pub mod model;
pub mod token;
