//! The Resend provider: `POST {api}/emails` with a bearer key and the body
//! of Resend's `SendEmailRequest`, or `POST {api}/emails/batch` with an
//! array of them; `Idempotency-Key` is the delivery's or the batch's id.
//! Maps Resend's answers onto sent / retryable / refused.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use ureq::http::{Response, Uri};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::provider::{Email, MailError, MailProvider, RateHint, Sent};

pub struct Resend {
    endpoint: String,
    batch_endpoint: String,
    auth: String,
    agent: ureq::Agent,
}

/// Resend's error body: `{statusCode, name, message}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct SendResponse {
    id: String,
}

/// Resend's `CreateBatchEmailsResponse`: one id per email, in order.
#[derive(Deserialize)]
struct BatchResponse {
    data: Vec<SendResponse>,
}

impl Resend {
    /// Every call is bounded: `connect` to open the connection, `timeout`
    /// for the whole exchange, so a hanging provider costs one sender
    /// thread at most `timeout` per attempt.
    pub fn new(api_url: &str, api_key: &str, connect: Duration, timeout: Duration) -> Resend {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(connect.min(timeout)))
            .timeout_global(Some(timeout))
            .max_idle_connections_per_host(64)
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build();
        let api = api_url.trim_end_matches('/');
        Resend {
            endpoint: format!("{api}/emails"),
            batch_endpoint: format!("{api}/emails/batch"),
            auth: format!("Bearer {api_key}"),
            agent: ureq::Agent::with_parts(
                config,
                DefaultConnector::default(),
                CachedResolver::<DefaultResolver>::default(),
            ),
        }
    }
}

/// How long a resolved mail API address is reused.
const RESOLVED_FOR: Duration = Duration::from_secs(60);

/// ureq resolves the host before every request, even one that then reuses
/// a pooled connection, and with a timeout set it resolves on a new thread
/// each time. At thousands of emails a second, creating those threads took
/// half of herald's CPU (perf), and against a real API it is a DNS lookup
/// per email. The one mail API host is resolved (with the timeout) once a
/// minute instead.
#[derive(Debug, Default)]
struct CachedResolver<R = DefaultResolver> {
    inner: R,
    last: Mutex<Option<(String, ResolvedSocketAddrs, Instant)>>,
}

impl<R: Resolver> Resolver for CachedResolver<R> {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map_or("", |a| a.as_str())
        );
        let cached = |last: &Option<(String, ResolvedSocketAddrs, Instant)>| match last {
            Some((host, addrs, at)) if *host == key && at.elapsed() < RESOLVED_FOR => {
                Some(addrs.clone())
            }
            _ => None,
        };
        if let Some(addrs) = cached(&self.lock()) {
            return Ok(addrs);
        }
        // Resolved outside the lock: a slow lookup must not hold up senders
        // that could use the cached answer for another host.
        let addrs = self.inner.resolve(uri, config, timeout)?;
        *self.lock() = Some((key, addrs.clone(), Instant::now()));
        Ok(addrs)
    }
}

impl<R> CachedResolver<R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, ResolvedSocketAddrs, Instant)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MailProvider for Resend {
    fn name(&self) -> &'static str {
        "resend"
    }

    fn send_email(
        &self,
        email: &Email,
        idempotency_key: &str,
    ) -> (Result<Sent, MailError>, RateHint) {
        let (answer, hint) = self.post(&self.endpoint, email, idempotency_key);
        let sent = answer.map(|text| Sent {
            // The provider took the email; a body we cannot read must not
            // make herald send it again.
            provider_id: serde_json::from_str::<SendResponse>(&text)
                .map(|r| r.id)
                .unwrap_or_default(),
        });
        (sent, hint)
    }

    fn send_batch(
        &self,
        emails: &[Email],
        idempotency_key: &str,
    ) -> (Result<Vec<Sent>, MailError>, RateHint) {
        let (answer, hint) = self.post(&self.batch_endpoint, emails, idempotency_key);
        let sent = answer.map(|text| {
            // As for one email: taken is taken, ids or not.
            let mut ids = serde_json::from_str::<BatchResponse>(&text)
                .map(|r| r.data)
                .unwrap_or_default()
                .into_iter();
            emails
                .iter()
                .map(|_| Sent {
                    provider_id: ids.next().map(|r| r.id).unwrap_or_default(),
                })
                .collect()
        });
        (sent, hint)
    }
}

impl Resend {
    /// POSTs `body` as JSON under the key; the answer's text on a 2xx.
    fn post(
        &self,
        endpoint: &str,
        body: &(impl serde::Serialize + ?Sized),
        idempotency_key: &str,
    ) -> (Result<String, MailError>, RateHint) {
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(e) => {
                let message = format!("cannot encode email: {e}");
                return (Err(MailError::Permanent { message }), RateHint::default());
            }
        };
        let response = self
            .agent
            .post(endpoint)
            .header("Authorization", &self.auth)
            .header("Idempotency-Key", idempotency_key)
            .header("Content-Type", "application/json")
            .send(&body[..]);
        match response {
            Ok(response) => classify(response),
            Err(e) => {
                let message = format!("request to mail API failed: {e}");
                (
                    Err(MailError::Retryable {
                        message,
                        retry_after: None,
                    }),
                    RateHint::default(),
                )
            }
        }
    }
}

