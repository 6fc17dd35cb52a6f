//! Users (notification recipients) and their API tokens. Users are upserted by
//! the embedding application under its own ids; tokens are stored as SHA-256
//! hashes and the secret is returned exactly once.

use super::{Conn, Row, Tx};
use crate::args;
use serde::Serialize;

use super::error::{StoreError, StoreResult};
use crate::ids;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// Creates or updates a user; returns true when the user is new.
pub fn upsert(tx: &Tx<'_>, user: &User) -> StoreResult<bool> {
    let now = tx.now_ms();
    let existed = exists(tx, &user.id)?;
    tx.execute(
        "INSERT INTO users (id, email, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name,
                                        updated_at = excluded.updated_at",
        args![user.id, user.email, user.name, now],
    )?;
    Ok(!existed)
}

pub fn exists(conn: &Conn<'_>, id: &str) -> StoreResult<bool> {
    Ok(conn
        .query_opt("SELECT 1 FROM users WHERE id = ?1", args![id], |_| Ok(()))?
        .is_some())
}

/// A user's time zone (an IANA name) and quiet hours (minutes after local
/// midnight), and their locale (a canonical BCP 47 tag), as stored; None
/// where unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuietSettings {
    pub timezone: Option<String>,
    pub quiet_from: Option<i64>,
    pub quiet_to: Option<i64>,
    pub locale: Option<String>,
}

/// A user's address, quiet-hours settings and locale, or None for an
/// unknown id:
/// all the dispatcher needs of a recipient, in one read without the rest
/// of the row.
pub fn reach_of(conn: &Conn<'_>, id: &str) -> StoreResult<Option<(String, QuietSettings)>> {
    conn.query_opt(
        "SELECT email, timezone, quiet_from, quiet_to, locale FROM users WHERE id = ?1",
        args![id],
        |r| Ok((r.get(0)?, quiet_from_row(r, 1)?)),
    )
}

/// A user's settings; `NotFound` for an unknown id.
pub fn settings_of(conn: &Conn<'_>, id: &str) -> StoreResult<QuietSettings> {
    conn.query_one(
        "SELECT timezone, quiet_from, quiet_to, locale FROM users WHERE id = ?1",
        args![id],
        |r| quiet_from_row(r, 0),
    )
}

/// `timezone, quiet_from, quiet_to, locale` from column `first` on.
fn quiet_from_row(r: &Row<'_>, first: usize) -> StoreResult<QuietSettings> {
    Ok(QuietSettings {
        timezone: r.get(first)?,
        quiet_from: r.get(first + 1)?,
        quiet_to: r.get(first + 2)?,
        locale: r.get(first + 3)?,
    })
}

/// Sets (or with None clears) a user's locale, a canonical BCP 47 tag;
/// `NotFound` for an unknown id.
pub fn set_locale(tx: &Tx<'_>, id: &str, locale: Option<&str>) -> StoreResult<()> {
    let changed = tx.execute(
        "UPDATE users SET locale = ?2, updated_at = ?3 WHERE id = ?1",
        args![id, locale, tx.now_ms()],
    )?;
    found(changed)
}

/// Sets (or with None clears) a user's time zone; `NotFound` for an
/// unknown id.
pub fn set_timezone(tx: &Tx<'_>, id: &str, timezone: Option<&str>) -> StoreResult<()> {
    let changed = tx.execute(
        "UPDATE users SET timezone = ?2, updated_at = ?3 WHERE id = ?1",
        args![id, timezone, tx.now_ms()],
    )?;
    found(changed)
}

/// Sets (or with None clears) a user's quiet hours, (from, to) in minutes
/// after local midnight; `NotFound` for an unknown id.
pub fn set_quiet_hours(tx: &Tx<'_>, id: &str, window: Option<(i64, i64)>) -> StoreResult<()> {
    let (from, to) = (window.map(|w| w.0), window.map(|w| w.1));
    let changed = tx.execute(
        "UPDATE users SET quiet_from = ?2, quiet_to = ?3, updated_at = ?4 WHERE id = ?1",
        args![id, from, to, tx.now_ms()],
    )?;
    found(changed)
}

fn found(changed: usize) -> StoreResult<()> {
    match changed {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

pub fn by_id(conn: &Conn<'_>, id: &str) -> StoreResult<Option<User>> {
    conn.query_opt(
        "SELECT id, email, name FROM users WHERE id = ?1",
        args![id],
        user_from_row,
    )
}

fn user_from_row(r: &Row<'_>) -> StoreResult<User> {
    Ok(User {
        id: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
    })
}

pub fn count(conn: &Conn<'_>) -> StoreResult<i64> {
    conn.query_one("SELECT COUNT(*) FROM users", args![], |r| r.get(0))
}

/// Issues a new token for `user_id` and returns the secret (never stored).
pub fn issue_token(tx: &Tx<'_>, user_id: &str) -> StoreResult<String> {
    let token = ids::new_token();
    tx.execute(
        "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES (?1, ?2, ?3)",
        args![ids::hash_secret(&token), user_id, tx.now_ms()],
    )?;
    Ok(token)
}

/// Revokes every token of `user_id`; how many there were.
pub fn revoke_tokens(tx: &Tx<'_>, user_id: &str) -> StoreResult<usize> {
    tx.execute("DELETE FROM api_tokens WHERE user_id = ?1", args![user_id])
}

/// The user a bearer token belongs to, if any.
pub fn by_token(conn: &Conn<'_>, token: &str) -> StoreResult<Option<User>> {
    conn.query_opt(
        "SELECT u.id, u.email, u.name FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1",
        args![ids::hash_secret(token)],
        user_from_row,
    )
}
