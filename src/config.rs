//! Configuration: one struct, filled from defaults, then `HERALD_*`
//! environment variables, then command-line flags, and validated at start
//! with a clear message. `Debug` never shows secrets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::mail::MailConfig;
use crate::notify::DeliveryPolicy;
use crate::store::{Database, Synchronous};

/// Command-line words: positionals, `--flag value` options and switches.
#[derive(Debug, Default)]
pub struct Args {
    pub positional: Vec<String>,
    options: HashMap<String, Vec<String>>,
}

const SWITCHES: &[&str] = &["dev", "demo", "force", "help"];
const OPTIONS: &[&str] = &[
    "addr",
    "db",
    "database-url",
    "registry",
    "templates",
    "to",
    "payload",
    "subject-id",
    "email",
    "name",
    "synchronous",
];

impl Args {
    pub fn parse(words: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut args = Args::default();
        let mut words = words.into_iter();
        while let Some(word) = words.next() {
            let Some(flag) = word.strip_prefix("--") else {
                args.positional.push(word);
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            if SWITCHES.contains(&name.as_str()) {
                let value = inline.unwrap_or_else(|| "true".into());
                args.options.entry(name).or_default().push(value);
            } else if OPTIONS.contains(&name.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => words.next().ok_or(format!("--{name} needs a value"))?,
                };
                args.options.entry(name).or_default().push(value);
            } else {
                return Err(format!("unknown flag --{name} (see herald --help)"));
            }
        }
        Ok(args)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.options
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn values(&self, name: &str) -> &[String] {
        self.options.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn switch(&self, name: &str) -> bool {
        self.value(name).is_some_and(|v| v != "false")
    }
}

#[derive(Clone)]
pub struct Config {
    pub addr: String,
    /// `--db`/`HERALD_DB` (an SQLite file, `data/herald.db` by default) or
    /// `--database-url`/`HERALD_DATABASE_URL` (PostgreSQL).
    pub database: Database,
    pub dev: bool,
    pub demo: bool,
    pub registry: Option<PathBuf>,
    pub templates: Option<PathBuf>,
    pub service_key: Option<String>,
    pub public_url: Option<String>,
    /// `STRIPE_WEBHOOK_SECRET`: verifies `POST /webhooks/stripe`.
    pub stripe_webhook_secret: Option<String>,
    /// `HERALD_TEST_*` failure injection; inert unless set.
    pub test_hooks: crate::app::TestHooks,
    /// `HERALD_REFERRAL_CREDITS`: credits per referral grant; `None` turns
    /// the billing listener and reconcile off.
    pub referral_credits: Option<i64>,
    /// `HERALD_RECONCILE_INTERVAL_SECS`: how often `serve` sweeps for
    /// missing referral credits.
    pub reconcile_interval: Duration,
    /// `HERALD_TEST_FAIL_LISTENER` / `HERALD_TEST_LISTENER_DELAY_MS`.
    pub listener_hooks: crate::notify::ListenerHooks,
    pub mail: MailConfig,
    pub policy: DeliveryPolicy,
    /// `HERALD_HTTP_*`: workers and the bounds on each connection.
    pub http: crate::http::HttpLimits,
    /// `HERALD_STREAM_*`: the live inbox's bounds.
    pub streams: crate::http::StreamLimits,
    pub synchronous: Synchronous,
    pub shutdown_grace: Duration,
    /// The clock rows are written by: the system's, or shifted by
    /// `HERALD_TEST_CLOCK_OFFSET_MS` to rehearse a moment (quiet hours at
    /// night, a daylight-saving change) without waiting for it.
    pub clock: crate::time::Clock,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database", &self.database.to_string())
            .field(
                "service_key",
                &self.service_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "stripe_webhook_secret",
                &self.stripe_webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("mail", &self.mail)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// `90s`, `30m`, `12h`, `7d` (a bare number is seconds); `forever` is None.
fn parse_period(text: &str) -> Option<Option<Duration>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("forever") {
        return Some(None);
    }
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let n: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Some(Duration::from_secs(secs)))
}

impl Config {
    /// Defaults, then the environment, then `args`.
    pub fn load(args: &Args) -> Result<Config, String> {
        Config::from_sources(args, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    pub fn from_sources(
        args: &Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        // A flag wins over its HERALD_* twin.
        let setting =
            |flag: &str, var: &str| args.value(flag).map(str::to_string).or_else(|| env(var));
        let switch = |flag: &str, var: &str| {
            args.switch(flag)
                || env(var).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
        };
        let number = |var: &str, default: u64| -> Result<u64, String> {
            env(var).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("{var}={v:?} is not a non-negative integer"))
            })
        };
        let retention = |var: &str, default: Option<Duration>| match env(var) {
            None => Ok(default),
            Some(v) => parse_period(&v).ok_or_else(|| {
                format!("{var}={v:?} must be a period like 90s, 30m, 12h or 7d, or \"forever\"")
            }),
        };
        let millis = |var: &str, default: u64| -> Result<Duration, String> {
            Ok(Duration::from_millis(number(var, default)?.max(100)))
        };
        let synchronous = match setting("synchronous", "HERALD_SYNCHRONOUS").as_deref() {
            None | Some("normal" | "NORMAL") => Synchronous::Normal,
            Some("full" | "FULL") => Synchronous::Full,
            Some(other) => {
                return Err(format!("synchronous must be normal or full, not {other:?}"))
            }
        };
        let max_attempts = number("HERALD_MAX_ATTEMPTS", 8)?;
        if max_attempts == 0 || max_attempts > 100 {
            return Err("HERALD_MAX_ATTEMPTS must be 1 to 100".into());
        }
        let rate_per_sec = match env("HERALD_MAIL_RATE_PER_SEC") {
            None => None,
            Some(v) => match v.parse::<f64>() {
                Ok(rate) if rate > 0.0 && rate.is_finite() => Some(rate),
                _ => {
                    return Err(format!(
                        "HERALD_MAIL_RATE_PER_SEC={v:?} must be a positive number of requests \
                         per second (unset for no limit)"
                    ))
                }
            },
        };
        let policy = DeliveryPolicy {
            from: env("HERALD_MAIL_FROM")
                .unwrap_or_else(|| "herald <notifications@localhost>".into()),
            sender_threads: number("HERALD_MAIL_SENDERS", 8)?.clamp(1, 64) as usize,
            retry_base: Duration::from_millis(number("HERALD_RETRY_BASE_MS", 5000)?.max(1)),
            retry_cap: Duration::from_millis(number("HERALD_RETRY_CAP_MS", 3_600_000)?.max(1)),
            max_attempts: max_attempts as u32,
            rate_per_sec,
            queue_capacity: number("HERALD_MAIL_QUEUE", 1024)?.clamp(1, 1_000_000) as usize,
            mail_batch: number("HERALD_MAIL_BATCH", crate::mail::MAX_BATCH_EMAILS as u64)?
                .clamp(1, crate::mail::MAX_BATCH_EMAILS as u64) as usize,
            retention: crate::notify::retention::Retention {
                email_bodies: retention("HERALD_EMAIL_BODY_RETENTION", Some(7 * DAY))?,
                log: retention("HERALD_LOG_RETENTION", Some(30 * DAY))?,
                inbox: retention("HERALD_INBOX_RETENTION", None)?,
                test_step_delay: env("HERALD_TEST_PRUNE_DELAY_MS")
                    .map(|v| {
                        let ms = v.parse::<u64>().map_err(|_| {
                            format!(
                                "HERALD_TEST_PRUNE_DELAY_MS={v:?} is not a number of milliseconds"
                            )
                        })?;
                        log::warn!("TEST HOOK: every prune step holds the writer {ms} ms");
                        Ok::<_, String>(Duration::from_millis(ms))
                    })
                    .transpose()?,
            },
            lease: Duration::from_millis(number("HERALD_LEASE_MS", 15_000)?.clamp(100, 3_600_000)),
            webhooks: crate::notify::webhooks::WebhookPolicy {
                senders: number("HERALD_WEBHOOK_SENDERS", 4)?.clamp(1, 64) as usize,
                timeout: Duration::from_millis(
                    number("HERALD_WEBHOOK_TIMEOUT_MS", 10_000)?.clamp(100, 300_000),
                ),
                retry_base: Duration::from_millis(
                    number("HERALD_WEBHOOK_RETRY_BASE_MS", 5_000)?.max(1),
                ),
                retry_cap: Duration::from_millis(
                    number("HERALD_WEBHOOK_RETRY_CAP_MS", 3_600_000)?.max(1),
                ),
                disable_after: Duration::from_secs(
                    number("HERALD_WEBHOOK_DISABLE_AFTER_SECS", 86_400)?.max(1),
                ),
            },
            test_fanout_page_delay: env("HERALD_TEST_FANOUT_PAGE_DELAY_MS")
                .map(|v| {
                    let ms = v.parse::<u64>().map_err(|_| {
                        format!("HERALD_TEST_FANOUT_PAGE_DELAY_MS={v:?} is not a number of milliseconds")
                    })?;
                    log::warn!("TEST HOOK: every topic fan-out page is followed by a {ms} ms pause");
                    Ok::<_, String>(Duration::from_millis(ms))
                })
                .transpose()?,
        };
        let mail = MailConfig {
            provider: env("HERALD_MAIL_PROVIDER").unwrap_or_else(|| "console".into()),
            api_url: env("HERALD_MAIL_API_URL").unwrap_or_else(|| "https://api.resend.com".into()),
            api_key: env("HERALD_MAIL_API_KEY"),
            from: policy.from.clone(),
            timeout: Duration::from_millis(number("HERALD_MAIL_TIMEOUT_MS", 15_000)?.max(100)),
            connect_timeout: Duration::from_millis(
                number("HERALD_MAIL_CONNECT_TIMEOUT_MS", 5_000)?.max(100),
            ),
        };
        let public_url = env("HERALD_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_string());
        if let Some(url) = &public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "HERALD_PUBLIC_URL={url:?} must start with http:// or https://"
                ));
            }
        }
        let referral_credits = env("HERALD_REFERRAL_CREDITS")
            .map(|v| match v.parse::<i64>() {
                Ok(n) if (1..=1_000_000_000).contains(&n) => Ok(n),
                _ => Err(format!(
                    "HERALD_REFERRAL_CREDITS={v:?} must be a whole number of credits, 1 to 1000000000"
                )),
            })
            .transpose()?;
        let listener_hooks = crate::notify::ListenerHooks::parse(
            env("HERALD_TEST_FAIL_LISTENER").as_deref(),
            env("HERALD_TEST_LISTENER_DELAY_MS").as_deref(),
        )?;
        Ok(Config {
            referral_credits,
            reconcile_interval: Duration::from_secs(
                number("HERALD_RECONCILE_INTERVAL_SECS", 300)?.max(1),
            ),
            listener_hooks,
            addr: setting("addr", "HERALD_ADDR").unwrap_or_else(|| "127.0.0.1:8025".into()),
            database: database(
                setting("db", "HERALD_DB"),
                setting("database-url", "HERALD_DATABASE_URL"),
            )?,
            dev: switch("dev", "HERALD_DEV"),
            demo: switch("demo", "HERALD_DEMO"),
            registry: setting("registry", "HERALD_REGISTRY").map(PathBuf::from),
            templates: setting("templates", "HERALD_TEMPLATES").map(PathBuf::from),
            service_key: env("HERALD_SERVICE_KEY"),
            public_url,
            stripe_webhook_secret: env("STRIPE_WEBHOOK_SECRET"),
            test_hooks: crate::app::TestHooks {
                fail_role_change: env("HERALD_TEST_FAIL_ROLE_CHANGE")
                    .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes")),
                fail_stripe_event: env("HERALD_TEST_FAIL_STRIPE_EVENT"),
            },
            mail,
            policy,
            http: crate::http::HttpLimits {
                threads: number("HERALD_HTTP_THREADS", 8)?.clamp(1, 256) as usize,
                max_connections: number("HERALD_HTTP_MAX_CONNECTIONS", 10_000)?.max(1) as usize,
                max_head: number("HERALD_HTTP_MAX_HEADER_BYTES", 32 * 1024)?.clamp(1024, 1 << 20)
                    as usize,
                max_body: crate::http::MAX_BODY,
                header_timeout: millis("HERALD_HTTP_HEADER_TIMEOUT_MS", 10_000)?,
                body_timeout: millis("HERALD_HTTP_BODY_TIMEOUT_MS", 30_000)?,
                idle_timeout: millis("HERALD_HTTP_IDLE_TIMEOUT_MS", 60_000)?,
            },
            streams: crate::http::StreamLimits {
                heartbeat: Duration::from_millis(
                    number("HERALD_STREAM_HEARTBEAT_MS", 15_000)?.max(50),
                ),
                max_buffer: number("HERALD_STREAM_MAX_BUFFER", 1 << 20)?.max(4096) as usize,
                max_per_user: number("HERALD_STREAM_MAX_PER_USER", 10)?.max(1) as usize,
                max_total: number("HERALD_STREAM_MAX", 10_000)?.max(1) as usize,
            },
            synchronous,
            shutdown_grace: Duration::from_millis(number("HERALD_SHUTDOWN_GRACE_MS", 10_000)?),
            clock: match env("HERALD_TEST_CLOCK_OFFSET_MS") {
                None => crate::time::Clock::system(),
                Some(v) => {
                    let offset = v.parse::<i64>().map_err(|_| {
                        format!("HERALD_TEST_CLOCK_OFFSET_MS={v:?} is not a number of milliseconds")
                    })?;
                    log::warn!("TEST HOOK: herald's clock runs {offset} ms off the system's");
                    crate::time::Clock::offset(offset)
                }
            },
        })
    }
}

