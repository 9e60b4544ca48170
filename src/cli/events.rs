//! `keygate events ...`: the outbox's events and deliveries, and replaying
//! them to an endpoint that lost some.

use super::output::{print_json, print_table, Failure};
use crate::events::{DeliveryQuery, EventQuery};
use crate::manage::Manager;
use clap::Subcommand;
use serde_json::json;

/// `keygate events` subcommands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events, newest first.
    List {
        #[arg(long)]
        key_id: Option<String>,
        /// An event type, like key.disabled.
        #[arg(long = "type")]
        kind: Option<String>,
        /// A time (2026-12-07T10:00:00Z) or a span back from now (24h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Deliveries to the [[webhooks]] endpoints, newest first.
    Deliveries {
        /// pending, failed, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        webhook: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send again every event since a time (dead, delivered, or never
    /// taken), to one endpoint or all, with their first webhook-id.
    Replay {
        /// A time (2026-12-07T10:00:00Z) or a span back from now (24h).
        #[arg(long)]
        since: String,
        #[arg(long)]
        webhook: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(m: &Manager<'_>, command: EventsCommand) -> Result<(), Failure> {
    match command {
        EventsCommand::List { key_id, kind, since, limit, json } => {
            let since_ms =
                since.map(|s| crate::manage::since_ms("since", &s)).transpose().map_err(|e| Failure::manage(e, json))?;
            let events = m.events(EventQuery { key_id, kind, since_ms, limit }).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(events.iter().map(|e| e.json()).collect::<Vec<_>>().into(), json!({ "count": events.len() }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| vec![crate::clock::rfc3339(e.at_ms / 1000), e.kind.clone(), e.key_id.clone(), e.id.clone()])
                .collect();
            print_table(&["WHEN", "TYPE", "KEY", "ID"], &rows);
        }
        EventsCommand::Deliveries { status, webhook, limit, json } => {
            let status = status.map(|s| crate::manage::delivery_status(&s)).transpose().map_err(|e| Failure::manage(e, json))?;
            let query = DeliveryQuery { webhook, status, key_id: None, limit };
            let deliveries = m.deliveries(query).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(deliveries.iter().map(|d| d.json()).collect::<Vec<_>>().into(), json!({ "count": deliveries.len() }));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = deliveries
                .iter()
                .map(|d| {
                    let last = d.log.last().and_then(|a| a.error.clone()).unwrap_or_default();
                    vec![
                        d.webhook.clone(),
                        d.event.kind.clone(),
                        d.event.id.clone(),
                        d.status.as_str().into(),
                        d.attempts.to_string(),
                        last,
                    ]
                })
                .collect();
            print_table(&["WEBHOOK", "TYPE", "EVENT", "STATUS", "ATTEMPTS", "LAST ERROR"], &rows);
        }
        EventsCommand::Replay { since, webhook, json } => {
            let since_ms = crate::manage::since_ms("since", &since).map_err(|e| Failure::manage(e, json))?;
            let opened = m.replay(webhook.as_deref(), since_ms).await.map_err(|e| Failure::manage(e, json))?;
            if json {
                print_json(json!({ "opened": opened }), json!({}));
            } else {
                println!("{opened} deliver{} opened again; a running gateway sends them", if opened == 1 { "y" } else { "ies" });
            }
        }
    }
    Ok(())
}
