//! AWS RDS through aws-sdk-rds: snapshot jobs (with an optional copy to a
//! second region), retention over drctl's own snapshots (found by tag,
//! never by name), and restores into a new instance (point in time or from
//! a snapshot). Credentials and region come from the standard AWS chain;
//! `AWS_ENDPOINT_URL` overrides the endpoint (tests use a local mock).
//!
//! drctl never passes or reads the master password: restores inherit it
//! from the source instance or snapshot.

pub mod plan;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_rds::error::ProvideErrorMetadata;
use aws_sdk_rds::types::{DbClusterSnapshot, DbSnapshot, Tag};
use aws_sdk_rds::Client;
use jiff::Timestamp;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::policy::Policy;
use crate::poll::{Gave, Poll};
use crate::time::parse::rfc3339;

pub const TAG_POLICY: &str = "drctl:policy";
pub const TAG_BACKUP: &str = "drctl:backup-id";
/// On a drill's scratch instance: the policy drilled, and when.
pub const TAG_DRILL_OF: &str = "drctl:drill-of";
pub const TAG_DRILL_STARTED: &str = "drctl:drill-started";

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
        None => {
            let text = aws_smithy_types::error::display::DisplayErrorContext(&e).to_string();
            anyhow!(
                "{what}: {}",
                crate::error::aws_credentials(&text).unwrap_or(text)
            )
        }
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

/// Instance and cluster snapshots, seen alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Instance,
    Cluster,
}

impl Source {
    pub fn kind(&self) -> SnapshotKind {
        match self {
            Source::Instance(_) => SnapshotKind::Instance,
            Source::Cluster(_) => SnapshotKind::Cluster,
        }
    }
}

#[derive(Debug, Clone)]
struct Raw {
    identifier: String,
    arn: String,
    status: String,
    created: Option<Timestamp>,
    tags: Vec<Tag>,
    gib: i32,
}

impl From<&DbSnapshot> for Raw {
    fn from(s: &DbSnapshot) -> Raw {
        Raw {
            identifier: s.db_snapshot_identifier().unwrap_or_default().into(),
            arn: s.db_snapshot_arn().unwrap_or_default().into(),
            status: s.status().unwrap_or_default().into(),
            created: ts(s.snapshot_create_time()),
            tags: s.tag_list().to_vec(),
            gib: s.allocated_storage().unwrap_or(0),
        }
    }
}

impl From<&DbClusterSnapshot> for Raw {
    fn from(s: &DbClusterSnapshot) -> Raw {
        Raw {
            identifier: s
                .db_cluster_snapshot_identifier()
                .unwrap_or_default()
                .into(),
            arn: s.db_cluster_snapshot_arn().unwrap_or_default().into(),
            status: s.status().unwrap_or_default().into(),
            created: ts(s.snapshot_create_time()),
            tags: s.tag_list().to_vec(),
            gib: s.allocated_storage().unwrap_or(0),
        }
    }
}

fn ours(s: &Raw, policy: &str, region: &str) -> Option<Snapshot> {
    if tag(&s.tags, TAG_POLICY) != Some(policy) {
        return None;
    }
    Some(Snapshot {
        backup_id: tag(&s.tags, TAG_BACKUP)?.to_string(),
        identifier: s.identifier.clone(),
        arn: s.arn.clone(),
        region: region.to_string(),
        created: s.created,
        status: s.status.clone(),
        allocated_gib: s.gib,
    })
}

/// drctl's manual snapshots of `policy` in one region, by tag.
pub async fn list_snapshots(
    c: &Client,
    kind: SnapshotKind,
    policy: &str,
    region: &str,
) -> Result<Vec<Snapshot>> {
    let what = || format!("listing snapshots in {region}");
    let mut raw: Vec<Raw> = Vec::new();
    match kind {
        SnapshotKind::Instance => {
            let mut pages = c
                .describe_db_snapshots()
                .snapshot_type("manual")
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| aws(&what(), e))?;
                raw.extend(page.db_snapshots().iter().map(Raw::from));
            }
        }
        SnapshotKind::Cluster => {
            let mut pages = c
                .describe_db_cluster_snapshots()
                .snapshot_type("manual")
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| aws(&what(), e))?;
                raw.extend(page.db_cluster_snapshots().iter().map(Raw::from));
            }
        }
    }
    Ok(raw.iter().filter_map(|s| ours(s, policy, region)).collect())
}

