//! A phase of the http scenario: herald held to Resend's default 2 mail
//! requests a second, with a burst in bulk, then a trickle of single events
//! and one of two-recipient events; emails per second and how long the last
//! email trails the last event.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::client::LoadClient;
use crate::databases::Engine;
use crate::events::{bulk_json, event_to};
use crate::fake_provider::{fake_resend, wait_for_emails, FakeResend};
use crate::process::start_herald_with;
use crate::report::{ratio, round};
use crate::seed::prepared_db;

/// Emails out per second while herald paces itself to Resend's default
/// limit of 2 requests a second (`HERALD_MAIL_RATE_PER_SEC=2`): how fast a
/// burst reaches its recipients on a provider's default plan. A fresh
/// server and database, so nothing else is queued.
pub fn phase(engine: &Engine, users: usize, out: &mut Map<String, Value>) -> Result<(), String> {
    const EMAILS: usize = 2_000;
    const PER_REQUEST: usize = 100;
    eprintln!("  paced: {EMAILS} events in bulk, emails at most 2 requests a second");
    let db = engine.fresh("paced")?;
    drop(prepared_db(&db.database, users, 0)?);
    let mail = fake_resend()?;
    let herald = start_herald_with(
        &db.database,
        &mail.url,
        &[("HERALD_MAIL_RATE_PER_SEC", "2")],
    )?;
    let mut client = LoadClient::new(&herald.base);
    let started = Instant::now();
    for first in (0..EMAILS).step_by(PER_REQUEST) {
        let body = bulk_json(first, first + PER_REQUEST, users);
        if client.call("POST", "/v1/events/bulk", &herald.key, body.as_bytes()) != Some(202) {
            return Err("a paced bulk request failed".into());
        }
    }
    wait_for_emails(&mail.accepted, EMAILS, started, 20)?;
    eprintln!();
    let per_s = EMAILS as f64 / started.elapsed().as_secs_f64();
    eprintln!("  paced: {per_s:.0} emails/s at 2 requests/s");
    out.insert("paced_emails_per_s".into(), json!(round(per_s)));

    // Steady trickles, far faster than the provider takes requests: one
    // event per POST, each dispatched (and its emails created) alone.
    let mut trickle = Trickle {
        client: &mut client,
        key: &herald.key,
        mail: &mail,
        users,
        sent: EMAILS,
    };
    trickle.run(1, "trickle", out)?;
    trickle.run(2, "pairs", out)
}

/// Posts trickles of events to a paced server, counting the emails sent.
struct Trickle<'a> {
    client: &'a mut LoadClient,
    key: &'a str,
    mail: &'a FakeResend,
    users: usize,
    sent: usize,
}

impl Trickle<'_> {
    /// 1,000 emails in events of `recipients` each, posted one event at a
    /// time at 100 emails a second: each dispatch creates its emails alone
    /// (one recipient) or as a small batch. Reports
    /// `paced_{name}_emails_per_s` and `paced_{name}_lag_s` (the last email
    /// accepted after the last event posted).
    fn run(
        &mut self,
        recipients: usize,
        name: &str,
        out: &mut Map<String, Value>,
    ) -> Result<(), String> {
        const EMAILS: usize = 1_000;
        const EMAILS_PER_S: f64 = 100.0;
        let events = EMAILS / recipients;
        eprintln!(
            "  paced: {events} events of {recipients} recipients at {} a second",
            EMAILS_PER_S / recipients as f64
        );
        let started = Instant::now();
        for i in 0..events {
            let first = i * recipients;
            let due = started + Duration::from_secs_f64(first as f64 / EMAILS_PER_S);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let to: Vec<String> = (first..first + recipients)
                .map(|r| format!("u{}", (self.sent + r) % self.users))
                .collect();
            let body = event_to(&format!("{name}_{i}"), &to);
            if self
                .client
                .call("POST", "/v1/events", self.key, body.as_bytes())
                != Some(202)
            {
                return Err("a paced event failed".into());
            }
        }
        let posted = started.elapsed().as_secs_f64();
        self.sent += EMAILS;
        wait_for_emails(&self.mail.accepted, self.sent, started, 20)?;
        eprintln!();
        let elapsed = started.elapsed().as_secs_f64();
        let per_s = EMAILS as f64 / elapsed;
        eprintln!(
            "  paced {name}: {per_s:.0} emails/s, the last {:.1} s after the last event",
            elapsed - posted
        );
        out.insert(format!("paced_{name}_emails_per_s"), json!(round(per_s)));
        out.insert(
            format!("paced_{name}_lag_s"),
            json!(ratio(elapsed - posted)),
        );
        Ok(())
    }
}
