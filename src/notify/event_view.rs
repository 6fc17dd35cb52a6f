//! What `GET /v1/events/{id}` shows of one event: its outbox row and
//! result, every delivery on every channel, and the digests holding it.
//! Reads only, each from the module that owns the table.

use serde::Serialize;

use super::delivery::views::{self, DeliveryView};
use super::digest::{self, HeldView};
use super::outbox::{self, DispatchResult};
use super::{inbox, topics};
use crate::store::{Conn, StoreResult};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The outbox status, except that a pending event due later reads
    /// `scheduled`.
    pub status: String,
    pub created_at: String,
    /// When it is due, for an event given `sendAt`.
    pub send_at: Option<String>,
    pub cancellation_key: Option<String>,
    pub result: Option<DispatchResult>,
    pub error: Option<String>,
    pub deliveries: Vec<DeliveryView>,
    /// Digests holding this event (absent when it was not digested).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<HeldView>,
    /// True while the event's topics are still being expanded, a page at a
    /// time (absent otherwise): its result grows until then.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fan_out_pending: bool,
}

/// An event with its result and every delivery, for the API.
pub fn view(conn: &Conn<'_>, id: &str) -> StoreResult<EventView> {
    let row = outbox::by_id(conn, id)?;
    let mut deliveries = inbox::deliveries_of(conn, row.seq)?;
    deliveries.extend(views::deliveries_of(conn, row.seq)?);
    let ahead = row.due_at.is_some_and(|at| at > conn.now_ms());
    Ok(EventView {
        id: id.to_string(),
        kind: row.kind,
        status: match row.status.as_str() {
            "pending" if ahead => "scheduled".to_string(),
            _ => row.status,
        },
        created_at: crate::time::rfc3339(row.created_at),
        send_at: row.due_at.map(crate::time::rfc3339),
        cancellation_key: row.cancellation_key,
        result: row.result,
        error: row.error,
        deliveries,
        digests: digest::held_views(conn, row.seq)?,
        fan_out_pending: topics::fanout_pending(conn, row.seq)?,
    })
}
