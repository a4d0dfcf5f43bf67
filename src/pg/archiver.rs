//! What a PostgreSQL server says about its WAL archiver (`pg_stat_archiver`
//! and, where readable, its log): one reading for status, metrics, the
//! daemon's alerts, verify, check and a backup's timeout message.

use jiff::Timestamp;
use serde::Serialize;

use super::Conn;

/// Is archive_command keeping up? From the source's pg_stat_archiver when
/// it answers, else from the repository's newest segment (then whether it
/// is failing is unknown: null).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ArchiveHealth {
    pub last_archived_wal: Option<String>,
    pub last_archived_at: Option<String>,
    pub failed_count: Option<u64>,
    pub last_failed_wal: Option<String>,
    pub last_failed_at: Option<String>,
    /// The server's most recent archiving attempt failed.
    pub failing: Option<bool>,
    /// "server" (pg_stat_archiver) or "repository" (newest segment).
    pub from: &'static str,
    /// Segments waiting in pg_wal/archive_status (`.ready`), when this
    /// role may list them (superuser or pg_monitor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ready_at: Option<String>,
    /// A segment has waited longer than `STALL_AFTER` and the archiver has
    /// reported nothing, success or failure, for as long: archive_command
    /// does not run at all (exit 127 from a missing program ends the
    /// archiver before pg_stat_archiver counts a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<bool>,
}

/// How long a `.ready` segment may wait with no word from the archiver.
pub const STALL_AFTER_SECS: u64 = 20;

impl ArchiveHealth {
    /// From pg_stat_archiver's row: archived wal and time, failed count,
    /// failed wal and time (times as RFC 3339, empty when null).
    fn from_server(row: &[String]) -> ArchiveHealth {
        let opt = |i: usize| row.get(i).filter(|v| !v.is_empty()).cloned();
        let failed: u64 = row.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        let (archived_at, failed_at) = (opt(1), opt(4));
        let t = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<Timestamp>().ok());
        // Failing: the newest attempt the server reports is a failure.
        let failing = failed > 0 && t(&failed_at) > t(&archived_at);
        ArchiveHealth {
            last_archived_wal: opt(0),
            last_archived_at: archived_at,
            failed_count: Some(failed),
            last_failed_wal: opt(3),
            last_failed_at: failed_at,
            failing: Some(failing),
            from: "server",
            ..Default::default()
        }
    }

    /// Add what pg_ls_archive_statusdir() says: ready count, oldest ready
    /// time, stalled ("t"/"f").
    fn with_ready(mut self, row: &[String]) -> ArchiveHealth {
        self.ready_count = row.first().and_then(|v| v.parse().ok());
        self.oldest_ready_at = row.get(1).filter(|v| !v.is_empty()).cloned();
        let stalled = row.get(2).map(|v| v == "true" || v == "t");
        self.stalled = stalled;
        if stalled == Some(true) {
            self.failing = Some(true);
        }
        self
    }

    /// One line for text output and notifications.
    pub fn describe(&self) -> String {
        let last = match (&self.last_archived_wal, &self.last_archived_at) {
            (Some(w), Some(t)) => format!("last archived {w} at {t}"),
            _ => "nothing archived yet".into(),
        };
        match self.failing {
            Some(true) if self.stalled == Some(true) => format!(
                "archive_command NOT RUNNING: {} segments waiting, the oldest ready since {}, and the archiver has reported neither success nor failure for over {STALL_AFTER_SECS}s (a program that cannot run: check archive_command's path and the server log); {last}",
                self.ready_count.unwrap_or(0),
                self.oldest_ready_at.as_deref().unwrap_or("?")
            ),
            Some(true) => format!(
                "archive_command FAILING: {} failures, last on {} at {}; {last}",
                self.failed_count.unwrap_or(0),
                self.last_failed_wal.as_deref().unwrap_or("?"),
                self.last_failed_at.as_deref().unwrap_or("?")
            ),
            Some(false) => format!("archiving ok: {last}"),
            None => format!("archiving: {last} (the source did not answer: failures unknown)"),
        }
    }
}

