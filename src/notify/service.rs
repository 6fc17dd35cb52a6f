//! The notification service's operations for the HTTP API, the inbox page
//! and the CLI: each states its own transaction (one write, or one read
//! snapshot), so callers above never open one or see SQL. Users, tokens and
//! sessions are here too: recipients are the notification service's users.

use super::delivery::views::{self, ConsoleEmail, DeliveryRecord, DeliveryView};
use super::digest;
use super::error;
use super::error::NotifyError;
use super::event_view::{self, EventView};
use super::inbox::{self, Archived, BulkAction, Cursor, Item, Page};
use super::outbox::{self, NotCancelled, ResultRow};
use super::peers;
use super::preferences::{self, TypePreferences};
use super::quiet_hours::{SettingsChange, UserView};
use super::registry::{Channel, Registry};
use crate::metrics::QueueGauges;
use crate::store::users::{self, User};
use crate::store::{sessions, Store, StoreError, StoreResult};

/// One page of `user_id`'s inbox, newest first.
pub fn inbox_page(
    store: &Store,
    user_id: &str,
    cursor: Option<Cursor>,
    limit: usize,
    unread_only: bool,
    archived: Archived,
) -> StoreResult<Page> {
    store.read(|c| inbox::list(c, user_id, cursor, limit, unread_only, archived))
}

/// The inbox page's view, from one snapshot: a page, the unseen count and
/// the newest id (where the page's live stream starts).
pub fn inbox_overview(
    store: &Store,
    user_id: &str,
    cursor: Option<Cursor>,
    limit: usize,
) -> StoreResult<(Page, i64, i64)> {
    store.snapshot(|c| {
        Ok((
            inbox::list(c, user_id, cursor, limit, false, Archived::Exclude)?,
            inbox::unseen_count(c, user_id)?,
            inbox::newest_id(c, user_id)?,
        ))
    })
}

pub fn unseen_count(store: &Store, user_id: &str) -> StoreResult<i64> {
    store.read(|c| inbox::unseen_count(c, user_id))
}

/// Marks one of the user's rows seen, or read (which implies seen).
pub fn mark(store: &Store, user_id: &str, id: i64, read: bool) -> StoreResult<()> {
    store.write(|tx| inbox::mark(tx, user_id, id, read))
}

pub fn mark_all_seen(store: &Store, user_id: &str) -> StoreResult<usize> {
    store.write(|tx| inbox::mark_all_seen(tx, user_id))
}

pub fn mark_all_read(store: &Store, user_id: &str) -> StoreResult<usize> {
    store.write(|tx| inbox::mark_all_read(tx, user_id))
}

/// Archives one of the user's rows: one write transaction.
pub fn archive(store: &Store, user_id: &str, id: i64) -> StoreResult<()> {
    store.write(|tx| inbox::archive(tx, user_id, id))
}

pub fn unarchive(store: &Store, user_id: &str, id: i64) -> StoreResult<()> {
    store.write(|tx| inbox::unarchive(tx, user_id, id))
}

/// The longest snooze: a year and a day, so "this time next year" fits.
pub const MAX_SNOOZE_MS: i64 = 366 * 24 * 3600 * 1000;

/// Snoozes one of the user's rows until `until` (in the future, at most
/// `MAX_SNOOZE_MS` ahead): one write transaction. The caller wakes the
/// scheduler, whose sleep the snooze's end may now bound.
pub fn snooze(store: &Store, user_id: &str, id: i64, until: i64) -> Result<(), NotifyError> {
    let now = store.clock().now_ms();
    if until <= now {
        return Err(error::invalid("until", "must be in the future"));
    }
    if until - now > MAX_SNOOZE_MS {
        return Err(error::invalid("until", "must be at most 366 days ahead"));
    }
    Ok(store.write(|tx| inbox::snooze(tx, user_id, id, until))?)
}

/// The inbox page's snooze buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnoozeFor {
    /// An hour from now.
    Hour,
    /// Tomorrow at 09:00 in the user's time zone (UTC without one).
    Tomorrow,
}

