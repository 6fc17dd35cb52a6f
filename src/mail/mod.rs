//! Mail providers: the one IO edge herald fakes in tests. A provider sends one
//! rendered email, or a batch of them in one request, under an idempotency
//! key and classifies the outcome as sent, worth retrying, or refused for
//! good. Only `notify::delivery::sender` calls them.

mod console;
mod provider;
mod resend;

use std::time::Duration;

pub use console::Console;
pub use provider::{Email, MailError, MailProvider, RateHint, Sent, MAX_BATCH_EMAILS};
pub use resend::Resend;

#[derive(Clone)]
pub struct MailConfig {
    pub provider: String,
    pub api_url: String,
    pub api_key: Option<String>,
    pub from: String,
    /// The whole call, connect to last body byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailConfig")
            .field("provider", &self.provider)
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Builds the configured provider, or says what is missing.
pub fn from_config(config: &MailConfig) -> Result<Box<dyn MailProvider>, String> {
    match config.provider.as_str() {
        "console" => Ok(Box::new(Console)),
        "resend" => {
            let key = config
                .api_key
                .clone()
                .filter(|k| !k.is_empty())
                .ok_or("HERALD_MAIL_PROVIDER=resend needs HERALD_MAIL_API_KEY")?;
            Ok(Box::new(Resend::new(
                &config.api_url,
                &key,
                config.connect_timeout,
                config.timeout,
            )))
        }
        other => Err(format!(
            "unknown mail provider {other:?} (HERALD_MAIL_PROVIDER is console or resend)"
        )),
    }
}