/// The server's archiver, bounded in time: None when it does not answer.
pub async fn health(conn: &Conn) -> Option<ArchiveHealth> {
    let q = conn.query(
        "select coalesce(last_archived_wal, ''), \
         coalesce(to_char(last_archived_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), \
         failed_count::text, coalesce(last_failed_wal, ''), \
         coalesce(to_char(last_failed_time at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') \
         from pg_stat_archiver",
        &[],
    );
    let rows = tokio::time::timeout(std::time::Duration::from_secs(5), q)
        .await
        .ok()?
        .ok()?;
    let h = ArchiveHealth::from_server(rows.first()?);
    // The server's own clock judges the ages: no skew with drctl's host.
    let sql = format!(
            "select count(*)::text, \
             coalesce(to_char(min(r.modification) at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), \
             (count(*) > 0 and min(r.modification) < now() - interval '{STALL_AFTER_SECS} seconds' \
              and coalesce((select greatest(last_archived_time, last_failed_time) from pg_stat_archiver), '-infinity') \
                  < now() - interval '{STALL_AFTER_SECS} seconds')::text \
             from pg_ls_archive_statusdir() r where r.name like '%.ready'"
    );
    let ready = conn.query(&sql, &[]);
    match tokio::time::timeout(std::time::Duration::from_secs(5), ready).await {
        Ok(Ok(rows)) if !rows.is_empty() => Some(h.with_ready(&rows[0])),
        // Not allowed to list (neither superuser nor pg_monitor): what
        // pg_stat_archiver says is all there is.
        _ => Some(h),
    }
}

/// What the server says about its archiver, for an error message: the
/// failing segment and when (with the log's line for it when readable), or
/// that it has not failed.
pub async fn status(conn: &Conn) -> Option<String> {
    let h = health(conn).await?;
    let command = conn
        .query_one("select current_setting('archive_command')", &[])
        .await
        .ok()?;
    let archived = h.last_archived_wal.as_deref().unwrap_or("none");
    if h.stalled == Some(true) {
        let why = match last_archive_error(conn).await {
            Some(line) => format!("the server log says: {line}"),
            None => "run it by hand as the server's OS user to see why".into(),
        };
        return Some(format!(
            "{}; archive_command = '{command}': {why}",
            h.describe()
        ));
    }
    Some(match (h.failed_count.unwrap_or(0), &h.last_failed_wal) {
        (failed, Some(wal)) if failed > 0 => {
            let why = match last_archive_error(conn).await {
                Some(line) => format!("the server log says: {line}"),
                None => "run it by hand as the server's OS user to see why".into(),
            };
            format!(
                "pg_stat_archiver: failed_count {failed}, last_failed_wal {wal} at {}, last_archived_wal {archived}; archive_command = '{command}' is failing: {why}",
                h.last_failed_at.as_deref().unwrap_or("")
            )
        }
        _ => format!(
            "pg_stat_archiver: no failures, last_archived_wal {archived}; archive_command = '{command}'"
        ),
    })
}

/// The newest archive failure in the server's log, when the server keeps
/// one it lets this role read (logging_collector on; superuser or
/// pg_read_server_files): archive_command's own error line (wal-push's
/// stderr lands there), else PostgreSQL's "archive command failed".
async fn last_archive_error(conn: &Conn) -> Option<String> {
    let tail = conn
        .query_one(
            "select pg_read_file(f, greatest(s - 65536, 0), least(s, 65536)) \
             from (select pg_current_logfile() as f) l, \
             lateral (select size as s from pg_stat_file(l.f)) st where l.f is not null",
            &[],
        )
        .await
        .ok()?;
    archive_error_in(&tail)
}

/// See `last_archive_error`: the line that explains the newest failure.
pub fn archive_error_in(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let failed = lines
        .iter()
        .rposition(|l| l.contains("archive command failed"))?;
    // The command's own complaint comes just before PostgreSQL's line.
    let own = lines[..failed]
        .iter()
        .rev()
        .take(5)
        .find(|l| l.contains("error") && !l.contains("archive command failed"));
    Some(own.unwrap_or(&lines[failed]).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_failure_is_read_from_the_server_log() {
        let log = "2026-11-29 LOG:  checkpoint complete\n\
                   drctl: error: cannot create /repo/pitr/wal/00000001: Permission denied (os error 13)\n\
                   2026-11-29 LOG:  archive command failed with exit code 1\n\
                   2026-11-29 DETAIL:  The failed archive command was: drctl wal-push pitr pg_wal/000000010000000000000003\n";
        assert_eq!(
            archive_error_in(log).as_deref(),
            Some("drctl: error: cannot create /repo/pitr/wal/00000001: Permission denied (os error 13)")
        );
        let bare = "LOG:  archive command failed with exit code 127\n";
        assert_eq!(
            archive_error_in(bare).as_deref(),
            Some("LOG:  archive command failed with exit code 127")
        );
        assert_eq!(archive_error_in("LOG: all fine\n"), None);
    }
}
