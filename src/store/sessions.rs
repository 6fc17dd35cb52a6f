//! Browser sessions for the inbox page. The cookie carries a random secret;
//! only its SHA-256 is stored, so a copy of the database signs nobody in, and
//! deleting the row (logout) revokes the session at once.

use super::{Conn, Tx};
use crate::args;

use super::error::StoreResult;
use super::users::User;
use crate::ids;

/// How long a session lasts from sign-in.
pub const LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// Starts a session for `user_id`; returns the secret for the cookie.
pub fn create(tx: &Tx<'_>, user_id: &str) -> StoreResult<String> {
    let secret = ids::new_token().replacen("hrld_", "hses_", 1);
    let now = tx.now_ms();
    // Expired rows of this user go with each sign-in, so the table stays small
    // without a sweeper.
    tx.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND expires_at <= ?2",
        args![user_id, now],
    )?;
    tx.execute(
        "INSERT INTO sessions (id_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        args![ids::hash_secret(&secret), user_id, now, now + LIFETIME_MS],
    )?;
    Ok(secret)
}

/// The user of a live session, if the secret names one.
pub fn user(conn: &Conn<'_>, secret: &str) -> StoreResult<Option<User>> {
    conn.query_opt(
        "SELECT u.id, u.email, u.name FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = ?1 AND s.expires_at > ?2",
        args![ids::hash_secret(secret), conn.now_ms()],
        |r| {
            Ok(User {
                id: r.get(0)?,
                email: r.get(1)?,
                name: r.get(2)?,
            })
        },
    )
}

/// Ends a session; unknown secrets are ignored (logging out twice is fine).
pub fn delete(tx: &Tx<'_>, secret: &str) -> StoreResult<()> {
    tx.execute(
        "DELETE FROM sessions WHERE id_hash = ?1",
        args![ids::hash_secret(secret)],
    )?;
    Ok(())
}

/// Ends every session of `user_id`; how many there were.
pub fn delete_for_user(tx: &Tx<'_>, user_id: &str) -> StoreResult<usize> {
    tx.execute("DELETE FROM sessions WHERE user_id = ?1", args![user_id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{users, Store, Synchronous};

    /// Adds user u1 and starts a session for it; the secret.
    fn sign_in_u1(store: &Store) -> String {
        let user = User {
            id: "u1".into(),
            email: "u1@x.test".into(),
            name: "U".into(),
        };
        store
            .write(|tx| {
                users::upsert(tx, &user)?;
                create(tx, "u1")
            })
            .unwrap()
    }

    #[test]
    fn a_session_signs_in_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let secret = sign_in_u1(&store);
        let found = store.read(|c| super::user(c, &secret)).unwrap();
        assert_eq!(found.map(|u| u.id).as_deref(), Some("u1"));
        assert!(store
            .read(|c| super::user(c, "hses_nope"))
            .unwrap()
            .is_none());
        let stored: String = store
            .read(|c| c.query_one("SELECT id_hash FROM sessions", args![], |r| r.get(0)))
            .unwrap();
        assert_ne!(stored, secret, "only the hash is stored");
        store.write(|tx| delete(tx, &secret)).unwrap();
        assert!(store.read(|c| super::user(c, &secret)).unwrap().is_none());
    }

    #[test]
    fn a_session_ends_when_the_clock_passes_its_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::time::Clock::manual(1_700_000_000_000);
        let store =
            Store::open_with_clock(&dir.path().join("t.db"), Synchronous::Normal, clock.clone())
                .unwrap();
        let secret = sign_in_u1(&store);
        let signed_in = || store.read(|c| super::user(c, &secret)).unwrap().is_some();
        clock.advance(std::time::Duration::from_millis(LIFETIME_MS as u64 - 1));
        assert!(signed_in(), "one millisecond before the end");
        clock.advance(std::time::Duration::from_millis(1));
        assert!(!signed_in(), "expired at its lifetime, no waiting needed");
    }
}
