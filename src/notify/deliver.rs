//! One event to a list of recipients, in the caller's transaction: the
//! per-recipient path (dedup, preferences, throttle, digest, held emails,
//! inbox rows and deliveries) shared by the dispatcher, which writes an
//! event's direct recipients, and the topic fan-out, which writes its
//! subscribers a page at a time. What it wrote is handed on after COMMIT.

use crossbeam_channel::Sender;

use super::bus::Wake;
use super::delivery::deliveries::{self, Batcher, Body, EmailJob, MailJob};
use super::delivery::held;
use super::delivery::mail_queue::MailQueue;
use super::event::{Event, Recipient};
use super::inbox::InboxCommitted;
use super::outbox::{ChannelCounts, DispatchResult};
use super::policy::{self, DedupKey};
use super::preferences::Switches;
use super::quiet_hours::QuietHours;
use super::registry::{Channel, TypeDef};
use super::shared::Shared;
use super::templates::Rendered;
use super::throttle::{self, Budget};
use super::translations::Translations;
use super::{digest, inbox};
use crate::metrics::{Fate, METRICS};
use crate::store::{users, Conn, StoreResult, Tx};
use std::sync::Arc;

/// Everything rendering produces for one event, done outside the write
/// transaction.
pub(super) struct Ready<'r> {
    pub event: Arc<Event>,
    pub def: &'r TypeDef,
    pub rendered: Rendered,
    /// The payload as stored on inbox rows.
    pub payload: String,
    /// The recipients this write reaches, each with its address and
    /// preference switches read before the write transaction (None for a
    /// user that no longer exists): the event's direct recipients, or a
    /// page of its topics' subscribers.
    pub audience: Vec<(Recipient, Option<Reach>)>,
    /// The translations its audience reads, rendered once each.
    pub translations: Translations,
}

/// Where a recipient is reached and what it allows, as read while the
/// batch was prepared. A preference changed in between applies from the
/// next batch, as if it had been changed a moment later.
pub(super) struct Reach {
    address: String,
    switches: Switches,
    /// The user's quiet hours, when they could hold this event's email.
    quiet: Option<QuietHours>,
    /// Which of the event's `translations` it reads; None: the default.
    translation: Option<usize>,
}

/// What a dispatch transaction hands on after COMMIT.
#[derive(Default)]
pub(super) struct Written {
    /// Email deliveries created, each with the batch it joined.
    pub emails: Vec<(Option<String>, EmailJob)>,
    /// Inbox rows written, announced to the live stream after COMMIT.
    pub inbox: Vec<InboxCommitted>,
    /// A digest was opened, or an event came before its `sendAt`: the
    /// scheduler must look at its due time.
    pub wake_scheduler: bool,
    /// When the earliest email held by this transaction is due.
    pub held_due: Option<i64>,
    /// (type, channel, fate) per recipient, counted in the metrics only
    /// once the transaction has committed.
    pub fates: Vec<(String, Channel, Fate)>,
}

/// Where `recipient` is reached and what it allows, for `event` of type
/// `def`; None for a user that no longer exists. Topics are not reached
/// here: their subscribers are, one page at a time. The translation the
/// recipient reads is rendered into `translations` on first need.
pub(super) fn reach_of(
    conn: &Conn<'_>,
    shared: &Shared,
    event: &Event,
    def: &TypeDef,
    recipient: &Recipient,
    translations: &mut Translations,
) -> StoreResult<Option<Reach>> {
    // Quiet hours only ever hold a non-critical email.
    let may_be_quiet = !def.critical && def.has(Channel::Email);
    let (address, quiet, locale) = match recipient {
        Recipient::User(id) => match users::reach_of(conn, id)? {
            Some((email, settings)) => (
                email,
                QuietHours::of(&settings).filter(|_| may_be_quiet),
                settings.locale,
            ),
            None => return Ok(None),
        },
        Recipient::Address { email } => (email.clone(), None, None),
        Recipient::Topic { .. } => return Ok(None),
    };
    // The event's locale, when it forces one, over the user's.
    let locale = event.locale.as_deref().or(locale.as_deref());
    let translation =
        translations.pick(&shared.templates, &event.kind, def, &event.payload, locale);
    let switches = policy::switches_for(conn, event, def, recipient)?;
    Ok(Some(Reach {
        address,
        switches,
        quiet,
        translation,
    }))
}

