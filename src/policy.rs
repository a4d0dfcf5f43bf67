//! Policy files: one TOML file per protected database in `policies/`.
//!
//! Parsing is strict (unknown keys are errors, so a typo can never silently
//! disable retention) and reports every problem it can find, each naming the
//! file, the key and the reason. Pure: no I/O beyond reading the file text.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use jiff::SignedDuration;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::time::parse::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Postgres,
    Rds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Dump,
    Physical,
    RdsSnapshot,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Dump => "dump",
            Method::Physical => "physical",
            Method::RdsSnapshot => "rds-snapshot",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RowCounts {
    /// `count(*)` of every table in the dump's own snapshot.
    #[default]
    Exact,
    /// `pg_class.reltuples`: free, but only as good as the last ANALYZE.
    Estimate,
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub instance: Option<String>,
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub copy_to_region: Option<String>,
    pub copy_kms_key_id: Option<String>,
    /// RDS restores and drill scratch instances: where the new instance
    /// goes. Without them AWS uses the default VPC's subnet group and
    /// security group, which a production VPC's clients cannot reach.
    pub db_subnet_group: Option<String>,
    #[serde(default)]
    pub vpc_security_group_ids: Vec<String>,
    /// Where the PostgreSQL programs of the source's major live, when not
    /// in `/usr/lib/postgresql/N/bin` (pg::tools says the order).
    pub pg_bindir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub method: Method,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jobs: Option<u32>,
    #[serde(default)]
    pub row_counts: RowCounts,
    /// Physical backups: stream with pg_basebackup (libpq: TLS, GSSAPI,
    /// service files) even where drctl's own replication client would do.
    #[serde(default)]
    pub use_pg_basebackup: bool,
    /// Physical backups: how long to wait for the WAL the backup needs to
    /// reach the archive before failing (default 60s).
    pub archive_timeout: Option<String>,
    /// Physical backups: take incrementals on the newest backup of the
    /// chain unless a full is due (see `full_every`, `max_chain`).
    #[serde(default)]
    pub incremental: bool,
    /// With `incremental`: a full at least this often (default 7d).
    pub full_every: Option<String>,
    /// With `incremental`: at most this many incrementals on one full
    /// (default 6).
    pub max_chain: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    pub url: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// S3 Object Lock: every object drctl writes is retained this long.
    pub object_lock_days: Option<u32>,
    /// "governance" (default) or "compliance".
    pub object_lock_mode: Option<String>,
    /// Multipart part size in MiB (S3). Memory is about (parts in flight + 2) × this.
    pub part_size_mib: Option<u32>,
    /// Bound on each repository request (connect, and each wait for an
    /// answer) before it is retried; default 60s.
    pub request_timeout: Option<String>,
    /// S3: how long a run's lease lives without renewal (a dead holder's
    /// lease is taken over after it); default 2m.
    pub lease_ttl: Option<String>,
    /// Upper bound on the bytes per second drctl moves to and from this
    /// repository ("50MiB/s"), uploads and downloads each.
    pub max_rate: Option<String>,
}

impl Repository {
    /// `max_rate` in bytes per second (validated when the policy loaded).
    pub fn max_rate_bytes(&self) -> Option<u64> {
        self.max_rate.as_deref().and_then(|r| parse_rate(r).ok())
    }
}

/// "50MiB/s", "800KB/s", "1.5GiB/s", "1000000B/s" as bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("'{s}' is not a rate: use a number and a unit per second, like \"50MiB/s\" or \"800KB/s\"")
    };
    let per = s.trim().strip_suffix("/s").ok_or_else(bad)?;
    let split = per
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = per.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if v.is_nan() || v < 1024.0 || !v.is_finite() {
        return Err(format!(
            "'{s}' is below 1KiB/s: drctl could not finish anything at that rate"
        ));
    }
    Ok(v as u64)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    pub level: Option<i32>,
    /// zstd worker threads; default: available cores.
    pub threads: Option<u32>,
    /// zstd level for WAL (wal-push must keep up with the server); default 1.
    pub wal_level: Option<i32>,
    /// Physical backups: let the server compress (PostgreSQL 15+ built with
    /// zstd) so only compressed bytes cross the wire; default true.
    pub on_server: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub on_success: bool,
    pub max_rpo: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub sql: String,
    pub expect: Option<String>,
    pub expect_min: Option<f64>,
    pub expect_max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    pub schedule: Option<String>,
    pub max_rto: Option<String>,
    pub max_rpo: Option<String>,
    /// RDS: the scratch instance's class (default: the source's).
    pub instance_class: Option<String>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub path: PathBuf,
    pub source: Source,
    pub backup: Backup,
    pub retention: Retention,
    pub repository: Option<Repository>,
    pub encryption: Option<Encryption>,
    pub compression: Compression,
    pub notify: Notify,
    pub drill: Option<Drill>,
    /// `[[copy]]`: further repositories, in failover order.
    pub copies: Vec<Copy>,
    /// Set by `pinned`: the one repository this policy value reads.
    pub pinned_to: Option<String>,
}

/// How the `[repository]` is named beside its copies.
pub const PRIMARY: &str = "primary";

/// A second repository (`[[copy]]`): every backup and WAL segment goes
/// there too.
#[derive(Debug, Clone)]
pub struct Copy {
    pub name: String,
    pub repository: Repository,
    /// Its own retention; None: the policy's.
    pub retention: Option<Retention>,
    /// How long wal-push may leave the copy behind before failing.
    pub max_lag: Option<String>,
}

impl Copy {
    pub fn max_lag(&self) -> std::time::Duration {
        duration_or(self.max_lag.as_deref(), 15 * 60)
    }
}

/// `s` as one word of a shell command line (archive_command and
/// restore_command run through `sh -c`), quoted only when it must be.
pub fn shell_word(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@".contains(&b))
    {
        s.to_string()
    } else {
        format!(
            "\"{}\"",
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
                .replace('`', "\\`")
        )
    }
}

