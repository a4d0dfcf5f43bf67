//! Scheduled slots taken exactly once by any number of daemons sharing an
//! S3 repository.
//!
//! The lease (repo::lease) keeps two runs of a policy from overlapping; it
//! cannot stop a daemon whose clock is behind from running a slot another
//! daemon already finished. So each due slot (the cron time, the same on
//! every daemon) gets one object, `<policy>/slots/<kind>/<slot>.json`:
//!
//! - the daemon that creates it (`If-None-Match: *`) runs the slot; the
//!   others see who did;
//! - the runner writes the outcome into it when done; a finished slot is
//!   never run again;
//! - a slot claimed but not finished whose claimer no longer holds the
//!   policy's lease (killed, partitioned past its lease time) is taken over
//!   with `If-Match` on the marker's ETag, so of the survivors one runs it:
//!   a dead daemon's run is redone within one lease expiry.
//!
//! The newest markers are kept ([`KEEP`] per policy and kind); older ones
//! are deleted by the runner of each slot.

use std::time::Duration;

use anyhow::{Context, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::repo::lease::{self, Holder};
use crate::repo::{Conditional, Precondition, Repository};
use crate::time::parse::rfc3339;

/// Slot markers kept per policy and kind.
pub const KEEP: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimer {
    pub host: String,
    pub pid: u32,
    pub boot: String,
}

impl Claimer {
    pub fn me() -> Claimer {
        Claimer {
            host: crate::lock::hostname(),
            pid: std::process::id(),
            boot: lease::boot_identity(),
        }
    }

    /// Whether `h` is this claimer's lease.
    fn holds(&self, h: &Holder) -> bool {
        h.host == self.host && h.pid == self.pid && h.boot == self.boot
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub slot: Timestamp,
    pub claimed_by: Claimer,
    pub claimed_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// "complete", "failed", "skipped".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What to do about a due slot, given its marker and the policy's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No marker: claim it.
    Claim,
    /// Finished (by whom, how): never again.
    Done(String),
    /// Claimed by a live runner: look again until it finishes.
    Watch(String),
    /// Claimed by a runner that is gone: take it over.
    TakeOver(String),
}

/// The decision, apart from the I/O. A claimer is alive while the lease is
/// its own and unexpired, or, before it has taken the lease, for one lease
/// time after its claim.
pub fn decide(
    marker: Option<&Marker>,
    holder: Option<&Holder>,
    now: Timestamp,
    ttl: Duration,
) -> Step {
    let Some(m) = marker else {
        return Step::Claim;
    };
    let who = format!("{} (pid {})", m.claimed_by.host, m.claimed_by.pid);
    if let Some(at) = m.finished_at {
        return Step::Done(format!(
            "{} by {who} at {}",
            m.outcome.as_deref().unwrap_or("finished"),
            rfc3339(at)
        ));
    }
    let grace = jiff::SignedDuration::try_from(ttl).unwrap_or_default();
    let alive = match holder {
        Some(h) if m.claimed_by.holds(h) => !h.expired(now),
        // Another run holds the lease: the claimer either has not got it yet
        // (the previous slot's run is finishing) or lost it.
        _ => now < m.claimed_at.saturating_add(grace).unwrap_or(m.claimed_at),
    };
    if alive {
        Step::Watch(format!("running on {who}"))
    } else {
        Step::TakeOver(format!(
            "claimed by {who} at {}, which stopped",
            rfc3339(m.claimed_at)
        ))
    }
}

fn key(policy: &str, kind: &str, slot: Timestamp) -> String {
    format!(
        "{policy}/slots/{kind}/{}.json",
        slot.strftime("%Y%m%dT%H%M%SZ")
    )
}

/// What claiming a slot came to.
#[derive(Debug)]
pub enum Claimed {
    /// This daemon runs it; finish with `finish`.
    Mine(Box<Held>),
    /// Finished elsewhere, or running elsewhere (watch it).
    Done(String),
    Watch(String),
}

#[derive(Debug)]
pub struct Held {
    key: String,
    marker: Marker,
    etag: String,
    pub took_over: Option<String>,
}

/// A slot's marker (with its ETag) and the policy's lease holder.
async fn read(
    repo: &dyn Repository,
    key: &str,
    policy: &str,
    kind: &str,
) -> Result<(Option<Marker>, Option<String>, Option<Holder>)> {
    let found = repo
        .get_tagged(key)
        .await
        .with_context(|| format!("cannot read the slot marker {key}"))?;
    let (marker, etag) = match found {
        Some((b, e)) => (
            Some(serde_json::from_slice::<Marker>(&b).with_context(|| {
                format!("the slot marker {key} is not drctl's; delete it to let the slot run")
            })?),
            Some(e),
        ),
        None => (None, None),
    };
    let holder = match repo.get_bytes(&lease::key(policy, kind)).await? {
        Some(b) => serde_json::from_slice::<Holder>(&b).ok(),
        None => None,
    };
    Ok((marker, etag, holder))
}

/// Claim `slot` of `policy`'s `kind` runs ("backup", "drill").
pub async fn claim(
    repo: &dyn Repository,
    policy: &str,
    kind: &str,
    slot: Timestamp,
    ttl: Duration,
) -> Result<Claimed> {
    let key = key(policy, kind, slot);
    for _ in 0..5 {
        let (marker, etag, holder) = read(repo, &key, policy, kind).await?;
        let mine = Marker {
            slot,
            claimed_by: Claimer::me(),
            claimed_at: Timestamp::now(),
            finished_at: None,
            outcome: None,
            backup_id: None,
            detail: None,
        };
        let (cond, took_over) =
            match decide(marker.as_ref(), holder.as_ref(), Timestamp::now(), ttl) {
                Step::Done(why) => return Ok(Claimed::Done(why)),
                Step::Watch(why) => return Ok(Claimed::Watch(why)),
                Step::Claim => (Precondition::Absent, None),
                Step::TakeOver(why) => (Precondition::Matches(etag.expect("found")), Some(why)),
            };
        match repo
            .put_if(&key, serde_json::to_vec_pretty(&mine)?, &cond)
            .await
            .with_context(|| format!("cannot write the slot marker {key}"))?
        {
            Conditional::Written(etag) => {
                let held = Box::new(Held {
                    key,
                    marker: mine,
                    etag,
                    took_over,
                });
                // A claimer that committed its backup and died before writing
                // the outcome (in the prune after it, say) ran the slot:
                // running it again would double it.
                if let (Some(old), Some(_), "backup") = (&marker, &held.took_over, kind) {
                    if let Some(id) = &old.backup_id {
                        let committed = repo
                            .head(&crate::repo::manifest::manifest_key(policy, id))
                            .await?
                            .is_some();
                        if committed {
                            let why = format!(
                                "backup {id} was committed by {} (pid {}) before it stopped; not run again",
                                old.claimed_by.host, old.claimed_by.pid
                            );
                            held.finish(
                                repo,
                                policy,
                                kind,
                                "complete",
                                Some(id.clone()),
                                Some(why.clone()),
                            )
                            .await?;
                            return Ok(Claimed::Done(why));
                        }
                    }
                }
                return Ok(Claimed::Mine(held));
            }
            Conditional::Refused => continue,
        }
    }
    anyhow::bail!("the slot marker {key} changed five times while drctl looked")
}

impl Held {
    /// Record the backup this run started, so a taker of the slot can tell
    /// whether it was committed. Best effort: without it a taker runs the
    /// slot again.
    pub async fn started(&mut self, repo: &dyn Repository, backup_id: String) {
        self.marker.backup_id = Some(backup_id);
        let body = match serde_json::to_vec_pretty(&self.marker) {
            Ok(b) => b,
            Err(_) => return,
        };
        match repo
            .put_if(&self.key, body, &Precondition::Matches(self.etag.clone()))
            .await
        {
            Ok(Conditional::Written(etag)) => self.etag = etag,
            Ok(Conditional::Refused) => {
                tracing::warn!(slot = %self.key, "the slot was taken over while it ran")
            }
            Err(e) => tracing::warn!(slot = %self.key, "cannot record the slot's backup: {e:#}"),
        }
    }
    /// Record how the slot's run ended, then trim old markers.
    pub async fn finish(
        self: Box<Self>,
        repo: &dyn Repository,
        policy: &str,
        kind: &str,
        outcome: &str,
        backup_id: Option<String>,
        detail: Option<String>,
    ) -> Result<()> {
        let mut this = *self;
        this.marker.finished_at = Some(Timestamp::now());
        this.marker.outcome = Some(outcome.to_string());
        this.marker.backup_id = backup_id;
        this.marker.detail = detail;
        let body = serde_json::to_vec_pretty(&this.marker)?;
        match repo
            .put_if(&this.key, body, &Precondition::Matches(this.etag.clone()))
            .await?
        {
            Conditional::Written(_) => {}
            Conditional::Refused => tracing::warn!(
                slot = %this.key,
                "the slot was taken over while it ran (its lease was lost); the outcome is the taker's to record"
            ),
        }
        let prefix = format!("{policy}/slots/{kind}/");
        let mut all = repo.list(&prefix).await?;
        if all.len() > KEEP {
            // Keys sort by slot time.
            all.truncate(all.len() - KEEP);
            for o in all {
                repo.delete(&o.key).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn marker(finished: bool) -> Marker {
        Marker {
            slot: ts("2026-12-03T02:00:00Z"),
            claimed_by: Claimer {
                host: "db-2".into(),
                pid: 41,
                boot: "b/pid:[1]".into(),
            },
            claimed_at: ts("2026-12-03T02:00:00Z"),
            finished_at: finished.then(|| ts("2026-12-03T02:00:05Z")),
            outcome: finished.then(|| "complete".to_string()),
            backup_id: None,
            detail: None,
        }
    }

    fn holder(pid: u32, expires: &str) -> Holder {
        Holder {
            token: "t".into(),
            what: "backup".into(),
            host: "db-2".into(),
            pid,
            boot: "b/pid:[1]".into(),
            started: ts("2026-12-03T02:00:00Z"),
            expires: ts(expires),
            renewals: 0,
        }
    }

    const TTL: Duration = Duration::from_secs(120);

    #[test]
    fn a_slot_runs_once_and_a_dead_claimers_slot_is_taken_over() {
        let now = ts("2026-12-03T02:01:00Z");
        assert_eq!(decide(None, None, now, TTL), Step::Claim);
        // Finished: never again, whatever the lease says.
        let done = decide(Some(&marker(true)), None, now, TTL);
        assert!(
            matches!(&done, Step::Done(w) if w.starts_with("complete by db-2 (pid 41)")),
            "{done:?}"
        );
        let m = marker(false);
        // Its claimer holds the lease: running.
        let live = holder(41, "2026-12-03T02:02:00Z");
        assert!(matches!(
            decide(Some(&m), Some(&live), now, TTL),
            Step::Watch(_)
        ));
        // Its claimer's lease expired: taken over.
        let expired = holder(41, "2026-12-03T02:00:30Z");
        assert!(matches!(
            decide(Some(&m), Some(&expired), now, TTL),
            Step::TakeOver(_)
        ));
        // No lease yet (or another run's): alive for one lease time after
        // the claim, then taken over.
        let other = holder(7, "2026-12-03T02:02:00Z");
        assert!(matches!(
            decide(Some(&m), Some(&other), now, TTL),
            Step::Watch(_)
        ));
        assert!(matches!(decide(Some(&m), None, now, TTL), Step::Watch(_)));
        let later = ts("2026-12-03T02:02:01Z");
        assert!(matches!(
            decide(Some(&m), None, later, TTL),
            Step::TakeOver(_)
        ));
    }

    #[test]
    fn slot_keys_sort_by_time() {
        let a = key("orders", "backup", ts("2026-12-03T02:00:00Z"));
        let b = key("orders", "backup", ts("2026-12-03T10:00:00Z"));
        assert_eq!(a, "orders/slots/backup/20261203T020000Z.json");
        assert!(a < b);
    }
}