impl SnoozeFor {
    pub fn parse(s: &str) -> Option<SnoozeFor> {
        match s {
            "hour" => Some(SnoozeFor::Hour),
            "tomorrow" => Some(SnoozeFor::Tomorrow),
            _ => None,
        }
    }
}

/// When a snooze button's snooze ends, for `user` now.
pub fn snooze_end(store: &Store, user: User, choice: SnoozeFor) -> StoreResult<i64> {
    let now = store.clock().now_ms();
    if choice == SnoozeFor::Hour {
        return Ok(now + 3_600_000);
    }
    let zone = user_view(store, user)?
        .timezone
        .and_then(|name| jiff::tz::TimeZone::get(&name).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let morning = jiff::Timestamp::from_millisecond(now)
        .ok()
        .map(|t| t.to_zoned(zone))
        .and_then(|z| z.date().tomorrow().ok().map(|d| (d, z.time_zone().clone())))
        .and_then(|(d, tz)| d.at(9, 0, 0, 0).to_zoned(tz).ok())
        .map(|z| z.timestamp().as_millisecond());
    // Only an out-of-range clock could fail; a day is then close enough.
    Ok(morning.unwrap_or(now + 86_400_000))
}

/// The rows a bulk action names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkTarget {
    Ids(Vec<i64>),
    All,
}

/// Applies a bulk action in one write transaction; returns how many rows
/// changed. `All` covers the rows the action can change: every unseen
/// (unread) row for seen (read), the inbox for archive.
pub fn bulk(
    store: &Store,
    user_id: &str,
    action: BulkAction,
    target: &BulkTarget,
) -> StoreResult<usize> {
    store.write(|tx| match (target, action) {
        (BulkTarget::Ids(ids), _) => inbox::bulk_ids(tx, user_id, action, ids),
        (BulkTarget::All, BulkAction::Seen) => inbox::mark_all_seen(tx, user_id),
        (BulkTarget::All, BulkAction::Read) => inbox::mark_all_read(tx, user_id),
        (BulkTarget::All, BulkAction::Archive) => inbox::archive_all(tx, user_id),
    })
}

pub fn delete_row(store: &Store, user_id: &str, id: i64) -> StoreResult<()> {
    store.write(|tx| inbox::delete(tx, user_id, id))
}

