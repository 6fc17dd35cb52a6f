//! Users (notification recipients) and their API tokens. Users are upserted by
//! the embedding application under its own ids; tokens are stored as SHA-256
//! hashes and the secret is returned exactly once.

use super::{Conn, Row, Tx};
use crate::args;
use serde::Serialize;

use super::error::StoreResult;
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

/// A user's address, or None for an unknown id: all the dispatcher needs
/// of a recipient, read without the rest of the row.
pub fn email_of(conn: &Conn<'_>, id: &str) -> StoreResult<Option<String>> {
    conn.query_opt("SELECT email FROM users WHERE id = ?1", args![id], |r| {
        r.get(0)
    })
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