async fn describe_snapshot(c: &Client, kind: SnapshotKind, id: &str) -> Result<Raw> {
    let what = || format!("describing snapshot {id}");
    let found = match kind {
        SnapshotKind::Instance => c
            .describe_db_snapshots()
            .db_snapshot_identifier(id)
            .send()
            .await
            .map_err(|e| aws(&what(), e))?
            .db_snapshots()
            .first()
            .map(Raw::from),
        SnapshotKind::Cluster => c
            .describe_db_cluster_snapshots()
            .db_cluster_snapshot_identifier(id)
            .send()
            .await
            .map_err(|e| aws(&what(), e))?
            .db_cluster_snapshots()
            .first()
            .map(Raw::from),
    };
    found.ok_or_else(|| anyhow!("snapshot {id} not found"))
}

async fn delete_snapshot(c: &Client, kind: SnapshotKind, id: &str, region: &str) -> Result<()> {
    let what = || format!("deleting snapshot {id} in {region}");
    match kind {
        SnapshotKind::Instance => {
            c.delete_db_snapshot()
                .db_snapshot_identifier(id)
                .send()
                .await
                .map_err(|e| aws(&what(), e))?;
        }
        SnapshotKind::Cluster => {
            c.delete_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(id)
                .send()
                .await
                .map_err(|e| aws(&what(), e))?;
        }
    }
    Ok(())
}

async fn wait_snapshot(c: &Client, kind: SnapshotKind, id: &str) -> Result<Raw> {
    let mut poll = Poll::every(wait_limit(), poll_every());
    loop {
        let s = describe_snapshot(c, kind, id).await?;
        match s.status.as_str() {
            "available" => return Ok(s),
            st @ ("failed" | "error" | "deleted" | "incompatible-restore") => {
                bail!("snapshot {id} is {st}")
            }
            _ => {}
        }
        match poll.next().await {
            Ok(()) => {}
            Err(Gave::Up) => bail!(
                "snapshot {id} not available after {}s (status {}); it may still complete: check the console",
                wait_limit().as_secs(),
                s.status
            ),
            Err(Gave::Cancelled) => {
                bail!("cancelled while waiting for snapshot {id} (it continues in AWS)")
            }
        }
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
    let id = crate::repo::manifest::new_backup_id(started);
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
        let kind = src.kind();
        create_snapshot(&c, &src, &snap, tags(&policy.name, &id)).await?;
        let created = wait_snapshot(&c, kind, &snap).await?;
        let consistent = created.created.unwrap_or(started);
        let mut copy = None;
        if let Some(to) = &policy.source.copy_to_region {
            copy_snapshot(
                policy,
                kind,
                &created.arn,
                (to, &snap),
                tags(&policy.name, &id),
            )
            .await?;
            copy = Some((to.clone(), snap.clone()));
        }
        anyhow::Ok((consistent, copy, created.gib))
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
            if crate::cancel::requested() {
                catalog
                    .mark_cancelled(&id, Timestamp::now(), &msg)
                    .await
                    .ok();
            } else {
                catalog.mark_failed(&id, Timestamp::now(), &msg).await.ok();
            }
            Err(e.context(format!("backup {id} of policy {} failed", policy.name)))
        }
    }
}

async fn create_snapshot(c: &Client, src: &Source, snap: &str, tags: Vec<Tag>) -> Result<()> {
    match src {
        Source::Instance(i) => {
            c.create_db_snapshot()
                .db_snapshot_identifier(snap)
                .db_instance_identifier(i)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| aws(&format!("CreateDBSnapshot of {i}"), e))?;
        }
        Source::Cluster(cl) => {
            c.create_db_cluster_snapshot()
                .db_cluster_snapshot_identifier(snap)
                .db_cluster_identifier(cl)
                .set_tags(Some(tags))
                .send()
                .await
                .map_err(|e| aws(&format!("CreateDBClusterSnapshot of {cl}"), e))?;
        }
    }
    Ok(())
}

