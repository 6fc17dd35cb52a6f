//! Referral credits (SPEC 4.5): an append-only ledger whose unique `ref_id`
//! (`referral:<invitationId>:referrer|referee`) makes every grant idempotent:
//! a repeat reports `duplicate_grant` and changes nothing. A grant and its
//! `billing.referral.granted` notification share one transaction. The
//! `billing.referral` listener grants on domain events; `reconcile` (the
//! CLI, and a rare sweep in `serve`) grants whatever a lost event missed.

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};
use serde::Serialize;
use serde_json::json;

use super::error::{AppError, AppResult};
use super::events::{INVITATION_ACCEPTED, ORGANIZATION_PROVISIONED};
use crate::args;
use crate::notify::{DomainEvent, Event, Listener, ListenerError, Notifier, Outbox, Recipient};
use crate::store::{Conn, Store};
use crate::time::rfc3339;

/// The billing listener's name, under which its progress is stored.
pub const LISTENER: &str = "billing.referral";
pub const GRANTED_TYPE: &str = "billing.referral.granted";
/// Ledger rows `GET /v1/credits` shows at most.
pub const MAX_ITEMS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Granted,
    /// The ref id is already in the ledger; nothing was written.
    Duplicate,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Granted => "granted",
            Grant::Duplicate => "duplicate_grant",
        }
    }
}

/// Credits `amount` to `user_id` under `ref_id` and enqueues the
/// notification, both in the caller's transaction; a known `ref_id` is a
/// no-op reported as `Duplicate`.
pub fn grant(
    outbox: &mut Outbox<'_, '_>,
    user_id: &str,
    ref_id: &str,
    amount: i64,
    reason: &str,
) -> AppResult<Grant> {
    let tx = outbox.tx();
    let inserted = tx.execute(
        "INSERT INTO credit_ledger (ref_id, user_id, amount, reason, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (ref_id) DO NOTHING",
        args![ref_id, user_id, amount, reason, tx.now_ms()],
    )?;
    if inserted == 0 {
        return Ok(Grant::Duplicate);
    }
    let balance = balance(outbox.tx(), user_id)?;
    let mut event = Event::new(
        GRANTED_TYPE,
        vec![Recipient::User(user_id.to_string())],
        json!({ "amount": amount, "balance": balance, "refId": ref_id, "reason": reason }),
    );
    event.subject_id = Some(ref_id.to_string());
    outbox.enqueue(&event)?;
    Ok(Grant::Granted)
}

fn balance(conn: &Conn<'_>, user_id: &str) -> AppResult<i64> {
    Ok(conn.query_one(
        "SELECT COALESCE(SUM(amount), 0) FROM credit_ledger WHERE user_id = ?1",
        args![user_id],
        |r| r.get(0),
    )?)
}

/// What granting one accepted invitation did to each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvitationGrants {
    pub referrer: Grant,
    pub referee: Grant,
}

impl InvitationGrants {
    pub fn granted(&self) -> usize {
        [self.referrer, self.referee]
            .iter()
            .filter(|g| **g == Grant::Granted)
            .count()
    }
}

pub fn ref_id(invitation_id: &str, side: &str) -> String {
    format!("referral:{invitation_id}:{side}")
}

