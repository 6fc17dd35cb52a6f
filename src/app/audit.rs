//! The append-only audit log: rows are appended inside the transaction of
//! the action they record (so an action and its audit row commit or roll back
//! together) and listed newest first per org. The schema's triggers refuse
//! UPDATE and DELETE, so nothing here could change a row even by mistake.

use serde::Serialize;
use serde_json::Value;

use super::error::{AppError, AppResult};
use super::tenant::{Scope, Tenant};
use crate::args;
use crate::time::rfc3339;

pub const MAX_PAGE: usize = 100;

/// Appends an audit row for `tenant`'s org, in its transaction.
pub fn append(
    tenant: &Tenant<'_, '_, '_>,
    actor_user_id: Option<&str>,
    action: &str,
    (subject_type, subject_id): (&str, &str),
    payload: &Value,
) -> AppResult<()> {
    let tx = tenant.tx();
    tx.execute(
        "INSERT INTO audit_log (org_id, actor_user_id, action, subject_type, subject_id,
                                    payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            tenant.org_id(),
            actor_user_id,
            action,
            subject_type,
            subject_id,
            payload.to_string(),
            tx.now_ms()
        ],
    )?;
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: String,
    pub action: String,
    pub actor_user_id: Option<String>,
    pub subject_type: String,
    pub subject_id: String,
    pub payload: Value,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<Entry>,
    pub next_cursor: Option<String>,
}

/// Newest first; `cursor` is the id of the last entry of the previous page.
pub fn list(scope: &impl Scope, cursor: Option<&str>, limit: usize) -> AppResult<Page> {
    let before = match cursor {
        None => i64::MAX,
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| AppError::BadInput("invalid cursor".into()))?,
    };
    let mut items = scope.conn().query_all(
        "SELECT id, action, actor_user_id, subject_type, subject_id, payload, created_at
         FROM audit_log WHERE org_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        args![scope.org_id(), before, limit as i64 + 1],
        |r| {
            let payload: String = r.get(5)?;
            Ok(Entry {
                id: r.get::<i64>(0)?.to_string(),
                action: r.get(1)?,
                actor_user_id: r.get(2)?,
                subject_type: r.get(3)?,
                subject_id: r.get(4)?,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                created_at: rfc3339(r.get(6)?),
            })
        },
    )?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}
