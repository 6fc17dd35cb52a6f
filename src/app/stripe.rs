//! The Stripe billing webhook (SPEC 4.4). `verify` checks `Stripe-Signature`
//! over the raw body exactly as Stripe documents it (HMAC-SHA256 of
//! "{t}.{body}", any matching `v1`, constant-time, 300 s tolerance). `handle`
//! then claims the event id in `processed_events` and applies it in the same
//! transaction, so a replay changes nothing and a failure rolls back the
//! claim too, letting Stripe's redelivery succeed later.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::audit;
use super::billing::{self, Entitlement};
use super::error::{AppError, AppResult};
use super::members::owner_user_ids;
use super::settings::AppSettings;
use super::tenant::{Scope, Tenant};
use crate::args;
use crate::notify::{Event, Notifier, Outbox, Recipient};

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance between the signed timestamp and now.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed(&'static str),
    OutsideTolerance,
    NoMatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Missing => f.write_str("missing Stripe-Signature header"),
            SignatureError::Malformed(why) => write!(f, "malformed Stripe-Signature header: {why}"),
            SignatureError::OutsideTolerance => write!(
                f,
                "Stripe-Signature timestamp is more than {TOLERANCE_SECS} s away from now"
            ),
            SignatureError::NoMatch => {
                f.write_str("no v1 signature in Stripe-Signature matches the payload")
            }
        }
    }
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Checks a `Stripe-Signature` header (`t=...,v1=...[,v1=...][,v0=...]`)
/// against the raw body. Schemes other than v1 are ignored, as Stripe's
/// libraries do; any one matching v1 is enough (secret rotation sends two).
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "t" if timestamp.is_none() => timestamp = Some(value.trim()),
            "v1" => candidates.push(value.trim()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= timestamp"))?;
    let t: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("t= is not a Unix timestamp"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    if (now_secs - t).abs() > TOLERANCE_SECS {
        return Err(SignatureError::OutsideTolerance);
    }
    let expected = mac(secret, timestamp, body);
    let matched = candidates.iter().any(|candidate| {
        decode_hex(candidate).is_some_and(|bytes| expected.clone().verify_slice(&bytes).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The header Stripe would send for `body` at `t` (for `herald stripe sign`
/// and tests).
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    let sig = mac(secret, &t.to_string(), body).finalize().into_bytes();
    format!("t={t},v1={}", crate::ids::hex(&sig))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The parts of a Stripe event herald reads.
struct StripeEvent {
    id: String,
    kind: String,
    created_ms: i64,
    object: Value,
}

fn parse_event(body: &[u8]) -> AppResult<StripeEvent> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AppError::BadInput(format!("webhook body is not valid JSON: {e}")))?;
    let text = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .map(str::to_string)
            .ok_or_else(|| AppError::BadInput(format!("webhook event has no {field}")))
    };
    let id = text("id")?;
    let kind = text("type")?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .ok_or_else(|| AppError::BadInput("webhook event has no created timestamp".into()))?;
    let object = value
        .pointer("/data/object")
        .filter(|o| o.is_object())
        .cloned()
        .ok_or_else(|| AppError::BadInput("webhook event has no data.object".into()))?;
    Ok(StripeEvent {
        id,
        kind,
        created_ms: created.saturating_mul(1000),
        object,
    })
}

/// Applies a verified event; returns true when it was a replay.
pub fn handle(notifier: &Notifier, settings: &AppSettings, body: &[u8]) -> AppResult<bool> {
    let event = parse_event(body)?;
    notifier.transaction(|outbox| {
        let tx = outbox.tx();
        let claimed = tx.execute(
            "INSERT INTO processed_events (source, event_id, type, processed_at)
                 VALUES ('stripe', ?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            args![event.id, event.kind, tx.now_ms()],
        )?;
        if claimed == 0 {
            log::info!("stripe event {} already processed: duplicate", event.id);
            return Ok(true);
        }
        match event.kind.as_str() {
            "checkout.session.completed" => checkout_completed(outbox, &event)?,
            "customer.subscription.updated" => {
                subscription_changed(outbox, settings, &event, false)?
            }
            "customer.subscription.deleted" => {
                subscription_changed(outbox, settings, &event, true)?
            }
            other => log::info!(
                "stripe event {} of type {other} recorded and ignored",
                event.id
            ),
        }
        if settings.hooks.fail_stripe_event.as_deref() == Some(event.id.as_str()) {
            return Err(AppError::Internal(format!(
                "HERALD_TEST_FAIL_STRIPE_EVENT: forced failure handling {}",
                event.id
            )));
        }
        Ok(false)
    })
}

/// A string field, or the `id` of an expanded object in its place.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn org_exists(outbox: &Outbox<'_, '_>, org_id: &str) -> AppResult<bool> {
    Ok(outbox
        .tx()
        .query_opt(
            "SELECT 1 FROM organizations WHERE id = ?1",
            args![org_id],
            |_| Ok(()),
        )?
        .is_some())
}

fn checkout_completed(outbox: &mut Outbox<'_, '_>, event: &StripeEvent) -> AppResult<()> {
    let session = &event.object;
    let org_id = id_of(session.get("client_reference_id"))
        .or_else(|| id_of(session.pointer("/metadata/organizationId")));
    let Some(org_id) = org_id.filter(|id| org_exists(outbox, id).unwrap_or(false)) else {
        // Redelivery cannot make an unknown org appear: record and move on.
        log::warn!(
            "stripe event {}: checkout session names no known organization; ignored",
            event.id
        );
        return Ok(());
    };
    let Some(subscription_id) = id_of(session.get("subscription")) else {
        log::info!(
            "stripe event {}: checkout without a subscription; ignored",
            event.id
        );
        return Ok(());
    };
    let tenant = Tenant::enter(outbox, &org_id)?;
    let mut entitlement = billing::load(&tenant)?.unwrap_or_else(|| Entitlement {
        status: "active".into(),
        ..Entitlement::default()
    });
    entitlement.subscription_id = Some(subscription_id.clone());
    entitlement.customer_id = id_of(session.get("customer")).or(entitlement.customer_id);
    billing::save(&tenant, &entitlement)?;
    audit::append(
        &tenant,
        None,
        "billing.checkout.completed",
        ("subscription", &subscription_id),
        &json!({ "customerId": entitlement.customer_id, "stripeEventId": event.id }),
    )
}

fn subscription_changed(
    outbox: &mut Outbox<'_, '_>,
    settings: &AppSettings,
    event: &StripeEvent,
    deleted: bool,
) -> AppResult<()> {
    let sub = &event.object;
    let Some(sub_id) = id_of(sub.get("id")) else {
        log::warn!(
            "stripe event {}: subscription without an id; ignored",
            event.id
        );
        return Ok(());
    };
    // Which org owns the subscription: the entitlement that names it, else
    // the org the subscription's metadata points at.
    let owner: Option<String> = outbox.tx().query_opt(
        "SELECT org_id FROM plan_entitlements WHERE subscription_id = ?1",
        args![&sub_id],
        |r| r.get(0),
    )?;
    let org_id = owner.or_else(|| {
        id_of(sub.pointer("/metadata/organizationId"))
            .filter(|id| org_exists(outbox, id).unwrap_or(false))
    });
    let Some(org_id) = org_id else {
        log::warn!(
            "stripe event {}: subscription {sub_id} belongs to no known organization; ignored",
            event.id
        );
        return Ok(());
    };
    let mut tenant = Tenant::enter(outbox, &org_id)?;
    let before = billing::load(&tenant)?.unwrap_or_default();
    if before
        .last_event_at
        .is_some_and(|last| event.created_ms < last)
    {
        log::info!(
            "stripe event {}: older than the last applied subscription event; stale, ignored",
            event.id
        );
        return Ok(());
    }
    let mut after = before.clone();
    after.subscription_id = Some(sub_id.clone());
    after.customer_id = id_of(sub.get("customer")).or(before.customer_id.clone());
    after.last_event_at = Some(event.created_ms);
    after.status = match sub.get("status").and_then(Value::as_str) {
        Some(status) => status.to_string(),
        None if deleted => "canceled".into(),
        None => before.status.clone(),
    };
    let items = sub
        .pointer("/items/data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let prices: Vec<&str> = items
        .iter()
        .filter_map(|item| item.pointer("/price/id").and_then(Value::as_str))
        .collect();
    match prices.iter().find_map(|p| settings.catalog.plan_for(p)) {
        Some(plan) => after.plan = Some(plan.to_string()),
        None if !prices.is_empty() => log::warn!(
            "stripe event {}: price {prices:?} is not in data/catalog.json; keeping plan {:?}",
            event.id,
            before.plan
        ),
        None => {}
    }
    // Current API: the period end lives on each item; older API versions put
    // it on the subscription itself.
    let period_end = items
        .iter()
        .filter_map(|item| item.get("current_period_end").and_then(Value::as_i64))
        .max()
        .or_else(|| sub.get("current_period_end").and_then(Value::as_i64));
    if let Some(end) = period_end {
        after.current_period_end = Some(end.saturating_mul(1000));
    }
    billing::save(&tenant, &after)?;
    let action = if deleted {
        "billing.subscription.deleted"
    } else {
        "billing.subscription.updated"
    };
    audit::append(
        &tenant,
        None,
        action,
        ("subscription", &sub_id),
        &json!({
            "plan": after.plan, "status": after.status, "before": before.status,
            "stripeEventId": event.id,
        }),
    )?;
    if after.status == "past_due" && before.status != "past_due" {
        // Owners as of this transaction, so they match the state committed.
        let owners = owner_user_ids(&tenant)?;
        let mut notice = Event::new(
            "org.billing.past_due",
            owners.into_iter().map(Recipient::User).collect(),
            json!({
                "orgName": tenant.org().name,
                "plan": after.plan.clone().unwrap_or_else(|| "unknown".into()),
            }),
        );
        notice.subject_id = Some(sub_id);
        notice.idempotency_key = Some(format!("stripe:{}:past_due", event.id));
        tenant.enqueue(&notice)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    fn v1(body: &[u8], t: i64, secret: &str) -> String {
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        crate::ids::hex(&mac.finalize().into_bytes())
    }

    #[test]
    fn accepts_stripes_documented_header_shapes() {
        let body = br#"{"id":"evt_1"}"#;
        let t = 1_700_000_000;
        let good = v1(body, t, SECRET);
        let other = v1(body, t, "whsec_old");
        let v0 = v1(body, t, "v0-secret");
        let ok = |h: &str| verify(Some(h), body, SECRET, t + 10);
        assert_eq!(ok(&sign(body, SECRET, t)), Ok(()));
        assert_eq!(ok(&format!("t={t},v1={other},v1={good},v0={v0}")), Ok(()));
        assert_eq!(ok(&format!("t={t}, v1={good}, v0={v0}")), Ok(()));
        assert_eq!(
            ok(&format!("t={t},v1={other},v0={good}")),
            Err(SignatureError::NoMatch),
            "a v0 entry is never trusted"
        );
        assert_eq!(
            ok(&format!("t={t},v0={good}")),
            Err(SignatureError::Malformed("no v1= signature"))
        );
        assert_eq!(
            ok(&format!("v1={good}")),
            Err(SignatureError::Malformed("no t= timestamp"))
        );
        assert_eq!(
            ok(&format!("t={t},v1=zz{good}")),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(verify(None, body, SECRET, t), Err(SignatureError::Missing));
        assert_eq!(
            verify(
                Some(&format!("t={t},v1={good}")),
                b"{\"id\":\"evt_2\"}",
                SECRET,
                t
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(Some(&format!("t={t},v1={good}")), body, SECRET, t + 301),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(Some(&format!("t={t},v1={good}")), body, SECRET, t + 300),
            Ok(())
        );
    }
}
