//! Addresses the failed-credential guard blocked: listed, and lifted by
//! an operator (on every node, at its next sweep).

use super::{invalid, ManageError, Manager};
use serde_json::{json, Value};

impl Manager<'_> {
    /// The blocks in force now: `{"address", "until"}`, by address.
    pub async fn blocks(&self) -> Result<Vec<Value>, ManageError> {
        let listed = self.store.list_blocks(crate::clock::now_ms()).await.map_err(ManageError::Store)?;
        Ok(listed
            .into_iter()
            .map(|(address, until)| json!({ "address": address, "until": crate::clock::rfc3339(until / 1000) }))
            .collect())
    }

    /// Lifts the block of `address` (audited as `block.remove`).
    pub async fn unblock(&self, address: &str) -> Result<(), ManageError> {
        let ip: std::net::IpAddr =
            address.parse().map_err(|_| invalid("address", format!("`{address}` is not an IP address")))?;
        if !self.store.remove_block(&ip.to_string()).await.map_err(ManageError::Store)? {
            return Err(ManageError::NotFound(format!("a block of {ip}")));
        }
        self.audit("block.remove", &ip.to_string(), Some(json!({ "address": ip.to_string() })), None).await;
        Ok(())
    }
}
