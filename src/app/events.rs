//! The application's domain events (SPEC 4.5): emitted in the action's
//! transaction with `Tenant::emit`, delivered to listeners after commit.
//! Emission may repeat (accepting an invitation also provisions an org), so
//! every consumer must be idempotent.

/// `{invitationId, organizationId, inviterUserId, userId}`: an invitation
/// was accepted by `userId`.
pub const INVITATION_ACCEPTED: &str = "invitation.accepted";

/// `{userId, organizationId, via}`: the user now has an organization, by
/// creating one (`via: "created"`) or joining one (`via: "invitation"`).
pub const ORGANIZATION_PROVISIONED: &str = "organization.provisioned";