impl Policy {
    /// The archive_command that archives into this policy, as the server
    /// runs it: this drctl by its full path (the server's PATH rarely has
    /// it) and the policies directory (the postgres user has no default).
    /// Which repository a read (restore, drill, verify) goes to: the one
    /// `--repo` pinned, else the primary (then each copy, in order, when
    /// the primary fails).
    pub fn reads_from(&self) -> String {
        match (&self.pinned_to, self.copies.is_empty()) {
            (Some(name), _) => name.clone(),
            (None, true) => PRIMARY.to_string(),
            (None, false) => format!("{PRIMARY}, then each [[copy]] in order"),
        }
    }

    pub fn archive_command(&self) -> String {
        let exe = std::env::current_exe()
            .map(|e| e.display().to_string())
            .unwrap_or_else(|_| "/usr/local/bin/drctl".into());
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        format!(
            "{} --policies {} wal-push {} %p",
            shell_word(&exe),
            shell_word(&dir.display().to_string()),
            self.name
        )
    }

    /// The path of PostgreSQL's `program` for a server of `major`.
    pub fn pg_tool(&self, program: &str, major: u32) -> anyhow::Result<std::path::PathBuf> {
        crate::pg::tools::find(program, major, self.source.pg_bindir.as_deref())
    }

    /// The policy as seen from one of its repositories (`--repo NAME`):
    /// that repository alone, with its own retention when it has one.
    pub fn pinned(&self, name: &str) -> anyhow::Result<Policy> {
        let mut p = self.clone();
        p.copies.clear();
        p.pinned_to = Some(name.to_string());
        if name == PRIMARY {
            return Ok(p);
        }
        let Some(c) = self.copies.iter().find(|c| c.name == name) else {
            let names: Vec<&str> = std::iter::once(PRIMARY)
                .chain(self.copies.iter().map(|c| c.name.as_str()))
                .collect();
            return Err(crate::error::usage(format!(
                "policy {} has no repository named '{name}'; its repositories: {}",
                self.name,
                names.join(", ")
            )));
        };
        p.repository = Some(c.repository.clone());
        if let Some(r) = &c.retention {
            p.retention = r.clone();
        }
        Ok(p)
    }

    /// The policy's source database (`[source] url`, required).
    pub fn source_conn(&self) -> anyhow::Result<crate::pg::Conn> {
        let url = self.source.url.as_deref().ok_or_else(|| {
            crate::error::usage(format!("{}: source.url is required", self.path.display()))
        })?;
        let url = crate::pg::ConnUrl::parse(url).map_err(|e| {
            crate::error::usage(format!("{}: source.url: {e}", self.path.display()))
        })?;
        crate::pg::Conn::new(url, self.source.password_env.as_deref())
    }

    pub fn compression_level(&self) -> i32 {
        self.compression.level.unwrap_or(3)
    }

    /// zstd workers: the policy's, else one per core.
    pub fn compression_threads(&self) -> u32 {
        self.compression.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(2)
        })
    }

    pub fn wal_compression_level(&self) -> i32 {
        self.compression.wal_level.unwrap_or(1)
    }

    pub fn recipients(&self) -> &[String] {
        self.encryption
            .as_ref()
            .map(|e| e.recipients.as_slice())
            .unwrap_or(&[])
    }

    /// `[backup] archive_timeout`, validated at load.
    pub fn archive_timeout(&self) -> std::time::Duration {
        duration_or(self.backup.archive_timeout.as_deref(), 60)
    }

    /// `[backup] full_every`, validated at load.
    pub fn full_every(&self) -> std::time::Duration {
        duration_or(self.backup.full_every.as_deref(), 7 * 86400)
    }

    /// `[backup] max_chain`: incrementals on one full.
    pub fn max_chain(&self) -> u32 {
        self.backup.max_chain.unwrap_or(6)
    }

    pub fn timezone(&self) -> jiff::tz::TimeZone {
        self.backup
            .timezone
            .as_deref()
            .and_then(|tz| jiff::tz::TimeZone::get(tz).ok())
            .unwrap_or(jiff::tz::TimeZone::UTC)
    }
}

/// How long a run's lease lives without renewal (`[repository] lease_ttl`).
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// A validated duration key, or its default in seconds.
fn duration_or(v: Option<&str>, default_secs: u64) -> std::time::Duration {
    v.and_then(|v| parse_duration(v).ok())
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or(std::time::Duration::from_secs(default_secs))
}

impl Repository {
    /// `request_timeout`, validated at load.
    pub fn request_timeout(&self) -> std::time::Duration {
        duration_or(self.request_timeout.as_deref(), 60)
    }

    /// `lease_ttl`, validated at load.
    pub fn lease_ttl(&self) -> std::time::Duration {
        duration_or(self.lease_ttl.as_deref(), DEFAULT_LEASE_TTL.as_secs())
    }
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Policy names become repository prefixes and file names: keep them tame.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

const SECTIONS: &[&str] = &[
    "source",
    "backup",
    "retention",
    "repository",
    "encryption",
    "compression",
    "notify",
    "drill",
    "copy",
];

struct Ctx<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            key: key.into(),
            // toml's messages carry newlines; errors are one line.
            reason: reason
                .into()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        });
    }

    /// Deserialize one section, turning serde's complaint into file/key/reason.
    fn section<T: DeserializeOwned>(
        &mut self,
        table: &toml::Table,
        name: &str,
        required: bool,
    ) -> Option<T> {
        let Some(value) = table.get(name) else {
            if required {
                self.add(name, "missing section");
            }
            return None;
        };
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => Some(v),
            Err(err) => {
                let path = err.path().to_string();
                let inner = err.into_inner().to_string();
                let mut key = name.to_string();
                if path != "." && !path.is_empty() {
                    key = format!("{name}.{path}");
                }
                let reason = if let Some(rest) = inner.strip_prefix("unknown field `") {
                    let field = rest.split('`').next().unwrap_or_default();
                    if !key.ends_with(&format!(".{field}")) {
                        key = format!("{key}.{field}");
                    }
                    let expected = rest.split_once(", expected ").map(|x| x.1).unwrap_or("");
                    match closest(field, expected) {
                        Some(near) => {
                            format!("unknown key; did you mean `{near}`? (expected {expected})")
                        }
                        None => format!("unknown key (expected {expected})"),
                    }
                } else if let Some(rest) = inner.strip_prefix("missing field `") {
                    let field = rest.split('`').next().unwrap_or_default();
                    if !key.ends_with(&format!(".{field}")) {
                        key = format!("{key}.{field}");
                    }
                    "required key is missing".to_string()
                } else {
                    inner
                };
                self.add(key, reason);
                None
            }
        }
    }
}

