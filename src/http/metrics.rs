//! `GET /metrics`: the counters plus queue gauges and file sizes read now,
//! in the Prometheus text format. Unauthenticated, like `/healthz`, so a
//! Prometheus scraper needs no secret.

use super::ctx::Ctx;
use super::error::ApiError;
use super::response::Reply;
use crate::metrics::METRICS;
use crate::notify::service;

pub fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    let mut gauges = service::queue_gauges(ctx.notifier.store())?;
    gauges.bus_len = ctx.notifier.bus_len();
    gauges.senders_len = ctx.notifier.mail_queue_len();
    let disk = ctx.notifier.store().disk_usage();
    gauges.database_bytes = disk.db;
    gauges.wal_bytes = disk.wal;
    Ok(Reply::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        METRICS.render(&gauges),
    ))
}
