//! Creating an organization: the org, its creator as owner and the audit row
//! in one transaction. Creation is the one org write that cannot go through
//! the membership check, since nobody is a member yet.

use serde_json::json;

use super::audit;
use super::error::{AppError, AppResult};
use super::tenant::{self, Role, Tenant};
use crate::args;
use crate::ids;
use crate::notify::Notifier;
use crate::store::{users::User, Tx};

pub const MAX_NAME: usize = 200;

pub struct Created {
    pub id: String,
    pub name: String,
}

pub fn create(notifier: &Notifier, user: &User, name: &str) -> AppResult<Created> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME} printable characters"),
        ));
    }
    let id = ids::new_id("org");
    notifier.transaction(|outbox| {
        insert(outbox.tx(), &id, name)?;
        let mut tenant = Tenant::enter(outbox, &id)?;
        let member_id = tenant::add_member(&tenant, &user.id, Role::Owner)?;
        audit::append(
            &tenant,
            Some(&user.id),
            "org.created",
            ("organization", &id),
            &json!({ "name": name, "ownerMemberId": member_id }),
        )?;
        tenant.emit(
            super::events::ORGANIZATION_PROVISIONED,
            json!({ "userId": user.id, "organizationId": id, "via": "created" }),
        )?;
        Ok::<_, AppError>(())
    })?;
    Ok(Created {
        id,
        name: name.to_string(),
    })
}

pub fn insert(tx: &Tx<'_>, id: &str, name: &str) -> AppResult<()> {
    tx.execute(
        "INSERT INTO organizations (id, name, created_at) VALUES (?1, ?2, ?3)",
        args![id, name, tx.now_ms()],
    )?;
    Ok(())
}
