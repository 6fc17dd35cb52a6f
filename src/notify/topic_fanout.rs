//! The topic fan-out, run by the scheduler: an event's `{"topic": key}`
//! recipients reach the topics' subscribers a page at a time, each page in
//! one transaction that claims the event's cursor, writes the page's inbox
//! rows and deliveries through the dispatcher's own per-recipient path
//! (`deliver::fan_out`), adds its counts to the event's result and moves
//! the cursor on. A crash loses at most an uncommitted page, which the
//! restart writes again from the committed cursor: each subscriber exactly
//! once. Users named directly and the actor are skipped (the dispatcher
//! wrote the former with the event itself; the latter is never notified).

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::bus::Wake;
use super::deliver::{self, after_commit, fan_out, Ready, Written};
use super::delivery::deliveries::Batcher;
use super::delivery::mail_queue::MailQueue;
use super::event::Recipient;
use super::shared::Shared;
use super::translations::Translations;
use super::{outbox, peers, topics};
use crate::store::{StoreError, StoreResult};

/// Subscribers per page: one transaction each. Large enough to amortise a
/// commit, small enough to hold the write lock briefly.
pub const PAGE: usize = 1000;

/// Fan-outs looked at per pass: another instance may hold the oldest.
const LOOK_AT: usize = 16;

/// Writes one page of the oldest fan-out this instance can claim; true
/// when there may be more to do at once.
pub(super) fn run_page(shared: &Shared, queue: &MailQueue, wake: &Sender<Wake>, me: i64) -> bool {
    let store = shared.store();
    let under_way = match store.read(|c| topics::fanouts_under_way(c, LOOK_AT)) {
        Ok(seqs) => seqs,
        Err(e) => {
            log::error!("cannot read the topic fan-outs: {e}");
            return false;
        }
    };
    for seq in under_way {
        match page(shared, seq, me) {
            Ok(Some(written)) => {
                after_commit(shared, written, queue, wake);
                if let Some(delay) = shared.policy.test_fanout_page_delay {
                    std::thread::sleep(delay);
                }
                // This fan-out's next page, or another's.
                return true;
            }
            // Held by another instance, or gone meanwhile: the next one.
            Ok(None) => continue,
            Err(e) => {
                log::error!("event #{seq}: fan-out page not written ({e}); retried later");
                return false;
            }
        }
    }
    false
}

/// One page of event `seq`'s fan-out and what it wrote; None when another
/// instance holds the fan-out or it had ended.
fn page(shared: &Shared, seq: i64, me: i64) -> StoreResult<Option<Written>> {
    let store = shared.store();
    // Rendered outside the transaction, as the dispatcher does; the body
    // is fixed, so every page renders the same content.
    let Some(event) = store.read(|c| outbox::fanning_event(c, seq))? else {
        store.write(|tx| topics::finish(tx, seq))?;
        return Ok(None);
    };
    let prepared = event.map(Arc::new).and_then(|event| {
        let def = shared
            .registry()
            .get(&event.kind)
            .ok_or_else(|| format!("type {:?} is no longer in the registry", event.kind))?;
        let rendered = shared
            .templates
            .render(&event.kind, def, &event.payload)
            .map_err(|e| e.to_string())?;
        Ok((event, def, rendered))
    });
    let (event, def, rendered) = match prepared {
        Ok(prepared) => prepared,
        Err(reason) => {
            // The direct recipients were written: the event stays
            // dispatched, and its topics are given up, loudly.
            log::error!("event #{seq}: topic fan-out abandoned: {reason}");
            store.write(|tx| {
                topics::finish(tx, seq)?;
                outbox::add_page_result(tx, seq, &Default::default(), true)
            })?;
            return Ok(None);
        }
    };
    let payload = event.payload.to_string();
    let topic_keys: Vec<&str> = event.topics().collect();
    let written = store.write(|tx| {
        let Some(after) = topics::claim_fanout(tx, seq)? else {
            return Ok::<_, StoreError>(None);
        };
        let users = topics::page(tx, &topic_keys, &after, PAGE)?;
        let last = users.len() < PAGE;
        // Each locale the page reads is rendered once, on first need.
        let mut translations = Translations::default();
        let audience = users
            .iter()
            .filter(|id| !(event.names_user(id) || event.is_actor(id)))
            .map(|id| {
                let recipient = Recipient::User(id.clone());
                let reach =
                    deliver::reach_of(tx, shared, &event, def, &recipient, &mut translations)?;
                Ok((recipient, reach))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let ready = Ready {
            event: event.clone(),
            def,
            rendered: rendered.clone(),
            payload: payload.clone(),
            audience,
            translations,
        };
        let mut written = Written::default();
        peers::order_inbox(tx)?;
        let mut batcher = Batcher::new(
            shared.policy.mail_batch,
            deliver::expected_emails(&ready),
            me,
        );
        let result = fan_out(tx, seq, &ready, &mut batcher, &mut written)?;
        batcher.write(tx)?;
        peers::announce_inbox(tx, me, &written.inbox)?;
        outbox::add_page_result(tx, seq, &result, last)?;
        match (last, users.last()) {
            (false, Some(after)) => topics::advance(tx, seq, after)?,
            _ => topics::finish(tx, seq)?,
        }
        Ok(Some(written))
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::event::Event;
    use serde_json::json;

    /// Whether a page skips `user` (as `page` filters).
    fn skips(event: &Event, user: &str) -> bool {
        event.names_user(user) || event.is_actor(user)
    }

    #[test]
    fn a_page_skips_users_named_directly_and_the_actor() {
        let mut event = Event::from_json(json!({
            "type": "t", "actorId": "ann",
            "recipients": ["bob", {"topic": "project:42"}]
        }))
        .unwrap();
        event.actor_id = Some("ann".into());
        assert!(skips(&event, "bob"));
        assert!(skips(&event, "ann"));
        assert!(!skips(&event, "cid"));
        assert_eq!(event.topics().collect::<Vec<_>>(), ["project:42"]);
    }
}
