//! Queue gauges for `/metrics`, read from the database at scrape time so they
//! hold across restarts: deliveries by status, pending, scheduled, retrying
//! and held depth, and the age of the oldest waiting item. Read-only; uses the partial
//! indexes the dispatcher and scheduler already rely on.

use crate::args;
use crate::store::Conn;

use crate::metrics::QueueGauges;
use crate::store::StoreResult;

pub fn queue_gauges(conn: &Conn<'_>) -> StoreResult<QueueGauges> {
    let now = conn.now_ms();
    let age = |oldest: Option<i64>| oldest.map(|at| (now - at) as f64 / 1000.0);
    let deliveries = conn.query_all(
        "SELECT channel, status, COUNT(*) FROM deliveries GROUP BY channel, status
         ORDER BY channel, status",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    // An event scheduled for later is not behind: it waits from its due
    // time, and until then counts apart.
    let (outbox_pending, oldest_outbox): (i64, Option<i64>) = conn.query_one(
        "SELECT COUNT(*), MIN(COALESCE(due_at, created_at)) FROM outbox
         WHERE status = 'pending' AND (due_at IS NULL OR due_at <= ?1)",
        args![now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let outbox_scheduled: i64 = conn.query_one(
        "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND due_at IS NOT NULL
         AND due_at > ?1",
        args![now],
        |r| r.get(0),
    )?;
    let (email_pending, oldest_email): (i64, Option<i64>) = conn.query_one(
        "SELECT COUNT(*), MIN(created_at) FROM deliveries WHERE status = 'pending'",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let retry_queue: i64 = conn.query_one(
        "SELECT COUNT(*) FROM deliveries WHERE status = 'retrying'",
        args![],
        |r| r.get(0),
    )?;
    let held: i64 = conn.query_one(
        "SELECT COUNT(*) FROM deliveries WHERE status = 'held'",
        args![],
        |r| r.get(0),
    )?;
    let [pending, stopped, active, disabled] = super::webhooks::outbox::gauges(conn)?;
    Ok(QueueGauges {
        deliveries,
        outbox_pending,
        outbox_scheduled,
        email_pending,
        retry_queue,
        held,
        oldest_outbox_pending_secs: age(oldest_outbox),
        oldest_email_pending_secs: age(oldest_email),
        bus_len: 0,
        senders_len: 0,
        database_bytes: 0,
        wal_bytes: 0,
        webhook_messages: [pending, stopped],
        webhook_endpoints: [active, disabled],
    })
}
