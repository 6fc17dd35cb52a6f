//! Status webhooks to the application (SPEC 10): `endpoints` (the
//! `/v1/webhooks` table and its operations), `outbox` (messages written in
//! the transaction of the change they report, claimed and retried),
//! `signing` (Standard Webhooks signatures) and `sender` (the threads that
//! send them after commit, the one place of this module that speaks HTTP).

pub mod endpoints;
pub mod outbox;
pub(crate) mod sender;
pub mod signing;

pub use endpoints::{NewWebhook, Webhook};
pub use outbox::{Subscriptions, WebhookPolicy};
