//! An org's billing entitlement as the API shows it, and the writes the
//! Stripe webhook makes to it. Every query is confined to one org's scope.

use serde::Serialize;

use super::error::AppResult;
use super::tenant::{self, Access, Role, Scope, Tenant};
use crate::args;
use crate::store::{users::User, Store};
use crate::time::rfc3339;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entitlement {
    pub subscription_id: Option<String>,
    pub customer_id: Option<String>,
    pub plan: Option<String>,
    pub status: String,
    pub current_period_end: Option<i64>,
    pub last_event_at: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingView {
    pub plan: Option<String>,
    pub status: Option<String>,
    pub subscription_id: Option<String>,
    pub customer_id: Option<String>,
    pub current_period_end: Option<String>,
}

pub fn get(store: &Store, user: &User, org_id: &str) -> AppResult<BillingView> {
    let access = Access {
        user,
        org_id,
        min_role: Role::Member,
    };
    tenant::read(store, access, |scope, _| {
        Ok(match load(scope)? {
            // An org that never subscribed: every field null.
            None => BillingView {
                plan: None,
                status: None,
                subscription_id: None,
                customer_id: None,
                current_period_end: None,
            },
            Some(e) => BillingView {
                plan: e.plan,
                status: Some(e.status),
                subscription_id: e.subscription_id,
                customer_id: e.customer_id,
                current_period_end: e.current_period_end.map(rfc3339),
            },
        })
    })
}

pub fn load(scope: &impl Scope) -> AppResult<Option<Entitlement>> {
    Ok(scope.conn().query_opt(
        "SELECT subscription_id, customer_id, plan, status, current_period_end, last_event_at
             FROM plan_entitlements WHERE org_id = ?1",
        args![scope.org_id()],
        |r| {
            Ok(Entitlement {
                subscription_id: r.get(0)?,
                customer_id: r.get(1)?,
                plan: r.get(2)?,
                status: r.get(3)?,
                current_period_end: r.get(4)?,
                last_event_at: r.get(5)?,
            })
        },
    )?)
}

/// Creates or replaces the org's entitlement.
pub fn save(tenant: &Tenant<'_, '_, '_>, e: &Entitlement) -> AppResult<()> {
    let tx = tenant.tx();
    let now = tx.now_ms();
    tx.execute("INSERT INTO plan_entitlements (org_id, subscription_id, customer_id, plan, status,
                                            current_period_end, last_event_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (org_id) DO UPDATE SET
                subscription_id = excluded.subscription_id, customer_id = excluded.customer_id,
                plan = excluded.plan, status = excluded.status,
                current_period_end = excluded.current_period_end,
                last_event_at = excluded.last_event_at, updated_at = excluded.updated_at", args![tenant.org_id(),
            e.subscription_id,
            e.customer_id,
            e.plan,
            e.status,
            e.current_period_end,
            e.last_event_at,
            now])?;
    Ok(())
}