/// Grants the inviter and the invitee of an accepted invitation; `None` when
/// the invitation does not exist or is not accepted.
pub fn grant_for_invitation(
    outbox: &mut Outbox<'_, '_>,
    amount: i64,
    invitation_id: &str,
) -> AppResult<Option<InvitationGrants>> {
    let parties: Option<(String, String)> = outbox.tx().query_opt(
        "SELECT inviter_user_id, accepted_user_id FROM invitations
             WHERE id = ?1 AND status = 'accepted' AND accepted_user_id IS NOT NULL",
        args![invitation_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((referrer, referee)) = parties else {
        return Ok(None);
    };
    let grants = InvitationGrants {
        referrer: grant(
            outbox,
            &referrer,
            &ref_id(invitation_id, "referrer"),
            amount,
            "referral: you invited a new member",
        )?,
        referee: grant(
            outbox,
            &referee,
            &ref_id(invitation_id, "referee"),
            amount,
            "referral: you joined by invitation",
        )?,
    };
    for (side, g) in [("referrer", grants.referrer), ("referee", grants.referee)] {
        log::info!("{}: {}", ref_id(invitation_id, side), g.as_str());
    }
    Ok(Some(grants))
}

/// The billing listener, subscribed only when `HERALD_REFERRAL_CREDITS` is
/// set. Both events lead to the same idempotent grant, so the double
/// emission on accept credits once.
pub struct ReferralCredits {
    pub amount: i64,
}

impl Listener for ReferralCredits {
    fn name(&self) -> &str {
        LISTENER
    }

    fn wants(&self, kind: &str) -> bool {
        kind == INVITATION_ACCEPTED || kind == ORGANIZATION_PROVISIONED
    }

    fn handle(
        &self,
        outbox: &mut Outbox<'_, '_>,
        event: &DomainEvent,
    ) -> Result<(), ListenerError> {
        let invitations = if event.kind == INVITATION_ACCEPTED {
            vec![event.str_field("invitationId")?.to_string()]
        } else {
            // Any invitation this user accepted: a provisioning carries the
            // user, not the invitation the ledger keys need.
            let user_id = event.str_field("userId")?;
            outbox.tx().query_all(
                "SELECT id FROM invitations WHERE accepted_user_id = ?1 AND status = 'accepted'
                 ORDER BY accepted_at, id",
                args![user_id],
                |r| r.get::<String>(0),
            )?
        };
        for id in invitations {
            if grant_for_invitation(outbox, self.amount, &id)?.is_none() {
                log::warn!(
                    "{}: invitation {id} is not accepted; nothing granted",
                    event.id
                );
            }
        }
        Ok(())
    }
}

impl From<AppError> for ListenerError {
    fn from(e: AppError) -> Self {
        ListenerError::new(e)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Accepted invitations that lacked at least one ledger row.
    pub invitations: usize,
    /// Ledger rows written.
    pub grants: usize,
}

/// Finds accepted invitations missing a ledger row and grants them, one
/// transaction per invitation (short write locks; a failure costs one).
pub fn reconcile(notifier: &Notifier, amount: i64) -> AppResult<Reconciled> {
    let mut done = Reconciled::default();
    let mut after = String::new();
    loop {
        let batch = notifier.store().read(|c| missing_grants(c, &after, 200))?;
        let Some(last) = batch.last() else {
            return Ok(done);
        };
        after = last.clone();
        for id in batch {
            let grants = notifier.transaction(|outbox| grant_for_invitation(outbox, amount, &id));
            match grants {
                Ok(Some(g)) if g.granted() > 0 => {
                    done.invitations += 1;
                    done.grants += g.granted();
                }
                Ok(_) => {}
                Err(e) => log::error!("reconcile: cannot grant invitation {id}: {e}"),
            }
        }
    }
}

fn missing_grants(conn: &Conn<'_>, after: &str, limit: usize) -> AppResult<Vec<String>> {
    Ok(conn.query_all(
        "SELECT i.id FROM invitations i
         WHERE i.status = 'accepted' AND i.accepted_user_id IS NOT NULL AND i.id > ?1
           AND (NOT EXISTS (SELECT 1 FROM credit_ledger
                            WHERE ref_id = 'referral:' || i.id || ':referrer')
                OR NOT EXISTS (SELECT 1 FROM credit_ledger
                               WHERE ref_id = 'referral:' || i.id || ':referee'))
         ORDER BY i.id LIMIT ?2",
        args![after, limit as i64],
        |r| r.get(0),
    )?)
}

/// The periodic reconcile in `serve`: a thread asleep on its stop channel
/// between sweeps, so it costs nothing while idle.
pub struct Sweeper {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Sweeper {
    pub fn start(notifier: Notifier, amount: i64, every: Duration) -> std::io::Result<Sweeper> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = std::thread::Builder::new()
            .name("herald-reconcile".into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => match reconcile(&notifier, amount) {
                        Ok(r) if r.grants > 0 => log::warn!(
                            "reconcile sweep granted {} missing referral credits for {} invitations",
                            r.grants,
                            r.invitations
                        ),
                        Ok(_) => log::debug!("reconcile sweep: nothing missing"),
                        Err(e) => log::error!("reconcile sweep failed: {e}"),
                    },
                    _ => return,
                }
            })?;
        Ok(Sweeper { stop, handle })
    }

    /// Stops between sweeps; a sweep in progress finishes first.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    pub id: i64,
    pub ref_id: String,
    pub amount: i64,
    pub reason: String,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct CreditsView {
    pub balance: i64,
    /// Newest first, at most `MAX_ITEMS`.
    pub items: Vec<LedgerEntry>,
}

/// The user's balance and most recent ledger rows, from one snapshot.
pub fn view(store: &Store, user_id: &str) -> AppResult<CreditsView> {
    store.snapshot(|conn| {
        let balance = balance(conn, user_id)?;
        let items = conn.query_all(
            "SELECT id, ref_id, amount, reason, created_at FROM credit_ledger
             WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2",
            args![user_id, MAX_ITEMS as i64],
            |r| {
                Ok(LedgerEntry {
                    id: r.get(0)?,
                    ref_id: r.get(1)?,
                    amount: r.get(2)?,
                    reason: r.get(3)?,
                    created_at: rfc3339(r.get(4)?),
                })
            },
        )?;
        Ok(CreditsView { balance, items })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::notify::{DeliveryPolicy, Registry, Templates};
    use crate::store::{users, Synchronous};

    fn notifier(dir: &tempfile::TempDir) -> Notifier {
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let registry = Registry::embedded().unwrap();
        let templates = Templates::load(&registry, None).unwrap();
        Notifier::new(
            Arc::new(store),
            registry,
            templates,
            DeliveryPolicy::default(),
        )
    }

    fn count(n: &Notifier, sql: &str) -> i64 {
        n.store()
            .read(|c| c.query_one(sql, args![], |r| r.get(0)))
            .unwrap()
    }

    #[test]
    fn a_second_grant_is_a_duplicate_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n = notifier(&dir);
        n.store()
            .write(|tx| {
                users::upsert(
                    tx,
                    &users::User {
                        id: "u1".into(),
                        email: "u1@example.com".into(),
                        name: String::new(),
                    },
                )
            })
            .unwrap();
        let first = n
            .transaction(|o| grant(o, "u1", "referral:inv_1:referee", 500, "test"))
            .unwrap();
        let second = n
            .transaction(|o| grant(o, "u1", "referral:inv_1:referee", 500, "test"))
            .unwrap();
        assert_eq!(
            (first, second.as_str()),
            (Grant::Granted, "duplicate_grant")
        );
        assert_eq!(count(&n, "SELECT COUNT(*) FROM credit_ledger"), 1);
        assert_eq!(count(&n, "SELECT COUNT(*) FROM outbox"), 1);
        let body: String = n
            .store()
            .read(|c| c.query_one("SELECT body FROM outbox", args![], |r| r.get(0)))
            .unwrap();
        assert!(body.contains("\"balance\":500"), "{body}");
        assert_eq!(view(n.store(), "u1").unwrap().balance, 500);
    }
}
