//! AWS RDS through aws-sdk-rds: snapshot jobs (with an optional copy to a
//! second region), retention over drctl's own snapshots (found by tag,
//! never by name), and restores into a new instance (point in time or from
//! a snapshot). Credentials and region come from the standard AWS chain;
//! `AWS_ENDPOINT_URL` overrides the endpoint (tests use a local mock).
//!
//! drctl never passes or reads the master password: restores inherit it
//! from the source instance or snapshot.

pub mod plan;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_rds::error::ProvideErrorMetadata;
use aws_sdk_rds::types::{DbSnapshot, Tag};
use aws_sdk_rds::Client;
use jiff::Timestamp;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::timeparse::rfc3339;

pub const TAG_POLICY: &str = "drctl:policy";
pub const TAG_BACKUP: &str = "drctl:backup-id";

/// How long to wait for a snapshot, copy or instance to become available.
fn wait_limit() -> Duration {
    let secs = std::env::var("DRCTL_RDS_WAIT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4 * 3600);
    Duration::from_secs(secs)
}

fn poll_every() -> Duration {
    let ms = std::env::var("DRCTL_RDS_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15_000);
    Duration::from_millis(ms)
}

/// One line from an AWS error: its code and message, never the request.
fn aws<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    what: &str,
    e: aws_sdk_rds::error::SdkError<E>,
) -> anyhow::Error {
    match e.as_service_error() {
        Some(s) => anyhow!(
            "{what}: {}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("no message")
        ),
        None => anyhow!(
            "{what}: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        ),
    }
}

fn ts(d: Option<&aws_smithy_types::DateTime>) -> Option<Timestamp> {
    d.and_then(|d| Timestamp::new(d.secs(), d.subsec_nanos() as i32).ok())
}

fn dt(t: Timestamp) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_nanos(t.as_nanosecond()).expect("a representable time")
}

pub async fn client(region: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    Client::new(&loader.load().await)
}

/// The instance (or cluster) a policy backs up.
#[derive(Debug, Clone)]
pub enum Source {
    Instance(String),
    Cluster(String),
}

pub fn source(policy: &Policy) -> Result<Source> {
    match (&policy.source.instance, &policy.source.cluster) {
        (Some(i), None) => Ok(Source::Instance(i.clone())),
        (None, Some(c)) => Ok(Source::Cluster(c.clone())),
        _ => Err(crate::error::usage(format!(
            "{}: an rds source needs exactly one of instance or cluster",
            policy.path.display()
        ))),
    }
}

fn tags(policy: &str, id: &str) -> Vec<Tag> {
    vec![
        Tag::builder().key(TAG_POLICY).value(policy).build(),
        Tag::builder().key(TAG_BACKUP).value(id).build(),
    ]
}

fn tag<'a>(list: &'a [Tag], key: &str) -> Option<&'a str> {
    list.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// A snapshot drctl made (carries both tags).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub backup_id: String,
    pub identifier: String,
    pub arn: String,
    pub region: String,
    pub created: Option<Timestamp>,
    pub status: String,
    pub allocated_gib: i32,
}

fn ours(s: &DbSnapshot, policy: &str, region: &str) -> Option<Snapshot> {
    if tag(s.tag_list(), TAG_POLICY) != Some(policy) {
        return None;
    }
    Some(Snapshot {
        backup_id: tag(s.tag_list(), TAG_BACKUP)?.to_string(),
        identifier: s.db_snapshot_identifier()?.to_string(),
        arn: s.db_snapshot_arn().unwrap_or_default().to_string(),
        region: region.to_string(),
        created: ts(s.snapshot_create_time()),
        status: s.status().unwrap_or_default().to_string(),
        allocated_gib: s.allocated_storage().unwrap_or(0),
    })
}

/// drctl's manual snapshots of `policy` in one region, by tag.
pub async fn list_snapshots(c: &Client, policy: &str, region: &str) -> Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut pages = c
        .describe_db_snapshots()
        .snapshot_type("manual")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws(&format!("listing snapshots in {region}"), e))?;
        out.extend(
            page.db_snapshots()
                .iter()
                .filter_map(|s| ours(s, policy, region)),
        );
    }
    Ok(out)
}

async fn describe_snapshot(c: &Client, id: &str) -> Result<DbSnapshot> {
    let r = c
        .describe_db_snapshots()
        .db_snapshot_identifier(id)
        .send()
        .await
        .map_err(|e| aws(&format!("describing snapshot {id}"), e))?;
    r.db_snapshots()
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("snapshot {id} not found"))
}

