//! Tenancy and authorization at the action boundary. Every org-scoped read
//! and write runs through `write` / `read`, which take the org id, resolve
//! the caller's membership inside the same transaction and check the role
//! before the action runs. A caller outside the org gets `NotFound`, exactly
//! like an org that does not exist, so ids never leak. Org-scoped queries take
//! a `Scope`, whose org id they must filter on.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use super::{AppError, AppResult};
use crate::notify::{Enqueued, Event, Notifier, Outbox};
use crate::store::{now_ms, users::User, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a request field, naming it on failure.
    pub fn from_field(field: &str, value: &str) -> AppResult<Role> {
        Role::parse(value)
            .ok_or_else(|| AppError::invalid(field, "must be one of owner, admin, member"))
    }
}

#[derive(Debug, Clone)]
pub struct Org {
    pub id: String,
    pub name: String,
}

/// A membership row.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub user_id: String,
    pub role: Role,
}

/// Who is acting, on which org, needing at least which role.
pub struct Access<'a> {
    pub user: &'a User,
    pub org_id: &'a str,
    pub min_role: Role,
}

/// An org the current transaction is confined to.
pub trait Scope {
    fn conn(&self) -> &Connection;
    fn org(&self) -> &Org;
    fn org_id(&self) -> &str {
        &self.org().id
    }
}

/// A write transaction confined to one org, with the outbox of the seam.
pub struct Tenant<'t, 'a, 'c> {
    outbox: &'t mut Outbox<'a, 'c>,
    org: Org,
}

impl<'t, 'a, 'c> Tenant<'t, 'a, 'c> {
    /// Confines `outbox`'s transaction to `org_id`. For callers whose
    /// authority is not a membership (an invitation token, a signed webhook);
    /// member actions use `write`.
    pub fn enter(outbox: &'t mut Outbox<'a, 'c>, org_id: &str) -> AppResult<Self> {
        let org = find_org(outbox.tx(), org_id)?;
        Ok(Tenant { outbox, org })
    }

    pub fn tx(&self) -> &Transaction<'c> {
        self.outbox.tx()
    }

    /// Writes the event's outbox row in this transaction; it is published
    /// only after COMMIT.
    pub fn enqueue(&mut self, event: &Event) -> AppResult<Enqueued> {
        Ok(self.outbox.enqueue(event)?)
    }

    /// Writes a domain event for the listeners (SPEC 4.5) in this
    /// transaction; it reaches them only after COMMIT.
    pub fn emit(&mut self, kind: &str, payload: Value) -> AppResult<Enqueued> {
        Ok(self.outbox.emit(kind, payload)?)
    }

    /// Appends an audit row for this org.
    pub fn audit(
        &self,
        actor_user_id: Option<&str>,
        action: &str,
        subject: (&str, &str),
        payload: Value,
    ) -> AppResult<()> {
        super::audit::append(self, actor_user_id, action, subject, &payload)
    }
}

impl Scope for Tenant<'_, '_, '_> {
    fn conn(&self) -> &Connection {
        self.outbox.tx()
    }
    fn org(&self) -> &Org {
        &self.org
    }
}

/// A consistent read snapshot confined to one org.
pub struct TenantRead<'c> {
    conn: &'c Connection,
    org: Org,
}

impl<'c> TenantRead<'c> {
    /// Confines a read to `org_id` for a caller whose authority is not a
    /// membership (an invitation token), like `Tenant::enter` for writes.
    pub fn enter(conn: &'c Connection, org_id: &str) -> AppResult<Self> {
        let org = find_org(conn, org_id)?;
        Ok(TenantRead { conn, org })
    }
}

impl Scope for TenantRead<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }
    fn org(&self) -> &Org {
        &self.org
    }
}

/// The action wrapper for writes: one transaction, membership and role
/// checked first, then `f` with the caller's membership.
pub fn write<T>(
    notifier: &Notifier,
    access: Access<'_>,
    f: impl FnOnce(&mut Tenant<'_, '_, '_>, &Member) -> AppResult<T>,
) -> AppResult<T> {
    notifier.transaction(|outbox| {
        let mut tenant =
            Tenant::enter(outbox, access.org_id).map_err(|_| AppError::NotFound(no_such_org()))?;
        let me = require(&tenant, access.user, access.min_role)?;
        f(&mut tenant, &me)
    })
}

/// The action wrapper for reads: one snapshot on a pooled connection.
pub fn read<T>(
    store: &Store,
    access: Access<'_>,
    f: impl FnOnce(&TenantRead<'_>, &Member) -> AppResult<T>,
) -> AppResult<T> {
    store.read(|conn| {
        // A deferred read transaction: every query sees one snapshot.
        let tx = conn.unchecked_transaction()?;
        let org = find_org(&tx, access.org_id).map_err(|_| AppError::NotFound(no_such_org()))?;
        let scope = TenantRead { conn: &tx, org };
        let me = require(&scope, access.user, access.min_role)?;
        f(&scope, &me)
    })
}

/// The caller's membership with at least `min_role`: a non-member gets
/// `NotFound` (the org's existence is not revealed), a lower role `Forbidden`.
pub fn require(scope: &impl Scope, user: &User, min_role: Role) -> AppResult<Member> {
    let me = membership(scope, &user.id)?.ok_or_else(|| AppError::NotFound(no_such_org()))?;
    if me.role < min_role {
        return Err(AppError::Forbidden(format!(
            "this action needs the {} role or higher in this organization; you are {}",
            min_role.as_str(),
            me.role.as_str()
        )));
    }
    Ok(me)
}

pub fn membership(scope: &impl Scope, user_id: &str) -> AppResult<Option<Member>> {
    Ok(scope
        .conn()
        .prepare_cached("SELECT id, user_id, role FROM members WHERE org_id = ?1 AND user_id = ?2")?
        .query_row(params![scope.org_id(), user_id], member_from_row)
        .optional()?)
}

pub fn member_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    let role: String = r.get(2)?;
    Ok(Member {
        id: r.get(0)?,
        user_id: r.get(1)?,
        // The CHECK constraint admits only the three roles.
        role: Role::parse(&role).unwrap_or(Role::Member),
    })
}

fn find_org(conn: &Connection, org_id: &str) -> AppResult<Org> {
    conn.prepare_cached("SELECT id, name FROM organizations WHERE id = ?1")?
        .query_row([org_id], |r| {
            Ok(Org {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        })
        .optional()?
        .ok_or_else(|| AppError::NotFound(no_such_org()))
}

fn no_such_org() -> String {
    "no such organization".into()
}

/// Inserts a membership row (org creation, invitation accept, seeding).
pub fn add_member(scope: &impl Scope, user_id: &str, role: Role) -> AppResult<String> {
    let id = crate::ids::new_id("mem");
    insert_member(scope, &id, user_id, role)?;
    Ok(id)
}

pub fn insert_member(scope: &impl Scope, id: &str, user_id: &str, role: Role) -> AppResult<()> {
    scope
        .conn()
        .prepare_cached(
            "INSERT INTO members (id, org_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![id, scope.org_id(), user_id, role.as_str(), now_ms()])?;
    Ok(())
}