/// Hands a committed batch's emails to the senders (those the queue has no
/// room for wait in the database) and its inbox rows to the live stream.
pub(super) fn after_commit(
    shared: &Shared,
    written: Written,
    queue: &MailQueue,
    wake: &Sender<Wake>,
) {
    shared.announce_inbox(&written.inbox);
    for (kind, channel, fate) in &written.fates {
        METRICS.notification(kind, channel.as_str(), *fate);
    }
    let held_sooner = written
        .held_due
        .is_some_and(|due| shared.next_wake.misses(due));
    if written.wake_scheduler || held_sooner {
        let _ = wake.send(Wake::Retry);
    }
    for job in MailJob::group(written.emails) {
        queue.offer(job);
    }
}

/// One event to each recipient, applying SPEC 2.3 in order: the dedup
/// window, preferences, the throttle (SPEC 9), the digest (the event is
/// held, nothing is sent now), else an inbox row per user and an email
/// delivery per user and per address-only recipient. A released digest
/// skips dedup, throttle and digest: it was checked on the way in.
///
/// The result counts each recipient once at the top, and each of its
/// channels in `channels`:
/// - sent: a recipient counts `sent` if at least one channel was written
///   (email switched off, inbox on: `sent`), and each written channel
///   counts `sent` in its own breakdown;
/// - deduped: a recipient caught by the window counts `deduped`, and so
///   does every channel it would have got;
/// - suppressedByPrefs: a recipient counts it only when every channel it
///   would have got is switched off; each switched-off channel counts it;
/// - throttled: a recipient over its type's throttle counts `throttled`,
///   and so does every channel its preferences left it.
///
/// An address-only recipient has no inbox and no preferences: it counts on
/// the email channel alone. An email held for an escalation or quiet hours
/// counts `sent` now, as it is created: a later skip (the row was seen in
/// time) shows on the delivery and in the metrics, never in this result,
/// so a recipient is never counted twice. Some recipients count nowhere at
/// the top:
/// - a user that no longer exists: nothing was attempted (it is logged);
///   counting it `suppressedByPrefs` would blame a preference nobody set;
/// - a recipient whose event joins a digest: nothing goes out yet. The
///   event's `digests` says where it waits, and the released digest is an
///   event of its own whose result counts the recipient `sent` then. The
///   channels switched off at join count `suppressedByPrefs` here, as the
///   metrics count them: the digest never reaches those channels.
///
/// The per-channel counts and the Prometheus counters come from the same
/// place (`tally`), so they always agree.
pub(super) fn fan_out(
    tx: &Tx<'_>,
    seq: i64,
    ready: &Ready<'_>,
    batcher: &mut Batcher,
    written: &mut Written,
) -> StoreResult<DispatchResult> {
    let Ready {
        event,
        def,
        rendered,
        payload,
        audience,
        translations,
    } = ready;
    let mut result = DispatchResult::default();
    let mut by_channel = ChannelCounts::default();
    let mut tally = |channel: Channel, fate: Fate| {
        let counts = by_channel.of(channel);
        match fate {
            Fate::Sent => counts.sent += 1,
            Fate::Deduped => counts.deduped += 1,
            Fate::Suppressed => counts.suppressed_by_prefs += 1,
            Fate::Throttled => counts.throttled += 1,
        }
        written.fates.push((event.kind.clone(), channel, fate));
    };
    let now = tx.now_ms();
    let release = event.from_digest.as_ref();
    for (recipient, reach) in audience {
        let key = recipient.key();
        let Some(Reach {
            address,
            switches,
            quiet,
            translation,
        }) = reach
        else {
            log::warn!("event #{seq}: user {key:?} no longer exists; skipped");
            continue;
        };
        let dedup = DedupKey::of(event, &key, rendered.dedup_key.as_deref());
        let only = release.map(|r| r.channels.as_slice());
        let (channels, suppressed) = policy::channels_for(switches, def, recipient, only);
        let throttle = def.throttle.as_ref().filter(|_| release.is_none());
        // Dedup comes first in SPEC 2.3, but the preferences are already
        // known: when something goes out, one upsert both checks the window
        // and marks it; when nothing does, only the check runs. A throttled
        // type is only checked here, and marked once the throttle lets it
        // through: a throttled notification must leave no mark.
        let duplicate = match (release, channels.is_empty(), throttle) {
            (Some(_), _, _) => false,
            (None, true, _) | (None, false, Some(_)) => policy::is_duplicate(tx, def, &dedup, now)?,
            (None, false, None) => !policy::mark_unless_duplicate(tx, def, &dedup, now)?,
        };
        if duplicate {
            result.deduped += 1;
            for channel in reachable(def, recipient) {
                tally(channel, Fate::Deduped);
            }
            continue;
        }
        if suppressed > 0 {
            let off = reachable(def, recipient)
                .filter(|c| only.is_none_or(|only| only.contains(c)) && !channels.contains(c));
            for channel in off {
                tally(channel, Fate::Suppressed);
            }
        }
        if channels.is_empty() {
            result.suppressed_by_prefs += i64::from(suppressed > 0);
            continue;
        }
        if let Some(throttle) = throttle {
            let budget = Budget {
                kind: &event.kind,
                recipient: &key,
                key: rendered.throttle_key.as_deref().unwrap_or(""),
            };
            if !throttle::admit(tx, throttle, &budget, seq, now)? {
                result.throttled += 1;
                for &channel in &channels {
                    tally(channel, Fate::Throttled);
                }
                continue;
            }
            policy::mark_unless_duplicate(tx, def, &dedup, now)?;
        }
        if let (Some(spec), Some(digest_key), None) = (&def.digest, &rendered.digest_key, release) {
            let opened = digest::join(tx, seq, event, recipient, digest_key, spec, &channels, now)?;
            written.wake_scheduler |= opened.is_some();
            continue;
        }
        let translated = translations.get(*translation);
        let inbox_content = translated.map_or(rendered.inbox.as_ref(), |(_, t)| t.inbox.as_ref());
        let mut reached = false;
        for channel in channels {
            let wrote = match (channel, recipient, inbox_content, &rendered.email) {
                (Channel::Inbox, Recipient::User(id), Some(content), _) => {
                    let row = inbox::insert(tx, seq, id, &event.kind, content, payload)?;
                    written.inbox.extend(row.map(|row_id| InboxCommitted {
                        user_id: id.clone(),
                        id: row_id,
                        returned: false,
                    }));
                    row.is_some()
                }
                (Channel::Email, _, _, Some(default)) => {
                    let body = Body {
                        default,
                        translated: translated
                            .and_then(|(tag, t)| t.email.as_ref().map(|email| (tag, email))),
                    };
                    // A held email is not handed to the senders: the
                    // scheduler releases it when due.
                    if let Some(hold) = held::hold_for(def, recipient, quiet.as_ref(), now) {
                        let wrote = held::insert(tx, seq, &key, address, body, hold)?;
                        if wrote {
                            let sooner = written.held_due.map_or(hold.due, |d| d.min(hold.due));
                            written.held_due = Some(sooner);
                        }
                        wrote
                    } else {
                        let batch = batcher.join(seq);
                        let job = deliveries::insert_delivery(
                            tx,
                            seq,
                            &key,
                            address,
                            body,
                            batch.as_deref(),
                            batcher.holder(),
                        )?;
                        let wrote = job.is_some();
                        written.emails.extend(job.map(|job| (batch, job)));
                        wrote
                    }
                }
                _ => false,
            };
            if wrote {
                tally(channel, Fate::Sent);
                reached = true;
            }
        }
        result.sent += i64::from(reached);
    }
    result.channels = Some(by_channel);
    Ok(result)
}

/// The channels of `def` a recipient can receive at all: an address-only
/// recipient has no inbox.
pub(super) fn reachable<'d>(
    def: &'d TypeDef,
    recipient: &'d Recipient,
) -> impl Iterator<Item = Channel> + 'd {
    def.channels
        .iter()
        .copied()
        .filter(move |c| matches!(recipient, Recipient::User(_)) || *c == Channel::Email)
}

/// At most how many emails `ready` creates: before preferences, dedup and
/// digests, which only ever take some away.
pub(super) fn expected_emails(ready: &Ready<'_>) -> usize {
    match ready.rendered.email.is_some() && ready.def.channels.contains(&Channel::Email) {
        true => ready
            .audience
            .iter()
            .filter(|(_, reach)| reach.is_some())
            .count(),
        false => 0,
    }
}