async fn wait_snapshot(c: &Client, id: &str) -> Result<DbSnapshot> {
    let deadline = Instant::now() + wait_limit();
    loop {
        let s = describe_snapshot(c, id).await?;
        match s.status() {
            Some("available") => return Ok(s),
            Some(st @ ("failed" | "error" | "deleted" | "incompatible-restore")) => {
                bail!("snapshot {id} is {st}")
            }
            _ => {}
        }
        if Instant::now() > deadline {
            bail!(
                "snapshot {id} not available after {}s (status {}); it may still complete: check the console",
                wait_limit().as_secs(),
                s.status().unwrap_or("?")
            );
        }
        if crate::cancel::requested() {
            bail!("cancelled while waiting for snapshot {id} (it continues in AWS)");
        }
        tokio::time::sleep(poll_every()).await;
    }
}

/// What a snapshot job made.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub id: String,
    pub policy: String,
    pub snapshot: String,
    pub region: String,
    pub started_at: String,
    pub finished_at: String,
    pub consistent_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_region: Option<String>,
}

fn region_of(policy: &Policy) -> String {
    policy
        .source
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into())
}

/// The repository column of catalog rows: where the snapshot lives.
fn location(region: &str, snapshot: &str) -> String {
    format!("rds://{region}/{snapshot}")
}

/// Snapshot job: create, wait, optionally copy to `copy_to_region` and
/// wait, record. The catalog row is `running` throughout and `complete`
/// only once every snapshot is available.
pub async fn backup(policy: &Policy, catalog: &Catalog) -> Result<Backup> {
    let src = source(policy)?;
    let region = region_of(policy);
    let c = client(Some(&region)).await;
    let started = Timestamp::now();
    let id = crate::manifest::new_backup_id(started);
    let snap = plan::snapshot_identifier(&policy.name, &id);
    catalog
        .insert_running(
            &id,
            &policy.name,
            "rds-snapshot",
            started,
            &location(&region, &snap),
        )
        .await?;
    let r = async {
        let created = match &src {
            Source::Instance(i) => {
                c.create_db_snapshot()
                    .db_snapshot_identifier(&snap)
                    .db_instance_identifier(i)
                    .set_tags(Some(tags(&policy.name, &id)))
                    .send()
                    .await
                    .map_err(|e| aws(&format!("CreateDBSnapshot of {i}"), e))?;
                wait_snapshot(&c, &snap).await?
            }
            Source::Cluster(cl) => {
                c.create_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(&snap)
                    .db_cluster_identifier(cl)
                    .set_tags(Some(tags(&policy.name, &id)))
                    .send()
                    .await
                    .map_err(|e| aws(&format!("CreateDBClusterSnapshot of {cl}"), e))?;
                bail!("cluster snapshots are created but not yet awaited by this drctl build; use instance = \"...\"")
            }
        };
        let consistent = ts(created.snapshot_create_time()).unwrap_or(started);
        let mut copy = None;
        if let Some(to) = &policy.source.copy_to_region {
            let dc = client(Some(to)).await;
            let arn = created
                .db_snapshot_arn()
                .ok_or_else(|| anyhow!("snapshot {snap} has no ARN"))?;
            dc.copy_db_snapshot()
                .source_db_snapshot_identifier(arn)
                .target_db_snapshot_identifier(&snap)
                .copy_tags(true)
                .set_tags(Some(tags(&policy.name, &id)))
                .set_kms_key_id(policy.source.copy_kms_key_id.clone())
                .send()
                .await
                .map_err(|e| aws(&format!("CopyDBSnapshot {snap} to {to}"), e))?;
            wait_snapshot(&dc, &snap)
                .await
                .with_context(|| format!("copy to {to}"))?;
            copy = Some((to.clone(), snap.clone()));
        }
        Ok((consistent, copy, created.allocated_storage().unwrap_or(0)))
    }
    .await;
    match r {
        Ok((consistent, copy, gib)) => {
            let finished = Timestamp::now();
            catalog
                .complete_external(&id, finished, consistent, (gib as i64) << 30)
                .await?;
            Ok(Backup {
                id,
                policy: policy.name.clone(),
                snapshot: snap,
                region,
                started_at: rfc3339(started),
                finished_at: rfc3339(finished),
                consistent_at: rfc3339(consistent),
                copy_region: copy.as_ref().map(|(r, _)| r.clone()),
                copy: copy.map(|(_, s)| s),
            })
        }
        Err(e) => {
            let msg = format!("{e:#}");
            catalog.mark_failed(&id, Timestamp::now(), &msg).await.ok();
            Err(e.context(format!("backup {id} of policy {} failed", policy.name)))
        }
    }
}

