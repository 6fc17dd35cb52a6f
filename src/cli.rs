//! The `herald` command line: `serve`, `migrate`, `seed`, `check`, `send`,
//! `outbox list|retry|retry-dead`, `user add|token`, `stripe sign`, `backup`,
//! `compact` and `migrate-to-postgres`. Each command builds what it needs from `Config`;
//! `serve` wires store -> notifier -> HTTP and shuts them down in reverse.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{self, AppSettings, Catalog};
use crate::config::{Args, Config};
use crate::http::{Ctx, HttpServer};
use crate::notify::service;
use crate::notify::{
    outbox, DeliveryPolicy, Event, Notifier, NotifyError, Recipient, Registry, Templates,
};
use crate::store::copy;
use crate::store::files::{self, BackupOptions};
use crate::store::{users, Database, Store, StoreError, SCHEMA_VERSION};
use crate::{ids, mail};

const USAGE: &str = "\
herald: self-hosted notifications (inbox + email) on one SQLite file, or on PostgreSQL

usage:
  herald serve [--addr 127.0.0.1:8025] [--db data/herald.db] [--dev] [--demo]
               [--database-url postgres://...] [--registry FILE] [--templates DIR]
  herald migrate                      apply schema migrations and exit
  herald seed                         demo data: org Acme with Alice (owner), Bob (admin),
                                      Carol (member) and a Stripe subscription; prints tokens
  herald check                        validate the registry and render every template
  herald reconcile                    grant referral credits missing for accepted invitations
                                      (needs HERALD_REFERRAL_CREDITS); a running server sends
                                      their notifications
  herald send <type> --to <user|email>... --payload <json> [--subject-id ID]
  herald outbox [list]                delivery counts by status, the latest events' results
                                      and the oldest unfinished deliveries
  herald outbox retry <id>            re-arm one dead or failed delivery
  herald outbox retry-dead            re-arm every dead delivery
  herald backup FILE [--force]        a consistent copy of the SQLite database, also while serve runs;
                                      restore: stop herald, put FILE in place of the database
                                      (without its old -wal and -shm files), start it
  herald compact                      rewrite the database without its free space (serve
                                      stopped: after a large prune); prints its size before and after
  herald migrate-to-postgres <sqlite file> <postgres url>
                                      copy a deployment (serve stopped) into an empty PostgreSQL
                                      database, pending work included; then serve --database-url
  herald user add <id> --email <address> [--name <name>]
  herald user token <id>              issue a new API token for a user
  herald stripe sign <file>           print a Stripe-Signature header for the file's bytes,
                                      signed with STRIPE_WEBHOOK_SECRET (for trying the webhook)

Every flag also reads HERALD_<FLAG> (HERALD_ADDR, HERALD_DB, ...); see README.md.";

/// Runs the command line; the returned code is the process exit status.
pub fn main(words: Vec<String>) -> i32 {
    let args = match Args::parse(words) {
        Ok(args) => args,
        Err(e) => return fail(2, &e),
    };
    if args.switch("help") || args.positional.is_empty() {
        println!("{USAGE}");
        return if args.switch("help") { 0 } else { 2 };
    }
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(e) => return fail(2, &e),
    };
    let words: Vec<&str> = args.positional.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        ["serve"] => serve(&config),
        ["migrate"] => migrate(&config),
        ["seed"] => seed(&config),
        ["check"] => check(&config),
        ["reconcile"] => reconcile(&config),
        ["stripe", "sign", file] => stripe_sign(&config, file),
        ["send", kind] => send(&config, &args, kind),
        ["outbox"] | ["outbox", "list"] => outbox_list(&config),
        ["outbox", "retry", id] => outbox_retry(&config, Some(id)),
        ["outbox", "retry-dead"] => outbox_retry(&config, None),
        ["backup", file] => backup(&config, &args, file),
        ["compact"] => compact(&config),
        ["migrate-to-postgres", file, url] => migrate_to_postgres(file, url),
        ["user", "add", id] => user_add(&config, &args, id),
        ["user", "token", id] => user_token(&config, id),
        _ => Err(format!("unknown command {:?}\n\n{USAGE}", words.join(" "))),
    };
    match result {
        Ok(()) => 0,
        Err(e) => fail(1, &e),
    }
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("herald: {message}");
    code
}

