//! A user's time zone and quiet hours (SPEC 9): the window, in the user's
//! own wall-clock time, during which non-critical emails wait, and when it
//! ends (DST-correct, from the IANA database through jiff). Also the
//! settings as the API reads and changes them: a field left out stays as
//! it is, `null` clears it, and nothing is written unless all of it is valid.

use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::error::{invalid, NotifyError};
use crate::store::users::{QuietSettings, User};

const MINUTES_PER_DAY: i64 = 24 * 60;

/// A quiet-hours window in a time zone: from `from` to `to`, minutes after
/// local midnight; `from` after `to` spans midnight.
#[derive(Debug, Clone)]
pub struct QuietHours {
    zone: TimeZone,
    from: i64,
    to: i64,
}

impl QuietHours {
    /// The window a user's stored settings describe; None without a time
    /// zone or a window, or for values the API would never have stored.
    pub fn of(settings: &QuietSettings) -> Option<QuietHours> {
        let (Some(zone), Some(from), Some(to)) =
            (&settings.timezone, settings.quiet_from, settings.quiet_to)
        else {
            return None;
        };
        QuietHours::new(zone, from, to)
    }

    pub fn new(zone: &str, from: i64, to: i64) -> Option<QuietHours> {
        let in_day = 0..MINUTES_PER_DAY;
        if from == to || !in_day.contains(&from) || !in_day.contains(&to) {
            return None;
        }
        let zone = TimeZone::get(zone).ok()?;
        Some(QuietHours { zone, from, to })
    }

    /// When the window ends, if `now_ms` falls inside it: the first instant
    /// after now at which the local clock reaches `to`. On a day the clocks
    /// skip `to`, that is the instant they jump past it; on a day they show
    /// it twice, the next of the two.
    pub fn held_until(&self, now_ms: i64) -> Option<i64> {
        let now = Timestamp::from_millisecond(now_ms).ok()?;
        let local = now.to_zoned(self.zone.clone());
        let minute = i64::from(local.hour()) * 60 + i64::from(local.minute());
        let inside = if self.from < self.to {
            self.from <= minute && minute < self.to
        } else {
            minute >= self.from || minute < self.to
        };
        if !inside {
            return None;
        }
        let today = local.date();
        let tomorrow = today.tomorrow().ok()?;
        [today, tomorrow]
            .into_iter()
            .flat_map(|date| self.instants_of_end(date))
            .filter(|at| *at > now)
            .min()
            .map(|at| at.as_millisecond())
    }

    /// The instants on `date` at which the local clock reads `to`: one,
    /// two on a day clocks go back through it, or the jump over it on a
    /// day they go forward.
    fn instants_of_end(&self, date: Date) -> Vec<Timestamp> {
        let Ok(hour) = i8::try_from(self.to / 60) else {
            return Vec::new();
        };
        let Ok(minute) = i8::try_from(self.to % 60) else {
            return Vec::new();
        };
        let civil = date.at(hour, minute, 0, 0);
        let ambiguous = self.zone.to_ambiguous_timestamp(civil);
        let found = match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => vec![offset.to_timestamp(civil)],
            AmbiguousOffset::Fold { before, after } => {
                vec![before.to_timestamp(civil), after.to_timestamp(civil)]
            }
            // Read with the offset before the jump, `to` falls after it;
            // the jump itself is the transition just before that.
            AmbiguousOffset::Gap { before, .. } => match before.to_timestamp(civil) {
                Ok(past) => vec![Ok(self
                    .zone
                    .preceding(past)
                    .next()
                    .map_or(past, |t| t.timestamp()))],
                Err(e) => vec![Err(e)],
            },
        };
        found.into_iter().flatten().collect()
    }
}

