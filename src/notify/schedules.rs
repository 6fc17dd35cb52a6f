//! Recurring schedules (`/v1/schedules`, SPEC 9): the `schedules` table and
//! its operations, each stating its transaction, and the scheduler's hook
//! that runs the due ones. A run is one write transaction that enqueues the
//! event under the key `schedule:<id>:<occurrence>` and advances the row, so
//! a crash, a restart or a second instance can neither lose nor repeat it;
//! occurrences missed while herald was down collapse into one run.

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{invalid, NotifyError};
use super::event::{Event, Recipient};
use super::outbox;
use super::peers;
use super::recurrence::Repeat;
use super::registry::Registry;
use crate::args;
use crate::ids;
use crate::store::{Conn, Row, Store, StoreError, StoreResult, Tx};
use crate::time::{parse_rfc3339, rfc3339};

/// Due schedules run per transaction, so a backlog never holds the write
/// lock for long.
const RUN_BATCH: usize = 100;
pub const MAX_PAGE: usize = 500;
/// How soon to look again at a due schedule another instance holds: it
/// commits within moments, and the scheduler must not spin meanwhile.
const LOOK_AGAIN_MS: i64 = 200;
/// How soon to try again after the database failed.
const AFTER_ERROR_MS: i64 = 5_000;

/// A schedule as `POST /v1/schedules` asks for it, parsed and checked for
/// shape (the registry and the users are checked by `create`).
#[derive(Debug)]
pub struct NewSchedule {
    /// Type, recipients, subject and payload of every run's event.
    pub event: Event,
    pub repeat: Repeat,
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
}

impl NewSchedule {
    /// Parses a request body, naming the first wrong field. The event's
    /// fields are read as `POST /v1/events` reads them.
    pub fn from_json(value: Value) -> Result<NewSchedule, NotifyError> {
        let Value::Object(mut obj) = value else {
            return Err(invalid("body", "expected a JSON object"));
        };
        // Each run's event has its own key and time; a schedule is
        // cancelled by deleting it.
        for (field, why) in [
            (
                "idempotencyKey",
                "each run's event has the key schedule:<id>:<run time>",
            ),
            ("sendAt", "each run's event is due at its run time"),
            ("cancellationKey", "delete the schedule to stop its runs"),
            ("actorId", "a schedule's runs are nobody's action"),
        ] {
            if obj.contains_key(field) {
                return Err(invalid(
                    field,
                    &format!("is not accepted on a schedule: {why}"),
                ));
            }
        }
        let repeat = obj.remove("repeat");
        let starts_at = instant(&mut obj, "startsAt")?;
        let ends_at = instant(&mut obj, "endsAt")?;
        let event = Event::from_json(Value::Object(obj))?;
        let repeat = match repeat {
            None | Some(Value::Null) => return Err(invalid("repeat", "is required")),
            Some(v) => Repeat::from_json(&v)?,
        };
        if let (Some(starts), Some(ends)) = (starts_at, ends_at) {
            if ends <= starts {
                return Err(invalid("endsAt", "must be after startsAt"));
            }
        }
        Ok(NewSchedule {
            event,
            repeat,
            starts_at,
            ends_at,
        })
    }
}

/// An optional RFC 3339 field.
fn instant(obj: &mut Map<String, Value>, field: &str) -> Result<Option<i64>, NotifyError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_rfc3339(&s)
            .map(Some)
            .ok_or_else(|| invalid(field, "expected an RFC 3339 timestamp with its offset")),
        Some(_) => Err(invalid(field, "expected an RFC 3339 timestamp string")),
    }
}

/// A schedule as the API shows it; times in RFC 3339.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub recipients: Value,
    pub subject_id: Option<String>,
    pub payload: Value,
    pub repeat: Value,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    /// None once the schedule has ended (its next occurrence is past
    /// `endsAt`).
    pub next_run_at: Option<String>,
    /// The occurrence the latest run stood for (its event's key names it).
    pub last_run_at: Option<String>,
    pub runs: i64,
    pub created_at: String,
}

