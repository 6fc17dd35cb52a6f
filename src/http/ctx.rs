//! What every handler is given: the notifier (and through it the store),
//! the service key, the public URL and the settings the routes read. Built
//! once at start by the CLI and shared by all workers.

/// What handlers share.
pub struct Ctx {
    pub notifier: crate::notify::Notifier,
    pub service_key: Option<String>,
    pub public_url: String,
    /// The reference application's settings (catalog, test hooks).
    pub app: crate::app::AppSettings,
    /// `STRIPE_WEBHOOK_SECRET`; without it the webhook answers 503.
    pub stripe_webhook_secret: Option<String>,
    /// `--dev`: serves `/dev/mail`.
    pub dev: bool,
}