/// The key among serde's backquoted `expected` list nearest to `field`,
/// when it is a likely typo (at most a third of its letters off).
fn closest<'a>(field: &str, expected: &'a str) -> Option<&'a str> {
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edit_distance(field, k), k))
        .filter(|(d, k)| *d > 0 && *d <= (k.len().max(field.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours counting once.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The policy's TOML table, its unknown sections reported; None when the
/// text is not TOML.
fn toml_table(ctx: &mut Ctx<'_>, text: &str) -> Option<toml::Table> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid TOML").to_string();
            let detail = msg.lines().last().unwrap_or("").trim().to_string();
            ctx.add(
                "",
                format!("not valid TOML: {first} {detail}")
                    .trim_end()
                    .to_string(),
            );
            return None;
        }
    };
    for key in table.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            let expected: Vec<String> = SECTIONS.iter().map(|s| format!("`{s}`")).collect();
            let expected = expected.join(", ");
            let hint = closest(key, &expected)
                .map(|n| format!("; did you mean [{n}]?"))
                .unwrap_or_default();
            ctx.add(
                key.clone(),
                format!(
                    "unknown section{hint} (expected one of {})",
                    SECTIONS.join(", ")
                ),
            );
        }
    }
    Some(table)
}

/// Parse and validate one policy from its text. The name is the file stem.
pub fn parse(file: &Path, text: &str) -> Result<Policy, Vec<Problem>> {
    let mut ctx = Ctx {
        file,
        problems: Vec::new(),
    };
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !valid_name(&name) {
        ctx.add(
            "",
            format!("policy name '{name}' (the file stem) must be 1-64 of [A-Za-z0-9_-], starting with a letter or digit"),
        );
    }
    let Some(table) = toml_table(&mut ctx, text) else {
        return Err(ctx.problems);
    };
    let source: Option<Source> = ctx.section(&table, "source", true);
    let backup: Option<Backup> = ctx.section(&table, "backup", true);
    let retention: Option<Retention> = ctx.section(&table, "retention", false);
    let repository: Option<Repository> = ctx.section(&table, "repository", false);
    let encryption: Option<Encryption> = ctx.section(&table, "encryption", false);
    let compression: Option<Compression> = ctx.section(&table, "compression", false);
    let notify: Option<Notify> = ctx.section(&table, "notify", false);
    let drill: Option<Drill> = ctx.section(&table, "drill", false);

    if let Some(s) = &source {
        validate_source(&mut ctx, s);
    }
    if let Some(b) = &backup {
        validate_backup(&mut ctx, b, source.as_ref().map(|s| s.kind));
    }
    if let Some(r) = &retention {
        if let Some(w) = &r.keep_within {
            check_duration(&mut ctx, "retention.keep_within", w);
        }
    }
    let is_rds = source.as_ref().is_some_and(|s| s.kind == SourceKind::Rds);
    if !is_rds && source.is_some() {
        // A section that is there but wrong has its own error already.
        require_storage(
            &mut ctx,
            table.contains_key("repository"),
            table.contains_key("encryption"),
        );
    }
    let no_rules = Retention::default();
    let policy_retention = retention.as_ref().unwrap_or(&no_rules);
    if let Some(r) = &repository {
        validate_repository(&mut ctx, "repository", r);
        validate_retention_vs_lock(&mut ctx, ("retention", policy_retention), ("repository", r));
    }
    let copies = copies(&mut ctx, &table);
    validate_copies(
        &mut ctx,
        &copies,
        repository.as_ref(),
        policy_retention,
        is_rds,
    );
    if let Some(e) = &encryption {
        validate_recipients(&mut ctx, &e.recipients);
    }
    if let Some(c) = &compression {
        validate_compression(&mut ctx, c);
    }
    if let Some(n) = &notify {
        validate_notify(&mut ctx, n);
    }
    if let Some(d) = &drill {
        validate_drill(&mut ctx, d);
        if d.instance_class.is_some() && source.as_ref().is_some_and(|s| s.kind != SourceKind::Rds)
        {
            ctx.add(
                "drill.instance_class",
                "only valid with [source] kind = \"rds\" (the class of the scratch instance)",
            );
        }
    }

    if !ctx.problems.is_empty() {
        return Err(ctx.problems);
    }
    // Every required piece was checked above; these cannot fail here.
    let (Some(source), Some(backup)) = (source, backup) else {
        unreachable!("missing sections are reported as problems")
    };
    Ok(Policy {
        name,
        path: file.to_path_buf(),
        source,
        backup,
        retention: retention.unwrap_or_default(),
        repository,
        encryption,
        compression: compression.unwrap_or_default(),
        notify: notify.unwrap_or_default(),
        drill,
        copies,
        pinned_to: None,
    })
}

/// A postgres policy stores encrypted backups: both sections are needed.
fn require_storage(ctx: &mut Ctx<'_>, repository: bool, encryption: bool) {
    if !repository {
        ctx.add("repository", "missing section: a postgres policy needs [repository] url = \"file:///...\" or \"s3://bucket/prefix\"");
    }
    if !encryption {
        ctx.add("encryption", "missing section: [encryption] recipients = [\"age1...\"] (run `drctl init` to make a key pair)");
    }
}

