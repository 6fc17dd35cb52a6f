//! Invitations: sendInvitation (SPEC 4.1), list, revoke and accept (4.3).
//! The accept token is random, returned once in the accept link (herald's
//! own accept page, `GET /invitations/accept`) and stored only as its
//! SHA-256. The invitee hears through the seam alone: an existing
//! user gets one inbox row and one email, a non-user one address-only email.

use serde::Serialize;
use serde_json::json;

use super::audit;
use super::error::{AppError, AppResult};
use super::members::display_name;
use super::tenant::{self, Access, Role, Scope, Tenant, TenantRead};
use crate::args;
use crate::ids;
use crate::notify::event::is_plausible_email;
use crate::notify::{Event, Notifier, Recipient};
use crate::store::{users, users::User, Conn, Store};
use crate::time::rfc3339;

/// Milliseconds an invitation stays acceptable.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct Sent {
    pub invitation_id: String,
    pub accept_url: String,
}

pub fn send(
    notifier: &Notifier,
    public_url: &str,
    inviter: &User,
    org_id: &str,
    email: &str,
    role: Role,
) -> AppResult<Sent> {
    let email = email.trim();
    if !is_plausible_email(email) {
        return Err(AppError::invalid("email", "expected an email address"));
    }
    let access = Access {
        user: inviter,
        org_id,
        min_role: Role::Admin,
    };
    let (email, inviter, public_url) = (email.to_string(), inviter.clone(), public_url.to_string());
    tenant::write(notifier, access, move |t, me| {
        let email = email.as_str();
        if role == Role::Owner && me.role != Role::Owner {
            return Err(AppError::Forbidden(
                "only an owner can invite someone as owner".into(),
            ));
        }
        let existing_user = user_by_email(t, email)?;
        if let Some(user_id) = &existing_user {
            if tenant::membership(t, user_id)?.is_some() {
                return Err(AppError::Conflict(format!(
                    "{email} is already a member of this organization"
                )));
            }
        }
        expire_stale(t, email)?;
        if pending_for(t, email)? {
            return Err(AppError::Conflict(format!(
                "{email} already has a pending invitation; revoke it to send a new one"
            )));
        }
        let id = ids::new_id("inv");
        let token = ids::new_token().replacen("hrld_", "hinv_", 1);
        let now = t.tx().now_ms();
        t.tx().execute(
            "INSERT INTO invitations (id, org_id, email, role, token_hash, inviter_user_id,
                                          created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            args![
                id,
                t.org_id(),
                email,
                role.as_str(),
                ids::hash_secret(&token),
                inviter.id,
                now,
                now + INVITATION_TTL_MS
            ],
        )?;
        audit::append(
            t,
            Some(&inviter.id),
            "invitation.sent",
            ("invitation", &id),
            &json!({ "email": email, "role": role.as_str() }),
        )?;
        let accept_url = format!("{public_url}/invitations/accept?token={token}");
        // One recipient either way: the user (inbox + email to their address)
        // or the bare address (email only). Never both, so never two emails.
        let recipient = match existing_user {
            Some(user_id) => Recipient::User(user_id),
            None => Recipient::Address {
                email: email.to_string(),
            },
        };
        let mut event = Event::new(
            "org.invitation.sent",
            vec![recipient],
            json!({
                "invitedEmail": email,
                "role": role.as_str(),
                "orgName": t.org().name,
                "inviterName": display_name(&inviter),
                "acceptUrl": accept_url,
            }),
        );
        event.subject_id = Some(id.clone());
        t.enqueue(&event)?;
        Ok(Sent {
            invitation_id: id,
            accept_url,
        })
    })
}

fn user_by_email(scope: &impl Scope, email: &str) -> AppResult<Option<String>> {
    Ok(scope.conn().query_opt(
        "SELECT id FROM users WHERE lower(email) = lower(?1) ORDER BY created_at, id LIMIT 1",
        args![email],
        |r| r.get(0),
    )?)
}