/// Copy the snapshot `arn` into region `to` as `snap`, and wait until the
/// copy is available.
async fn copy_snapshot(
    policy: &Policy,
    kind: SnapshotKind,
    arn: &str,
    (to, snap): (&str, &str),
    tags: Vec<Tag>,
) -> Result<()> {
    let dc = client(Some(to)).await;
    let what = format!("copying snapshot {snap} to {to}");
    match kind {
        SnapshotKind::Instance => {
            dc.copy_db_snapshot()
                .source_db_snapshot_identifier(arn)
                .target_db_snapshot_identifier(snap)
                .copy_tags(true)
                .set_tags(Some(tags))
                .set_kms_key_id(policy.source.copy_kms_key_id.clone())
                .send()
                .await
                .map_err(|e| aws(&what, e))?;
        }
        SnapshotKind::Cluster => {
            dc.copy_db_cluster_snapshot()
                .source_db_cluster_snapshot_identifier(arn)
                .target_db_cluster_snapshot_identifier(snap)
                .copy_tags(true)
                .set_tags(Some(tags))
                .set_kms_key_id(policy.source.copy_kms_key_id.clone())
                .send()
                .await
                .map_err(|e| aws(&what, e))?;
        }
    }
    wait_snapshot(&dc, kind, snap)
        .await
        .with_context(|| format!("copy to {to}"))?;
    Ok(())
}

/// Catalog rows for drctl's available snapshots of the policy, from their
/// tags alone; the backup ids found.
pub async fn rebuild(policy: &Policy, catalog: &Catalog) -> Result<Vec<String>> {
    let region = region_of(policy);
    let c = client(Some(&region)).await;
    let kind = source(policy)?.kind();
    let mut ids = Vec::new();
    for s in list_snapshots(&c, kind, &policy.name, &region).await? {
        if s.status != "available" {
            continue;
        }
        catalog
            .upsert_external(
                &s.backup_id,
                &policy.name,
                "rds-snapshot",
                s.created.unwrap_or_default(),
                (s.allocated_gib as i64) << 30,
                &location(&region, &s.identifier),
            )
            .await?;
        ids.push(s.backup_id);
    }
    Ok(ids)
}