/// What the live stream sends next: the user's rows above `after`.
pub fn inbox_after(
    store: &Store,
    user_id: &str,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<(i64, Item)>> {
    store.read(|c| inbox::after(c, user_id, after, limit))
}

/// Where a stream opened without `Last-Event-ID` starts.
/// One of the user's rows back from a snooze, if it is in the inbox now.
pub fn inbox_returned(store: &Store, user_id: &str, id: i64) -> StoreResult<Option<Item>> {
    store.read(|c| inbox::in_inbox(c, user_id, id))
}

pub fn newest_inbox_id(store: &Store, user_id: &str) -> StoreResult<i64> {
    store.read(|c| inbox::newest_id(c, user_id))
}

/// An event with its result and every delivery.
pub fn event(store: &Store, id: &str) -> StoreResult<EventView> {
    store.snapshot(|c| event_view::view(c, id))
}

/// Cancels an event not yet dispatched (scheduled, or still waiting for
/// the dispatcher) and returns it, in one write transaction; an event
/// already cancelled is returned as it is. `Conflict` once it was
/// dispatched or failed: the claim and the cancel both need it pending,
/// so it is one or the other, never both.
pub fn cancel_event(store: &Store, id: &str) -> Result<EventView, NotifyError> {
    let cancelled = store.write(|tx| {
        if digest::is_release(tx, outbox::by_id(tx, id)?.seq)? {
            return Ok(Err(NotCancelled::Digest));
        }
        match outbox::cancel(tx, id)? {
            Ok(()) => Ok(Ok(event_view::view(tx, id)?)),
            Err(refused) => Ok::<_, StoreError>(Err(refused)),
        }
    })?;
    cancelled.map_err(|refused| {
        NotifyError::Conflict(match refused {
            NotCancelled::Finished(status) => {
                format!("event {id} is {status}; only an event not yet dispatched can be cancelled")
            }
            NotCancelled::Domain => format!("event {id} is a domain event; it cannot be cancelled"),
            NotCancelled::Digest => {
                format!("event {id} is a released digest; its events were accepted already")
            }
        })
    })
}

/// Cancels every event not yet dispatched that carries `key`, in one write
/// transaction; how many.
pub fn cancel_by_key(store: &Store, key: &str) -> StoreResult<usize> {
    store.write(|tx| outbox::cancel_by_key(tx, key))
}

/// The `limit` notification events dispatched last, newest first.
pub fn latest_results(store: &Store, limit: usize) -> StoreResult<Vec<ResultRow>> {
    store.read(|c| outbox::latest_results(c, limit))
}

/// One page of deliveries, oldest first, optionally of one status.
pub fn deliveries(
    store: &Store,
    status: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    store.read(|c| views::list(c, status, after, limit))
}

/// How many deliveries are in each status.
pub fn delivery_counts(store: &Store) -> StoreResult<Vec<(&'static str, i64)>> {
    store.read(views::counts)
}

/// Re-arms a dead or failed delivery (with its batch) for a fresh round of
/// attempts, due now; `Conflict` for one in any other state. A running
/// server's scheduler picks it up at its next look.
/// Every instance's scheduler hears of it on commit (`peers::wake_all`).
pub fn rearm(store: &Store, id: &str) -> Result<DeliveryView, NotifyError> {
    let rearmed = store.write(|tx| {
        let rearmed = views::rearm(tx, id)?;
        if rearmed.is_ok() {
            peers::wake_all(tx)?;
        }
        Ok::<_, StoreError>(rearmed)
    })?;
    rearmed.map_err(|status| {
        NotifyError::Conflict(format!(
            "delivery {id} is {status}; only dead or failed deliveries can be retried"
        ))
    })
}

/// Re-arms every dead delivery; how many.
pub fn rearm_dead(store: &Store) -> StoreResult<usize> {
    store.write(|tx| {
        let rearmed = views::rearm_dead(tx)?;
        if rearmed > 0 {
            peers::wake_all(tx)?;
        }
        Ok(rearmed)
    })
}

/// The newest emails the console provider sent (`/dev/mail`).
pub fn console_sent(store: &Store, limit: usize) -> StoreResult<Vec<ConsoleEmail>> {
    store.read(|c| views::console_sent(c, limit))
}

pub fn queue_gauges(store: &Store) -> StoreResult<QueueGauges> {
    store.snapshot(super::stats::queue_gauges)
}

pub fn preferences(
    store: &Store,
    user_id: &str,
    registry: &Registry,
) -> StoreResult<Vec<TypePreferences>> {
    store.read(|c| preferences::list(c, user_id, registry))
}

pub fn set_preference(
    store: &Store,
    user_id: &str,
    kind: &str,
    channel: Channel,
    enabled: bool,
) -> StoreResult<()> {
    store.write(|tx| preferences::set(tx, user_id, kind, channel, enabled))
}

/// Creates or updates a user and applies `change` to their settings, in
/// one transaction; true when the user is new, and the user as saved.
pub fn save_user(
    store: &Store,
    user: &User,
    change: &SettingsChange,
) -> StoreResult<(bool, UserView)> {
    store.write(|tx| {
        let created = users::upsert(tx, user)?;
        apply_settings(tx, &user.id, change)?;
        Ok((
            created,
            UserView::new(user.clone(), users::settings_of(tx, &user.id)?),
        ))
    })
}

/// A user with their settings, as `GET /v1/me` shows them.
pub fn user_view(store: &Store, user: User) -> StoreResult<UserView> {
    let settings = store.read(|c| users::settings_of(c, &user.id))?;
    Ok(UserView::new(user, settings))
}

/// Applies `change` to an existing user's settings, in one transaction;
/// the user as saved. A change takes effect for emails dispatched after it
/// (and for held emails, when they are released).
pub fn change_settings(
    store: &Store,
    user: User,
    change: &SettingsChange,
) -> StoreResult<UserView> {
    let settings = store.write(|tx| {
        apply_settings(tx, &user.id, change)?;
        users::settings_of(tx, &user.id)
    })?;
    Ok(UserView::new(user, settings))
}

fn apply_settings(tx: &crate::store::Tx<'_>, id: &str, change: &SettingsChange) -> StoreResult<()> {
    if let Some(timezone) = &change.timezone {
        users::set_timezone(tx, id, timezone.as_deref())?;
    }
    if let Some(window) = change.quiet_hours {
        users::set_quiet_hours(tx, id, window)?;
    }
    if let Some(locale) = &change.locale {
        users::set_locale(tx, id, locale.as_deref())?;
    }
    Ok(())
}

/// A new API token for an existing user (the secret, shown once);
/// `NotFound` for an unknown user.
pub fn issue_token(store: &Store, user_id: &str) -> StoreResult<String> {
    store.write(|tx| {
        if !users::exists(tx, user_id)? {
            return Err(StoreError::NotFound);
        }
        users::issue_token(tx, user_id)
    })
}

/// Revokes every token and session of an existing user: (tokens,
/// sessions) ended; `NotFound` for an unknown user.
pub fn revoke_access(store: &Store, user_id: &str) -> StoreResult<(usize, usize)> {
    store.write(|tx| {
        if !users::exists(tx, user_id)? {
            return Err(StoreError::NotFound);
        }
        Ok((
            users::revoke_tokens(tx, user_id)?,
            sessions::delete_for_user(tx, user_id)?,
        ))
    })
}

/// The user a bearer token belongs to, if any.
pub fn user_by_token(store: &Store, token: &str) -> StoreResult<Option<User>> {
    store.read(|c| users::by_token(c, token))
}

/// The user of a live session, if the secret names one.
pub fn session_user(store: &Store, secret: &str) -> StoreResult<Option<User>> {
    store.read(|c| sessions::user(c, secret))
}

/// Starts a session for `user_id`; the secret for the cookie.
pub fn start_session(store: &Store, user_id: &str) -> StoreResult<String> {
    store.write(|tx| sessions::create(tx, user_id))
}

/// Ends a session; unknown secrets are ignored.
pub fn end_session(store: &Store, secret: &str) -> StoreResult<()> {
    store.write(|tx| sessions::delete(tx, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args;
    use crate::notify::event::Event;
    use crate::store::Synchronous;

    #[test]
    fn only_a_pending_event_the_caller_sent_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db"), Synchronous::Normal).unwrap();
        let enqueue = || {
            let event = Event::new("t", vec![], serde_json::json!({}));
            store.write(|tx| outbox::enqueue(tx, &event)).unwrap()
        };
        let plain = enqueue();
        let released = enqueue();
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO digests (type, batch_type, recipient_key, recipient, digest_key,
                                          channels, opened_at, due_at, status, flushed_seq)
                     VALUES ('t', 'tb', 'u', '\"u\"', 'k', '[]', 0, 0, 'flushed', ?1)",
                    args![released.seq],
                )
            })
            .unwrap();

        let view = cancel_event(&store, &plain.id).unwrap();
        assert_eq!(view.status, "cancelled");
        assert_eq!(cancel_event(&store, &plain.id).unwrap().status, "cancelled");
        let refused = cancel_event(&store, &released.id);
        assert!(
            matches!(&refused, Err(NotifyError::Conflict(m)) if m.contains("released digest")),
            "{refused:?}"
        );
        assert!(matches!(
            cancel_event(&store, "evt_nope"),
            Err(NotifyError::Store(StoreError::NotFound))
        ));
        let status: String = store
            .read(|c| {
                c.query_one(
                    "SELECT status FROM outbox WHERE seq = ?1",
                    args![released.seq],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(status, "pending");
    }
}
