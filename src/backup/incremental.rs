//! Incremental physical backups: which kind the next backup is, and what
//! it is taken against.
//!
//! `decide` is pure: the policy's wishes and its complete physical backups
//! in, a full or an incremental on the newest backup of its chain out.
//! `choose` adds what only the server and the catalog know (the major,
//! summarize_wal, the parent's server manifest or block map). PostgreSQL
//! 17+ takes the server's own incremental; 15 and 16 a block delta
//! (`super::delta`). Anything that rules an
//! incremental out makes a full with a note saying why, never a failed
//! night; only `--incremental` (the operator insisting) fails instead.

use std::time::Duration;

use jiff::Timestamp;

use crate::catalog::Catalog;
use crate::pg::Conn;
use crate::policy::Policy;
use crate::repo::manifest::Kind;

/// A complete physical backup of the policy, as far as chains go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub kind: Kind,
    pub parent: Option<String>,
    pub started_at: Timestamp,
}

#[derive(Debug, Clone, Copy)]
pub struct Wish {
    /// `[backup] incremental`.
    pub enabled: bool,
    /// `--full` / `--incremental`.
    pub force: Option<Kind>,
    pub full_every: Duration,
    pub max_chain: u32,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A full; the note says why when an incremental was wanted.
    Full { note: Option<String> },
    /// An incremental on `parent`; `depth` counts the incrementals in its
    /// chain including this one.
    Incremental { parent: String, depth: u32 },
}