/// Each `[[copy]]`: its repository keys, its lock against the retention
/// that applies to it, and that it is not the primary.
fn validate_copies(
    ctx: &mut Ctx<'_>,
    copies: &[Copy],
    primary: Option<&Repository>,
    policy_retention: &Retention,
    is_rds: bool,
) {
    for (i, c) in copies.iter().enumerate() {
        let section = format!("copy[{i}]");
        validate_repository(ctx, &section, &c.repository);
        let own = format!("{section}.retention");
        let (key, r) = match &c.retention {
            Some(r) => (own.as_str(), r),
            None => ("retention", policy_retention),
        };
        validate_retention_vs_lock(ctx, (key, r), (&section, &c.repository));
        if primary.is_some_and(|p| p.url == c.repository.url) {
            ctx.add(
                format!("{section}.url"),
                "is the primary [repository]; a copy must be somewhere else",
            );
        }
        if is_rds {
            ctx.add(&section, "RDS policies copy snapshots with [source] copy_to_region; [[copy]] is for PostgreSQL backups");
        }
    }
}

/// The `[[copy]]` tables: each a repository's keys plus `name`, an
/// optional `retention` and `max_lag`.
fn copies(ctx: &mut Ctx<'_>, table: &toml::Table) -> Vec<Copy> {
    let Some(value) = table.get("copy") else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        ctx.add("copy", "write each copy as its own [[copy]] table");
        return Vec::new();
    };
    let mut out: Vec<Copy> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let section = format!("copy[{i}]");
        let Some(t) = item.as_table() else {
            ctx.add(section, "must be a table");
            continue;
        };
        let mut t = t.clone();
        let name = match t.remove("name") {
            Some(toml::Value::String(n)) if valid_name(&n) && n != PRIMARY => n,
            Some(toml::Value::String(n)) if n == PRIMARY => {
                ctx.add(
                    format!("{section}.name"),
                    format!("'{PRIMARY}' names the [repository]; choose another name"),
                );
                continue;
            }
            Some(v) => {
                ctx.add(
                    format!("{section}.name"),
                    format!(
                        "{v} is not a name: 1-64 of [A-Za-z0-9_-], starting with a letter or digit"
                    ),
                );
                continue;
            }
            None => {
                ctx.add(
                    format!("{section}.name"),
                    "required key is missing (it names the copy in list, status and --repo)",
                );
                continue;
            }
        };
        if out.iter().any(|c| c.name == name) {
            ctx.add(
                format!("{section}.name"),
                format!("another [[copy]] is already named '{name}'"),
            );
        }
        let max_lag = match t.remove("max_lag") {
            Some(toml::Value::String(v)) => {
                check_positive(ctx, &format!("{section}.max_lag"), &v);
                Some(v)
            }
            Some(v) => {
                ctx.add(
                    format!("{section}.max_lag"),
                    format!("{v} is not a duration like \"15m\""),
                );
                None
            }
            None => None,
        };
        let mut parts = toml::Table::new();
        if let Some(r) = t.remove("retention") {
            parts.insert(format!("{section}.retention"), r);
        }
        parts.insert(section.clone(), toml::Value::Table(t));
        let retention: Option<Retention> =
            ctx.section(&parts, &format!("{section}.retention"), false);
        if let Some(w) = retention.as_ref().and_then(|r| r.keep_within.as_ref()) {
            check_duration(ctx, &format!("{section}.retention.keep_within"), w);
        }
        if let Some(repository) = ctx.section::<Repository>(&parts, &section, true) {
            out.push(Copy {
                name,
                repository,
                retention,
                max_lag,
            });
        }
    }
    out
}

fn check_duration(ctx: &mut Ctx<'_>, key: &str, value: &str) -> Option<SignedDuration> {
    match parse_duration(value) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.add(key, e);
            None
        }
    }
}

fn validate_source(ctx: &mut Ctx<'_>, s: &Source) {
    match s.kind {
        SourceKind::Postgres => {
            match &s.url {
                None => ctx.add(
                    "source.url",
                    "required for kind = \"postgres\" (e.g. postgres://backup@db1:5432/orders)",
                ),
                Some(u) => {
                    if let Err(e) = crate::pg::ConnUrl::parse(u) {
                        ctx.add("source.url", e);
                    }
                }
            }
            for (key, v) in [
                ("source.instance", &s.instance),
                ("source.cluster", &s.cluster),
                ("source.copy_to_region", &s.copy_to_region),
                ("source.copy_kms_key_id", &s.copy_kms_key_id),
                ("source.db_subnet_group", &s.db_subnet_group),
            ] {
                if v.is_some() {
                    ctx.add(key, "only valid with kind = \"rds\"");
                }
            }
            if !s.vpc_security_group_ids.is_empty() {
                ctx.add(
                    "source.vpc_security_group_ids",
                    "only valid with kind = \"rds\"",
                );
            }
            if let Some(d) = &s.pg_bindir {
                if !d.is_absolute() {
                    ctx.add(
                        "source.pg_bindir",
                        "must be an absolute path (e.g. /usr/lib/postgresql/16/bin)",
                    );
                } else if !d.is_dir() {
                    ctx.add(
                        "source.pg_bindir",
                        format!("{} is not a directory", d.display()),
                    );
                }
            }
        }
        SourceKind::Rds => {
            if s.instance.is_none() == s.cluster.is_none() {
                ctx.add(
                    "source.instance",
                    "an rds source needs exactly one of instance = \"...\" or cluster = \"...\"",
                );
            }
            // For drills: the user, database and options the checks use on
            // the scratch instance (its host and port replace the URL's).
            if let Some(u) = &s.url {
                if let Err(e) = crate::pg::ConnUrl::parse(u) {
                    ctx.add("source.url", e);
                }
            }
        }
    }
    if let Some(env) = &s.password_env {
        if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            ctx.add("source.password_env", "must be the NAME of an environment variable holding the password, not the password");
        }
    }
}

