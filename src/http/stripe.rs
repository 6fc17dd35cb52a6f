//! `POST /webhooks/stripe`: the signature is checked over the raw bytes
//! before anything is parsed or written (any failure is 400, nothing stored);
//! `app::stripe` then claims and applies the event in one transaction.
//! Without `STRIPE_WEBHOOK_SECRET` the endpoint answers 503, which Stripe
//! retries, so events sent before the secret is configured are not lost.

use serde_json::json;

use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::app::stripe;

pub fn webhook(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let Some(secret) = ctx.stripe_webhook_secret.as_deref() else {
        return Err(ApiError::new(
            503,
            "webhook_not_configured",
            "the Stripe webhook is disabled: set STRIPE_WEBHOOK_SECRET and restart herald",
        ));
    };
    let now_secs = crate::time::system_now_ms() / 1000;
    stripe::verify(req.header("stripe-signature"), &req.body, secret, now_secs)
        .map_err(|e| ApiError::new(400, "invalid_signature", e.to_string()))?;
    let duplicate = stripe::handle(&ctx.notifier, &ctx.app, &req.body)?;
    Ok(Reply::json(
        200,
        &json!({ "received": true, "duplicate": duplicate }),
    ))
}