/// The chain that restores `id`: its full first, `id` last. An error
/// names the first missing link.
pub fn chain(id: &str, links: &[Link]) -> Result<Vec<String>, String> {
    let mut out = vec![id.to_string()];
    let mut at = id.to_string();
    loop {
        let l = links
            .iter()
            .find(|l| l.id == at)
            .ok_or_else(|| format!("backup {at} (in the chain of {id}) is missing"))?;
        match (&l.kind, &l.parent) {
            (Kind::Full, _) => break,
            (Kind::Incremental, Some(p)) => {
                if out.len() > links.len() {
                    return Err(format!("the chain of {id} loops at {p}"));
                }
                out.push(p.clone());
                at = p.clone();
            }
            (Kind::Incremental, None) => {
                return Err(format!("incremental {at} names no parent"));
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// A full, or when `force` insists on an incremental, the reason it
/// cannot be one.
pub fn full_because(force: Option<Kind>, why: String) -> Result<Decision, String> {
    if force == Some(Kind::Incremental) {
        Err(why)
    } else {
        Ok(Decision::Full { note: Some(why) })
    }
}

/// What the next backup is, from the policy's complete physical backups.
pub fn decide(w: &Wish, links: &[Link]) -> Result<Decision, String> {
    match w.force {
        Some(Kind::Full) => return Ok(Decision::Full { note: None }),
        None if !w.enabled => return Ok(Decision::Full { note: None }),
        _ => {}
    }
    let Some(newest) = links.iter().max_by_key(|l| (l.started_at, l.id.clone())) else {
        return full_because(
            w.force,
            "there is no backup yet to build an incremental on".into(),
        );
    };
    let chain = match chain(&newest.id, links) {
        Ok(c) => c,
        Err(e) => {
            return full_because(w.force, format!("the newest backup's chain is broken: {e}"))
        }
    };
    let depth = chain.len() as u32; // incrementals after this one
    if w.force.is_none() {
        let full = links
            .iter()
            .find(|l| l.id == chain[0])
            .expect("chain() found it");
        let age = w.now.duration_since(full.started_at);
        if age.as_secs_f64() >= w.full_every.as_secs_f64() {
            return Ok(Decision::Full {
                note: Some(format!(
                    "a full is due: the chain's full {} is older than full_every ({})",
                    full.id,
                    crate::time::parse::human_duration(
                        jiff::SignedDuration::try_from(w.full_every).unwrap_or_default()
                    )
                )),
            });
        }
        if depth > w.max_chain {
            return Ok(Decision::Full {
                note: Some(format!(
                    "the chain of {} has max_chain ({}) incrementals",
                    newest.id, w.max_chain
                )),
            });
        }
    }
    Ok(Decision::Incremental {
        parent: newest.id.clone(),
        depth,
    })
}

/// The parent of an incremental, with the server manifest it is taken
/// against (PostgreSQL 17+), or None: a block delta against its block map
/// (15, 16).
pub struct Parent {
    pub id: String,
    pub manifest: Option<Vec<u8>>,
}

/// The policy's complete physical backups as links, from the catalog.
pub async fn links(catalog: &Catalog, policy: &str) -> anyhow::Result<Vec<Link>> {
    Ok(catalog
        .list(Some(policy))
        .await?
        .into_iter()
        .filter(|r| r.status == "complete" && r.method == "physical")
        .filter_map(|r| {
            Some(Link {
                kind: if r.kind == "incremental" {
                    Kind::Incremental
                } else {
                    Kind::Full
                },
                parent: r.parent,
                started_at: r.started_at?,
                id: r.id,
            })
        })
        .collect())
}

/// The next backup's parent (None: a full), and a note when an
/// incremental was wanted and is not possible.
pub async fn choose(
    policy: &Policy,
    conn: &Conn,
    catalog: &Catalog,
    force: Option<Kind>,
) -> anyhow::Result<(Option<Parent>, Option<String>)> {
    let w = Wish {
        enabled: policy.backup.incremental,
        force,
        full_every: policy.full_every(),
        max_chain: policy.max_chain(),
        now: Timestamp::now(),
    };
    let refuse = |e: String| anyhow::anyhow!("cannot take an incremental: {e}");
    let parent = match decide(&w, &links(catalog, &policy.name).await?).map_err(refuse)? {
        Decision::Full { note } => return Ok((None, note)),
        Decision::Incremental { parent, .. } => parent,
    };
    let version = conn.server_version_num().await?;
    if let Some(why) = another_cluster(catalog, &parent, conn, version).await? {
        return refuse_or_note(force, why);
    }
    if version < 170000 {
        if !catalog.has_block_map(&parent).await? {
            return refuse_or_note(
                force,
                format!("the catalog has no block map of {parent} (taken before incremental = true, with pg_basebackup, or before a catalog rebuild)"),
            );
        }
        return Ok((
            Some(Parent {
                id: parent,
                manifest: None,
            }),
            None,
        ));
    }
    let summarize = conn
        .query_one("select current_setting('summarize_wal')", &[])
        .await?;
    if summarize != "on" {
        return refuse_or_note(
            force,
            "summarize_wal is off on the server (set summarize_wal = on and reload; drctl check says so too)".into(),
        );
    }
    match catalog.server_manifest(&parent).await? {
        Some(manifest) => Ok((
            Some(Parent {
                id: parent,
                manifest: Some(manifest),
            }),
            None,
        )),
        None => refuse_or_note(
            force,
            format!("the catalog does not keep the server manifest of {parent} (taken with pg_basebackup, or before a catalog rebuild)"),
        ),
    }
}

/// Why `parent` cannot be built on, when the server is not the cluster it
/// was taken of: another system identifier (a new cluster, pg_upgrade) or
/// another major. A chain is one cluster's: PostgreSQL 17+ refuses a
/// manifest of another system, and a parent of an older major would be
/// combined by the wrong pg_combinebackup.
async fn another_cluster(
    catalog: &Catalog,
    parent: &str,
    conn: &Conn,
    version: u32,
) -> anyhow::Result<Option<String>> {
    let Some(m) = catalog
        .get(parent)
        .await?
        .and_then(|(_, json)| json)
        .and_then(|j| serde_json::from_str::<crate::repo::manifest::Manifest>(&j).ok())
    else {
        return Ok(None);
    };
    let system = conn
        .query_one(
            "select system_identifier::text from pg_control_system()",
            &[],
        )
        .await?;
    if let Some(was) = m.source.system_identifier.as_deref() {
        if was != system {
            return Ok(Some(format!(
                "the server is another cluster than {parent} was taken of (system identifier {system}, was {was}: a new cluster or pg_upgrade); a chain starts again"
            )));
        }
    }
    let (now, then) = (version / 10000, m.source.server_version_num / 10000);
    if then != 0 && now != then {
        return Ok(Some(format!(
            "the server is PostgreSQL {now} and {parent} was taken of PostgreSQL {then}; a chain starts again"
        )));
    }
    Ok(None)
}

fn refuse_or_note(
    force: Option<Kind>,
    why: String,
) -> anyhow::Result<(Option<Parent>, Option<String>)> {
    if force == Some(Kind::Incremental) {
        anyhow::bail!("cannot take an incremental: {why}");
    }
    Ok((None, Some(why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + h * 3600).unwrap()
    }

    fn full(id: &str, h: i64) -> Link {
        Link {
            id: id.into(),
            kind: Kind::Full,
            parent: None,
            started_at: at(h),
        }
    }

    fn incr(id: &str, parent: &str, h: i64) -> Link {
        Link {
            id: id.into(),
            kind: Kind::Incremental,
            parent: Some(parent.into()),
            started_at: at(h),
        }
    }

    fn wish(now_h: i64) -> Wish {
        Wish {
            enabled: true,
            force: None,
            full_every: Duration::from_secs(7 * 86400),
            max_chain: 2,
            now: at(now_h),
        }
    }

    #[test]
    fn chains_walk_parents_to_the_full() {
        let l = [full("a", 0), incr("b", "a", 1), incr("c", "b", 2)];
        assert_eq!(chain("c", &l).unwrap(), ["a", "b", "c"]);
        assert_eq!(chain("a", &l).unwrap(), ["a"]);
        let broken = [incr("b", "a", 1), incr("c", "b", 2)];
        assert_eq!(
            chain("c", &broken).unwrap_err(),
            "backup a (in the chain of c) is missing"
        );
        let looped = [incr("b", "c", 1), incr("c", "b", 2)];
        assert!(chain("c", &looped).unwrap_err().contains("loops"));
    }

    #[test]
    fn incrementals_build_on_the_newest_until_the_chain_is_full() {
        let mut l = vec![full("a", 0)];
        assert_eq!(
            decide(&wish(1), &l).unwrap(),
            Decision::Incremental {
                parent: "a".into(),
                depth: 1
            }
        );
        l.push(incr("b", "a", 1));
        assert_eq!(
            decide(&wish(2), &l).unwrap(),
            Decision::Incremental {
                parent: "b".into(),
                depth: 2
            }
        );
        l.push(incr("c", "b", 2));
        let d = decide(&wish(3), &l).unwrap();
        assert!(
            matches!(&d, Decision::Full { note: Some(n) } if n.contains("max_chain (2)")),
            "{d:?}"
        );
        // Forced, the chain grows past max_chain.
        let forced = Wish {
            force: Some(Kind::Incremental),
            ..wish(3)
        };
        assert_eq!(
            decide(&forced, &l).unwrap(),
            Decision::Incremental {
                parent: "c".into(),
                depth: 3
            }
        );
    }

    #[test]
    fn a_full_is_due_after_full_every_and_first() {
        let l = [full("a", 0), incr("b", "a", 1)];
        let d = decide(&wish(7 * 24), &l).unwrap();
        assert!(
            matches!(&d, Decision::Full { note: Some(n) } if n.contains("full_every")),
            "{d:?}"
        );
        let d = decide(&wish(1), &[]).unwrap();
        assert!(matches!(&d, Decision::Full { note: Some(n) } if n.contains("no backup yet")));
        let forced = Wish {
            force: Some(Kind::Incremental),
            ..wish(1)
        };
        assert!(decide(&forced, &[]).unwrap_err().contains("no backup yet"));
    }

    #[test]
    fn off_or_forced_full_is_a_plain_full() {
        let l = [full("a", 0)];
        let off = Wish {
            enabled: false,
            ..wish(1)
        };
        assert_eq!(decide(&off, &l).unwrap(), Decision::Full { note: None });
        let full_forced = Wish {
            force: Some(Kind::Full),
            ..wish(1)
        };
        assert_eq!(
            decide(&full_forced, &l).unwrap(),
            Decision::Full { note: None }
        );
        // --incremental works without incremental = true.
        let incr_forced = Wish {
            force: Some(Kind::Incremental),
            ..off
        };
        assert!(matches!(
            decide(&incr_forced, &l).unwrap(),
            Decision::Incremental { .. }
        ));
    }

    #[test]
    fn a_broken_chain_means_a_full() {
        let l = [incr("b", "gone", 1)];
        let d = decide(&wish(2), &l).unwrap();
        assert!(
            matches!(&d, Decision::Full { note: Some(n) } if n.contains("gone")),
            "{d:?}"
        );
    }
}
