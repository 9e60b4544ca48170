//! What each node keeps in memory in front of the store: keys read through
//! and cached by token hash (`keys`), every role swapped whole (`roles`),
//! and usage counted on the request path and written behind in batches
//! (`usage`). The change feed (see [`crate::state`]) keeps them current.

pub mod keys;
pub mod roles;
pub mod usage;

pub use keys::{KeyCache, Origin};
pub use roles::RoleSet;
pub use usage::UsageRecorder;
