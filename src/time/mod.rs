//! Time as drctl reads and writes it: `--to` expressions and RFC 3339
//! (`parse`), and cron schedules (`schedule`). Pure code.

pub mod parse;
pub mod schedule;
