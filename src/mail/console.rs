//! The console provider (the default): logs each email and reports it sent.
//! The delivery row keeps subject, html and text, which is what `--dev`'s
//! mailbox shows; nothing leaves the machine.

use super::provider::{Email, MailError, MailProvider, RateHint, Sent};

pub struct Console;

impl MailProvider for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn send_email(
        &self,
        email: &Email,
        idempotency_key: &str,
    ) -> (Result<Sent, MailError>, RateHint) {
        (Ok(log(email, idempotency_key)), RateHint::default())
    }

    fn send_batch(
        &self,
        emails: &[Email],
        idempotency_key: &str,
    ) -> (Result<Vec<Sent>, MailError>, RateHint) {
        let sent = emails
            .iter()
            .enumerate()
            .map(|(i, email)| log(email, &format!("{idempotency_key}.{i}")))
            .collect();
        (Ok(sent), RateHint::default())
    }
}

fn log(email: &Email, key: &str) -> Sent {
    log::info!(
        "email (console) to={} subject={:?} key={key}\n{}",
        email.to.join(", "),
        email.subject,
        email.text.trim_end()
    );
    Sent {
        provider_id: format!("console-{key}"),
    }
}
