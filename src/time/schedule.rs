//! Cron schedules: 5-field (minute first) or 6-field (seconds first), in a
//! policy's time zone. The `cron` crate wants seconds, so 5-field input gets
//! a leading `0`; it also numbers weekdays 1-7 from Sunday, where crontab
//! (and every DBA) uses 0-7 with 0 and 7 both Sunday, so numeric weekdays
//! are translated: `0 5 * * 0` means Sunday as it does in crontab.

use std::str::FromStr;

use chrono::{Datelike, Timelike};

use jiff::tz::TimeZone;
use jiff::Timestamp;

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    inner: cron::Schedule,
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            6 => expr.to_string(),
            _ => {
                return Err(format!(
                    "'{expr}' has {fields} fields; use 5-field cron (\"0 2 * * *\") or 6 with seconds first (\"*/10 * * * * *\")"
                ))
            }
        };
        let mut parts: Vec<String> = full.split_whitespace().map(str::to_string).collect();
        // The cron crate's own range errors are off by one ("Hours must be
        // less than 23" for 24); numeric fields are checked here first.
        for (i, (what, lo, hi)) in [
            ("second", 0, 59),
            ("minute", 0, 59),
            ("hour", 0, 23),
            ("day of month", 1, 31),
            ("month", 1, 12),
        ]
        .into_iter()
        .enumerate()
        {
            in_range(&parts[i], lo, hi)
                .map_err(|v| format!("'{expr}': {what} {v} is out of range ({lo}-{hi})"))?;
        }
        parts[5] =
            crontab_weekdays(&parts[5]).map_err(|e| format!("'{expr}': day of week: {e}"))?;
        let full = parts.join(" ");
        let inner = cron::Schedule::from_str(&full)
            .map_err(|e| format!("'{expr}' is not a valid cron expression: {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            inner,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first run strictly after `after`, evaluated in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // cron works on chrono; bridge through a fixed offset at `after` and
        // re-check with jiff so DST transitions land on real wall-clock times.
        let zoned = after.to_zoned(tz.clone());
        let mut cursor = zoned.datetime();
        for _ in 0..1000 {
            let naive = chrono_naive(cursor)?;
            let next = self.inner.after(&naive.and_utc()).next()?;
            let civil = jiff::civil::DateTime::new(
                i16::try_from(next.year()).ok()?,
                next.month() as i8,
                next.day() as i8,
                next.hour() as i8,
                next.minute() as i8,
                next.second() as i8,
                0,
            )
            .ok()?;
            // Wall-clock times skipped by DST do not exist: skip them.
            if let Ok(z) = tz.to_ambiguous_zoned(civil).compatible() {
                if z.timestamp() > after {
                    return Some(z.timestamp());
                }
            }
            cursor = civil;
        }
        None
    }
}

/// Crontab weekdays (0-7, 0 and 7 = Sunday) as the cron crate's (1-7,
/// 1 = Sunday). `*`, `*/N` and names mean the same in both and pass as
/// they are; numbers, ranges and stepped ranges become explicit lists.
/// Every number in the cron field `field` (lists, ranges, steps) within
/// `lo..=hi`; the first that is not, as the error.
fn in_range(field: &str, lo: u32, hi: u32) -> Result<(), String> {
    for item in field.split(',') {
        let range = item.split_once('/').map_or(item, |(r, _)| r);
        for v in range.split('-') {
            if let Ok(n) = v.parse::<u32>() {
                if n < lo || n > hi {
                    return Err(v.to_string());
                }
            }
        }
    }
    Ok(())
}

