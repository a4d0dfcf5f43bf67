//! Time and duration parsing for `--to TIME` and policy durations.
//!
//! Pure: the caller passes "now" and the local time zone, so every form is
//! unit-testable and relative times resolve against one instant per command.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// What the accepted forms are, for error messages.
pub const TIME_FORMS: &str =
    "RFC 3339 (2026-11-22T10:00:00Z), 'YYYY-MM-DD HH:MM[:SS]' (local time), \
     relative ('2h-ago', '90m-ago', '1d-ago', '30s-ago', '2h ago') or 'now'";

/// Resolve a user-supplied TIME to an absolute instant.
pub fn parse_time(input: &str, now: Timestamp, local: &TimeZone) -> Result<Timestamp, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(format!("empty time; use {TIME_FORMS}"));
    }
    if s.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(ago) = relative_ago(s) {
        let d = parse_duration(ago).map_err(|e| format!("cannot read '{input}': {e}"))?;
        return now
            .checked_sub(d)
            .map_err(|e| format!("'{input}' is out of range: {e}"));
    }
    // An explicit offset or Z: an absolute instant.
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts);
    }
    // No offset: a wall-clock time in the local zone.
    let civil = s.parse::<DateTime>().or_else(|_| {
        s.parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    match civil {
        Ok(dt) => local
            .to_ambiguous_zoned(dt)
            .compatible()
            .map(|z| z.timestamp())
            .map_err(|e| format!("'{input}' does not exist in the local time zone: {e}")),
        Err(_) => Err(format!("cannot read time '{input}'; use {TIME_FORMS}")),
    }
}

/// `2h-ago`, `2h ago`, `2 hours ago` -> the duration part.
fn relative_ago(s: &str) -> Option<&str> {
    let lower = s.to_ascii_lowercase();
    for suffix in ["-ago", " ago"] {
        if lower.ends_with(suffix) {
            return Some(s[..s.len() - suffix.len()].trim());
        }
    }
    None
}

/// Parse a non-negative duration such as `2d`, `90m`, `1h30m`, `2 hours`.
/// Days are 24 hours: retention and RPO budgets are about elapsed time.
pub fn parse_duration(input: &str) -> Result<SignedDuration, String> {
    let s = input.trim();
    let span: Span = s
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 30s, 90m, 2h, 7d, 1h30m)"))?;
    if span.get_months() != 0 || span.get_years() != 0 {
        return Err(format!(
            "'{s}': months and years have no fixed length; use days (e.g. 30d)"
        ));
    }
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("'{s}': {e}"))?;
    if d.is_negative() {
        return Err(format!("'{s}' is negative"));
    }
    Ok(d)
}

/// Serialize a timestamp as `rfc3339` writes it (serde `serialize_with`).
pub fn ser_rfc3339<S: serde::Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ts))
}

/// Render an instant as RFC 3339 UTC with seconds, as every output does.
pub fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// UTC rounded up to the whole second: the printed start of a window is
/// then inside it, so a time copied from the output is accepted.
pub fn rfc3339_ceil(ts: Timestamp) -> String {
    if ts.subsec_nanosecond() == 0 {
        rfc3339(ts)
    } else {
        let up = Timestamp::from_second(ts.as_second() + 1).unwrap_or(ts);
        rfc3339(up)
    }
}

/// UTC with the fraction of a second when there is one: for echoing a
/// user's target time without rounding it.
pub fn rfc3339_exact(ts: Timestamp) -> String {
    if ts.subsec_nanosecond() == 0 {
        rfc3339(ts)
    } else {
        ts.strftime("%Y-%m-%dT%H:%M:%S%.fZ").to_string()
    }
}

/// Fixed-width UTC form with microseconds: sorts as text (catalog columns).
pub fn rfc3339_micros(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A duration for humans: `2h 5m`, `45s`.
pub fn human_duration(d: SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    let (days, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if days > 0 {
        parts.push(format!("{days}d"));
    }
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 && days == 0 {
        parts.push(format!("{m}m"));
    }
    if parts.is_empty() || (s > 0 && days == 0 && h == 0) {
        parts.push(format!("{s}s"));
    }
    let out = parts.join(" ");
    if d.is_negative() {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn t(s: &str) -> Result<Timestamp, String> {
        parse_time(s, now(), &TimeZone::get("Europe/Berlin").unwrap())
    }

    #[test]
    fn relative_forms() {
        for (input, want) in [
            ("2h-ago", "2026-11-22T08:00:00Z"),
            ("90m-ago", "2026-11-22T08:30:00Z"),
            ("1d-ago", "2026-11-21T10:00:00Z"),
            ("30s-ago", "2026-11-22T09:59:30Z"),
            ("2h ago", "2026-11-22T08:00:00Z"),
            ("2 hours ago", "2026-11-22T08:00:00Z"),
            ("now", "2026-11-22T10:00:00Z"),
            ("NOW", "2026-11-22T10:00:00Z"),
        ] {
            assert_eq!(
                t(input).unwrap(),
                want.parse::<Timestamp>().unwrap(),
                "{input}"
            );
        }
    }

    #[test]
    fn absolute_forms() {
        assert_eq!(
            t("2026-11-22T10:00:00Z").unwrap(),
            "2026-11-22T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            t("2026-11-22T12:00:00+02:00").unwrap(),
            "2026-11-22T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        // Local time in Berlin is UTC+1 in November.
        assert_eq!(
            t("2026-11-22 11:15").unwrap(),
            "2026-11-22T10:15:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            t("2026-11-22 11:15:30").unwrap(),
            "2026-11-22T10:15:30Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn bad_times_name_the_forms() {
        for bad in ["", "yesterday", "2h", "-5-ago", "2026-13-01 00:00"] {
            let e = t(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(t("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("2d").unwrap(),
            SignedDuration::from_hours(48)
        );
        assert_eq!(
            parse_duration("90m").unwrap(),
            SignedDuration::from_mins(90)
        );
        assert_eq!(
            parse_duration("1h30m").unwrap(),
            SignedDuration::from_mins(90)
        );
        assert!(parse_duration("1 month").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_duration(SignedDuration::from_secs(45)), "45s");
        assert_eq!(human_duration(SignedDuration::from_secs(7500)), "2h 5m");
        assert_eq!(human_duration(SignedDuration::from_secs(90000)), "1d 1h");
    }
}
