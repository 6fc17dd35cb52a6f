//! What the application's actions need besides the notifier: the plan
//! catalog, and the failure injection the atomicity tests switch on.

use super::catalog::Catalog;

/// Failure injection for the integration tests that prove atomicity. Read
/// from `HERALD_TEST_*` variables at start; inert unless set, and the server
/// logs a warning when any is on.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// `HERALD_TEST_FAIL_ROLE_CHANGE=1`: changeMemberRole fails after its
    /// update, audit row and outbox row are written, before COMMIT.
    pub fail_role_change: bool,
    /// `HERALD_TEST_FAIL_STRIPE_EVENT=<event id>`: the webhook handler fails
    /// for that event after claiming and applying it, before COMMIT.
    pub fail_stripe_event: Option<String>,
}

impl TestHooks {
    pub fn any(&self) -> bool {
        self.fail_role_change || self.fail_stripe_event.is_some()
    }
}

/// What the application's actions need besides the notifier.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    pub catalog: Catalog,
    pub hooks: TestHooks,
}