/// `"22:00"` -> 1320: exactly two digits, a colon and two digits.
pub fn parse_clock(s: &str) -> Option<i64> {
    let (h, m) = s.split_once(':')?;
    let digits = |p: &str| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// 1320 -> `"22:00"`.
pub fn format_clock(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// A change to a user's settings as asked: None leaves a field as it is,
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChange {
    /// The IANA name as the database spells it.
    pub timezone: Option<Option<String>>,
    /// (from, to), minutes after local midnight.
    pub quiet_hours: Option<Option<(i64, i64)>>,
    /// The canonical BCP 47 tag (see `locale::parse_field`).
    pub locale: Option<Option<String>>,
}

impl SettingsChange {
    /// Reads `timezone` and `quietHours` as a request carried them (None:
    /// the field was left out); the error names the field at fault.
    pub fn parse(
        timezone: Option<&Value>,
        quiet_hours: Option<&Value>,
    ) -> Result<SettingsChange, NotifyError> {
        Ok(SettingsChange {
            timezone: timezone.map(parse_zone).transpose()?,
            quiet_hours: quiet_hours.map(parse_window).transpose()?,
            locale: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.timezone.is_none() && self.quiet_hours.is_none() && self.locale.is_none()
    }
}

fn parse_zone(value: &Value) -> Result<Option<String>, NotifyError> {
    let name = match value {
        Value::Null => return Ok(None),
        Value::String(name) => name,
        _ => {
            return Err(invalid(
                "timezone",
                "expected an IANA time zone name (e.g. \"Europe/Paris\") or null",
            ))
        }
    };
    // Only names of the IANA database: jiff would also take POSIX TZ
    // strings, which do not name a place and cannot follow its changes.
    let zone =
        (!name.is_empty() && name.len() <= 64 && !name.contains(',')).then(|| TimeZone::get(name));
    match zone {
        Some(Ok(zone)) => Ok(Some(zone.iana_name().unwrap_or(name).to_string())),
        _ => Err(invalid(
            "timezone",
            &format!("{name:?} is not a time zone of the IANA database (e.g. \"Europe/Paris\")"),
        )),
    }
}

fn parse_window(value: &Value) -> Result<Option<(i64, i64)>, NotifyError> {
    let window = match value {
        Value::Null => return Ok(None),
        Value::Object(window) => window,
        _ => {
            return Err(invalid(
                "quietHours",
                "expected {\"from\": \"HH:MM\", \"to\": \"HH:MM\"} or null",
            ))
        }
    };
    if let Some(other) = window.keys().find(|k| *k != "from" && *k != "to") {
        return Err(invalid(
            &format!("quietHours.{other}"),
            "unknown field; expected only \"from\" and \"to\"",
        ));
    }
    let clock = |field: &str| {
        window
            .get(field)
            .and_then(Value::as_str)
            .and_then(parse_clock)
            .ok_or_else(|| {
                invalid(
                    &format!("quietHours.{field}"),
                    "expected a local time as \"HH:MM\" (00:00 to 23:59)",
                )
            })
    };
    let (from, to) = (clock("from")?, clock("to")?);
    if from == to {
        return Err(invalid(
            "quietHours",
            "\"from\" and \"to\" must differ (a window from 22:00 to 08:00 spans midnight)",
        ));
    }
    Ok(Some((from, to)))
}

/// A user's quiet-hours window as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Window {
    pub from: String,
    pub to: String,
}

/// A user as the API shows it: who, and their time zone and quiet hours
/// (null when unset; the window applies only once a time zone is set).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[serde(flatten)]
    pub user: User,
    pub timezone: Option<String>,
    pub quiet_hours: Option<Window>,
    pub locale: Option<String>,
}

impl UserView {
    pub fn new(user: User, settings: QuietSettings) -> UserView {
        let quiet_hours = match (settings.quiet_from, settings.quiet_to) {
            (Some(from), Some(to)) => Some(Window {
                from: format_clock(from),
                to: format_clock(to),
            }),
            _ => None,
        };
        UserView {
            user,
            timezone: settings.timezone,
            quiet_hours,
            locale: settings.locale,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(rfc3339: &str) -> i64 {
        crate::time::parse_rfc3339(rfc3339).unwrap()
    }

    fn window(zone: &str, from: &str, to: &str) -> QuietHours {
        QuietHours::new(zone, parse_clock(from).unwrap(), parse_clock(to).unwrap()).unwrap()
    }

    /// (now, expected end of the window or None when outside), checked one
    /// by one so a failure names its case.
    fn check(quiet: &QuietHours, cases: &[(&str, Option<&str>)]) {
        for (now, expected) in cases {
            assert_eq!(
                quiet.held_until(at(now)),
                expected.map(at),
                "now {now}: expected {expected:?}"
            );
        }
    }

    #[test]
    fn a_window_spanning_midnight_ends_at_the_next_local_end_time() {
        let quiet = window("Europe/Paris", "22:00", "08:00");
        check(
            &quiet,
            &[
                ("2025-01-15T21:59:59+01:00", None),
                (
                    "2025-01-15T22:00:00+01:00",
                    Some("2025-01-16T08:00:00+01:00"),
                ),
                (
                    "2025-01-15T23:30:00+01:00",
                    Some("2025-01-16T08:00:00+01:00"),
                ),
                (
                    "2025-01-16T00:10:00+01:00",
                    Some("2025-01-16T08:00:00+01:00"),
                ),
                (
                    "2025-01-16T07:59:59+01:00",
                    Some("2025-01-16T08:00:00+01:00"),
                ),
                ("2025-01-16T08:00:00+01:00", None),
                ("2025-01-16T12:00:00+01:00", None),
                // The same instant seen from UTC: the user's zone decides.
                ("2025-01-15T21:30:00Z", Some("2025-01-16T07:00:00Z")),
            ],
        );
    }

    #[test]
    fn a_window_within_one_day_holds_only_inside_it() {
        let quiet = window("Asia/Kolkata", "13:00", "14:30");
        check(
            &quiet,
            &[
                ("2025-06-01T12:59:00+05:30", None),
                (
                    "2025-06-01T13:00:00+05:30",
                    Some("2025-06-01T14:30:00+05:30"),
                ),
                (
                    "2025-06-01T14:29:59+05:30",
                    Some("2025-06-01T14:30:00+05:30"),
                ),
                ("2025-06-01T14:30:00+05:30", None),
                ("2025-06-01T23:00:00+05:30", None),
            ],
        );
    }

    #[test]
    fn the_end_follows_the_wall_clock_across_dst_changes() {
        let quiet = window("America/New_York", "22:00", "08:00");
        check(
            &quiet,
            &[
                // Spring forward (2025-03-09, 02:00 EST -> 03:00 EDT): the
                // night is an hour shorter, the end is 08:00 EDT.
                (
                    "2025-03-08T23:00:00-05:00",
                    Some("2025-03-09T08:00:00-04:00"),
                ),
                // Fall back (2025-11-02, 02:00 EDT -> 01:00 EST): an hour
                // longer, the end is 08:00 EST.
                (
                    "2025-11-01T23:00:00-04:00",
                    Some("2025-11-02T08:00:00-05:00"),
                ),
            ],
        );
        assert_eq!(
            quiet.held_until(at("2025-03-08T23:00:00-05:00")).unwrap()
                - at("2025-03-08T23:00:00-05:00"),
            8 * 3_600_000
        );
        // An end the clocks skip (02:30 on 2025-03-09) comes when they jump.
        let skipped = window("America/New_York", "23:00", "02:30");
        check(
            &skipped,
            &[(
                "2025-03-09T01:00:00-05:00",
                Some("2025-03-09T03:00:00-04:00"),
            )],
        );
        // An end the clocks show twice (01:30 on 2025-11-02): the next one.
        let twice = window("America/New_York", "00:00", "01:30");
        check(
            &twice,
            &[
                (
                    "2025-11-02T01:15:00-04:00",
                    Some("2025-11-02T01:30:00-04:00"),
                ),
                (
                    "2025-11-02T01:15:00-05:00",
                    Some("2025-11-02T01:30:00-05:00"),
                ),
            ],
        );
    }

    #[test]
    fn windows_need_a_known_zone_and_distinct_ends() {
        assert!(QuietHours::new("Mars/Olympus_Mons", 0, 60).is_none());
        assert!(QuietHours::new("UTC", 60, 60).is_none());
        assert!(QuietHours::new("UTC", 0, 1440).is_none());
        let stored = |tz: Option<&str>, from, to| QuietSettings {
            timezone: tz.map(str::to_string),
            quiet_from: from,
            quiet_to: to,
            locale: None,
        };
        assert!(QuietHours::of(&stored(None, Some(0), Some(60))).is_none());
        assert!(QuietHours::of(&stored(Some("UTC"), None, None)).is_none());
        assert!(QuietHours::of(&stored(Some("UTC"), Some(0), Some(60))).is_some());
    }

    #[test]
    fn clocks_are_exactly_hh_mm() {
        assert_eq!(parse_clock("00:00"), Some(0));
        assert_eq!(parse_clock("23:59"), Some(1439));
        assert_eq!(format_clock(1320), "22:00");
        for bad in [
            "24:00", "7:00", "07:0", "07:60", "0700", "07:00 ", "+7:00", "ab:cd", "",
        ] {
            assert_eq!(parse_clock(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_change_names_the_field_at_fault_and_knows_left_out_from_null() {
        let parse =
            |tz: Option<Value>, q: Option<Value>| SettingsChange::parse(tz.as_ref(), q.as_ref());
        assert_eq!(parse(None, None).unwrap(), SettingsChange::default());
        let change = parse(
            Some(json!("america/new_york")),
            Some(json!({"from": "22:00", "to": "08:00"})),
        )
        .unwrap();
        assert_eq!(change.timezone, Some(Some("America/New_York".to_string())));
        assert_eq!(change.quiet_hours, Some(Some((1320, 480))));
        let cleared = parse(Some(Value::Null), Some(Value::Null)).unwrap();
        assert_eq!(cleared.timezone, Some(None));
        assert_eq!(cleared.quiet_hours, Some(None));
        for (tz, q, field) in [
            (Some(json!("Mars/Base")), None, "timezone"),
            (Some(json!("EST5EDT,M3.2.0,M11.1.0")), None, "timezone"),
            (Some(json!("../../../etc/passwd")), None, "timezone"),
            (Some(json!("")), None, "timezone"),
            (Some(json!(5)), None, "timezone"),
            (None, Some(json!("22:00-08:00")), "quietHours"),
            (
                None,
                Some(json!({"from": "22:00", "to": "22:00"})),
                "quietHours",
            ),
            (
                None,
                Some(json!({"from": "25:00", "to": "08:00"})),
                "quietHours.from",
            ),
            (None, Some(json!({"from": "22:00"})), "quietHours.to"),
            (
                None,
                Some(json!({"from": "22:00", "to": "08:00", "x": 1})),
                "quietHours.x",
            ),
        ] {
            match parse(tz.clone(), q.clone()) {
                Err(NotifyError::Invalid { field: f, .. }) => assert_eq!(f, field, "{tz:?} {q:?}"),
                other => panic!("{tz:?} {q:?}: {other:?}"),
            }
        }
    }
}
