//! A restored data directory's server: started as its owner, watched
//! until recovery reaches its target (promoted, paused or shut down, as
//! `--target-action` asks), and what it reached, read from its log.
//! Shared by `restore --start` and drills.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::pg::tools::owner_command;
use crate::restore::plan;
use crate::restore::Plan;

/// Start the restored server (archiving off, so it can never write into
/// the production archive), wait for recovery to finish and promote, and
/// return the time it reached.
pub(crate) async fn start_and_wait(
    pg_ctl: &Path,
    dir: &Path,
    port: u16,
    plan: &Plan,
    keep_archiving: bool,
    action: plan::Action,
) -> Result<Recovered> {
    let log = dir.join("drctl-recovery.log");
    let archiving = if keep_archiving {
        ""
    } else {
        " -c archive_mode=off"
    };
    // Without hot_standby, PostgreSQL turns a pause into a shutdown.
    let standby = if action == plan::Action::Pause {
        " -c hot_standby=on"
    } else {
        ""
    };
    let opts = format!(
        "-p {port}{archiving}{standby} -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c logging_collector=off"
    );
    let start = || {
        owner_command(pg_ctl)
            .arg("-D")
            .arg(dir)
            .args(["-o", &opts, "-l"])
            .arg(&log)
            .args(["-w", "-t", "3600", "start"])
            .output()
            .with_context(|| format!("cannot run {}", pg_ctl.display()))
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let url = crate::pg::ConnUrl::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .map_err(|e| anyhow!(e))?;
    let conn = crate::pg::Conn::new(url, None)?;
    let alive = || {
        owner_command(pg_ctl)
            .arg("-D")
            .arg(dir)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // Started and promoted: what it reached. `seen` skips the log of an
    // earlier start.
    let (start, log_text, conn, alive) = (&start, &log_text, &conn, &alive);
    let run = |seen: usize| async move {
        let out = start()?;
        let later = || log_text().get(seen..).unwrap_or_default().to_string();
        if action == plan::Action::Shutdown {
            return wait_shut_down(later, alive, &plan.target_time).await;
        }
        if !out.status.success() {
            // Recovery can end before pg_ctl sees the server ready.
            if ended_in_log(&later()) {
                return Err(EndedBeforeTarget(plan.target_time.clone()).into());
            }
            bail!(
                "the restored server did not start: {}",
                last_error(&later())
                    .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
            );
        }
        wait_recovered(conn, later, alive, &plan.target_time, action).await
    };
    let mut r = run(0).await;
    // Only a time can be "reached" by running out of commits; an LSN, a
    // transaction or a restore point the archive lacks stays an error.
    if r.as_ref().is_err_and(ended_before_target) && plan.recovery_target.is_none() {
        // The archive holds WAL past the target with no commit after the
        // last one replayed: the end of the archive is the state at the
        // target. Recover to it instead of failing.
        let stopped = crate::poll::until(Duration::from_secs(60), || async { !alive() }).await;
        if stopped.is_ok() {
            recover_to_end(dir)?;
            r = run(log_text().len()).await.map(|r| Recovered {
                reached: no_commit_after(&plan.target_time, &r.reached),
                ..r
            });
        }
    }
    // Segments prefetched past the target are of no further use.
    let _ = std::fs::remove_dir_all(dir.join("drctl-prefetch"));
    r.map_err(|e| {
        if e.downcast_ref::<AsksForPassword>().is_some() {
            e
        } else {
            anyhow!("{e:#} (server log: {})", log.display())
        }
    })
    .map_err(|e| match &plan.recovery_target {
        Some(t) if ended_before_target(&e) => anyhow!(
            "recovery ended before it reached {t}: the archived WAL does not go that far (is the target right, and archiving up to date?); {e:#}"
        ),
        _ => e,
    })
}

/// Where a started restore ended up: what it reached, and how the server
/// stands (promoted, paused in recovery, or shut down), as
/// `--target-action` asked.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub reached: String,
    pub state: &'static str,
}

/// `--target-action shutdown`: the server replays to the target and stops
/// there ("shutdown at recovery target"), with recovery.signal left for
/// the operator's next start.
async fn wait_shut_down(
    log_text: impl Fn() -> String,
    alive: impl Fn() -> bool,
    target_time: &str,
) -> Result<Recovered> {
    let mut poll = crate::poll::Poll::every(REPLAY_LIMIT, Duration::from_millis(200));
    while alive() {
        replay_wait(&mut poll).await?;
    }
    let text = log_text();
    if ended_in_log(&text) {
        return Err(EndedBeforeTarget(target_time.to_string()).into());
    }
    if !text.contains("shutdown at recovery target") {
        bail!(
            "the restored server stopped before its recovery target: {}",
            last_error(&text).unwrap_or_else(|| "see its log".into())
        );
    }
    Ok(Recovered {
        reached: reached(&text).unwrap_or_else(|| "the target".into()),
        state: "shut down",
    })
}

/// PostgreSQL found no commit after the target in all the WAL the archive
/// gave it. drctl's planner checked that WAL written at or after the
/// target is archived, so nothing committed between the last commit and
/// the target: the end of the archive is the state at the target.
#[derive(Debug, thiserror::Error)]
#[error("recovery found no transaction committed after {0} in the archived WAL")]
pub struct EndedBeforeTarget(String);

/// PostgreSQL's words when recovery ran out of WAL before its target.
pub fn ended_in_log(log: &str) -> bool {
    log.contains("recovery ended before configured recovery target was reached")
}

pub fn ended_before_target(e: &anyhow::Error) -> bool {
    e.downcast_ref::<EndedBeforeTarget>().is_some()
}

/// Let a restored cluster whose recovery stopped short of its target
/// recover to the end of the archive on its next start.
pub fn recover_to_end(dir: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("postgresql.auto.conf"))
        .context("cannot update postgresql.auto.conf")?;
    f.write_all(
        b"# drctl: no commit after the target in the archive; its end is the same state\nrecovery_target_time = ''\n",
    )?;
    // drctl's archive_mode line, if any, stays the last one: still in force.
    Ok(())
}