fn validate_backup(ctx: &mut Ctx<'_>, b: &Backup, kind: Option<SourceKind>) {
    match (kind, b.method) {
        (Some(SourceKind::Postgres), Method::RdsSnapshot) => ctx.add(
            "backup.method",
            "\"rds-snapshot\" needs [source] kind = \"rds\"",
        ),
        (Some(SourceKind::Rds), Method::Dump | Method::Physical) => ctx.add(
            "backup.method",
            "an rds source supports only method = \"rds-snapshot\"",
        ),
        _ => {}
    }
    if let Some(s) = &b.schedule {
        if let Err(e) = crate::time::schedule::Schedule::parse(s) {
            ctx.add("backup.schedule", e);
        }
    }
    if let Some(tz) = &b.timezone {
        if jiff::tz::TimeZone::get(tz).is_err() {
            ctx.add(
                "backup.timezone",
                format!("unknown time zone '{tz}' (use an IANA name such as UTC or Europe/Berlin)"),
            );
        }
    }
    if b.jobs == Some(0) {
        ctx.add("backup.jobs", "must be at least 1");
    } else if b.jobs.is_some() && b.method != Method::Dump {
        ctx.add(
            "backup.jobs",
            "is pg_restore's parallelism for dump policies (restores and drills); a physical or RDS backup has no use for it: remove it",
        );
    }
    if let Some(v) = &b.archive_timeout {
        check_positive(ctx, "backup.archive_timeout", v);
    }
    let physical = b.method == Method::Physical;
    if b.incremental && !physical {
        ctx.add(
            "backup.incremental",
            "incremental backups are physical (a dump is whole by nature): use method = \"physical\" or remove it",
        );
    }
    for (key, set) in [
        ("backup.full_every", b.full_every.is_some()),
        ("backup.max_chain", b.max_chain.is_some()),
    ] {
        if set && !b.incremental {
            ctx.add(
                key,
                "only means something with incremental = true: set that or remove it",
            );
        }
    }
    if let Some(v) = &b.full_every {
        check_positive(ctx, "backup.full_every", v);
    }
    if b.max_chain == Some(0) {
        ctx.add(
            "backup.max_chain",
            "must be at least 1 (to take only fulls, remove incremental = true)",
        );
    }
}

/// A duration that bounds a wait: zero would fail every time.
fn check_positive(ctx: &mut Ctx<'_>, key: &str, value: &str) {
    if check_duration(ctx, key, value).is_some_and(|d| d.is_zero()) {
        ctx.add(key, format!("'{value}' must be longer than zero"));
    }
}

fn validate_compression(ctx: &mut Ctx<'_>, c: &Compression) {
    if let Some(level) = c.level {
        if !(1..=19).contains(&level) {
            ctx.add(
                "compression.level",
                format!("{level} is out of range; use 1 (fast) to 19 (small), 3 is the default"),
            );
        }
    }
    if c.threads == Some(0) {
        ctx.add("compression.threads", "must be at least 1");
    }
    if let Some(level) = c.wal_level {
        if !(1..=19).contains(&level) {
            ctx.add(
                "compression.wal_level",
                format!("{level} is out of range; use 1 (the default) to 19"),
            );
        }
    }
}

fn validate_notify(ctx: &mut Ctx<'_>, n: &Notify) {
    if let Some(u) = &n.webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            ctx.add("notify.webhook_url", "must be an http:// or https:// URL");
        }
    }
    if let Some(d) = &n.max_rpo {
        check_duration(ctx, "notify.max_rpo", d);
    }
}

fn validate_repository(ctx: &mut Ctx<'_>, section: &str, r: &Repository) {
    if let Err(e) = crate::repo::url::RepoUrl::parse(&r.url) {
        ctx.add(format!("{section}.url"), e);
    }
    if let Some(v) = &r.max_rate {
        if let Err(e) = parse_rate(v) {
            ctx.add(format!("{section}.max_rate"), e);
        }
    }
    if let Some(v) = &r.request_timeout {
        check_positive(ctx, &format!("{section}.request_timeout"), v);
    }
    validate_lock(ctx, section, r);
    if let Some(v) = &r.lease_ttl {
        let key = format!("{section}.lease_ttl");
        if matches!(
            crate::repo::url::RepoUrl::parse(&r.url),
            Ok(crate::repo::url::RepoUrl::File(_))
        ) {
            ctx.add(
                key,
                "leases are for s3:// repositories: runs on a file repository are kept apart by a file lock on this host; remove the key",
            );
        } else if parse_duration(v)
            .ok()
            .and_then(|d| std::time::Duration::try_from(d).ok())
            .is_some_and(|d| d < std::time::Duration::from_secs(3))
        {
            ctx.add(
                key,
                format!(
                    "'{v}' is too short: a lease is renewed every third of it; use at least \"3s\""
                ),
            );
        } else {
            check_positive(ctx, &key, v);
        }
    }
    if let Some(p) = r.part_size_mib {
        if !(5..=512).contains(&p) {
            ctx.add(
                format!("{section}.part_size_mib"),
                "must be between 5 and 512 (S3 parts are at least 5 MiB)",
            );
        }
    }
}

fn validate_lock(ctx: &mut Ctx<'_>, section: &str, r: &Repository) {
    if let Some(m) = &r.object_lock_mode {
        if r.object_lock_days.is_none() {
            ctx.add(
                format!("{section}.object_lock_mode"),
                "needs object_lock_days (how long each object is retained)",
            );
        }
        if !matches!(m.as_str(), "governance" | "compliance") {
            ctx.add(
                format!("{section}.object_lock_mode"),
                format!("'{m}' is not a lock mode; use \"governance\" or \"compliance\""),
            );
        }
    }
    let Some(days) = r.object_lock_days else {
        return;
    };
    if !(1..=36500).contains(&days) {
        ctx.add(
            format!("{section}.object_lock_days"),
            "must be between 1 and 36500",
        );
    }
    if matches!(
        crate::repo::url::RepoUrl::parse(&r.url),
        Ok(crate::repo::url::RepoUrl::File(_))
    ) {
        // Accepting it would let a user believe backups are immutable.
        ctx.add(
            format!("{section}.object_lock_days"),
            "Object Lock is an S3 feature: a file repository cannot make objects immutable; use an s3:// repository whose bucket has Object Lock enabled, or remove the key",
        );
    }
}