/// A pending invitation past its expiry no longer blocks a new one.
fn expire_stale(t: &Tenant<'_, '_, '_>, email: &str) -> AppResult<()> {
    let tx = t.tx();
    tx.execute(
        "UPDATE invitations SET status = 'expired'
             WHERE org_id = ?1 AND lower(email) = lower(?2) AND status = 'pending'
               AND expires_at <= ?3",
        args![t.org_id(), email, tx.now_ms()],
    )?;
    Ok(())
}

fn pending_for(scope: &impl Scope, email: &str) -> AppResult<bool> {
    Ok(scope
        .conn()
        .query_opt(
            "SELECT 1 FROM invitations
             WHERE org_id = ?1 AND lower(email) = lower(?2) AND status = 'pending'",
            args![scope.org_id(), email],
            |_| Ok(()),
        )?
        .is_some())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvitationView {
    pub id: String,
    pub email: String,
    pub role: String,
    pub status: String,
    pub inviter_user_id: String,
    pub created_at: String,
    pub expires_at: String,
}

pub fn list(store: &Store, user: &User, org_id: &str) -> AppResult<Vec<InvitationView>> {
    let access = Access {
        user,
        org_id,
        min_role: Role::Admin,
    };
    tenant::read(store, access, |scope, _| {
        let conn = scope.conn();
        let now = conn.now_ms();
        Ok(conn.query_all(
            "SELECT id, email, role, status, inviter_user_id, created_at, expires_at
             FROM invitations WHERE org_id = ?1 ORDER BY created_at DESC, id DESC",
            args![scope.org_id()],
            |r| {
                let status: String = r.get(3)?;
                let expires_at: i64 = r.get(6)?;
                Ok(InvitationView {
                    id: r.get(0)?,
                    email: r.get(1)?,
                    role: r.get(2)?,
                    status: if status == "pending" && expires_at <= now {
                        "expired".into()
                    } else {
                        status
                    },
                    inviter_user_id: r.get(4)?,
                    created_at: rfc3339(r.get(5)?),
                    expires_at: rfc3339(expires_at),
                })
            },
        )?)
    })
}

pub fn revoke(
    notifier: &Notifier,
    user: &User,
    org_id: &str,
    invitation_id: &str,
) -> AppResult<()> {
    let access = Access {
        user,
        org_id,
        min_role: Role::Admin,
    };
    let (user_id, invitation_id) = (user.id.clone(), invitation_id.to_string());
    tenant::write(notifier, access, move |t, _| {
        let invitation_id = invitation_id.as_str();
        let status: String = t
            .tx()
            .query_opt(
                "SELECT status FROM invitations WHERE org_id = ?1 AND id = ?2",
                args![t.org_id(), invitation_id],
                |r| r.get(0),
            )?
            .ok_or_else(|| AppError::NotFound("no such invitation".into()))?;
        if status != "pending" {
            return Err(AppError::Conflict(format!(
                "the invitation is {status}; only a pending invitation can be revoked"
            )));
        }
        t.tx().execute(
            "UPDATE invitations SET status = 'revoked' WHERE org_id = ?1 AND id = ?2",
            args![t.org_id(), invitation_id],
        )?;
        audit::append(
            t,
            Some(&user_id),
            "invitation.revoked",
            ("invitation", invitation_id),
            &json!({}),
        )
    })
}

pub struct Accepted {
    pub organization_id: String,
    pub member_id: String,
}

struct Pending {
    id: String,
    org_id: String,
    email: String,
    role: String,
    status: String,
    inviter_user_id: String,
    expires_at: i64,
}

/// The invitation behind `token` if `user` may accept it now: pending,
/// unexpired and sent to the user's address. Accept and the accept page's
/// preview say no for the same reasons, in the same words.
fn usable(conn: &Conn<'_>, user: &User, token: &str) -> AppResult<Pending> {
    if token.is_empty() || token.len() > 200 {
        return Err(AppError::invalid(
            "token",
            "expected the token from the accept link",
        ));
    }
    let inv = conn
        .query_opt(
            "SELECT id, org_id, email, role, status, inviter_user_id, expires_at
             FROM invitations WHERE token_hash = ?1",
            args![ids::hash_secret(token)],
            |r| {
                Ok(Pending {
                    id: r.get(0)?,
                    org_id: r.get(1)?,
                    email: r.get(2)?,
                    role: r.get(3)?,
                    status: r.get(4)?,
                    inviter_user_id: r.get(5)?,
                    expires_at: r.get(6)?,
                })
            },
        )?
        .ok_or_else(|| AppError::NotFound("no invitation has this token".into()))?;
    match inv.status.as_str() {
        "accepted" => {
            return Err(AppError::Conflict(
                "this invitation was already accepted; the link works once".into(),
            ))
        }
        "revoked" => {
            return Err(AppError::Gone(
                "this invitation was revoked; ask for a new one".into(),
            ))
        }
        "expired" => return Err(expired()),
        _ if inv.expires_at <= conn.now_ms() => return Err(expired()),
        _ => {}
    }
    if !inv.email.eq_ignore_ascii_case(&user.email) {
        return Err(AppError::Forbidden(
            "this invitation was sent to another email address".into(),
        ));
    }
    Ok(inv)
}

fn already_member() -> AppError {
    AppError::Conflict("you are already a member of this organization".into())
}

/// What the accept page shows before the person accepts.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub org_name: String,
    pub role: String,
    pub email: String,
    pub inviter_name: String,
    pub expires_at: String,
}