const COLUMNS: &str = "id, type, recipients, payload, subject_id, repeat, starts_at, ends_at, \
                       next_run_at, last_run_at, runs, created_at";

fn from_row(r: &Row<'_>) -> StoreResult<Schedule> {
    let json = |i: usize| -> StoreResult<Value> {
        Ok(serde_json::from_str(&r.get::<String>(i)?).unwrap_or(Value::Null))
    };
    let time =
        |i: usize| -> StoreResult<Option<String>> { Ok(r.get::<Option<i64>>(i)?.map(rfc3339)) };
    Ok(Schedule {
        id: r.get(0)?,
        kind: r.get(1)?,
        recipients: json(2)?,
        payload: json(3)?,
        subject_id: r.get(4)?,
        repeat: json(5)?,
        starts_at: time(6)?,
        ends_at: time(7)?,
        next_run_at: time(8)?,
        last_run_at: time(9)?,
        runs: r.get(10)?,
        created_at: rfc3339(r.get(11)?),
    })
}

/// Checks `new` against the registry and the users, and stores it due at
/// its first occurrence at or after both now and `startsAt`, in one write
/// transaction that also wakes every instance's scheduler on commit. A
/// schedule that would never run (no occurrence before `endsAt`) is
/// refused.
pub fn create(
    store: &Store,
    registry: &Registry,
    new: &NewSchedule,
) -> Result<Schedule, NotifyError> {
    new.event.validate(registry)?;
    let recipients = serde_json::to_string(&new.event.recipients)
        .map_err(|e| NotifyError::Render(format!("cannot encode recipients: {e}")))?;
    let repeat = new.repeat.to_json();
    store.write(|tx| {
        super::topics::check_recipients(tx, &new.event.recipients)?;
        let now = tx.now_ms();
        let from = new.starts_at.map_or(now, |s| s.max(now));
        let ends = new.ends_at.unwrap_or(i64::MAX);
        let Some(next) = new
            .repeat
            .next_after(from.saturating_sub(1))
            .filter(|n| *n <= ends)
        else {
            let field = if new.ends_at.is_some() { "endsAt" } else { "startsAt" };
            return Err(invalid(field, "the schedule would never run: no occurrence before it ends"));
        };
        let id = ids::new_id("sch");
        tx.execute(
            &format!(
                "INSERT INTO schedules ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)"
            ),
            args![
                id,
                new.event.kind,
                recipients,
                new.event.payload.to_string(),
                new.event.subject_id,
                repeat.to_string(),
                new.starts_at,
                new.ends_at,
                next,
                None::<i64>,
                now
            ],
        )?;
        peers::wake_all(tx)?;
        Ok(Schedule {
            id,
            kind: new.event.kind.clone(),
            recipients: serde_json::from_str(&recipients).unwrap_or(Value::Null),
            subject_id: new.event.subject_id.clone(),
            payload: new.event.payload.clone(),
            repeat: repeat.clone(),
            starts_at: new.starts_at.map(rfc3339),
            ends_at: new.ends_at.map(rfc3339),
            next_run_at: Some(rfc3339(next)),
            last_run_at: None,
            runs: 0,
            created_at: rfc3339(now),
        })
    })
}

/// One page of schedules, newest first, after the id `before` (the last
/// of the previous page); one read.
pub fn list(store: &Store, before: Option<&str>, limit: usize) -> StoreResult<Vec<Schedule>> {
    // CAST: a parameter only tested for NULL has no type PostgreSQL can infer.
    store.read(|c| {
        c.query_all(
            &format!(
                "SELECT {COLUMNS} FROM schedules
                 WHERE (CAST(?1 AS TEXT) IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"
            ),
            args![before, limit],
            from_row,
        )
    })
}

/// One schedule; `NotFound` for an unknown id.
pub fn get(store: &Store, id: &str) -> StoreResult<Schedule> {
    store.read(|c| {
        c.query_one(
            &format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"),
            args![id],
            from_row,
        )
    })
}

/// Deletes a schedule in one write transaction; its past runs' events
/// stay. `NotFound` for an unknown id.
pub fn delete(store: &Store, id: &str) -> StoreResult<()> {
    store.write(
        |tx| match tx.execute("DELETE FROM schedules WHERE id = ?1", args![id])? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        },
    )
}

