//! The webhook senders: one thread claims due messages (the timers are their
//! rows' `next_attempt_at`) and hands them to a bounded pool of threads that
//! send them with ureq and record each outcome in its own transaction after
//! the request. They share nothing with the mail senders or the HTTP
//! workers, so a slow or hanging endpoint delays only other webhooks.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::outbox::{self, Message, WebhookPolicy};
use super::signing;
use crate::metrics::{WebhookOutcome, METRICS};
use crate::notify::threads;
use crate::store::{Store, StoreResult};

/// Longest sleep of the claiming thread with nothing due. This process's
/// own messages wake it; on a shared database another instance's, left
/// behind by its death, are found within `SHARED_POLL`.
const IDLE: Duration = Duration::from_secs(60);
const SHARED_POLL: Duration = Duration::from_secs(5);
/// Looks again this long after a wake that found nothing: the message's
/// transaction may not have committed yet.
const RECHECK: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(200),
    Duration::from_secs(1),
];
/// How long to wait after the database failed.
const AFTER_ERROR: Duration = Duration::from_secs(2);
/// Most bytes of an endpoint's answer kept for `last_error`.
const ERROR_BYTES: u64 = 512;

/// Starts the claiming thread and `policy.senders` sending threads; they
/// stop when `stop`'s sender is dropped, the senders once their request
/// ends. On an SQLite file, messages a previous process claimed are due at
/// once: it is gone.
pub fn start(
    store: Arc<Store>,
    policy: WebhookPolicy,
    me: i64,
    stop: Receiver<()>,
) -> Vec<JoinHandle<()>> {
    if !store.engine().is_shared() {
        if let Err(e) = store.write(outbox::release_claims) {
            log::warn!("webhooks: cannot release old claims: {e}");
        }
    }
    let workers = policy.senders.max(1);
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Message>(workers);
    let agent = agent(policy.timeout);
    let mut handles = Vec::with_capacity(workers + 1);
    for i in 0..workers {
        let (store, policy, jobs, agent) = (
            store.clone(),
            policy.clone(),
            jobs_rx.clone(),
            agent.clone(),
        );
        handles.push(threads::spawn(&format!("herald-webhook-{i}"), move || {
            for message in jobs {
                send_and_record(&store, &policy, &agent, &message);
            }
        }));
    }
    handles.push(threads::spawn("herald-webhook-claims", move || {
        claim_loop(&store, &policy, me, &jobs_tx, &stop)
    }));
    handles
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .user_agent("herald-webhooks")
        .build()
        .into()
}

/// Claims as many due messages as there are idle senders, hands them over,
/// and sleeps until the next is due, a wake, or the stop.
fn claim_loop(
    store: &Store,
    policy: &WebhookPolicy,
    me: i64,
    jobs: &Sender<Message>,
    stop: &Receiver<()>,
) {
    let idle = match store.engine().is_shared() {
        true => SHARED_POLL,
        false => IDLE,
    };
    let mut rechecks = RECHECK.len();
    loop {
        let room = jobs.capacity().unwrap_or(1).saturating_sub(jobs.len());
        let mut pause = match claim(store, policy, me, room) {
            Ok(claimed) => {
                let full = claimed.len() == room && room > 0;
                let found = !claimed.is_empty();
                for message in claimed {
                    if jobs.send(message).is_err() {
                        return;
                    }
                }
                match (full, found) {
                    (true, _) => Duration::from_millis(5),
                    (false, false) if rechecks < RECHECK.len() => {
                        rechecks += 1;
                        RECHECK[rechecks - 1].min(next_pause(store, idle))
                    }
                    _ => next_pause(store, idle),
                }
            }
            Err(e) => {
                log::warn!("webhooks: cannot claim due messages: {e}");
                AFTER_ERROR
            }
        };
        if room == 0 {
            pause = pause.min(Duration::from_millis(50));
        }
        crossbeam_channel::select! {
            recv(stop) -> _ => return,
            recv(outbox::woken()) -> _ => rechecks = 0,
            default(pause) => {}
        }
    }
}

fn claim(store: &Store, policy: &WebhookPolicy, me: i64, room: usize) -> StoreResult<Vec<Message>> {
    if room == 0 {
        return Ok(Vec::new());
    }
    store.write(|tx| outbox::claim_due(tx, me, room, policy))
}

/// Until the next message is due, within `idle`.
fn next_pause(store: &Store, idle: Duration) -> Duration {
    let now = store.clock().now_ms();
    match store.read(outbox::next_due_at) {
        Ok(Some(at)) if at > now => Duration::from_millis((at - now) as u64).min(idle),
        Ok(Some(_)) => Duration::from_millis(5),
        Ok(None) => idle,
        Err(_) => AFTER_ERROR,
    }
}

/// One attempt, then its outcome in a transaction of its own (the request
/// ran outside any), then the metrics.
fn send_and_record(store: &Store, policy: &WebhookPolicy, agent: &ureq::Agent, message: &Message) {
    let result = send(agent, message);
    let outcome = match &result {
        Ok(()) => WebhookOutcome::Accepted,
        Err(_) => WebhookOutcome::Failed,
    };
    let recorded = store.write(|tx| outbox::record_attempt(tx, message, &result, policy));
    // The claiming thread may sleep past this message's retry otherwise.
    outbox::wake();
    match recorded {
        Ok(disabled) => {
            METRICS.webhook_attempt(outcome);
            if disabled {
                METRICS.webhook_disabled();
                log::warn!(
                    "webhook {} disabled: every attempt failed for {} s",
                    message.webhook_id,
                    policy.disable_after.as_secs()
                );
            }
        }
        // The claim's lease runs out and the message is sent again.
        Err(e) => log::warn!("webhooks: cannot record an attempt at {}: {e}", message.id),
    }
}

/// POSTs the message, signed for this attempt; Ok on a 2xx answer.
fn send(agent: &ureq::Agent, message: &Message) -> Result<(), String> {
    let timestamp = crate::time::system_now_ms() / 1000;
    let Some(signature) = signing::signature(
        &message.secret,
        &message.id,
        timestamp,
        message.body.as_bytes(),
    ) else {
        return Err("the endpoint's secret cannot be decoded".into());
    };
    let response = agent
        .post(&message.url)
        .header("content-type", "application/json")
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", &signature)
        .send(message.body.as_bytes());
    match response {
        Ok(mut response) => {
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            let text = response
                .body_mut()
                .with_config()
                .limit(ERROR_BYTES)
                .read_to_string()
                .unwrap_or_default();
            Err(format!("HTTP {status} {}", text.trim()).trim().to_string())
        }
        Err(e) => Err(format!("request failed: {e}")),
    }
}