/// How far back retention reaches, in days, and the rule that reaches
/// furthest; None when only `keep_last` (a count, not a time) is set.
pub fn retention_reach(r: &Retention) -> Option<(f64, String)> {
    let mut rules: Vec<(f64, String)> = Vec::new();
    let mut add = |n: Option<u32>, days: f64, key: &str| {
        if let Some(n) = n {
            rules.push((n as f64 * days, format!("{key} = {n}")));
        }
    };
    add(r.keep_hourly, 1.0 / 24.0, "keep_hourly");
    add(r.keep_daily, 1.0, "keep_daily");
    add(r.keep_weekly, 7.0, "keep_weekly");
    // The shortest month and year: the least retention can promise.
    add(r.keep_monthly, 28.0, "keep_monthly");
    add(r.keep_yearly, 365.0, "keep_yearly");
    if let Some(w) = r
        .keep_within
        .as_deref()
        .and_then(|w| parse_duration(w).ok())
    {
        rules.push((
            w.as_secs_f64() / 86400.0,
            format!(
                "keep_within = \"{}\"",
                r.keep_within.as_deref().unwrap_or_default()
            ),
        ));
    }
    rules.into_iter().max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Retention shorter than the lock deletes nothing it means to: every
/// backup it lets go is still locked (AWS Backup refuses such a plan too).
fn validate_retention_vs_lock(
    ctx: &mut Ctx<'_>,
    (retention_key, r): (&str, &Retention),
    (section, repo): (&str, &Repository),
) {
    let Some(days) = repo.object_lock_days else {
        return;
    };
    if let Some((reach, rule)) = retention_reach(r) {
        if reach < days as f64 {
            ctx.add(
                retention_key,
                format!(
                    "retention keeps backups for at most {} days ({rule}), shorter than {section}.object_lock_days = {days}: every backup it would delete is still locked; keep at least {days} days (e.g. keep_within = \"{days}d\"{}) or lower object_lock_days",
                    (reach * 10.0).round() / 10.0,
                    if retention_key == "retention" && section != "repository" {
                        format!(", or give {section} its own retention")
                    } else {
                        String::new()
                    }
                ),
            );
        }
    }
}

fn validate_recipients(ctx: &mut Ctx<'_>, recipients: &[String]) {
    if recipients.is_empty() {
        ctx.add(
            "encryption.recipients",
            "needs at least one age public key (age1...)",
        );
    }
    for (i, r) in recipients.iter().enumerate() {
        let key = format!("encryption.recipients[{i}]");
        if r.trim().to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            // Never echo it: it is a private key.
            ctx.add(key, "this is a PRIVATE key; put only public keys (age1...) in a policy, keep the identity file off this host and rotate the key");
        } else if r.parse::<age::x25519::Recipient>().is_err() {
            ctx.add(
                key,
                format!("'{r}' is not an age X25519 public key (age1...)"),
            );
        }
    }
}

fn validate_drill(ctx: &mut Ctx<'_>, d: &Drill) {
    if let Some(s) = &d.schedule {
        if let Err(e) = crate::time::schedule::Schedule::parse(s) {
            ctx.add("drill.schedule", e);
        }
    }
    if let Some(v) = &d.max_rto {
        check_duration(ctx, "drill.max_rto", v);
    }
    if let Some(v) = &d.max_rpo {
        check_duration(ctx, "drill.max_rpo", v);
    }
    let mut names = BTreeMap::new();
    for (i, c) in d.checks.iter().enumerate() {
        let key = format!("drill.checks[{i}]");
        if c.name.trim().is_empty() {
            ctx.add(format!("{key}.name"), "must not be empty");
        }
        if names.insert(c.name.clone(), i).is_some() {
            ctx.add(
                format!("{key}.name"),
                format!("duplicate check name '{}'", c.name),
            );
        }
        if c.sql.trim().is_empty() {
            ctx.add(format!("{key}.sql"), "must not be empty");
        }
        if c.expect.is_none() && c.expect_min.is_none() && c.expect_max.is_none() {
            ctx.add(
                key.clone(),
                "needs expect = \"...\" or expect_min / expect_max",
            );
        }
        if c.expect.is_some() && (c.expect_min.is_some() || c.expect_max.is_some()) {
            ctx.add(
                key.clone(),
                "use either expect or expect_min/expect_max, not both",
            );
        }
        if let (Some(lo), Some(hi)) = (c.expect_min, c.expect_max) {
            if lo > hi {
                ctx.add(
                    key,
                    format!("expect_min {lo} is greater than expect_max {hi}"),
                );
            }
        }
    }
}

/// Load every `*.toml` in a directory. Returns policies and all problems.
pub fn load_dir(dir: &Path) -> std::io::Result<(Vec<Policy>, Vec<Problem>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut policies = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&f, &text) {
                Ok(p) => policies.push(p),
                Err(mut ps) => problems.append(&mut ps),
            },
            Err(e) => problems.push(Problem {
                file: f.clone(),
                key: String::new(),
                reason: read_problem(&e),
            }),
        }
    }
    Ok((policies, problems))
}