/// The database `--db` and `--database-url` name: an SQLite file unless a
/// PostgreSQL URL is given; both at once is a mistake, not a choice.
fn database(file: Option<String>, url: Option<String>) -> Result<Database, String> {
    match (file, url.filter(|u| !u.is_empty())) {
        (Some(_), Some(_)) => Err(
            "--db (HERALD_DB) and --database-url (HERALD_DATABASE_URL) name two databases; \
             set only one"
                .into(),
        ),
        (None, Some(url)) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Database::Postgres(url))
        }
        (None, Some(_)) => Err(
            "--database-url (HERALD_DATABASE_URL) must be a postgres:// or postgresql:// URL; \
             for an SQLite file use --db"
                .into(),
        ),
        (file, None) => Ok(Database::File(
            file.map_or_else(|| PathBuf::from("data/herald.db"), PathBuf::from),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::parse(words.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn a_postgres_url_selects_postgresql_and_nothing_keeps_sqlite() {
        let url = "postgres://herald@127.0.0.1:5432/herald";
        let env = |name: &str| (name == "HERALD_DATABASE_URL").then(|| url.to_string());
        let c = Config::from_sources(&args(&["serve"]), env).unwrap();
        assert_eq!(c.database, Database::Postgres(url.into()));
        let c = Config::from_sources(&args(&["serve", "--database-url", url]), |_| None).unwrap();
        assert_eq!(c.database, Database::Postgres(url.into()));
        let c = Config::from_sources(&args(&["serve"]), |_| None).unwrap();
        assert_eq!(c.database, Database::File(PathBuf::from("data/herald.db")));
        let both = Config::from_sources(&args(&["serve", "--db", "x.db"]), env).unwrap_err();
        assert!(both.contains("set only one"), "{both}");
        let mysql = Config::from_sources(&args(&["--database-url", "mysql://db"]), |_| None);
        assert!(mysql.unwrap_err().contains("postgres://"));
    }

    #[test]
    fn flags_override_environment_which_overrides_defaults() {
        let env = |name: &str| match name {
            "HERALD_ADDR" => Some("0.0.0.0:9000".to_string()),
            "HERALD_DB" => Some("/tmp/env.db".to_string()),
            "HERALD_MAX_ATTEMPTS" => Some("3".to_string()),
            _ => None,
        };
        let c = Config::from_sources(&args(&["serve", "--db", "/tmp/flag.db"]), env).unwrap();
        assert_eq!(c.addr, "0.0.0.0:9000");
        assert_eq!(c.database, Database::File(PathBuf::from("/tmp/flag.db")));
        assert_eq!(c.policy.max_attempts, 3);
        assert_eq!(c.mail.provider, "console");
        let c = Config::from_sources(&args(&[]), |_| None).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8025");
        assert_eq!(c.policy.retry_base, Duration::from_secs(5));
        assert_eq!(c.policy.rate_per_sec, None, "unset means unlimited");
        let c = Config::from_sources(&args(&[]), |n| {
            (n == "HERALD_MAIL_RATE_PER_SEC").then(|| "2.5".to_string())
        })
        .unwrap();
        assert_eq!(c.policy.rate_per_sec, Some(2.5));
    }

    #[test]
    fn retention_periods_read_with_units_or_forever() {
        assert_eq!(parse_period("90"), Some(Some(Duration::from_secs(90))));
        assert_eq!(parse_period("30m"), Some(Some(Duration::from_secs(1800))));
        assert_eq!(parse_period("12H"), Some(Some(Duration::from_secs(43_200))));
        assert_eq!(parse_period("7d"), Some(Some(7 * DAY)));
        assert_eq!(parse_period("forever"), Some(None));
        for bad in ["", "0", "-1d", "7w", "d", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_period(bad), None, "{bad:?}");
        }
        let c = Config::from_sources(&args(&[]), |_| None).unwrap();
        assert_eq!(c.policy.retention.email_bodies, Some(7 * DAY));
        assert_eq!(c.policy.retention.log, Some(30 * DAY));
        assert_eq!(c.policy.retention.inbox, None);
        let err = Config::from_sources(&args(&[]), |n| {
            (n == "HERALD_LOG_RETENTION").then(|| "a month".to_string())
        })
        .unwrap_err();
        assert!(err.contains("HERALD_LOG_RETENTION"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_sources(&args(&[]), |n| {
            (n == "HERALD_RETRY_BASE_MS").then(|| "soon".to_string())
        })
        .unwrap_err();
        assert!(err.contains("HERALD_RETRY_BASE_MS"), "{err}");
        for bad in ["0", "-2", "fast"] {
            let err = Config::from_sources(&args(&[]), |n| {
                (n == "HERALD_MAIL_RATE_PER_SEC").then(|| bad.to_string())
            })
            .unwrap_err();
            assert!(err.contains("HERALD_MAIL_RATE_PER_SEC"), "{err}");
        }
        let err = Args::parse(["--colour".to_string()]).unwrap_err();
        assert!(err.contains("--colour"), "{err}");
        let err = Args::parse(["--db".to_string()]).unwrap_err();
        assert!(err.contains("--db needs a value"), "{err}");
    }

    #[test]
    fn referral_credits_are_off_unless_a_positive_amount_is_set() {
        let c = Config::from_sources(&args(&[]), |_| None).unwrap();
        assert_eq!(c.referral_credits, None);
        assert_eq!(c.reconcile_interval, Duration::from_secs(300));
        let c = Config::from_sources(&args(&[]), |n| {
            (n == "HERALD_REFERRAL_CREDITS").then(|| "500".to_string())
        })
        .unwrap();
        assert_eq!(c.referral_credits, Some(500));
        for bad in ["0", "-5", "lots"] {
            let err = Config::from_sources(&args(&[]), |n| {
                (n == "HERALD_REFERRAL_CREDITS").then(|| bad.to_string())
            })
            .unwrap_err();
            assert!(err.contains("HERALD_REFERRAL_CREDITS"), "{err}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Config::from_sources(&args(&[]), |n| match n {
            "HERALD_SERVICE_KEY" => Some("sk-very-secret".to_string()),
            "HERALD_MAIL_API_KEY" => Some("re_secret".to_string()),
            "STRIPE_WEBHOOK_SECRET" => Some("whsec_secret".to_string()),
            _ => None,
        })
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("very-secret")
                && !shown.contains("re_secret")
                && !shown.contains("whsec_secret"),
            "{shown}"
        );
    }
}