/// Retention over drctl's snapshots of the policy (by tag), in the source
/// region and the copy region. Snapshots without drctl's tags (made by hand,
/// or AWS's automated ones) are never looked at.
pub async fn prune(
    policy: &Policy,
    catalog: &Catalog,
    dry_run: bool,
) -> Result<crate::prune::Report> {
    use crate::retention::{self, Item, Rules};
    let region = region_of(policy);
    let c = client(Some(&region)).await;
    let mut all = list_snapshots(&c, &policy.name, &region).await?;
    let copies = match &policy.source.copy_to_region {
        Some(to) => {
            let dc = client(Some(to)).await;
            list_snapshots(&dc, &policy.name, to)
                .await?
                .into_iter()
                .map(|s| (s, dc.clone()))
                .collect()
        }
        None => Vec::new(),
    };
    all.retain(|s| s.status == "available");
    let rules = Rules::from_policy(&policy.retention);
    let items: Vec<Item> = all
        .iter()
        .map(|s| Item {
            id: s.backup_id.clone(),
            at: s.created.unwrap_or_default(),
            pinned: false,
        })
        .collect();
    let no_rules = rules.is_empty();
    let decisions = if no_rules {
        let mut v: Vec<retention::Decision> = items
            .iter()
            .map(|i| retention::Decision {
                id: i.id.clone(),
                keep: true,
                reasons: vec!["no retention rules".into()],
            })
            .collect();
        v.sort_by(|a, b| b.id.cmp(&a.id));
        v
    } else {
        retention::decide(&items, &rules, &policy.timezone())
    };
    let mut backups = Vec::new();
    for d in decisions {
        let s = all.iter().find(|s| s.backup_id == d.id).expect("decided");
        if !d.keep && !dry_run {
            c.delete_db_snapshot()
                .db_snapshot_identifier(&s.identifier)
                .send()
                .await
                .map_err(|e| aws(&format!("deleting snapshot {}", s.identifier), e))?;
            for (copy, dc) in copies.iter().filter(|(x, _)| x.backup_id == d.id) {
                dc.delete_db_snapshot()
                    .db_snapshot_identifier(&copy.identifier)
                    .send()
                    .await
                    .map_err(|e| {
                        aws(
                            &format!("deleting snapshot {} in {}", copy.identifier, copy.region),
                            e,
                        )
                    })?;
            }
            tracing::info!(policy = %policy.name, snapshot = %s.identifier, "pruned");
        }
        backups.push(crate::prune::Entry {
            id: d.id,
            policy: policy.name.clone(),
            method: policy.backup.method,
            consistent_at: s.created.map(rfc3339),
            action: if d.keep { "keep" } else { "delete" },
            reasons: d.reasons,
            stored_bytes: (s.allocated_gib as u64) << 30,
        });
    }
    if !dry_run {
        let present: Vec<String> = backups
            .iter()
            .filter(|e| e.action == "keep")
            .map(|e| e.id.clone())
            .collect();
        catalog.forget_missing(&policy.name, &present).await?;
    }
    Ok(crate::prune::Report {
        policy: policy.name.clone(),
        method: policy.backup.method,
        dry_run,
        backups,
        incomplete: Vec::new(),
        wal_files: 0,
        wal_kept_from: None,
        no_rules,
    })
}

