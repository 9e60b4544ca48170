//! Request policy that needs no store: path normalisation, route matching,
//! client IP and allowlists, permission matching.

pub mod cors;
pub mod hosts;
pub mod ip;
pub mod path;
pub mod permissions;
pub mod routes;
