//! Cron schedules: 5-field (minute first) or 6-field (seconds first), in a
//! policy's time zone. The `cron` crate wants seconds, so 5-field input gets
//! a leading `0`.

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
