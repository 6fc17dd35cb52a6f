//! Members of an org: the list, and changeMemberRole (SPEC 4.2). The role
//! update, its `member.role-changed` audit row and the `org.member.role_changed`
//! outbox row share one transaction; a same-role change writes and notifies
//! nothing, and the last owner cannot be demoted.

use serde::Serialize;
use serde_json::json;

use super::audit;
use super::error::{AppError, AppResult};
use super::settings::TestHooks;
use super::tenant::{self, member_from_row, Access, Member, Role, Scope};
use crate::args;
use crate::notify::{Event, Notifier, Recipient};
use crate::store::{users::User, Store};
use crate::time::rfc3339;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: String,
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: &'static str,
    pub created_at: String,
}

pub fn list(store: &Store, user: &User, org_id: &str) -> AppResult<Vec<MemberView>> {
    let access = Access {
        user,
        org_id,
        min_role: Role::Member,
    };
    tenant::read(store, access, |scope, _| {
        Ok(scope.conn().query_all(
            "SELECT m.id, m.user_id, u.email, u.name, m.role, m.created_at
             FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.org_id = ?1 ORDER BY m.created_at, m.id",
            args![scope.org_id()],
            |r| {
                let role: String = r.get(4)?;
                Ok(MemberView {
                    id: r.get(0)?,
                    user_id: r.get(1)?,
                    email: r.get(2)?,
                    name: r.get(3)?,
                    role: Role::parse(&role).unwrap_or(Role::Member).as_str(),
                    created_at: rfc3339(r.get(5)?),
                })
            },
        )?)
    })
}

pub fn find(scope: &impl Scope, member_id: &str) -> AppResult<Member> {
    scope
        .conn()
        .query_opt(
            "SELECT id, user_id, role FROM members WHERE org_id = ?1 AND id = ?2",
            args![scope.org_id(), member_id],
            member_from_row,
        )?
        .ok_or_else(|| AppError::NotFound("no such member".into()))
}

pub fn owner_user_ids(scope: &impl Scope) -> AppResult<Vec<String>> {
    Ok(scope.conn().query_all(
        "SELECT user_id FROM members WHERE org_id = ?1 AND role = 'owner' ORDER BY user_id",
        args![scope.org_id()],
        |r| r.get(0),
    )?)
}

/// changeMemberRole. Admins and owners may change roles; only an owner may
/// grant or take away the owner role.
pub fn change_role(
    notifier: &Notifier,
    hooks: &TestHooks,
    actor: &User,
    org_id: &str,
    member_id: &str,
    new_role: Role,
) -> AppResult<Role> {
    let access = Access {
        user: actor,
        org_id,
        min_role: Role::Admin,
    };
    let (fail, actor, member_id) = (hooks.fail_role_change, actor.clone(), member_id.to_string());
    tenant::write(notifier, access, move |t, me| {
        let target = find(t, &member_id)?;
        if target.role == new_role {
            return Ok(new_role);
        }
        if (target.role == Role::Owner || new_role == Role::Owner) && me.role != Role::Owner {
            return Err(AppError::Forbidden(
                "only an owner can grant or remove the owner role".into(),
            ));
        }
        if target.role == Role::Owner && owner_user_ids(t)?.len() <= 1 {
            return Err(AppError::Conflict(
                "the last owner of an organization cannot be demoted; make another member owner first"
                    .into(),
            ));
        }
        t.tx().execute(
            "UPDATE members SET role = ?3 WHERE org_id = ?1 AND id = ?2",
            args![t.org_id(), target.id, new_role.as_str()],
        )?;
        audit::append(
            t,
            Some(&actor.id),
            "member.role-changed",
            ("member", &target.id),
            &json!({ "before": target.role.as_str(), "after": new_role.as_str() }),
        )?;
        let mut event = Event::new(
            "org.member.role_changed",
            vec![Recipient::User(target.user_id.clone())],
            json!({
                "newRole": new_role.as_str(),
                "before": target.role.as_str(),
                "orgName": t.org().name,
                "actorName": display_name(&actor),
            }),
        );
        event.subject_id = Some(target.id.clone());
        t.enqueue(&event)?;
        if fail {
            return Err(AppError::Internal(
                "HERALD_TEST_FAIL_ROLE_CHANGE: forced failure after the role update".into(),
            ));
        }
        Ok(new_role)
    })
}

/// How a person is named in notification copy.
pub fn display_name(user: &User) -> String {
    if user.name.trim().is_empty() {
        user.email.clone()
    } else {
        user.name.clone()
    }
}