/// The invitation `user` is about to accept with `token`, refused for the
/// reasons `accept` would refuse it. Changes nothing.
pub fn preview(store: &Store, user: &User, token: &str) -> AppResult<Preview> {
    store.snapshot(|conn| {
        let inv = usable(conn, user, token)?;
        let scope = TenantRead::enter(conn, &inv.org_id)?;
        if tenant::membership(&scope, &user.id)?.is_some() {
            return Err(already_member());
        }
        let inviter = users::by_id(conn, &inv.inviter_user_id)?;
        Ok(Preview {
            org_name: scope.org().name.clone(),
            role: inv.role,
            email: inv.email,
            inviter_name: inviter.as_ref().map_or_else(String::new, display_name),
            expires_at: rfc3339(inv.expires_at),
        })
    })
}

/// The signed-in user accepts with the token from the link. The token is
/// the authority here (the user is not a member yet), so the tenant scope is
/// the invitation's org.
pub fn accept(notifier: &Notifier, user: &User, token: &str) -> AppResult<Accepted> {
    notifier.transaction(|outbox| {
        let inv = usable(outbox.tx(), user, token)?;
        let mut t = Tenant::enter(outbox, &inv.org_id)?;
        if tenant::membership(&t, &user.id)?.is_some() {
            return Err(already_member());
        }
        let role = Role::parse(&inv.role).unwrap_or(Role::Member);
        let member_id = tenant::add_member(&t, &user.id, role)?;
        let tx = t.tx();
        tx.execute(
            "UPDATE invitations SET status = 'accepted', accepted_user_id = ?3, accepted_at = ?4
                 WHERE org_id = ?1 AND id = ?2",
            args![t.org_id(), inv.id, user.id, tx.now_ms()],
        )?;
        audit::append(
            &t,
            Some(&user.id),
            "invitation.accepted",
            ("invitation", &inv.id),
            &json!({ "memberId": member_id, "role": role.as_str(), "email": inv.email }),
        )?;
        let mut event = Event::new(
            "org.invitation.accepted",
            vec![Recipient::User(inv.inviter_user_id.clone())],
            json!({
                "orgName": t.org().name,
                "memberName": display_name(user),
                "memberEmail": user.email,
            }),
        );
        event.subject_id = Some(inv.id.clone());
        t.enqueue(&event)?;
        // For the listeners (referral credits). The invitee now has an org,
        // so this is also a provisioning: both fire, by design.
        t.emit(
            super::events::INVITATION_ACCEPTED,
            json!({
                "invitationId": inv.id,
                "organizationId": t.org_id(),
                "inviterUserId": inv.inviter_user_id,
                "userId": user.id,
            }),
        )?;
        t.emit(
            super::events::ORGANIZATION_PROVISIONED,
            json!({ "userId": user.id, "organizationId": t.org_id(), "via": "invitation" }),
        )?;
        Ok(Accepted {
            organization_id: inv.org_id,
            member_id,
        })
    })
}

fn expired() -> AppError {
    AppError::Gone("this invitation has expired; ask for a new one".into())
}
