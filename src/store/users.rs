//! Users (notification recipients) and their API tokens. Users are upserted by
//! the embedding application under its own ids; tokens are stored as SHA-256
//! hashes and the secret is returned exactly once.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::{now_ms, StoreResult};
use crate::ids;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// Creates or updates a user; returns true when the user is new.
pub fn upsert(tx: &Transaction<'_>, user: &User) -> StoreResult<bool> {
    let now = now_ms();
    let existed = exists(tx, &user.id)?;
    tx.prepare_cached(
        "INSERT INTO users (id, email, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name,
                                        updated_at = excluded.updated_at",
    )?
    .execute(params![user.id, user.email, user.name, now])?;
    Ok(!existed)
}

pub fn exists(conn: &Connection, id: &str) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A user's address, or None for an unknown id: all the dispatcher needs
/// of a recipient, read without the rest of the row.
pub fn email_of(conn: &Connection, id: &str) -> StoreResult<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT email FROM users WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

pub fn by_id(conn: &Connection, id: &str) -> StoreResult<Option<User>> {
    Ok(conn
        .prepare_cached("SELECT id, email, name FROM users WHERE id = ?1")?
        .query_row([id], user_from_row)
        .optional()?)
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        email: r.get(1)?,
        name: r.get(2)?,
    })
}

pub fn count(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
}

/// Issues a new token for `user_id` and returns the secret (never stored).
pub fn issue_token(tx: &Transaction<'_>, user_id: &str) -> StoreResult<String> {
    let token = ids::new_token();
    tx.prepare_cached(
        "INSERT INTO api_tokens (token_hash, user_id, created_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![ids::hash_secret(&token), user_id, now_ms()])?;
    Ok(token)
}

/// Revokes every token of `user_id`; how many there were.
pub fn revoke_tokens(tx: &Transaction<'_>, user_id: &str) -> StoreResult<usize> {
    Ok(tx
        .prepare_cached("DELETE FROM api_tokens WHERE user_id = ?1")?
        .execute([user_id])?)
}

/// The user a bearer token belongs to, if any.
pub fn by_token(conn: &Connection, token: &str) -> StoreResult<Option<User>> {
    Ok(conn
        .prepare_cached(
            "SELECT u.id, u.email, u.name FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = ?1",
        )?
        .query_row([ids::hash_secret(token)], user_from_row)
        .optional()?)
}