/// Retention over drctl's snapshots of the policy (by tag), in the source
/// region and the copy region. Snapshots without drctl's tags (made by hand,
/// or AWS's automated ones) are never looked at.
pub async fn prune(
    policy: &Policy,
    catalog: &Catalog,
    dry_run: bool,
) -> Result<crate::prune::Pruned> {
    use crate::prune::retention::{self, Item, Rules};
    let region = region_of(policy);
    let kind = source(policy)?.kind();
    let c = client(Some(&region)).await;
    let mut all = list_snapshots(&c, kind, &policy.name, &region).await?;
    let copies = match &policy.source.copy_to_region {
        Some(to) => {
            let dc = client(Some(to)).await;
            list_snapshots(&dc, kind, &policy.name, to)
                .await?
                .into_iter()
                .map(|s| (s, dc.clone()))
                .collect()
        }
        None => Vec::new(),
    };
    all.retain(|s| s.status == "available");
    let rules = Rules::from_policy(&policy.retention);
    let no_rules = rules.is_empty();
    let items: Vec<Item> = all
        .iter()
        .map(|s| Item {
            id: s.backup_id.clone(),
            at: s.created.unwrap_or_default(),
            pinned: false,
        })
        .collect();
    let mut decisions = retention::decide_or_keep(&items, &rules, &policy.timezone());
    let mut claims = crate::prune::claim(catalog, &policy.name, &mut decisions, dry_run);
    let mut backups = Vec::new();
    for d in decisions {
        let s = all.iter().find(|s| s.backup_id == d.id).expect("decided");
        if !d.keep && !dry_run {
            delete_snapshot(&c, kind, &s.identifier, &region).await?;
            for (copy, dc) in copies.iter().filter(|(x, _)| x.backup_id == d.id) {
                delete_snapshot(dc, kind, &copy.identifier, &copy.region).await?;
            }
            tracing::info!(policy = %policy.name, snapshot = %s.identifier, "pruned");
            if let Some(c) = claims.remove(&d.id) {
                c.release_and_remove();
            }
        }
        backups.push(crate::prune::Entry {
            id: d.id,
            policy: policy.name.clone(),
            method: policy.backup.method,
            consistent_at: s.created.map(rfc3339),
            action: if d.keep { "keep" } else { "delete" },
            reasons: d.reasons,
            stored_bytes: (s.allocated_gib as u64) << 30,
            repository: None,
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
    Ok(crate::prune::Pruned {
        policy: policy.name.clone(),
        repository: None,
        method: policy.backup.method,
        dry_run,
        backups,
        incomplete: Vec::new(),
        leftovers: 0,
        leftover_bytes: 0,
        wal_files: 0,
        wal_kept_from: None,
        wal_locked: 0,
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
    #[serde(skip)]
    pub ready: Option<Endpoint>,
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
pub async fn window(c: &Client, instance: &str) -> Result<plan::PitrWindow> {
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

/// Where a restored instance answers, and who it was created for.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub master_username: Option<String>,
    pub db_name: Option<String>,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

async fn wait_instance(c: &Client, id: &str) -> Result<Option<Endpoint>> {
    let mut poll = Poll::every(wait_limit(), poll_every());
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
                    return Ok(i.endpoint().and_then(|e| {
                        Some(Endpoint {
                            address: e.address()?.to_string(),
                            port: u16::try_from(e.port()?).ok()?,
                            master_username: i.master_username().map(str::to_string),
                            db_name: i.db_name().map(str::to_string),
                        })
                    }))
                }
                Some(st @ ("failed" | "incompatible-restore" | "incompatible-parameters")) => {
                    bail!("instance {id} is {st}")
                }
                _ => {}
            }
        }
        match poll.next().await {
            Ok(()) => {}
            Err(Gave::Up) => bail!(
                "instance {id} not available after {}s; it may still come up: check the console",
                wait_limit().as_secs()
            ),
            Err(Gave::Cancelled) => bail!("cancelled while waiting for instance {id}"),
        }
    }
}

/// Delete a scratch instance: no final snapshot, no retained automated
/// backups. An instance still being created cannot be deleted yet, so
/// that is retried until the wait limit; one already gone is success.
/// Runs to the end even after a cancel request: it is the cleanup.
pub async fn delete_instance(region: &str, id: &str) -> Result<()> {
    let c = client(Some(region)).await;
    let mut poll = Poll::every(wait_limit(), poll_every()).through_cancel();
    loop {
        let r = c
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .send()
            .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_db_instance_not_found_fault()) =>
            {
                return Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_db_instance_state_fault())
                    && poll.next().await.is_ok() =>
            {
                tracing::info!(instance = %id, "not deletable yet; retried");
            }
            Err(e) => return Err(aws(&format!("deleting instance {id} in {region}"), e)),
        }
    }
}

/// Delete scratch instances of `policy` that earlier drills left behind
/// (killed before their cleanup): found by drctl's drill tags, and only
/// when their start tag is older than `max_age`. Returns what was deleted.
pub async fn sweep_scratch(
    policy: &Policy,
    now: Timestamp,
    max_age: jiff::SignedDuration,
) -> Result<Vec<String>> {
    let region = region_of(policy);
    let c = client(Some(&region)).await;
    let mut stale = Vec::new();
    let mut pages = c.describe_db_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws(&format!("listing instances in {region}"), e))?;
        for i in page.db_instances() {
            let tags = i.tag_list();
            if tag(tags, TAG_DRILL_OF) != Some(policy.name.as_str()) {
                continue;
            }
            let started = tag(tags, TAG_DRILL_STARTED).unwrap_or("");
            if plan::scratch_is_stale(started, now, max_age)
                && i.db_instance_status() != Some("deleting")
            {
                if let Some(id) = i.db_instance_identifier() {
                    stale.push(id.to_string());
                }
            }
        }
    }
    for id in &stale {
        delete_instance(&region, id).await?;
        tracing::warn!(policy = %policy.name, instance = %id, "deleted a scratch instance an earlier drill left behind");
    }
    Ok(stale)
}

/// How long a scratch instance may live before a later drill sweeps it:
/// longer than any drill can run (restore wait, checks, deletion).
pub fn scratch_max_age() -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(3 * wait_limit().as_secs() as i64 + 3600)
}

/// Tags for a drill's scratch instance.
pub fn scratch_tags(policy: &str, started: Timestamp) -> Vec<Tag> {
    vec![
        Tag::builder().key(TAG_DRILL_OF).value(policy).build(),
        Tag::builder()
            .key(TAG_DRILL_STARTED)
            .value(rfc3339(started))
            .build(),
    ]
}

