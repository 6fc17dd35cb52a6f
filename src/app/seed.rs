//! Demo data for `herald seed` and `herald serve --demo`: org Acme (id
//! `org_acme`) with owner Alice, admin Bob and member Carol, and an active
//! Stripe subscription, so every README flow can be tried with curl. Fixed
//! ids keep the walkthrough copy-pasteable. Runs only on an empty database.

use serde_json::json;

use super::billing::{self, Entitlement};
use super::error::AppResult;
use super::tenant::{self, Role, Tenant};
use super::{audit, orgs};
use crate::args;
use crate::notify::Notifier;
use crate::store::users;

pub const ORG_ID: &str = "org_acme";
pub const SUBSCRIPTION_ID: &str = "sub_demo_acme";

/// (user id, email, name, member id, role)
const PEOPLE: &[(&str, &str, &str, &str, Role)] = &[
    (
        "alice",
        "alice@acme.test",
        "Alice",
        "mem_alice",
        Role::Owner,
    ),
    ("bob", "bob@acme.test", "Bob", "mem_bob", Role::Admin),
    (
        "carol",
        "carol@acme.test",
        "Carol",
        "mem_carol",
        Role::Member,
    ),
];

/// Seeds an empty database; returns each user id with its new token, or
/// `None` when the database already holds users or organizations.
pub fn seed(notifier: &Notifier) -> AppResult<Option<Vec<(String, String)>>> {
    notifier.transaction(|outbox| {
        let has_data: i64 = outbox.tx().query_one(
            "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM organizations)",
            args![],
            |r| r.get(0),
        )?;
        if has_data > 0 {
            return Ok(None);
        }
        let mut tokens = Vec::new();
        for (id, email, name, _, _) in PEOPLE {
            let user = users::User {
                id: id.to_string(),
                email: email.to_string(),
                name: name.to_string(),
            };
            users::upsert(outbox.tx(), &user)?;
            tokens.push((id.to_string(), users::issue_token(outbox.tx(), id)?));
        }
        orgs::insert(outbox.tx(), ORG_ID, "Acme")?;
        let tenant = Tenant::enter(outbox, ORG_ID)?;
        for (user_id, _, _, member_id, role) in PEOPLE {
            tenant::insert_member(&tenant, member_id, user_id, *role)?;
        }
        audit::append(
            &tenant,
            Some("alice"),
            "org.created",
            ("organization", ORG_ID),
            &json!({ "name": "Acme", "seeded": true }),
        )?;
        billing::save(
            &tenant,
            &Entitlement {
                subscription_id: Some(SUBSCRIPTION_ID.into()),
                customer_id: Some("cus_demo_acme".into()),
                plan: Some("pro".into()),
                status: "active".into(),
                current_period_end: Some(tenant.tx().now_ms() + 30 * 24 * 3600 * 1000),
                last_event_at: None,
            },
        )?;
        Ok(Some(tokens))
    })
}