/// What a restore reached when it recovered to the end of the archive
/// because no commit followed the target.
pub fn no_commit_after(target: &str, reached: &str) -> String {
    format!(
        "no transaction committed between the last commit and the target {target}: recovered to the end of the archived WAL, the same state ({reached})"
    )
}

/// Longest a restored server may replay before drctl gives up on it.
const REPLAY_LIMIT: Duration = Duration::from_secs(30 * 86400);

/// One wait between looks at a replaying server (a poll bounded by
/// REPLAY_LIMIT): an error once cancelled or past the limit.
async fn replay_wait(poll: &mut crate::poll::Poll) -> Result<()> {
    match poll.next().await {
        Ok(()) => Ok(()),
        Err(crate::poll::Gave::Cancelled) => bail!("cancelled"),
        Err(crate::poll::Gave::Up) => bail!(
            "the restored server was still recovering after {} days",
            REPLAY_LIMIT.as_secs() / 86400
        ),
    }
}

/// Wait until a server recovering a restored backup has promoted; the point
/// it reached, from its log. Recovery that ends before the target, or a
/// server that stops, is an error.
pub async fn wait_promoted(
    conn: &crate::pg::Conn,
    log_text: impl Fn() -> String,
    alive: impl FnMut() -> bool,
    target_time: &str,
) -> Result<String> {
    let r = wait_recovered(conn, log_text, alive, target_time, plan::Action::Promote).await?;
    Ok(r.reached)
}