/// Why a policy file that exists cannot be read, in words.
pub fn read_problem(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::InvalidData {
        "cannot read: it is not UTF-8 text (a policy is a TOML file, which must be UTF-8)".into()
    } else {
        format!("cannot read: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[source]
kind = "postgres"
url = "postgres://backup@db1:5432/orders"
password_env = "ORDERS_PGPASSWORD"
[backup]
method = "dump"
schedule = "0 2 * * *"
timezone = "Europe/Berlin"
[retention]
keep_last = 3
keep_daily = 7
keep_within = "2d"
[repository]
url = "file:///var/lib/drctl/repo"
[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
[compression]
level = 3
[drill]
max_rto = "30m"
[[drill.checks]]
name = "orders not empty"
sql = "select count(*) > 0 from orders"
expect = "t"
"#;

    fn p(text: &str) -> Result<Policy, Vec<Problem>> {
        parse(Path::new("policies/orders.toml"), text)
    }

    #[test]
    fn good_policy_parses() {
        let pol = p(GOOD).unwrap();
        assert_eq!(pol.name, "orders");
        assert_eq!(pol.backup.method, Method::Dump);
        assert_eq!(pol.retention.keep_daily, Some(7));
        assert_eq!(pol.compression_level(), 3);
        assert_eq!(pol.drill.unwrap().checks.len(), 1);
    }

    #[test]
    fn incremental_keys_are_physical_and_act_together() {
        let keys =
            |errs: Vec<Problem>| -> Vec<String> { errs.into_iter().map(|e| e.key).collect() };
        let on_dump = GOOD.replace("method = \"dump\"", "method = \"dump\"\nincremental = true");
        assert_eq!(keys(p(&on_dump).unwrap_err()), ["backup.incremental"]);
        let alone = GOOD.replace(
            "method = \"dump\"",
            "method = \"physical\"\nfull_every = \"7d\"\nmax_chain = 3",
        );
        assert_eq!(
            keys(p(&alone).unwrap_err()),
            ["backup.full_every", "backup.max_chain"]
        );
        let bad = GOOD.replace(
            "method = \"dump\"",
            "method = \"physical\"\nincremental = true\nfull_every = \"0s\"\nmax_chain = 0",
        );
        assert_eq!(
            keys(p(&bad).unwrap_err()),
            ["backup.full_every", "backup.max_chain"]
        );
        let good = GOOD.replace(
            "method = \"dump\"",
            "method = \"physical\"\nincremental = true\nfull_every = \"3d\"\nmax_chain = 2",
        );
        let pol = p(&good).unwrap();
        assert_eq!(pol.full_every(), std::time::Duration::from_secs(3 * 86400));
        assert_eq!(pol.max_chain(), 2);
    }

    #[test]
    fn typo_in_retention_is_an_error_naming_file_and_key() {
        let text = GOOD.replace("keep_daily", "keep_dayly");
        let errs = p(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "retention.keep_dayly");
        assert!(errs[0].reason.contains("unknown key"), "{}", errs[0]);
        assert!(errs[0]
            .to_string()
            .starts_with("policies/orders.toml: retention.keep_dayly: "));
    }

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(parse_rate("50MiB/s"), Ok(50 << 20));
        assert_eq!(parse_rate("800KB/s"), Ok(800_000));
        assert_eq!(parse_rate("1.5GiB/s"), Ok(3 << 29));
        assert_eq!(parse_rate("4096B/s"), Ok(4096));
        for bad in ["50MiB", "fast/s", "50 parsecs/s", "10B/s", "/s", "-1MB/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let errs = p(&GOOD.replacen("url = \"file", "max_rate = \"50MiBps\"\nurl = \"file", 1))
            .unwrap_err();
        assert_eq!(errs[0].key, "repository.max_rate", "{errs:?}");
    }

    #[test]
    fn a_typo_gets_a_did_you_mean_and_one_error_only() {
        let errs = p(&GOOD.replace("keep_last", "keep_lsat")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].reason.contains("did you mean `keep_last`?"),
            "{}",
            errs[0]
        );
        // A bad key in [repository] is that one error, not also "missing
        // section".
        let errs = p(&GOOD.replacen("url = \"file", "urll = \"file", 1)).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "repository.urll");
        assert!(
            errs[0].reason.contains("did you mean `url`?"),
            "{}",
            errs[0]
        );
        // Nothing near: no guess.
        let errs = p(&GOOD.replace("keep_last", "frobnicate")).unwrap_err();
        assert!(!errs[0].reason.contains("did you mean"), "{}", errs[0]);
        let errs = p(&format!("{GOOD}\n[retenton]\nkeep_last = 1\n")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.reason.contains("did you mean [retention]?")),
            "{errs:?}"
        );
        assert_eq!(
            closest("keep_dayly", "`keep_last`, `keep_daily`"),
            Some("keep_daily")
        );
        assert_eq!(edit_distance("keep_lsat", "keep_last"), 1);
    }

    #[test]
    fn every_problem_is_reported() {
        let text = GOOD
            .replace("keep_daily", "keep_dayly")
            .replace("schedule = \"0 2 * * *\"", "schedule = \"bogus\"")
            .replace("level = 3", "level = 99")
            .replace("age1ql3z", "age1xxxx");
        let errs = p(&text).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"retention.keep_dayly"), "{keys:?}");
        assert!(keys.contains(&"backup.schedule"), "{keys:?}");
        assert!(keys.contains(&"compression.level"), "{keys:?}");
        assert!(keys.contains(&"encryption.recipients[0]"), "{keys:?}");
    }

    #[test]
    fn lease_ttl_acts_on_s3_and_is_refused_where_it_cannot() {
        let with = |url: &str, ttl: &str| {
            GOOD.replace(
                "url = \"file:///var/lib/drctl/repo\"",
                &format!("url = \"{url}\"\nlease_ttl = \"{ttl}\""),
            )
        };
        let file = p(&with("file:///var/lib/drctl/repo", "1m")).unwrap_err();
        assert_eq!(file[0].key, "repository.lease_ttl");
        assert!(file[0].reason.contains("file lock"), "{}", file[0]);
        let short = p(&with("s3://bucket/pg", "1s")).unwrap_err();
        assert!(short[0].reason.contains("at least"), "{}", short[0]);
        assert!(p(&with("s3://bucket/pg", "soon")).is_err());
        let ok = p(&with("s3://bucket/pg", "90s")).unwrap();
        assert_eq!(
            ok.repository.unwrap().lease_ttl(),
            std::time::Duration::from_secs(90)
        );
        let default = p(&GOOD.replace("file:///var/lib/drctl/repo", "s3://bucket/pg")).unwrap();
        assert_eq!(default.repository.unwrap().lease_ttl(), DEFAULT_LEASE_TTL);
    }

    #[test]
    fn object_lock_needs_s3_a_mode_and_retention_as_long() {
        let file = GOOD.replace(
            "url = \"file:///var/lib/drctl/repo\"",
            "url = \"file:///var/lib/drctl/repo\"\nobject_lock_days = 35",
        );
        let errs = p(&file).unwrap_err();
        assert_eq!(errs[0].key, "repository.object_lock_days");
        assert!(errs[0].reason.contains("S3 feature"), "{}", errs[0]);

        let s3 = |lock: &str, retention: &str| {
            GOOD.replace(
                "url = \"file:///var/lib/drctl/repo\"",
                &format!("url = \"s3://bucket/pg\"\n{lock}"),
            )
            .replace("[retention]", &format!("[retention]\n{retention}"))
        };
        let bad_mode = p(&s3(
            "object_lock_days = 35\nobject_lock_mode = \"strict\"",
            "",
        ))
        .unwrap_err();
        assert_eq!(bad_mode[0].key, "repository.object_lock_mode");
        let no_days = p(&s3("object_lock_mode = \"compliance\"", "")).unwrap_err();
        assert!(
            no_days[0].reason.contains("needs object_lock_days"),
            "{}",
            no_days[0]
        );

        // GOOD keeps 7 daily: shorter than 35 days of lock, both named.
        let short = p(&s3("object_lock_days = 35", "")).unwrap_err();
        assert_eq!(short[0].key, "retention");
        assert!(short[0].reason.contains("35"), "{}", short[0]);
        assert!(short[0].reason.contains("keep_daily = 7"), "{}", short[0]);

        let ok = p(&s3(
            "object_lock_days = 35\nobject_lock_mode = \"compliance\"",
            "keep_monthly = 2",
        ))
        .unwrap();
        let r = ok.repository.unwrap();
        assert_eq!(r.object_lock_days, Some(35));
        assert_eq!(r.object_lock_mode.as_deref(), Some("compliance"));
    }

    #[test]
    fn copies_are_parsed_and_named() {
        let text = format!(
            "{GOOD}\n[[copy]]\nname = \"offsite\"\nurl = \"s3://dr/pg\"\nregion = \"us-west-2\"\nmax_lag = \"5m\"\nretention = {{ keep_daily = 30 }}\n"
        );
        let policy = p(&text).unwrap();
        assert_eq!(policy.copies.len(), 1);
        assert_eq!(
            policy.pinned("offsite").unwrap().repository.unwrap().url,
            "s3://dr/pg"
        );
        assert!(policy.pinned("nowhere").is_err());
        let mut ctx = Ctx {
            file: Path::new("policies/orders.toml"),
            problems: Vec::new(),
        };
        let table: toml::Table = text.parse().unwrap();
        let c = copies(&mut ctx, &table);
        assert!(ctx.problems.is_empty(), "{:?}", ctx.problems);
        assert_eq!(c[0].name, "offsite");
        assert_eq!(c[0].repository.region.as_deref(), Some("us-west-2"));
        assert_eq!(c[0].max_lag(), std::time::Duration::from_secs(300));
        assert_eq!(c[0].retention.as_ref().unwrap().keep_daily, Some(30));

        let bad = format!(
            "{GOOD}\n[[copy]]\nname = \"primary\"\nurl = \"s3://dr/pg\"\n[[copy]]\nname = \"b\"\nurl = \"s3://dr/pg\"\nbogus = 1\n"
        );
        let errs = p(&bad).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"copy[0].name"), "{keys:?}");
        assert!(keys.contains(&"copy[1].bogus"), "{keys:?}");
    }

    #[test]
    fn password_in_url_is_refused() {
        let text = GOOD.replace("backup@db1", "backup:hunter2@db1");
        let errs = p(&text).unwrap_err();
        assert_eq!(errs[0].key, "source.url");
        assert!(
            !errs[0].reason.contains("hunter2"),
            "secret echoed: {}",
            errs[0]
        );
    }

    #[test]
    fn private_key_as_recipient_is_refused_without_echo() {
        let secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ";
        let text = GOOD.replace(
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
            secret,
        );
        let errs = p(&text).unwrap_err();
        assert!(errs[0].reason.contains("PRIVATE"));
        assert!(!errs[0].to_string().contains(secret));
    }

    #[test]
    fn missing_sections_and_wrong_types() {
        let errs = p("[source]\nkind = \"postgres\"\nurl = \"postgres://a@b/c\"\n").unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"backup"), "{keys:?}");
        assert!(keys.contains(&"repository"), "{keys:?}");
        let errs = p(&GOOD.replace("keep_last = 3", "keep_last = \"three\"")).unwrap_err();
        assert_eq!(errs[0].key, "retention.keep_last");
        let errs = p("this is = not toml [").unwrap_err();
        assert!(errs[0].reason.contains("not valid TOML"));
        let errs = p(&GOOD.replace("[compression]", "[compresion]")).unwrap_err();
        assert_eq!(errs[0].key, "compresion");
    }

    #[test]
    fn method_must_fit_source_kind() {
        let errs = p(&GOOD.replace("method = \"dump\"", "method = \"rds-snapshot\"")).unwrap_err();
        assert_eq!(errs[0].key, "backup.method");
    }

    #[test]
    fn rds_only_keys_are_refused_on_a_postgres_source() {
        let text = GOOD
            .replace(
                "password_env = \"ORDERS_PGPASSWORD\"",
                "password_env = \"ORDERS_PGPASSWORD\"\nvpc_security_group_ids = [\"sg-1\"]\ndb_subnet_group = \"private\"",
            )
            .replace("max_rto = \"30m\"", "max_rto = \"30m\"\ninstance_class = \"db.t3.micro\"");
        let errs = p(&text).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "source.db_subnet_group",
                "source.vpc_security_group_ids",
                "drill.instance_class"
            ]
        );
        let rds = "[source]\nkind = \"rds\"\ninstance = \"db\"\nurl = \"postgres://checker@x/orders\"\nvpc_security_group_ids = [\"sg-1\"]\n[backup]\nmethod = \"rds-snapshot\"\n[drill]\ninstance_class = \"db.t3.micro\"\n";
        let pol = p(rds).unwrap();
        assert_eq!(pol.source.vpc_security_group_ids, ["sg-1"]);
        let errs = p(&rds.replace("checker@x", "checker:pw@x")).unwrap_err();
        assert_eq!(errs[0].key, "source.url");
    }

    #[test]
    fn names() {
        assert!(valid_name("orders"));
        assert!(valid_name("orders-eu_1"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
    }
}