fn open_store(config: &Config) -> Result<Arc<Store>, String> {
    Store::connect(&config.database, config.synchronous, config.clock.clone())
        .map(Arc::new)
        .map_err(|e| format!("{}: {e}", config.database))
}

fn load_catalog(config: &Config) -> Result<(Registry, Templates), String> {
    let registry = match &config.registry {
        Some(path) => Registry::from_file(path),
        None => Registry::embedded(),
    }
    .map_err(|e| format!("registry: {e}"))?;
    let templates = Templates::load(&registry, config.templates.as_deref())
        .map_err(|e| format!("templates:\n{e}"))?;
    Ok((registry, templates))
}

fn notifier(config: &Config) -> Result<Notifier, String> {
    let store = open_store(config)?;
    let (registry, templates) = load_catalog(config)?;
    let policy = DeliveryPolicy {
        ..config.policy.clone()
    };
    Ok(Notifier::new(store, registry, templates, policy))
}

fn provider(config: &Config) -> Result<Arc<dyn mail::MailProvider>, String> {
    mail::from_config(&config.mail).map(Arc::from)
}

fn serve(config: &Config) -> Result<(), String> {
    let notifier = notifier(config)?;
    let provider = provider(config)?;
    let mut service_key = config.service_key.clone();
    if config.demo {
        seed_demo(&notifier, &mut service_key)?;
    } else if service_key.is_none() {
        log::warn!("HERALD_SERVICE_KEY is not set: service endpoints (users, events) answer 401");
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .map_err(|e| format!("cannot install signal handler: {e}"))?;

    let catalog = Catalog::embedded()?;
    if config.stripe_webhook_secret.is_none() {
        log::warn!("STRIPE_WEBHOOK_SECRET is not set: POST /webhooks/stripe answers 503");
    }
    if config.test_hooks.any() || config.listener_hooks.any() {
        log::warn!(
            "HERALD_TEST_* failure injection is on: {:?} {:?}",
            config.test_hooks,
            config.listener_hooks
        );
    }
    notifier.set_listener_hooks(config.listener_hooks.clone());
    if let Some(amount) = config.referral_credits {
        notifier.subscribe(Arc::new(app::credits::ReferralCredits { amount }));
    }
    let running = notifier
        .start(provider)
        .map_err(|e| format!("cannot start delivering: {e}"))?;
    let sweeper = match config.referral_credits {
        Some(amount) => Some(
            app::credits::Sweeper::start(notifier.clone(), amount, config.reconcile_interval)
                .map_err(|e| format!("cannot start the reconcile sweep: {e}"))?,
        ),
        None => None,
    };
    let make_ctx = |bound: std::net::SocketAddr| {
        Arc::new(Ctx {
            notifier: notifier.clone(),
            service_key,
            // Links in emails must point somewhere: the bound address when
            // HERALD_PUBLIC_URL is not set.
            public_url: config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{bound}")),
            app: AppSettings {
                catalog,
                hooks: config.test_hooks.clone(),
            },
            stripe_webhook_secret: config.stripe_webhook_secret.clone(),
            dev: config.dev,
        })
    };
    let http = HttpServer::start_with(
        &config.addr,
        make_ctx,
        config.http.clone(),
        config.streams.clone(),
    )?;
    println!("listening on http://{}", http.addr());
    log::info!(
        "herald serving {} (mail: {}, schema v{SCHEMA_VERSION})",
        config.database,
        config.mail.provider
    );
    let _ = stop_rx.recv();
    log::info!("shutting down: no new requests; finishing in-flight work");
    let started = Instant::now();
    http.shutdown(config.shutdown_grace);
    if let Some(sweeper) = sweeper {
        sweeper.stop();
    }
    running.shutdown(config.shutdown_grace.saturating_sub(started.elapsed()));
    log::info!("stopped");
    Ok(())
}

/// `--demo`: the `seed` data on an empty database, and a service key if
/// none is configured. Secrets are printed once, here.
fn seed_demo(notifier: &Notifier, service_key: &mut Option<String>) -> Result<(), String> {
    if service_key.is_none() {
        let key = ids::new_token().replacen("hrld_", "hsk_", 1);
        println!("demo service key: {key}");
        *service_key = Some(key);
    }
    print_seeded(app::seed::seed(notifier).map_err(|e| e.to_string())?);
    Ok(())
}

fn seed(config: &Config) -> Result<(), String> {
    let notifier = notifier(config)?;
    print_seeded(app::seed::seed(&notifier).map_err(|e| e.to_string())?);
    Ok(())
}

fn print_seeded(tokens: Option<Vec<(String, String)>>) {
    match tokens {
        Some(tokens) => {
            println!(
                "seeded org {} (Acme): alice owner, bob admin, carol member; subscription {}",
                app::seed::ORG_ID,
                app::seed::SUBSCRIPTION_ID
            );
            for (user, token) in tokens {
                println!("demo user {user} token: {token}");
            }
        }
        None => println!(
            "database already has users or organizations: not seeding \
             (new tokens: herald user token <id>)"
        ),
    }
}

/// Prints the `Stripe-Signature` header Stripe would send for the file's
/// exact bytes now, so the webhook can be tried with curl.
fn stripe_sign(config: &Config, file: &str) -> Result<(), String> {
    let secret = config
        .stripe_webhook_secret
        .as_deref()
        .ok_or("STRIPE_WEBHOOK_SECRET is not set")?;
    let body = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let now = crate::time::system_now_ms() / 1000;
    println!("{}", app::stripe::sign(&body, secret, now));
    Ok(())
}

/// Grants the referral credits that accepted invitations lack and delivers
/// the grants' notifications from this process (the outbox claim keeps a
/// running server's dispatcher from handling them too).
fn reconcile(config: &Config) -> Result<(), String> {
    let amount = config.referral_credits.ok_or(
        "referral credits are off: set HERALD_REFERRAL_CREDITS=<amount> to reconcile them",
    )?;
    let notifier = notifier(config)?;
    let provider = provider(config)?;
    let done = app::credits::reconcile(&notifier, amount).map_err(|e| e.to_string())?;
    // The grants' notifications go out from here, not at a server's next sweep.
    notifier.deliver_published(provider.as_ref());
    println!(
        "reconcile: granted {} missing referral credits for {} accepted invitations",
        done.grants, done.invitations
    );
    Ok(())
}

fn migrate(config: &Config) -> Result<(), String> {
    open_store(config)?;
    println!("{}: schema version {SCHEMA_VERSION}", config.database);
    Ok(())
}

/// How often a long backup reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Copies the database to `file` with SQLite's online backup, so a running
/// `serve` keeps writing; see `store::files::backup`.
fn backup(config: &Config, args: &Args, file: &str) -> Result<(), String> {
    let options = BackupOptions {
        overwrite: args.switch("force"),
        ..BackupOptions::default()
    };
    // Ctrl-C stops the copy between two steps, so its temporary file is
    // removed rather than left behind.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| format!("cannot install signal handler: {e}"))?;
    let mut last_report = Instant::now();
    let db = sqlite_file(config, "backup", "pg_dump")?;
    let copied = files::backup(db, std::path::Path::new(file), &options, |copied, total| {
        if interrupted.load(Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        if last_report.elapsed() >= PROGRESS_EVERY && copied < total {
            last_report = Instant::now();
            println!(
                "backup: {copied} of {total} pages ({}%)",
                copied * 100 / total.max(1)
            );
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| format!("backup failed: {e}"))?;
    println!(
        "backed up {} to {file}: {} ({} pages) in {:.2} s",
        db.display(),
        size(copied.bytes),
        copied.pages,
        copied.took.as_secs_f64()
    );
    Ok(())
}

/// The SQLite file a file-level command works on; on PostgreSQL, the
/// server's own tool does that job.
fn sqlite_file<'c>(
    config: &'c Config,
    command: &str,
    instead: &str,
) -> Result<&'c std::path::Path, String> {
    match &config.database {
        Database::File(path) => Ok(path),
        Database::Postgres(_) => Err(format!(
            "`herald {command}` works on an SQLite file; on PostgreSQL use {instead}"
        )),
    }
}

fn compact(config: &Config) -> Result<(), String> {
    let db = sqlite_file(config, "compact", "VACUUM FULL")?;
    let done = files::compact(db).map_err(|e| e.to_string())?;
    let was = match done.auto_vacuum_before {
        0 => "none",
        1 => "full",
        _ => "incremental",
    };
    println!(
        "compacted {}: {} before, {} after (database {}, WAL {}) in {:.2} s; \
         auto_vacuum incremental (was {was})",
        db.display(),
        size(done.before.total()),
        size(done.after.total()),
        size(done.after.db),
        size(done.after.wal),
        done.took.as_secs_f64()
    );
    Ok(())
}

/// Copies the SQLite deployment in `file` into the empty PostgreSQL
/// database at `url`; see `store::copy`.
fn migrate_to_postgres(file: &str, url: &str) -> Result<(), String> {
    let mut last_report = Instant::now();
    let mut progress = |table: &str, rows: u64| {
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            println!("migrate-to-postgres: {table}: {rows} rows");
        }
    };
    let done = copy::migrate_to_postgres(std::path::Path::new(file), url, &mut progress)
        .map_err(|e| format!("migrate-to-postgres: {e}"))?;
    println!(
        "copied {file} into {} (rows per table, SQLite = PostgreSQL):",
        done.target
    );
    for t in &done.tables {
        println!(
            "  {:<18} {:>10} = {}",
            t.table, t.source_rows, t.target_rows
        );
    }
    let secs = done.took.as_secs_f64();
    println!(
        "{} rows in {secs:.2} s ({:.0} rows/s)",
        done.rows(),
        done.rows() as f64 / secs.max(1e-3)
    );
    for (table, next) in &done.next_keys {
        println!("  next {table} key: {next}");
    }
    println!(
        "start herald with --database-url (HERALD_DATABASE_URL) set to the target: \
         it sends what was pending"
    );
    Ok(())
}

/// A byte count for people: `512 B`, `3.4 KiB`, `12.0 MiB`, `1.5 GiB`.
fn size(bytes: u64) -> String {
    let mut value = bytes as f64;
    for unit in ["B", "KiB", "MiB"] {
        if value < 1024.0 {
            return match unit {
                "B" => format!("{bytes} B"),
                _ => format!("{value:.1} {unit}"),
            };
        }
        value /= 1024.0;
    }
    format!("{value:.1} GiB")
}

fn check(config: &Config) -> Result<(), String> {
    let (registry, templates) = load_catalog(config)?;
    let count = registry.types().count();
    let locales = templates.locales();
    let locales = match locales.is_empty() {
        true => "no translations".to_string(),
        false => format!("translations: {}", locales.join(", ")),
    };
    println!(
        "{}: {count} notification types, every template renders in every locale ({locales})",
        registry.source
    );
    Ok(())
}

/// Enqueues one event, dispatches and sends it in this process, and prints
/// the event's result. A failed send stays `retrying` for a running server.
fn send(config: &Config, args: &Args, kind: &str) -> Result<(), String> {
    let payload: Value = serde_json::from_str(args.value("payload").unwrap_or("{}"))
        .map_err(|e| format!("--payload is not valid JSON: {e}"))?;
    let recipients = args
        .values("to")
        .iter()
        .map(|to| match to.contains('@') {
            true => Recipient::Address { email: to.clone() },
            false => Recipient::User(to.clone()),
        })
        .collect();
    let mut event = Event::new(kind, recipients, payload);
    event.subject_id = args.value("subject-id").map(str::to_string);

    let notifier = notifier(config)?;
    let provider = provider(config)?;
    let enqueued = notifier
        .transaction(|outbox| outbox.enqueue(&event))
        .map_err(|e| e.to_string())?;
    notifier.deliver_published(provider.as_ref());
    let view = service::event(notifier.store(), &enqueued.id).map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&view).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// How many unfinished deliveries `outbox list` shows.
const OUTBOX_OLDEST: usize = 20;
/// How many dispatched events, with their results, `outbox list` shows.
const OUTBOX_LATEST: usize = 10;

fn outbox_list(config: &Config) -> Result<(), String> {
    let store = open_store(config)?;
    let counts = service::delivery_counts(&store).map_err(|e| e.to_string())?;
    for (status, count) in &counts {
        println!("{status:<9} {count}");
    }
    let latest = service::latest_results(&store, OUTBOX_LATEST).map_err(|e| e.to_string())?;
    if !latest.is_empty() {
        println!("\nlatest events (recipients, then [channel: what it got]):");
    }
    for row in &latest {
        println!(
            "  {}  {}  {}  {}",
            row.id,
            crate::time::rfc3339(row.dispatched_at),
            row.kind,
            row.result
                .map_or_else(|| "-".to_string(), |r| describe_result(&r))
        );
    }
    let mut oldest = Vec::new();
    for status in ["dead", "failed", "retrying", "pending", "held"] {
        let page = service::deliveries(&store, Some(status), None, OUTBOX_OLDEST)
            .map_err(|e| e.to_string())?;
        oldest.extend(page);
    }
    oldest.sort_by(|a, b| a.delivery.id.cmp(&b.delivery.id));
    oldest.truncate(OUTBOX_OLDEST);
    if oldest.is_empty() {
        return Ok(());
    }
    println!("\noldest unfinished:");
    for d in &oldest {
        let v = &d.delivery;
        println!(
            "  {}  {:<8}  attempts {:<2}  next {}  event {}  to {}  batch {}  {}",
            v.id,
            v.status,
            v.attempts,
            v.next_attempt_at
                .as_deref()
                .or(v.hold.release_at.as_deref())
                .unwrap_or("-"),
            d.event_id,
            v.recipient,
            v.batch_id.as_deref().unwrap_or("-"),
            v.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// An event's result on one line: the per-recipient counts, then each
/// channel's non-zero counts, e.g.
/// `sent 1  deduped 0  suppressed 0  [inbox: sent 1] [email: suppressed 1]`.
fn describe_result(result: &outbox::DispatchResult) -> String {
    let mut line = format!(
        "sent {}  deduped {}  suppressed {}",
        result.sent, result.deduped, result.suppressed_by_prefs
    );
    if result.throttled != 0 {
        line.push_str(&format!("  throttled {}", result.throttled));
    }
    let Some(channels) = result.channels else {
        line.push_str("  [per channel: not recorded]");
        return line;
    };
    let mut breakdown = Vec::new();
    for (name, counts) in [("inbox", channels.inbox), ("email", channels.email)] {
        let parts: Vec<String> = [
            ("sent", counts.sent),
            ("deduped", counts.deduped),
            ("suppressed", counts.suppressed_by_prefs),
            ("throttled", counts.throttled),
        ]
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
        if !parts.is_empty() {
            breakdown.push(format!("[{name}: {}]", parts.join(", ")));
        }
    }
    if !breakdown.is_empty() {
        line.push_str("  ");
        line.push_str(&breakdown.join(" "));
    }
    line
}

/// Re-arms in the database; a running server notices at its next sweep (the
/// HTTP API re-arms and wakes it at once), a stopped one at its next start.
fn outbox_retry(config: &Config, id: Option<&str>) -> Result<(), String> {
    let store = open_store(config)?;
    match id {
        Some(id) => {
            let view = service::rearm(&store, id).map_err(|e| match e {
                NotifyError::Store(StoreError::NotFound) => format!("no delivery {id:?}"),
                other => other.to_string(),
            })?;
            println!("re-armed {} (to {})", view.id, view.recipient);
            if let Some(batch) = &view.batch_id {
                println!("with the rest of batch {batch}: a batch goes out as one request");
            }
        }
        None => {
            let count = service::rearm_dead(&store).map_err(|e| e.to_string())?;
            println!("re-armed {count} dead deliveries");
        }
    }
    println!(
        "a running herald sends them within {} s; a stopped one at its next start",
        crate::notify::SWEEP_EVERY_SECS
    );
    Ok(())
}

fn user_add(config: &Config, args: &Args, id: &str) -> Result<(), String> {
    let email = args.value("email").ok_or("user add needs --email")?;
    if !crate::notify::event::is_plausible_email(email) {
        return Err(format!("--email {email:?} is not an email address"));
    }
    let user = users::User {
        id: id.to_string(),
        email: email.to_string(),
        name: args.value("name").unwrap_or("").to_string(),
    };
    let store = open_store(config)?;
    // Settings stay as they are: the CLI sets who, not when.
    let (created, _) =
        service::save_user(&store, &user, &Default::default()).map_err(|e| e.to_string())?;
    println!("{} user {id}", if created { "created" } else { "updated" });
    Ok(())
}

fn user_token(config: &Config, id: &str) -> Result<(), String> {
    let store = open_store(config)?;
    let token = service::issue_token(&store, id).map_err(|e| match e {
        StoreError::NotFound => {
            format!("no user {id:?} (add it with: herald user add {id} --email ...)")
        }
        other => other.to_string(),
    })?;
    println!("{token}");
    Ok(())
}
