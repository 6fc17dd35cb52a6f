//! A schedule's `repeat` rule: parsed from the API's JSON with errors that
//! name the field, and the instants it gives. Occurrences are found on civil
//! dates in the rule's IANA time zone (jiff), never by adding 24 hours, so a
//! daylight-saving change neither skips nor doubles a run. Pure: no I/O, no
//! clock; every instant is epoch milliseconds, given by the caller.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde_json::{json, Map, Value};

use super::error::{invalid, NotifyError};

/// The days of the week as the API spells them, Monday first.
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Dates looked at, at most, for one occurrence: a monthly rule finds one
/// within two months, a weekly one within a week; past this the calendar
/// has no more (jiff's dates end in year 9999).
const SEARCH_DAYS: usize = 400;
const MAX_TIMEZONE_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    /// On these weekdays (bit 0 Monday .. bit 6 Sunday); never empty.
    Weekly(u8),
    /// On this day of the month, 1 to 31; a month without it runs on its
    /// last day.
    Monthly(i8),
}

/// When a schedule runs: a local time of day on the days its frequency
/// names, in one time zone.
#[derive(Debug, Clone)]
pub struct Repeat {
    pub frequency: Frequency,
    pub hours: i8,
    pub minutes: i8,
    tz: TimeZone,
    /// The zone's IANA name as the database spells it.
    timezone: String,
}

impl PartialEq for Repeat {
    fn eq(&self, other: &Repeat) -> bool {
        (&self.frequency, self.hours, self.minutes, &self.timezone)
            == (
                &other.frequency,
                other.hours,
                other.minutes,
                &other.timezone,
            )
    }
}

