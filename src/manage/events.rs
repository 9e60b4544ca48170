//! What operators read of the outbox, and replaying it: the events, each
//! delivery's attempts, and sending again what a receiver lost.

use super::{invalid, ManageError, Manager};
use crate::events::{Delivery, DeliveryQuery, DeliveryStatus, EventKind, EventQuery, StoredEvent};

/// The most entries one listing answers with.
pub const MAX_LISTED: usize = 500;

/// A point in time as `since` takes it: RFC 3339 (`2026-12-07T10:00:00Z`)
/// or a span back from now (`30m`, `24h`, `7d`); Unix milliseconds.
pub fn since_ms(field: &str, text: &str) -> Result<i64, ManageError> {
    if let Ok(secs) = crate::clock::parse_rfc3339(text) {
        return Ok(secs.saturating_mul(1000));
    }
    match crate::config::parse_duration(text) {
        Ok(ago) => Ok(crate::clock::now_ms().saturating_sub(ago.as_millis().min(i64::MAX as u128) as i64)),
        Err(_) => Err(invalid(field, format!("`{text}` is neither a time like 2026-12-07T10:00:00Z nor a span like 24h"))),
    }
}

impl Manager<'_> {
    /// Events, newest first.
    pub async fn events(&self, mut query: EventQuery) -> Result<Vec<StoredEvent>, ManageError> {
        if let Some(kind) = &query.kind {
            EventKind::parse(kind).ok_or_else(|| invalid("type", format!("`{kind}` is not an event type")))?;
        }
        query.limit = query.limit.clamp(1, MAX_LISTED);
        self.store.list_events(&query).await.map_err(ManageError::Store)
    }

    /// Deliveries, newest first.
    pub async fn deliveries(&self, mut query: DeliveryQuery) -> Result<Vec<Delivery>, ManageError> {
        if let Some(name) = &query.webhook {
            self.webhook(name)?;
        }
        query.limit = query.limit.clamp(1, MAX_LISTED);
        self.store.list_deliveries(&query).await.map_err(ManageError::Store)
    }

    /// Sends again, to `webhook` or every endpoint, every event of its
    /// types written since `since_ms` (the dead, the delivered, and those
    /// it never took); how many deliveries were opened.
    pub async fn replay(&self, webhook: Option<&str>, since_ms: i64) -> Result<u64, ManageError> {
        let hooks: Vec<&crate::config::Webhook> = match webhook {
            Some(name) => vec![self.webhook(name)?],
            None => self.config.webhooks.iter().collect(),
        };
        if hooks.is_empty() {
            return Err(invalid("webhook", "the config has no [[webhooks]]"));
        }
        let mut opened = 0;
        for hook in hooks {
            opened += self.store.replay(&hook.name, &hook.events, since_ms).await.map_err(ManageError::Store)?;
        }
        self.audit(
            "events.replay",
            webhook.unwrap_or("*"),
            None,
            Some(serde_json::json!({ "since": since_ms, "opened": opened })),
        )
        .await;
        Ok(opened)
    }

    fn webhook(&self, name: &str) -> Result<&crate::config::Webhook, ManageError> {
        self.config.webhooks.iter().find(|w| w.name == name).ok_or_else(|| ManageError::NotFound(format!("webhook `{name}`")))
    }
}

/// A delivery status as a query gives it.
pub fn delivery_status(text: &str) -> Result<DeliveryStatus, ManageError> {
    DeliveryStatus::parse(text).ok_or_else(|| invalid("status", "must be pending, failed, delivered or dead"))
}
