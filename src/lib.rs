//! drctl: backup and disaster recovery for PostgreSQL and AWS RDS.
//!
//! Pure decision code (policy, time parsing, schedules, manifests, restore
//! planning) is kept apart from the imperative shell that talks to the
//! outside world: `pg` (PostgreSQL tools), `repo` (file and S3 repositories),
//! `catalog` (SQLite). `backup`, `restore` and `verify` orchestrate them;
//! `cli` parses arguments and prints.

pub mod backup;
pub mod cancel;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod drill;
pub mod error;
pub mod lock;
pub mod notify;
pub mod pg;
pub mod pipeline;
pub mod policy;
pub mod poll;
pub mod progress;
pub mod prune;
pub mod rds;
pub mod repo;
pub mod restore;
pub mod status;
pub mod time;
pub mod verify;
pub mod wal;