/// The answer's text on a 2xx; otherwise the error, classified.
fn classify(mut response: Response<ureq::Body>) -> (Result<String, MailError>, RateHint) {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_string)
    };
    let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
    let hint = RateHint {
        remaining: header("ratelimit-remaining").and_then(|v| v.parse().ok()),
        reset: header("ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs),
        throttled_for: if status == 429 { retry_after } else { None },
    };
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    if (200..300).contains(&status) {
        return (Ok(text), hint);
    }
    let error: ErrorBody = serde_json::from_str(&text).unwrap_or_default();
    let message = if error.name.is_empty() {
        format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )
    } else {
        format!("HTTP {status} {}: {}", error.name, error.message)
    };
    let outcome = if is_retryable(status, &error.name) {
        MailError::Retryable {
            message,
            retry_after,
        }
    } else if status == 409 {
        MailError::KeyConflict { message }
    } else if status == 400 || status == 422 {
        MailError::Invalid { message }
    } else {
        MailError::Permanent { message }
    };
    (Err(outcome), hint)
}

/// 429, 408, 5xx and a 409 for a same-key request still in flight are worth
/// another try; a 409 for a different body under the same key can never
/// succeed, and neither can any other 4xx.
fn is_retryable(status: u16, name: &str) -> bool {
    match status {
        429 | 408 => true,
        409 => name != "invalid_idempotent_request",
        s => s >= 500,
    }
}

/// `Retry-After` is either delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = crate::time::parse_http_date(value)?;
    let now = crate::time::system_now_ms();
    Some(Duration::from_millis(at.saturating_sub(now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// `ms` (epoch) as an IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
    fn http_date(ms: i64) -> String {
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        // `2024-11-25T10:20:00.123Z`: the calendar date and the time of day.
        let stamp = crate::time::rfc3339(ms);
        let field = |range: std::ops::Range<usize>| stamp[range].parse::<usize>().unwrap();
        let weekday = WEEKDAYS[ms.div_euclid(86_400_000).rem_euclid(7) as usize];
        format!(
            "{weekday}, {:02} {} {} {} GMT",
            field(8..10),
            MONTHS[field(5..7) - 1],
            &stamp[0..4],
            &stamp[11..19]
        )
    }

    #[test]
    fn retry_after_as_a_future_http_date_waits_until_then() {
        assert_eq!(
            http_date(1_445_412_480_000),
            "Wed, 21 Oct 2015 07:28:00 GMT"
        );
        let ahead = 120;
        let header = http_date(crate::time::system_now_ms() + ahead * 1000);
        let delay = parse_retry_after(&header).expect("an HTTP date parses");
        // The date has whole seconds: up to one second is lost to rounding
        // down, and a little to the time between the two clock reads.
        assert!(
            delay <= Duration::from_secs(ahead as u64)
                && delay >= Duration::from_secs(ahead as u64 - 1) - Duration::from_millis(500),
            "{header:?} gave {delay:?}, expected about {ahead} s"
        );
    }

    #[test]
    fn only_transient_answers_are_retried() {
        assert!(is_retryable(429, "rate_limit_exceeded"));
        assert!(is_retryable(409, "concurrent_idempotent_requests"));
        assert!(is_retryable(500, "internal_server_error"));
        assert!(is_retryable(503, ""));
        assert!(!is_retryable(409, "invalid_idempotent_request"));
        assert!(!is_retryable(422, "validation_error"));
        assert!(!is_retryable(403, "invalid_api_key"));
    }

    /// Counts lookups and answers one loopback address.
    #[derive(Debug, Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Resolver for Counting {
        fn resolve(
            &self,
            _uri: &Uri,
            _config: &ureq::config::Config,
            _timeout: NextTimeout,
        ) -> Result<ResolvedSocketAddrs, ureq::Error> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut addrs = self.empty();
            addrs.push("127.0.0.1:1".parse().unwrap());
            Ok(addrs)
        }
    }

    #[test]
    fn the_mail_api_host_is_resolved_once_not_per_email() {
        let resolver = CachedResolver::<Counting>::default();
        let config = ureq::config::Config::default();
        let resolve = |url: &str| {
            let uri: Uri = url.parse().unwrap();
            resolver
                .resolve(&uri, &config, NextTimeout::default())
                .unwrap()
        };
        for _ in 0..100 {
            assert_eq!(resolve("https://api.resend.com/emails")[0].port(), 1);
        }
        assert_eq!(
            resolver.inner.0.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        resolve("http://127.0.0.1:9/emails");
        resolve("https://api.resend.com/emails");
        assert_eq!(
            resolver.inner.0.load(std::sync::atomic::Ordering::SeqCst),
            3,
            "a different host is looked up, and replaces the cached one"
        );
    }
}
