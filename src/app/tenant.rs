//! Tenancy and authorization at the action boundary. Every org-scoped read
//! and write runs through `write` / `read`, which take the org id, resolve
//! the caller's membership inside the same transaction and check the role
//! before the action runs. A caller outside the org gets `NotFound`, exactly
//! like an org that does not exist, so ids never leak. Org-scoped queries take
//! a `Scope`, whose org id they must filter on.

use serde_json::Value;

use super::error::{AppError, AppResult};
use crate::args;
use crate::notify::{Enqueued, Event, Notifier, Outbox};
use crate::store::{users::User, Conn, Row, Store, StoreResult, Tx};

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

/// An org the current transaction is confined to. Reads go through
/// `conn`; only a `Tenant` can write (`Tenant::tx`).
pub trait Scope {
    fn conn(&self) -> &Conn<'_>;
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

    /// The transaction, for this org's writes.
    pub fn tx(&self) -> &Tx<'c> {
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
}

impl Scope for Tenant<'_, '_, '_> {
    fn conn(&self) -> &Conn<'_> {
        self.outbox.tx()
    }
    fn org(&self) -> &Org {
        &self.org
    }
}

/// A consistent read snapshot confined to one org.
pub struct TenantRead<'c> {
    conn: Conn<'c>,
    org: Org,
}

impl<'c> TenantRead<'c> {
    /// Confines a read to `org_id` for a caller whose authority is not a
    /// membership (an invitation token), like `Tenant::enter` for writes.
    /// `conn` should be a snapshot (`Store::snapshot`).
    pub fn enter(conn: &Conn<'c>, org_id: &str) -> AppResult<Self> {
        let org = find_org(conn, org_id)?;
        Ok(TenantRead { conn: *conn, org })
    }
}

impl Scope for TenantRead<'_> {
    fn conn(&self) -> &Conn<'_> {
        &self.conn
    }
    fn org(&self) -> &Org {
        &self.org
    }
}

/// The action wrapper for writes: one transaction, membership and role
/// checked first, then `f` with the caller's membership. Actions are small
/// writes of many concurrent users, so they commit in groups
/// (`Notifier::transaction_grouped`): `f` owns what it uses.
pub fn write<T: Send + 'static>(
    notifier: &Notifier,
    access: Access<'_>,
    mut f: impl FnMut(&mut Tenant<'_, '_, '_>, &Member) -> AppResult<T> + Send + 'static,
) -> AppResult<T> {
    let (user, org_id, min_role) = (
        access.user.clone(),
        access.org_id.to_string(),
        access.min_role,
    );
    notifier.transaction_grouped(move |outbox| {
        let mut tenant =
            Tenant::enter(outbox, &org_id).map_err(|_| AppError::NotFound(no_such_org()))?;
        let me = require(&tenant, &user, min_role)?;
        f(&mut tenant, &me)
    })
}

/// The action wrapper for reads: one snapshot on a pooled connection.
pub fn read<T>(
    store: &Store,
    access: Access<'_>,
    f: impl FnOnce(&TenantRead<'_>, &Member) -> AppResult<T>,
) -> AppResult<T> {
    store.snapshot(|conn| {
        let org = find_org(conn, access.org_id).map_err(|_| AppError::NotFound(no_such_org()))?;
        let scope = TenantRead { conn: *conn, org };
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
    Ok(scope.conn().query_opt(
        "SELECT id, user_id, role FROM members WHERE org_id = ?1 AND user_id = ?2",
        args![scope.org_id(), user_id],
        member_from_row,
    )?)
}

pub fn member_from_row(r: &Row<'_>) -> StoreResult<Member> {
    let role: String = r.get(2)?;
    Ok(Member {
        id: r.get(0)?,
        user_id: r.get(1)?,
        // The CHECK constraint admits only the three roles.
        role: Role::parse(&role).unwrap_or(Role::Member),
    })
}

fn find_org(conn: &Conn<'_>, org_id: &str) -> AppResult<Org> {
    conn.query_opt(
        "SELECT id, name FROM organizations WHERE id = ?1",
        args![org_id],
        |r| {
            Ok(Org {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        },
    )?
    .ok_or_else(|| AppError::NotFound(no_such_org()))
}

fn no_such_org() -> String {
    "no such organization".into()
}

/// Inserts a membership row (org creation, invitation accept, seeding).
pub fn add_member(tenant: &Tenant<'_, '_, '_>, user_id: &str, role: Role) -> AppResult<String> {
    let id = crate::ids::new_id("mem");
    insert_member(tenant, &id, user_id, role)?;
    Ok(id)
}

pub fn insert_member(
    tenant: &Tenant<'_, '_, '_>,
    id: &str,
    user_id: &str,
    role: Role,
) -> AppResult<()> {
    let tx = tenant.tx();
    tx.execute(
        "INSERT INTO members (id, org_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        args![id, tenant.org_id(), user_id, role.as_str(), tx.now_ms()],
    )?;
    Ok(())
}
