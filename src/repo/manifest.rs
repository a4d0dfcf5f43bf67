//! The backup manifest: plain JSON, written last, its presence = committed.
//!
//! Readable without any key, so `catalog rebuild` and `verify` need none.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::Method;

/// 2: sealed (see `seal`); 1 manifests are read and reported unsealed.
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST_NAME: &str = "manifest.json";
/// PostgreSQL's default WAL segment size (manifests before segment_size
/// was recorded were all taken with it).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub policy: String,
    pub method: Method,
    /// Physical backups: a full, or an incremental on `parent`. Fulls leave
    /// it out, so manifests from before incrementals keep their seal.
    #[serde(default, skip_serializing_if = "Kind::is_full")]
    pub kind: Kind,
    /// An incremental's parent: the backup (full or incremental) it holds
    /// the changes since. Restoring it needs the whole chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// For dumps: the instant of the dump's snapshot. Every transaction
    /// committed before it is in the backup; none committed after it is.
    pub consistent_at: Timestamp,
    pub source: SourceInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalInfo>,
    pub objects: Vec<ObjectEntry>,
    /// Physical backups of clusters with tablespaces: where each one was;
    /// its archive is the object named `tablespace-<oid>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// Physical backups: where PostgreSQL's own backup manifest is, which
    /// `pg_verifybackup` checks a restored directory against. None for
    /// dumps and for physical backups taken before drctl asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_manifest: Option<ServerManifest>,
    pub compression: CompressionInfo,
    pub encryption: EncryptionInfo,
    /// How `tables[].rows` was measured: "exact", "estimate" or "off".
    pub row_counts: String,
    pub tables: Vec<TableCount>,
    pub drctl_version: String,
}

/// Whole, or the changes since a parent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Full,
    Incremental,
}

impl Kind {
    pub fn is_full(&self) -> bool {
        *self == Kind::Full
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

/// The object holding the server's manifest when it is stored on its own.
pub const SERVER_MANIFEST_OBJECT: &str = "backup_manifest";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServerManifest {
    /// Its own object, named `backup_manifest` (drctl's replication client).
    Object,
    /// A `backup_manifest` file inside the base archive (pg_basebackup).
    InBase,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SourceInfo {
    pub database: String,
    pub host: String,
    pub server_version: String,
    pub server_version_num: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_dump_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WalInfo {
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_segment: String,
    pub stop_segment: String,
    #[serde(default = "default_segment_size")]
    pub segment_size: u64,
}

fn default_segment_size() -> u64 {
    DEFAULT_SEGMENT_SIZE
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectEntry {
    /// Logical name ("data").
    pub name: String,
    /// Key relative to the repository root.
    pub key: String,
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    /// The directory on the source server.
    pub location: String,
}

impl Tablespace {
    pub fn object_name(&self) -> String {
        format!("tablespace-{}", self.oid)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompressionInfo {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncryptionInfo {
    pub algorithm: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

impl Manifest {
    /// The sealed JSON written to the repository.
    pub fn to_json(&self) -> String {
        crate::repo::seal::to_json(self)
    }

    /// Parse a manifest; a broken seal is an error (never a backup).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        Self::from_json_sealed(bytes).map(|(m, _)| m)
    }

    /// Parse a manifest and say whether it was sealed.
    pub fn from_json_sealed(bytes: &[u8]) -> Result<(Manifest, crate::repo::seal::Seal), String> {
        let (m, seal): (Manifest, _) =
            crate::repo::seal::from_json(bytes).map_err(|e| format!("manifest is {e}"))?;
        if m.format > FORMAT_VERSION {
            return Err(format!(
                "manifest format {} is newer than this drctl understands ({FORMAT_VERSION}); upgrade drctl",
                m.format
            ));
        }
        Ok((m, seal))
    }

    pub fn source_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.plain_bytes).sum()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.stored_bytes).sum()
    }
}

/// Repository key prefix of one backup.
pub fn backup_prefix(policy: &str, id: &str) -> String {
    format!("{policy}/backups/{id}/")
}

pub fn manifest_key(policy: &str, id: &str) -> String {
    format!("{}{MANIFEST_NAME}", backup_prefix(policy, id))
}

/// Backup ids sort by time: `20261122T101500Z-3f9a`.
pub fn new_backup_id(at: Timestamp) -> String {
    let suffix: u16 = rand::random();
    format!("{}-{suffix:04x}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// Ids appear in repository keys and SQL: only the shape we generate.
pub fn valid_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 21
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_validate() {
        let a = new_backup_id("2026-11-22T10:15:00Z".parse().unwrap());
        let b = new_backup_id("2026-11-22T10:15:01Z".parse().unwrap());
        assert!(a < b);
        assert!(a.starts_with("20261122T101500Z-"));
        assert!(valid_backup_id(&a), "{a}");
        assert!(!valid_backup_id("../../etc/passwd"));
        assert!(!valid_backup_id("20261122T101500Z-3f9"));
    }

    #[test]
    fn manifest_round_trips() {
        let ts: Timestamp = "2026-11-22T10:15:00Z".parse().unwrap();
        let m = Manifest {
            format: FORMAT_VERSION,
            id: "20261122T101500Z-3f9a".into(),
            policy: "orders".into(),
            method: Method::Dump,
            kind: Kind::Full,
            parent: None,
            started_at: ts,
            finished_at: ts,
            consistent_at: ts,
            source: SourceInfo::default(),
            wal: None,
            objects: vec![ObjectEntry {
                name: "data".into(),
                key: "orders/backups/x/data.zst.age".into(),
                plain_bytes: 10,
                plain_sha256: "ab".into(),
                stored_bytes: 20,
                stored_sha256: "cd".into(),
            }],
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: EncryptionInfo {
                algorithm: "age-x25519".into(),
                recipients: vec![],
            },
            row_counts: "exact".into(),
            tables: vec![],
            tablespaces: vec![Tablespace {
                oid: 16390,
                location: "/srv/ts1".into(),
            }],
            server_manifest: Some(ServerManifest::Object),
            drctl_version: "0.1.0".into(),
        };
        let back = Manifest::from_json(m.to_json().as_bytes()).unwrap();
        assert_eq!(back, m);
        assert!(m
            .to_json()
            .contains("\"consistent_at\": \"2026-11-22T10:15:00Z\""));
        assert!(Manifest::from_json(b"{}").is_err());
    }
}
