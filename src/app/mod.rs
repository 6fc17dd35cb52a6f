//! The reference application (SPEC 4): organizations, members, invitations,
//! role changes, the audit log and Stripe billing, the first call sites of
//! the notification seam. Every org-scoped action runs in one tenant-scoped
//! transaction (`tenant`) and enqueues its notifications there; they are
//! published only after COMMIT. Nothing here talks HTTP or sends mail.

pub mod audit;
pub mod billing;
pub mod catalog;
pub mod credits;
mod error;
pub mod events;
pub mod invitations;
pub mod members;
pub mod orgs;
pub mod seed;
mod settings;
pub mod stripe;
pub mod tenant;

pub use catalog::Catalog;
pub use error::{AppError, AppResult};
pub use settings::{AppSettings, TestHooks};
pub use tenant::{Access, Role, Tenant};