/// `wait_promoted`, or with `Action::Pause` until recovery waits at its
/// target (a recovery that runs to the end of the archive instead promotes,
/// and says so).
async fn wait_recovered(
    conn: &crate::pg::Conn,
    log_text: impl Fn() -> String,
    mut alive: impl FnMut() -> bool,
    target_time: &str,
    action: plan::Action,
) -> Result<Recovered> {
    // Replay takes as long as the WAL does; the server's own progress (it is
    // alive, its log moves) is what is watched, this only bounds a hang.
    let mut poll = crate::poll::Poll::every(REPLAY_LIMIT, Duration::from_millis(200));
    loop {
        let text = log_text();
        if ended_in_log(&text) {
            return Err(EndedBeforeTarget(target_time.to_string()).into());
        }
        // The pause state is an error outside recovery (asked only inside)
        // and new in PostgreSQL 14 (asked only for a pause).
        let ask = if action == plan::Action::Pause {
            "select case when pg_is_in_recovery() \
             then 'recovering ' || pg_get_wal_replay_pause_state() else 'promoted' end"
        } else {
            "select case when pg_is_in_recovery() then 'recovering' else 'promoted' end"
        };
        match conn.query_one(ask, &[]).await {
            Ok(v) if v == "promoted" => break,
            Ok(v) if action == plan::Action::Pause && v == "recovering paused" => {
                return Ok(Recovered {
                    reached: reached(&log_text()).unwrap_or_else(|| "the target".into()),
                    state: "paused",
                });
            }
            Ok(_) => {}
            Err(e) if asks_for_password(&e) && alive() => {
                return Err(anyhow::Error::new(AsksForPassword).context(format!("{e:#}")));
            }
            Err(e) => {
                if !alive() {
                    // It may have stopped for running out of WAL: the log
                    // says so after the first look above.
                    let text = log_text();
                    if ended_in_log(&text) {
                        return Err(EndedBeforeTarget(target_time.to_string()).into());
                    }
                    bail!(
                        "the restored server stopped during recovery: {}",
                        last_error(&text).unwrap_or_else(|| format!("{e:#}"))
                    );
                }
            }
        }
        replay_wait(&mut poll).await?;
    }
    Ok(Recovered {
        reached: reached(&log_text()).unwrap_or_else(|| "end of the archive".into()),
        state: "promoted",
    })
}

/// The restored server runs but drctl cannot log in to watch it promote:
/// no wait will change that.
#[derive(Debug, thiserror::Error)]
#[error("the restored server is up but asks for a password for user postgres (its pg_hba.conf came from the source): set PGPASSWORD or ~/.pgpass and restore again")]
pub struct AsksForPassword;

fn asks_for_password(e: &anyhow::Error) -> bool {
    let t = format!("{e:#}");
    t.contains("password authentication failed")
        || t.contains("no password supplied")
        || t.contains("fe_sendauth")
}

/// Why the server stopped: its last FATAL or PANIC, leaving out the ones
/// drctl's own connection attempts cause while it recovers (under load they
/// come after the real cause, a failed restore_command).
fn last_error(log: &str) -> Option<String> {
    const OURS: [&str; 4] = [
        "the database system is in recovery mode",
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is not yet accepting connections",
    ];
    log.lines()
        .rev()
        .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
        .find(|l| !OURS.iter().any(|o| l.contains(o)))
        .map(|l| l.trim().to_string())
}

/// The point recovery reached, from the server's own log.
pub fn reached(log: &str) -> Option<String> {
    for l in log.lines().rev() {
        if l.contains("recovery stopping after reaching consistency") {
            return Some("the backup's consistent point (recovery_target 'immediate')".into());
        }
        if let Some(i) = l.find("recovery stopping before commit of transaction") {
            if let Some(t) = l[i..].split(", time ").nth(1) {
                return Some(format!("before a commit at {}", t.trim()));
            }
        }
        if let Some(t) = l
            .split("last completed transaction was at log time ")
            .nth(1)
        {
            return Some(format!("last transaction committed at {}", t.trim()));
        }
        // Paused or shut down at an LSN, a transaction or a restore point:
        // no promotion line follows, the stop line says where.
        if let Some(i) = l.find("recovery stopping ") {
            return Some(l[i..].trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_of_a_stop_is_not_our_own_connection_attempts() {
        let log = "\
2026-12-03 08:54:37.700 UTC [7990] FATAL:  could not restore file \"00000002.history\" from archive: child process exited with exit code 126
2026-12-03 08:54:37.810 UTC [8000] FATAL:  the database system is in recovery mode
2026-12-03 08:54:37.817 UTC [8001] FATAL:  the database system is shutting down
";
        let e = last_error(log).unwrap();
        assert!(e.contains("00000002.history"), "{e}");
        assert_eq!(last_error("LOG:  all fine\n"), None);
    }

    #[test]
    fn reached_point_from_the_log() {
        let log = "LOG:  starting point-in-time recovery to 2026-11-22 10:00:00+00\n\
                   LOG:  recovery stopping before commit of transaction 745, time 2026-11-22 10:00:01.5+00\n\
                   LOG:  redo done at 0/5000100\n\
                   LOG:  last completed transaction was at log time 2026-11-22 09:59:59.1+00\n";
        assert_eq!(
            reached(log).unwrap(),
            "last transaction committed at 2026-11-22 09:59:59.1+00"
        );
        assert!(reached("nothing").is_none());
    }
}