/// When the earliest schedule is due.
pub fn next_due_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(next_run_at) FROM schedules WHERE next_run_at IS NOT NULL",
        args![],
        |r| r.get(0),
    )
}

/// The scheduler's hook: runs every schedule due by now, publishes the
/// events after commit, and returns when to look again. Nothing due costs
/// one read, never the write lock.
pub fn run_due(store: &Store, publish: impl Fn(i64)) -> Option<i64> {
    loop {
        let now = store.clock().now_ms();
        let next = match store.read(next_due_at) {
            Ok(next) => next,
            Err(e) => {
                log::error!("cannot read the schedules' next run: {e}");
                return Some(now + AFTER_ERROR_MS);
            }
        };
        if next.is_none_or(|at| at > now) {
            return next;
        }
        match store.write(run_batch) {
            Ok((seqs, full)) => {
                for seq in seqs {
                    publish(seq);
                }
                if full {
                    continue;
                }
                // What is still due is being run by another instance now.
                return match store.read(next_due_at) {
                    Ok(next) => next.map(|at| at.max(now + LOOK_AGAIN_MS)),
                    Err(_) => Some(now + AFTER_ERROR_MS),
                };
            }
            Err(e) => {
                log::error!("cannot run due schedules: {e}");
                return Some(now + AFTER_ERROR_MS);
            }
        }
    }
}

struct Due {
    id: String,
    kind: String,
    recipients: String,
    payload: String,
    subject_id: Option<String>,
    repeat: String,
    ends_at: Option<i64>,
    next_run_at: i64,
}

/// Runs up to `RUN_BATCH` due schedules: the new events' seqs, and whether
/// the batch was full (more may be due).
fn run_batch(tx: &Tx<'_>) -> Result<(Vec<i64>, bool), NotifyError> {
    let now = tx.now_ms();
    // Schedules another instance is running right now are left to it.
    let due: Vec<Due> = tx.query_all(
        &format!(
            "SELECT id, type, recipients, payload, subject_id, repeat, ends_at, next_run_at
             FROM schedules WHERE next_run_at IS NOT NULL AND next_run_at <= ?1
             ORDER BY next_run_at LIMIT ?2{}",
            tx.engine().skip_locked("schedules")
        ),
        args![now, RUN_BATCH as i64],
        |r| {
            Ok(Due {
                id: r.get(0)?,
                kind: r.get(1)?,
                recipients: r.get(2)?,
                payload: r.get(3)?,
                subject_id: r.get(4)?,
                repeat: r.get(5)?,
                ends_at: r.get(6)?,
                next_run_at: r.get(7)?,
            })
        },
    )?;
    let full = due.len() == RUN_BATCH;
    let mut seqs = Vec::with_capacity(due.len());
    for d in due {
        seqs.extend(run_one(tx, &d, now)?);
    }
    Ok((seqs, full))
}

/// Runs one due schedule as its latest due occurrence and moves it to its
/// first occurrence after `now` (None past `endsAt`): the seq of the event
/// it enqueued, None if that occurrence's event existed already.
fn run_one(tx: &Tx<'_>, d: &Due, now: i64) -> Result<Option<i64>, NotifyError> {
    let parsed = (
        serde_json::from_str::<Value>(&d.repeat)
            .ok()
            .and_then(|v| Repeat::from_json(&v).ok()),
        serde_json::from_str::<Vec<Recipient>>(&d.recipients),
        serde_json::from_str::<Value>(&d.payload),
    );
    let (Some(repeat), Ok(recipients), Ok(payload)) = parsed else {
        // Stored by `create`, so this is damage: ended rather than retried
        // at every wake.
        log::error!("schedule {} is unreadable; ended without a run", d.id);
        tx.execute(
            "UPDATE schedules SET next_run_at = NULL WHERE id = ?1",
            args![d.id],
        )?;
        return Ok(None);
    };
    let ends = d.ends_at.unwrap_or(i64::MAX);
    let occurrence = repeat
        .last_at_or_before(now.min(ends))
        .filter(|o| *o >= d.next_run_at)
        .unwrap_or(d.next_run_at);
    let mut event = Event::new(&d.kind, recipients, payload);
    event.subject_id = d.subject_id.clone();
    event.idempotency_key = Some(run_key(&d.id, occurrence));
    let enqueued = outbox::enqueue(tx, &event)?;
    let next = repeat.next_after(now).filter(|n| *n <= ends);
    tx.execute(
        "UPDATE schedules SET next_run_at = ?2, last_run_at = ?3, runs = runs + ?4 WHERE id = ?1",
        args![d.id, next, occurrence, i64::from(enqueued.created)],
    )?;
    Ok(enqueued.created.then_some(enqueued.seq))
}