pub fn region(policy: &Policy) -> String {
    region_of(policy)
}

/// How a restored instance is made: by hand (`drctl restore`) or as a
/// drill's tagged scratch instance.
#[derive(Default)]
pub struct Creation {
    pub dry_run: bool,
    /// Wait until the instance is available.
    pub wait: bool,
    /// A drill's scratch tags; None for an operator's restore.
    pub tags: Option<Vec<Tag>>,
    /// Another instance class than the source's (drills).
    pub class: Option<String>,
}

/// The settings both restore calls give the new instance, written once:
/// their request builders are distinct types with the same setters.
macro_rules! placed {
    ($req:expr, $policy:expr, $how:expr) => {
        $req.set_tags($how.tags.clone())
            .set_db_subnet_group_name($policy.source.db_subnet_group.clone())
            .set_vpc_security_group_ids(
                Some($policy.source.vpc_security_group_ids.clone()).filter(|v| !v.is_empty()),
            )
            .set_db_instance_class($how.class.clone())
    };
}

/// Restore into a new instance: never in place, never over an existing one.
pub async fn restore(
    policy: &Policy,
    point: RestorePoint,
    target: &str,
    how: &Creation,
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
        dry_run: how.dry_run,
        status: if how.dry_run { "planned" } else { "creating" }.into(),
        endpoint: None,
        ready: None,
    };
    match point {
        RestorePoint::Time(t) => restore_to_time(&c, policy, Some(t), how, &mut out).await?,
        RestorePoint::Latest => restore_to_time(&c, policy, None, how, &mut out).await?,
        RestorePoint::Backup(id) => restore_snapshot(&c, policy, &id, how, &mut out).await?,
    }
    if !how.dry_run && how.wait {
        out.ready = wait_instance(&c, target).await.map_err(|e| {
            if how.tags.is_none() && crate::cancel::requested() {
                e.context(format!(
                    "{target} is still being created in AWS; delete it if you no longer want it"
                ))
            } else {
                e
            }
        })?;
        out.endpoint = out.ready.as_ref().map(Endpoint::to_string);
        out.status = "available".into();
    }
    Ok(out)
}

/// Point-in-time restore of the source instance, to `t` or its latest
/// restorable time, checked against the window first.
async fn restore_to_time(
    c: &Client,
    policy: &Policy,
    t: Option<Timestamp>,
    how: &Creation,
    out: &mut Restore,
) -> Result<()> {
    let w = window(c, &out.source_instance).await?;
    out.window_start = Some(rfc3339(w.earliest));
    out.window_end = Some(rfc3339(w.latest));
    if let Some(t) = t {
        plan::check(&w, t).map_err(crate::error::usage)?;
    }
    out.target_time = Some(rfc3339(t.unwrap_or(w.latest)));
    if how.dry_run {
        return Ok(());
    }
    let target = &out.target_instance;
    let req = placed!(
        c.restore_db_instance_to_point_in_time()
            .source_db_instance_identifier(&out.source_instance)
            .target_db_instance_identifier(target)
            .copy_tags_to_snapshot(true),
        policy,
        how
    );
    let req = match t {
        Some(t) => req.restore_time(dt(t)),
        None => req.use_latest_restorable_time(true),
    };
    req.send()
        .await
        .map_err(|e| aws(&format!("RestoreDBInstanceToPointInTime into {target}"), e))?;
    Ok(())
}

/// Restore one of drctl's snapshots (by backup id or snapshot identifier).
async fn restore_snapshot(
    c: &Client,
    policy: &Policy,
    id: &str,
    how: &Creation,
    out: &mut Restore,
) -> Result<()> {
    let region = region_of(policy);
    let snaps = list_snapshots(c, SnapshotKind::Instance, &policy.name, &region).await?;
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
    if how.dry_run {
        return Ok(());
    }
    let target = &out.target_instance;
    placed!(
        c.restore_db_instance_from_db_snapshot()
            .db_instance_identifier(target)
            .db_snapshot_identifier(&s.identifier),
        policy,
        how
    )
    .send()
    .await
    .map_err(|e| aws(&format!("RestoreDBInstanceFromDBSnapshot into {target}"), e))?;
    Ok(())
}
