//! drctl: backup and disaster recovery for PostgreSQL and AWS RDS.
//!
//! Pure decision code (policy, time parsing, schedules, manifests, restore
//! planning) is kept apart from the imperative shell that talks to the
//! outside world: `pg` (PostgreSQL tools), `repo` (file and S3 repositories),
//! `catalog` (SQLite). `backup`, `restore` and `verify` orchestrate them;
//! `cli` parses arguments and prints.

pub(crate) mod backup;
pub(crate) mod cancel;
pub(crate) mod catalog;
pub(crate) mod check;
pub(crate) mod cli;
pub(crate) mod copy;
pub(crate) mod daemon;
pub(crate) mod deploy;
pub(crate) mod drill;
pub(crate) mod error;
pub(crate) mod guard;
pub(crate) mod lock;
pub(crate) mod notify;
pub(crate) mod pg;
pub(crate) mod pipeline;
pub(crate) mod policy;
pub(crate) mod poll;
pub(crate) mod progress;
pub(crate) mod prune;
pub(crate) mod rds;
pub(crate) mod repo;
pub(crate) mod report;
pub(crate) mod restore;
pub(crate) mod status;
pub(crate) mod time;
pub(crate) mod verify;
pub(crate) mod wal;

/// The binary's entry point (src/main.rs).
pub use cli::main;

/// What the integration tests reach into: the manifest format, the
/// pipeline's decoder and key loading (to forge a backup that agrees with
/// its own checksums), and cron schedules (deploy files).
pub mod testing {
    pub use crate::check::words as shell_words;
    pub use crate::pipeline::{decode, load_identities};
    pub use crate::repo::manifest::Manifest;
    pub use crate::time::schedule::Schedule;
}
