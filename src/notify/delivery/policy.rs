//! How deliveries are sent and retried: the one configuration the delivery
//! engine reads (sender threads, pacing, batching, backoff, attempts,
//! retention). Plain data, set once before `Notifier::start`.

use std::time::Duration;

use crate::notify::retention::Retention;
use crate::notify::webhooks::WebhookPolicy;

/// How deliveries are sent and retried.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub from: String,
    pub sender_threads: usize,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub max_attempts: u32,
    /// Client-side cap on requests to the mail provider, shared by every
    /// sender thread; None sends as fast as the provider answers.
    pub rate_per_sec: Option<f64>,
    /// Emails held in memory for the senders; the rest wait in the database.
    pub queue_capacity: usize,
    /// Most emails sent in one request (the provider's batch); emails
    /// created together go together, and emails waiting together for the
    /// provider (alone or in small batches) are merged into one.
    /// 1 sends every email alone.
    pub mail_batch: usize,
    /// What is kept of finished work, and for how long.
    pub retention: Retention,
    /// How long an instance sharing the database may stay silent before
    /// the others take its deliveries and events over.
    pub lease: Duration,
    /// How status webhooks are sent, retried and given up on.
    pub webhooks: WebhookPolicy,
    /// `HERALD_TEST_FANOUT_PAGE_DELAY_MS`: a pause after each committed
    /// page of a topic fan-out, so a test can kill herald in the middle.
    pub test_fanout_page_delay: Option<Duration>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            from: "herald <notifications@localhost>".into(),
            sender_threads: 4,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3600),
            max_attempts: 8,
            rate_per_sec: None,
            queue_capacity: 1024,
            mail_batch: crate::mail::MAX_BATCH_EMAILS,
            retention: Retention::default(),
            lease: Duration::from_secs(15),
            webhooks: WebhookPolicy::default(),
            test_fanout_page_delay: None,
        }
    }
}