/// The idempotency key of schedule `id`'s run for `occurrence`.
pub fn run_key(id: &str, occurrence: i64) -> String {
    format!("schedule:{id}:{}", rfc3339(occurrence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Synchronous;
    use crate::time::Clock;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::parse(
            "r",
            r#"{"types": {"t": {"channels": ["inbox"], "required": ["a"], "sample": {"a": 1}}}}"#,
        )
        .unwrap()
    }

    fn new(body: Value) -> NewSchedule {
        NewSchedule::from_json(body).unwrap()
    }

    fn field_of(body: Value) -> String {
        match NewSchedule::from_json(body) {
            Err(NotifyError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    fn daily_at_nine() -> Value {
        json!({"type": "t", "recipients": [{"email": "a@b.co"}], "payload": {"a": 1},
               "repeat": {"frequency": "daily", "hours": 9, "minutes": 0, "timezone": "UTC"}})
    }

    #[test]
    fn a_request_names_its_wrong_field() {
        let mut body = daily_at_nine();
        body["repeat"]["hours"] = json!(24);
        assert_eq!(field_of(body), "repeat.hours");
        let mut body = daily_at_nine();
        body.as_object_mut().unwrap().remove("repeat");
        assert_eq!(field_of(body), "repeat");
        let mut body = daily_at_nine();
        body["idempotencyKey"] = json!("k");
        assert_eq!(field_of(body), "idempotencyKey");
        let mut body = daily_at_nine();
        body["sendAt"] = json!("2026-05-02T00:00:00Z");
        assert_eq!(field_of(body), "sendAt");
        let mut body = daily_at_nine();
        body["cancellationKey"] = json!("k");
        assert_eq!(field_of(body), "cancellationKey");
        let mut body = daily_at_nine();
        body["startsAt"] = json!("tomorrow");
        assert_eq!(field_of(body), "startsAt");
        let mut body = daily_at_nine();
        body["startsAt"] = json!("2026-05-02T00:00:00Z");
        body["endsAt"] = json!("2026-05-01T00:00:00Z");
        assert_eq!(field_of(body), "endsAt");
        let mut body = daily_at_nine();
        body["recipients"] = json!([7]);
        assert_eq!(field_of(body), "recipients[0]");
        let mut body = daily_at_nine();
        body["colour"] = json!("red");
        assert_eq!(field_of(body), "colour");
    }

    /// Runs the due schedules at `now`: the new events' seqs.
    fn run_at(store: &Store, clock: &Clock, now: &str) -> Vec<i64> {
        clock.set(parse_rfc3339(now).unwrap());
        store.write(run_batch).unwrap().0
    }

    #[test]
    fn missed_occurrences_run_once_as_the_latest_and_a_repeat_finds_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(parse_rfc3339("2026-06-01T10:00:00Z").unwrap());
        let store =
            Store::open_with_clock(&dir.path().join("t.db"), Synchronous::Normal, clock.clone())
                .unwrap();
        let created = create(&store, &registry(), &new(daily_at_nine())).unwrap();
        assert_eq!(
            created.next_run_at.as_deref(),
            Some("2026-06-02T09:00:00.000Z")
        );
        assert!(run_at(&store, &clock, "2026-06-02T08:59:59Z").is_empty());
        assert_eq!(run_at(&store, &clock, "2026-06-02T09:00:00Z").len(), 1);
        assert!(run_at(&store, &clock, "2026-06-02T09:00:01Z").is_empty());
        // Down for four days: one run, as the last day's occurrence.
        assert_eq!(run_at(&store, &clock, "2026-06-06T12:00:00Z").len(), 1);
        let view = get(&store, &created.id).unwrap();
        assert_eq!(view.runs, 2);
        assert_eq!(
            view.last_run_at.as_deref(),
            Some("2026-06-06T09:00:00.000Z")
        );
        assert_eq!(
            view.next_run_at.as_deref(),
            Some("2026-06-07T09:00:00.000Z")
        );
        let keys: Vec<String> = store
            .read(|c| {
                c.query_all(
                    "SELECT idempotency_key FROM outbox ORDER BY seq",
                    args![],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(
            keys,
            [
                run_key(&created.id, parse_rfc3339("2026-06-02T09:00:00Z").unwrap()),
                run_key(&created.id, parse_rfc3339("2026-06-06T09:00:00Z").unwrap()),
            ]
        );
        // Another process that ran the same occurrence finds its event.
        store
            .write(|tx| {
                tx.execute(
                    "UPDATE schedules SET next_run_at = ?1",
                    args![parse_rfc3339("2026-06-06T09:00:00Z").unwrap()],
                )
            })
            .unwrap();
        assert!(run_at(&store, &clock, "2026-06-06T12:00:00Z").is_empty());
        assert_eq!(get(&store, &created.id).unwrap().runs, 2);
    }

    #[test]
    fn a_schedule_ends_after_its_last_occurrence_before_ends_at() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(parse_rfc3339("2026-06-01T10:00:00Z").unwrap());
        let store =
            Store::open_with_clock(&dir.path().join("t.db"), Synchronous::Normal, clock.clone())
                .unwrap();
        let mut body = daily_at_nine();
        body["startsAt"] = json!("2026-06-03T00:00:00Z");
        body["endsAt"] = json!("2026-06-04T09:00:00Z");
        let created = create(&store, &registry(), &new(body)).unwrap();
        assert_eq!(
            created.next_run_at.as_deref(),
            Some("2026-06-03T09:00:00.000Z"),
            "not before startsAt"
        );
        assert_eq!(run_at(&store, &clock, "2026-06-03T09:00:00Z").len(), 1);
        assert_eq!(
            run_at(&store, &clock, "2026-06-04T09:00:00Z").len(),
            1,
            "endsAt is inclusive"
        );
        let view = get(&store, &created.id).unwrap();
        assert_eq!((view.runs, view.next_run_at), (2, None));
        assert!(run_at(&store, &clock, "2026-06-09T09:00:00Z").is_empty());

        // Past its end before it ever ran: refused, nothing stored.
        let mut body = daily_at_nine();
        body["endsAt"] = json!("2026-06-09T08:00:00Z");
        let refused = create(&store, &registry(), &new(body));
        assert!(
            matches!(&refused, Err(NotifyError::Invalid { field, .. }) if field == "endsAt"),
            "{refused:?}"
        );
        assert_eq!(list(&store, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn creation_checks_the_type_the_payload_and_the_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let mut body = daily_at_nine();
        body["type"] = json!("nope");
        assert!(matches!(
            create(&store, &registry(), &new(body)),
            Err(NotifyError::UnknownType(_))
        ));
        let mut body = daily_at_nine();
        body["payload"] = json!({});
        assert!(matches!(
            create(&store, &registry(), &new(body)),
            Err(NotifyError::Invalid { field, .. }) if field == "payload.a"
        ));
        let mut body = daily_at_nine();
        body["recipients"] = json!([{"email": "a@b.co"}, "ghost"]);
        assert!(matches!(
            create(&store, &registry(), &new(body)),
            Err(NotifyError::Invalid { field, .. }) if field == "recipients[1]"
        ));
        assert!(list(&store, None, 10).unwrap().is_empty());
        assert!(matches!(
            delete(&store, "sch_nope"),
            Err(StoreError::NotFound)
        ));
    }
}