/// What a restore did, or (dry run) would do.
#[derive(Debug, Clone, Serialize)]
pub struct Restore {
    pub policy: String,
    pub method: &'static str,
    pub source_instance: String,
    pub target_instance: String,
    /// Point in time restores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// Snapshot restores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub dry_run: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

pub enum RestorePoint {
    Time(Timestamp),
    Latest,
    /// A drctl backup id or a snapshot identifier.
    Backup(String),
}

async fn instance_exists(c: &Client, id: &str) -> Result<bool> {
    match c
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
    {
        Ok(r) => Ok(!r.db_instances().is_empty()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_db_instance_not_found_fault()) =>
        {
            Ok(false)
        }
        Err(e) => Err(aws(&format!("describing instance {id}"), e)),
    }
}

/// The source instance's restorable window.
pub async fn window(c: &Client, instance: &str) -> Result<plan::Window> {
    let r = c
        .describe_db_instances()
        .db_instance_identifier(instance)
        .send()
        .await
        .map_err(|e| aws(&format!("describing instance {instance}"), e))?;
    let i = r
        .db_instances()
        .first()
        .ok_or_else(|| anyhow!("instance {instance} not found"))?;
    let mut facts = plan::WindowFacts {
        latest_restorable: ts(i.latest_restorable_time()),
        retention_days: i.backup_retention_period().unwrap_or(0),
        created: ts(i.instance_create_time()),
        restore_window: None,
    };
    if let Ok(ab) = c
        .describe_db_instance_automated_backups()
        .db_instance_identifier(instance)
        .send()
        .await
    {
        if let Some(w) = ab
            .db_instance_automated_backups()
            .first()
            .and_then(|b| b.restore_window())
        {
            facts.restore_window = Some((ts(w.earliest_time()), ts(w.latest_time())));
        }
    }
    plan::window(&facts, Timestamp::now()).map_err(|e| anyhow!("instance {instance}: {e}"))
}

async fn wait_instance(c: &Client, id: &str) -> Result<Option<String>> {
    let deadline = Instant::now() + wait_limit();
    loop {
        let r = c
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .map_err(|e| aws(&format!("describing instance {id}"), e))?;
        if let Some(i) = r.db_instances().first() {
            match i.db_instance_status() {
                Some("available") => {
                    return Ok(i
                        .endpoint()
                        .and_then(|e| Some(format!("{}:{}", e.address()?, e.port()?))))
                }
                Some(st @ ("failed" | "incompatible-restore" | "incompatible-parameters")) => {
                    bail!("instance {id} is {st}")
                }
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!(
                "instance {id} not available after {}s; it may still come up: check the console",
                wait_limit().as_secs()
            );
        }
        if crate::cancel::requested() {
            bail!("cancelled while waiting for instance {id} (it continues in AWS)");
        }
        tokio::time::sleep(poll_every()).await;
    }
}

/// Restore into a new instance: never in place, never over an existing one.
pub async fn restore(
    policy: &Policy,
    point: RestorePoint,
    target: &str,
    dry_run: bool,
    wait: bool,
) -> Result<Restore> {
    let Source::Instance(src) = source(policy)? else {
        return Err(crate::error::usage(
            "restoring Aurora clusters is not supported by this drctl build yet",
        ));
    };
    if target == src {
        return Err(crate::error::usage(format!(
            "--target-instance {target} is the source instance: drctl never restores in place; name a new instance"
        )));
    }
    let region = region_of(policy);
    let c = client(Some(&region)).await;
    if instance_exists(&c, target).await? {
        return Err(crate::error::usage(format!(
            "instance {target} already exists; restore into a new instance name (drctl never overwrites one)"
        )));
    }
    let mut out = Restore {
        policy: policy.name.clone(),
        method: "rds-snapshot",
        source_instance: src.clone(),
        target_instance: target.to_string(),
        target_time: None,
        window_start: None,
        window_end: None,
        backup_id: None,
        snapshot: None,
        dry_run,
        status: if dry_run { "planned" } else { "creating" }.into(),
        endpoint: None,
    };
    match point {
        RestorePoint::Time(_) | RestorePoint::Latest => {
            let w = window(&c, &src).await?;
            out.window_start = Some(rfc3339(w.earliest));
            out.window_end = Some(rfc3339(w.latest));
            let t = match point {
                RestorePoint::Time(t) => {
                    plan::check(&w, t).map_err(crate::error::usage)?;
                    Some(t)
                }
                _ => None,
            };
            out.target_time = Some(rfc3339(t.unwrap_or(w.latest)));
            if !dry_run {
                let mut req = c
                    .restore_db_instance_to_point_in_time()
                    .source_db_instance_identifier(&src)
                    .target_db_instance_identifier(target)
                    .copy_tags_to_snapshot(true);
                req = match t {
                    Some(t) => req.restore_time(dt(t)),
                    None => req.use_latest_restorable_time(true),
                };
                req.send().await.map_err(|e| {
                    aws(&format!("RestoreDBInstanceToPointInTime into {target}"), e)
                })?;
            }
        }
        RestorePoint::Backup(id) => {
            let snaps = list_snapshots(&c, &policy.name, &region).await?;
            let s = snaps
                .iter()
                .find(|s| s.backup_id == id || s.identifier == id)
                .ok_or_else(|| {
                    crate::error::usage(format!(
                        "no drctl snapshot {id} of policy {} in {region}; see `drctl list {}`",
                        policy.name, policy.name
                    ))
                })?;
            out.backup_id = Some(s.backup_id.clone());
            out.snapshot = Some(s.identifier.clone());
            out.target_time = s.created.map(rfc3339);
            if !dry_run {
                c.restore_db_instance_from_db_snapshot()
                    .db_instance_identifier(target)
                    .db_snapshot_identifier(&s.identifier)
                    .send()
                    .await
                    .map_err(|e| {
                        aws(&format!("RestoreDBInstanceFromDBSnapshot into {target}"), e)
                    })?;
            }
        }
    }
    if !dry_run && wait {
        out.endpoint = wait_instance(&c, target).await?;
        out.status = "available".into();
    }
    Ok(out)
}