impl Repeat {
    /// Parses the `repeat` object of a request (or as stored), naming the
    /// first wrong field as `repeat.<field>`.
    pub fn from_json(value: &Value) -> Result<Repeat, NotifyError> {
        let Value::Object(obj) = value else {
            return Err(invalid("repeat", "expected an object"));
        };
        if let Some(field) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(invalid(
                &format!("repeat.{field}"),
                "is not a known repeat field",
            ));
        }
        let frequency = match obj.get("frequency") {
            Some(Value::String(f)) if f == "daily" => Frequency::Daily,
            Some(Value::String(f)) if f == "weekly" => Frequency::Weekly(days(obj)?),
            Some(Value::String(f)) if f == "monthly" => Frequency::Monthly(day_of_month(obj)?),
            None => return Err(invalid("repeat.frequency", "is required")),
            Some(_) => {
                return Err(invalid(
                    "repeat.frequency",
                    "expected \"daily\", \"weekly\" or \"monthly\"",
                ))
            }
        };
        let weekly = matches!(frequency, Frequency::Weekly(_));
        let monthly = matches!(frequency, Frequency::Monthly(_));
        if !weekly && obj.get("days").is_some_and(|v| !v.is_null()) {
            return Err(invalid("repeat.days", "is only for a weekly frequency"));
        }
        if !monthly && obj.get("dayOfMonth").is_some_and(|v| !v.is_null()) {
            return Err(invalid(
                "repeat.dayOfMonth",
                "is only for a monthly frequency",
            ));
        }
        let (tz, timezone) = timezone(obj)?;
        Ok(Repeat {
            frequency,
            hours: integer(obj, "hours", 0, 23)?,
            minutes: integer(obj, "minutes", 0, 59)?,
            tz,
            timezone,
        })
    }

    /// The rule as the API shows it and the database stores it.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "frequency": match self.frequency {
                Frequency::Daily => "daily",
                Frequency::Weekly(_) => "weekly",
                Frequency::Monthly(_) => "monthly",
            },
            "hours": self.hours,
            "minutes": self.minutes,
            "timezone": self.timezone,
        });
        match self.frequency {
            Frequency::Daily => {}
            Frequency::Weekly(mask) => {
                let days: Vec<&str> = (0..7)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| DAYS[i])
                    .collect();
                out["days"] = json!(days);
            }
            Frequency::Monthly(day) => out["dayOfMonth"] = json!(day),
        }
        out
    }

    /// The first occurrence strictly after `after_ms`; None past the end of
    /// the calendar.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        // From two days before the local date: an occurrence of an earlier
        // date can fall after it when a gap pushes the time forward.
        let mut date = self
            .local_date(after_ms)?
            .yesterday()
            .ok()?
            .yesterday()
            .ok()?;
        for _ in 0..SEARCH_DAYS {
            if let Some(at) = self.on(date) {
                if at > after_ms {
                    return Some(at);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The last occurrence at or before `at_ms`; None before the start of
    /// the calendar.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let mut date = self.local_date(at_ms)?.tomorrow().ok()?.tomorrow().ok()?;
        for _ in 0..SEARCH_DAYS {
            if let Some(at) = self.on(date) {
                if at <= at_ms {
                    return Some(at);
                }
            }
            date = date.yesterday().ok()?;
        }
        None
    }

    /// The date of `ms` on the zone's calendar.
    fn local_date(&self, ms: i64) -> Option<Date> {
        let ts = Timestamp::from_millisecond(ms).ok()?;
        Some(self.tz.to_datetime(ts).date())
    }

    /// The instant this rule runs on `date`, if it runs that day. A local
    /// time a spring-forward gap skips is read with the offset before the
    /// gap (02:30 becomes 03:30); one a fall-back fold repeats is the
    /// earlier of the two (jiff's "compatible" disambiguation), so each
    /// date gives one instant at most.
    fn on(&self, date: Date) -> Option<i64> {
        let runs = match self.frequency {
            Frequency::Daily => true,
            Frequency::Weekly(mask) => mask & (1 << date.weekday().to_monday_zero_offset()) != 0,
            Frequency::Monthly(day) => date.day() == day.min(date.days_in_month()),
        };
        if !runs {
            return None;
        }
        let local = date.at(self.hours, self.minutes, 0, 0);
        let at = self.tz.to_ambiguous_timestamp(local).compatible().ok()?;
        Some(at.as_millisecond())
    }
}

const KNOWN: [&str; 6] = [
    "frequency",
    "hours",
    "minutes",
    "days",
    "dayOfMonth",
    "timezone",
];

fn integer(obj: &Map<String, Value>, field: &str, min: i8, max: i8) -> Result<i8, NotifyError> {
    let name = format!("repeat.{field}");
    match obj.get(field) {
        None | Some(Value::Null) => Err(invalid(&name, "is required")),
        Some(v) => v
            .as_i64()
            .filter(|n| (i64::from(min)..=i64::from(max)).contains(n))
            .and_then(|n| i8::try_from(n).ok())
            .ok_or_else(|| invalid(&name, &format!("expected an integer {min} to {max}"))),
    }
}

fn days(obj: &Map<String, Value>) -> Result<u8, NotifyError> {
    let items = match obj.get("days") {
        None | Some(Value::Null) => {
            return Err(invalid("repeat.days", "is required for a weekly frequency"))
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(invalid("repeat.days", "expected at least one day"))
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(invalid(
                "repeat.days",
                "expected an array of \"mon\" to \"sun\"",
            ))
        }
    };
    let mut mask = 0u8;
    for (i, item) in items.iter().enumerate() {
        let field = format!("repeat.days[{i}]");
        let day = item
            .as_str()
            .and_then(|s| DAYS.iter().position(|d| *d == s))
            .ok_or_else(|| invalid(&field, "expected one of mon, tue, wed, thu, fri, sat, sun"))?;
        if mask & (1 << day) != 0 {
            return Err(invalid(&field, "is listed twice"));
        }
        mask |= 1 << day;
    }
    Ok(mask)
}

fn day_of_month(obj: &Map<String, Value>) -> Result<i8, NotifyError> {
    match obj.get("dayOfMonth") {
        None | Some(Value::Null) => Err(invalid(
            "repeat.dayOfMonth",
            "is required for a monthly frequency",
        )),
        Some(_) => integer(obj, "dayOfMonth", 1, 31),
    }
}

/// The zone and its canonical IANA name.
fn timezone(obj: &Map<String, Value>) -> Result<(TimeZone, String), NotifyError> {
    let field = "repeat.timezone";
    let name = match obj.get("timezone") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_TIMEZONE_LEN => s,
        None | Some(Value::Null) => return Err(invalid(field, "is required")),
        Some(_) => return Err(invalid(field, "expected an IANA time zone name")),
    };
    let unknown = || {
        invalid(
            field,
            &format!("{name:?} is not an IANA time zone name (such as \"Europe/Paris\")"),
        )
    };
    let tz = TimeZone::get(name).map_err(|_| unknown())?;
    if tz.is_unknown() {
        return Err(unknown());
    }
    let canonical = tz.iana_name().unwrap_or(name).to_string();
    Ok((tz, canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{parse_rfc3339, rfc3339};

    fn rule(v: Value) -> Repeat {
        Repeat::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn daily(hours: i8, minutes: i8, tz: &str) -> Repeat {
        rule(json!({"frequency": "daily", "hours": hours, "minutes": minutes, "timezone": tz}))
    }

    fn at(s: &str) -> i64 {
        parse_rfc3339(s).unwrap_or_else(|| panic!("{s}"))
    }

    /// The `n` occurrences after `from`, in UTC.
    fn runs(repeat: &Repeat, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = repeat.next_after(t).expect("an occurrence");
                rfc3339(t)
            })
            .collect()
    }

    fn field_of(v: Value) -> String {
        match Repeat::from_json(&v) {
            Err(NotifyError::Invalid { field, .. }) => field,
            other => panic!("{v}: expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn new_york_spring_forward_runs_a_skipped_time_once_an_hour_late() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let r = daily(2, 30, "America/New_York");
        assert_eq!(
            runs(&r, "2026-03-06T12:00:00Z", 4),
            [
                "2026-03-07T07:30:00.000Z", // 02:30 EST
                "2026-03-08T07:30:00.000Z", // 03:30 EDT: the gap read at EST
                "2026-03-09T06:30:00.000Z", // 02:30 EDT
                "2026-03-10T06:30:00.000Z",
            ]
        );
        // 01:30 exists every day: 24 hours apart, then 23 across the change.
        let r = daily(1, 30, "America/New_York");
        assert_eq!(
            runs(&r, "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T06:30:00.000Z",
                "2026-03-08T06:30:00.000Z",
                "2026-03-09T05:30:00.000Z",
            ]
        );
    }

    #[test]
    fn new_york_fall_back_runs_a_repeated_time_once_at_the_earlier_instant() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let r = daily(1, 30, "America/New_York");
        assert_eq!(
            runs(&r, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00.000Z", // 01:30 EDT
                "2026-11-01T05:30:00.000Z", // the first 01:30 (EDT) only
                "2026-11-02T06:30:00.000Z", // 01:30 EST
            ]
        );
        // Standing between the two 01:30s, the next run is the next day's.
        assert_eq!(
            r.next_after(at("2026-11-01T06:00:00Z")).map(rfc3339),
            Some("2026-11-02T06:30:00.000Z".into())
        );
        let r = daily(2, 30, "America/New_York");
        assert_eq!(
            runs(&r, "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T06:30:00.000Z",
                "2026-11-01T07:30:00.000Z", // 02:30 EST, 25 hours later
                "2026-11-02T07:30:00.000Z",
            ]
        );
    }

    #[test]
    fn paris_transitions_neither_skip_nor_double_a_day() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        let r = daily(2, 30, "Europe/Paris");
        assert_eq!(
            runs(&r, "2026-03-28T00:00:00Z", 3),
            [
                "2026-03-28T01:30:00.000Z",
                "2026-03-29T01:30:00.000Z", // 03:30 CEST
                "2026-03-30T00:30:00.000Z",
            ]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 twice.
        assert_eq!(
            runs(&r, "2026-10-24T00:00:00Z", 3),
            [
                "2026-10-24T00:30:00.000Z",
                "2026-10-25T00:30:00.000Z", // the first 02:30 (CEST)
                "2026-10-26T01:30:00.000Z",
            ]
        );
        let r = daily(1, 30, "Europe/Paris");
        assert_eq!(
            runs(&r, "2026-10-24T00:00:00Z", 3),
            [
                "2026-10-24T23:30:00.000Z", // 01:30 CEST
                "2026-10-26T00:30:00.000Z", // 01:30 CET, 25 hours later
                "2026-10-27T00:30:00.000Z",
            ]
        );
    }

    #[test]
    fn weekly_runs_on_the_listed_days_in_the_zone() {
        // 2026-03-02 is a Monday.
        let r = rule(
            json!({"frequency": "weekly", "days": ["fri", "mon"], "hours": 9,
                            "minutes": 0, "timezone": "Europe/Paris"}),
        );
        assert_eq!(
            runs(&r, "2026-03-02T08:00:00Z", 4),
            [
                "2026-03-06T08:00:00.000Z",
                "2026-03-09T08:00:00.000Z",
                "2026-03-13T08:00:00.000Z",
                "2026-03-16T08:00:00.000Z",
            ]
        );
        // Across Paris's change: still 09:00 local, an hour earlier in UTC.
        assert_eq!(
            runs(&r, "2026-03-27T12:00:00Z", 2),
            ["2026-03-30T07:00:00.000Z", "2026-04-03T07:00:00.000Z"]
        );
        // Monday 23:30 in New York is already Tuesday in UTC.
        let r = rule(json!({"frequency": "weekly", "days": ["mon"], "hours": 23,
                            "minutes": 30, "timezone": "America/New_York"}));
        assert_eq!(
            runs(&r, "2026-03-02T00:00:00Z", 1),
            ["2026-03-03T04:30:00.000Z"]
        );
    }

    #[test]
    fn monthly_on_a_missing_day_runs_on_the_months_last_day() {
        let r = rule(
            json!({"frequency": "monthly", "dayOfMonth": 31, "hours": 12,
                            "minutes": 0, "timezone": "UTC"}),
        );
        assert_eq!(
            runs(&r, "2026-01-15T00:00:00Z", 5),
            [
                "2026-01-31T12:00:00.000Z",
                "2026-02-28T12:00:00.000Z",
                "2026-03-31T12:00:00.000Z",
                "2026-04-30T12:00:00.000Z",
                "2026-05-31T12:00:00.000Z",
            ]
        );
        let r = rule(json!({"frequency": "monthly", "dayOfMonth": 29, "hours": 0,
                            "minutes": 15, "timezone": "Europe/Paris"}));
        assert_eq!(
            runs(&r, "2028-01-30T00:00:00Z", 2),
            ["2028-02-28T23:15:00.000Z", "2028-03-28T22:15:00.000Z"],
            "a leap year's February 29, then March's (in summer time)"
        );
    }

    #[test]
    fn the_last_occurrence_at_or_before_an_instant() {
        let r = daily(9, 0, "Europe/Paris");
        let nine = at("2026-06-10T07:00:00Z");
        assert_eq!(r.last_at_or_before(nine), Some(nine), "an exact hit");
        assert_eq!(
            r.last_at_or_before(nine - 1).map(rfc3339),
            Some("2026-06-09T07:00:00.000Z".into())
        );
        assert_eq!(
            r.next_after(nine).map(rfc3339),
            Some("2026-06-11T07:00:00.000Z".into())
        );
        // Days after a run that was missed: the latest due one.
        assert_eq!(
            r.last_at_or_before(at("2026-06-14T06:00:00Z")).map(rfc3339),
            Some("2026-06-13T07:00:00.000Z".into())
        );
        let r = rule(
            json!({"frequency": "monthly", "dayOfMonth": 31, "hours": 12,
                            "minutes": 0, "timezone": "UTC"}),
        );
        assert_eq!(
            r.last_at_or_before(at("2026-03-30T00:00:00Z")).map(rfc3339),
            Some("2026-02-28T12:00:00.000Z".into())
        );
        // The end of the calendar is no panic.
        assert_eq!(r.next_after(at("9999-12-30T13:00:00Z")), None);
    }

    #[test]
    fn a_rule_round_trips_through_its_json_with_the_canonical_zone_name() {
        let r = rule(
            json!({"frequency": "weekly", "days": ["sun", "mon"], "hours": 7,
                            "minutes": 5, "timezone": "america/new_york"}),
        );
        let stored = r.to_json();
        assert_eq!(
            stored,
            json!({"frequency": "weekly", "days": ["mon", "sun"], "hours": 7, "minutes": 5,
                   "timezone": "America/New_York"})
        );
        assert_eq!(rule(stored), r);
        let m = rule(json!({"frequency": "monthly", "dayOfMonth": 3, "hours": 0,
                            "minutes": 0, "timezone": "UTC", "days": null}));
        assert_eq!(m.to_json()["dayOfMonth"], 3);
        assert!(m.to_json().get("days").is_none());
    }

    #[test]
    fn names_the_wrong_field() {
        let ok = json!({"frequency": "daily", "hours": 9, "minutes": 0, "timezone": "UTC"});
        let with = |field: &str, v: Value| {
            let mut o = ok.clone();
            o[field] = v;
            o
        };
        assert_eq!(field_of(json!([])), "repeat");
        assert_eq!(
            field_of(with("frequency", json!("yearly"))),
            "repeat.frequency"
        );
        assert_eq!(field_of(with("hours", json!(24))), "repeat.hours");
        assert_eq!(field_of(with("hours", json!(-1))), "repeat.hours");
        assert_eq!(field_of(with("hours", json!(9.5))), "repeat.hours");
        assert_eq!(field_of(with("minutes", json!(60))), "repeat.minutes");
        assert_eq!(field_of(with("minutes", json!("5"))), "repeat.minutes");
        assert_eq!(
            field_of(with("timezone", json!("Mars/Olympus"))),
            "repeat.timezone"
        );
        assert_eq!(
            field_of(with("timezone", json!("Etc/Unknown"))),
            "repeat.timezone"
        );
        assert_eq!(field_of(with("timezone", json!(""))), "repeat.timezone");
        assert_eq!(field_of(with("color", json!("red"))), "repeat.color");
        assert_eq!(field_of(with("days", json!(["mon"]))), "repeat.days");
        assert_eq!(field_of(with("dayOfMonth", json!(1))), "repeat.dayOfMonth");
        let weekly = with("frequency", json!("weekly"));
        assert_eq!(field_of(weekly.clone()), "repeat.days");
        let mut empty = weekly.clone();
        empty["days"] = json!([]);
        assert_eq!(field_of(empty), "repeat.days");
        let mut bad = weekly.clone();
        bad["days"] = json!(["mon", "funday"]);
        assert_eq!(field_of(bad), "repeat.days[1]");
        let mut twice = weekly;
        twice["days"] = json!(["mon", "tue", "mon"]);
        assert_eq!(field_of(twice), "repeat.days[2]");
        let monthly = with("frequency", json!("monthly"));
        assert_eq!(field_of(monthly.clone()), "repeat.dayOfMonth");
        let mut zero = monthly;
        zero["dayOfMonth"] = json!(0);
        assert_eq!(field_of(zero), "repeat.dayOfMonth");
    }
}