fn crontab_weekdays(field: &str) -> Result<String, String> {
    let mut out: Vec<String> = Vec::new();
    for item in field.split(',') {
        if item.starts_with('*') || item.chars().any(|c| c.is_ascii_alphabetic()) {
            out.push(item.to_string());
            continue;
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u8>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in '{item}'"))?,
            ),
            None => (item, 1),
        };
        let num = |v: &str| {
            v.parse::<u8>().ok().filter(|n| *n <= 7).ok_or_else(|| {
                format!("'{v}' is not a weekday (0-7, 0 and 7 are Sunday, or SUN-SAT)")
            })
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None if step > 1 => (num(range)?, 7),
            None => (num(range)?, num(range)?),
        };
        if lo > hi {
            return Err(format!("range '{range}' runs backwards"));
        }
        for d in (lo..=hi).step_by(step as usize) {
            let v = (d % 7 + 1).to_string();
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    Ok(out.join(","))
}

fn chrono_naive(dt: jiff::civil::DateTime) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDate::from_ymd_opt(dt.year().into(), dt.month() as u32, dt.day() as u32)?
        .and_hms_opt(dt.hour() as u32, dt.minute() as u32, dt.second() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields() {
        let utc = TimeZone::UTC;
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let s = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(
            s.next_after(t, &utc).unwrap(),
            "2026-11-23T02:00:00Z".parse::<Timestamp>().unwrap()
        );
        let s = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            s.next_after(t, &utc).unwrap(),
            "2026-11-22T10:00:10Z".parse::<Timestamp>().unwrap()
        );
        assert!(Schedule::parse("bogus").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
    }

    #[test]
    fn an_out_of_range_field_names_the_field_and_its_range() {
        for (expr, want) in [
            ("0 25 * * *", "hour 25 is out of range (0-23)"),
            ("0 1-24 * * *", "hour 24 is out of range (0-23)"),
            ("60 2 * * *", "minute 60 is out of range (0-59)"),
            ("0 2 0 * *", "day of month 0 is out of range (1-31)"),
            ("0 2 * 13 *", "month 13 is out of range (1-12)"),
            ("61 0 2 * * *", "second 61 is out of range (0-59)"),
        ] {
            let e = Schedule::parse(expr).unwrap_err();
            assert!(e.contains(want), "{expr}: {e}");
        }
        assert!(Schedule::parse("0 23 31 12 *").is_ok());
        assert!(Schedule::parse("0 */6 1,15 1-12 *").is_ok());
    }

    #[test]
    fn weekdays_mean_what_they_mean_in_crontab() {
        let utc = TimeZone::UTC;
        let next = |expr: &str, from: &str| {
            Schedule::parse(expr)
                .unwrap()
                .next_after(from.parse().unwrap(), &utc)
                .unwrap()
                .to_zoned(utc.clone())
        };
        // 2026-11-25 is a Wednesday; the 29th a Sunday, the 30th a Monday.
        for sunday in ["0 6 * * 0", "0 6 * * 7", "0 6 * * SUN", "0 0 6 * * 0"] {
            let z = next(sunday, "2026-11-25T12:00:00Z");
            assert_eq!(z.weekday(), jiff::civil::Weekday::Sunday, "{sunday}");
            assert_eq!(z.day(), 29, "{sunday}");
        }
        let z = next("0 6 * * 1-5", "2026-11-27T07:00:00Z");
        assert_eq!((z.weekday(), z.day()), (jiff::civil::Weekday::Monday, 30));
        let z = next("0 6 * * 5-7", "2026-11-25T12:00:00Z");
        assert_eq!(z.weekday(), jiff::civil::Weekday::Friday);
        let z = next("0 6 * * 6,0", "2026-11-28T07:00:00Z");
        assert_eq!(z.weekday(), jiff::civil::Weekday::Sunday);
        assert_eq!(crontab_weekdays("0-6/2").unwrap(), "1,3,5,7");
        assert_eq!(crontab_weekdays("*/2").unwrap(), "*/2");
        // As cronie reads it: 1-7/2, Sunday (7) included.
        assert_eq!(crontab_weekdays("1/2").unwrap(), "2,4,6,1");
        assert!(Schedule::parse("0 6 * * 8").is_err());
        assert!(Schedule::parse("0 6 * * 5-1").is_err());
    }

    #[test]
    fn time_zone_is_respected() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let t: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let s = Schedule::parse("0 2 * * *").unwrap();
        // 02:00 Berlin (UTC+1) = 01:00Z.
        assert_eq!(
            s.next_after(t, &berlin).unwrap(),
            "2026-11-23T01:00:00Z".parse::<Timestamp>().unwrap()
        );
    }
}
