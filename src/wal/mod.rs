//! WAL file names, repository keys and the archive's continuity. Pure code.
//!
//! PostgreSQL archives four kinds of file: segments
//! (`TTTTTTTTXXXXXXXXYYYYYYYY`), partial segments left at a promotion
//! (`….partial`), backup history files (`….XXXXXXXX.backup`) and timeline
//! history files (`TTTTTTTT.history`). Each is stored as
//! `<policy>/wal/<TLI>/<name>.zst.age` with a plain JSON sidecar
//! `<name>.json` written after it: the sidecar is the commit marker, like a
//! backup's manifest, so a segment whose push never finished is not part of
//! the archive.

pub mod archive;
pub mod fetch;
pub mod push;
pub mod scan;

use serde::{Deserialize, Serialize};

/// The default (and by far the most common) WAL segment size.
pub use crate::repo::manifest::DEFAULT_SEGMENT_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Segment,
    Partial,
    Backup,
    History,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalName {
    pub name: String,
    pub timeline: u32,
    pub kind: FileKind,
    /// (log, seg) for segments, partials and backup files.
    pub log_seg: Option<(u32, u32)>,
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

/// Parse an archived file name; anything else is refused (never guessed).
pub fn parse(name: &str) -> Result<WalName, String> {
    let bad = || {
        format!(
            "'{name}' is not a WAL file name (segment, .partial, .backup or .history); archive_command must pass %p"
        )
    };
    if let Some(tli) = name.strip_suffix(".history") {
        let timeline = hex8(tli).ok_or_else(bad)?;
        return Ok(WalName {
            name: name.to_string(),
            timeline,
            kind: FileKind::History,
            log_seg: None,
        });
    }
    if name.len() < 24 {
        return Err(bad());
    }
    let (seg, rest) = name.split_at(24);
    let timeline = hex8(&seg[..8]).ok_or_else(bad)?;
    let log = hex8(&seg[8..16]).ok_or_else(bad)?;
    let s = hex8(&seg[16..24]).ok_or_else(bad)?;
    let kind = match rest {
        "" => FileKind::Segment,
        ".partial" => FileKind::Partial,
        r if r.len() == 16
            && r.ends_with(".backup")
            && hex8(&r[1..9]).is_some()
            && r.starts_with('.') =>
        {
            FileKind::Backup
        }
        _ => return Err(bad()),
    };
    if timeline == 0 {
        return Err(bad());
    }
    Ok(WalName {
        name: name.to_string(),
        timeline,
        kind,
        log_seg: Some((log, s)),
    })
}

/// Segments per "log id" (4 GiB of WAL).
pub fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The segment number of (log, seg), as PostgreSQL's XLogSegNo.
pub fn segno(log: u32, seg: u32, segment_size: u64) -> u64 {
    log as u64 * segments_per_log(segment_size) + seg as u64
}

pub fn segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per = segments_per_log(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per, segno % per)
}

/// The segment holding LSN `lsn` ("16/B374D848").
pub fn lsn_to_segno(lsn: &str, segment_size: u64) -> Option<u64> {
    Some(lsn_value(lsn)? / segment_size)
}

/// "16/B374D848" as a number.
pub fn lsn_value(lsn: &str) -> Option<u64> {
    let (hi, lo) = lsn.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn dir_key(policy: &str) -> String {
    format!("{policy}/wal/")
}

pub fn object_key(policy: &str, w: &WalName) -> String {
    format!("{policy}/wal/{:08X}/{}.zst.age", w.timeline, w.name)
}

pub fn sidecar_key(policy: &str, w: &WalName) -> String {
    format!("{policy}/wal/{:08X}/{}.json", w.timeline, w.name)
}

/// The sidecar: what was archived, readable without a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub name: String,
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
    pub pushed_at: String,
    /// The file's mtime: a segment holds no commit later than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_write_at: Option<String>,
    /// Segments: the commit time of the last transaction committed in it
    /// (read from its records by wal-push); absent when it holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_commit_at: Option<String>,
    /// For `.history` files: the (parent timeline, switch LSN) entries,
    /// so the archive's timelines can be followed without a key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<(u32, String)>,
    /// For `.backup` files: where the base backup starts and stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupHistory>,
}

impl Sidecar {
    /// The sealed JSON written to the repository.
    pub fn to_json(&self) -> Vec<u8> {
        crate::repo::seal::to_json(self).into_bytes()
    }

    /// Parse a sidecar; a broken seal is an error, so a sidecar that fails
    /// it never counts as committed.
    pub fn from_json(bytes: &[u8]) -> Result<Sidecar, String> {
        crate::repo::seal::from_json(bytes)
            .map(|(s, _)| s)
            .map_err(|e| format!("WAL sidecar is {e}"))
    }

    /// The archived object this sidecar commits, with its sizes and sums.
    pub fn object_entry(&self, key: &str) -> crate::repo::manifest::ObjectEntry {
        crate::repo::manifest::ObjectEntry {
            name: self.name.clone(),
            key: key.to_string(),
            plain_bytes: self.plain_bytes,
            plain_sha256: self.plain_sha256.clone(),
            stored_bytes: self.stored_bytes,
            stored_sha256: self.stored_sha256.clone(),
        }
    }
}

/// The parts of a backup history file drctl needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHistory {
    pub label: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_timeline: u32,
    pub stop_timeline: u32,
}

/// Parse a `.backup` history file ("START WAL LOCATION: 0/2000028 (file …)").
pub fn parse_backup_history(text: &str) -> Option<BackupHistory> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let lsn = |key: &str| field(key).and_then(|v| v.split_whitespace().next().map(String::from));
    Some(BackupHistory {
        label: field("LABEL:")?,
        start_lsn: lsn("START WAL LOCATION:")?,
        stop_lsn: lsn("STOP WAL LOCATION:")?,
        start_timeline: field("START TIMELINE:")?.parse().ok()?,
        stop_timeline: field("STOP TIMELINE:")?.parse().ok()?,
    })
}

/// Parse a timeline history file: "parentTLI<TAB>switchLSN<TAB>reason" lines.
pub fn parse_history(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let tli = it.next()?.parse().ok()?;
            let lsn = it.next()?;
            lsn.contains('/').then(|| (tli, lsn.to_string()))
        })
        .collect()
}

/// The timelines recovery follows from `base_tli` to the newest timeline
/// that descends from it: (timeline, first segno on it).
pub fn timeline_path(
    base_tli: u32,
    histories: &std::collections::BTreeMap<u32, Vec<(u32, String)>>,
    segment_size: u64,
) -> Vec<(u32, u64)> {
    let descends = |tli: &u32| {
        histories
            .get(tli)
            .is_some_and(|h| h.iter().any(|(p, _)| *p == base_tli))
    };
    let Some((&target, hist)) = histories.iter().rev().find(|(t, _)| descends(t)) else {
        return vec![(base_tli, 0)];
    };
    let mut path = vec![(base_tli, 0)];
    let mut entries: Vec<&(u32, String)> = hist.iter().filter(|(p, _)| *p >= base_tli).collect();
    entries.sort_by_key(|(p, _)| *p);
    for (i, (_, lsn)) in entries.iter().enumerate() {
        let next = entries.get(i + 1).map(|(p, _)| *p).unwrap_or(target);
        path.push((next, lsn_to_segno(lsn, segment_size).unwrap_or(0)));
    }
    path
}

/// Which timeline a segment is read from on `path`.
pub fn timeline_for(path: &[(u32, u64)], segno: u64) -> u32 {
    path.iter()
        .rev()
        .find(|(_, from)| *from <= segno)
        .map(|(t, _)| *t)
        .unwrap_or(path[0].0)
}

/// Segments missing between `from` and `to` inclusive (at most `limit`).
pub fn missing(segnos: &[u64], from: u64, to: u64, limit: usize) -> Vec<u64> {
    let have: std::collections::BTreeSet<u64> = segnos.iter().copied().collect();
    (from..=to)
        .filter(|s| !have.contains(s))
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        let w = parse("000000010000000A000000FF").unwrap();
        assert_eq!(w.kind, FileKind::Segment);
        assert_eq!(w.timeline, 1);
        assert_eq!(w.log_seg, Some((0xA, 0xFF)));
        assert_eq!(
            parse("000000020000000A00000003.partial").unwrap().kind,
            FileKind::Partial
        );
        assert_eq!(
            parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            FileKind::Backup
        );
        let h = parse("00000003.history").unwrap();
        assert_eq!((h.kind, h.timeline), (FileKind::History, 3));
        for bad in [
            "",
            "pg_wal/000000010000000000000001",
            "00000001000000000000000",
            "000000010000000000000001.gz",
            "000000010000000a00000001",
            "000000000000000000000001",
            "xyz.history",
            "000000010000000000000002.0000028.backup",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let w = parse("000000020000000000000005").unwrap();
        assert_eq!(
            object_key("orders", &w),
            "orders/wal/00000002/000000020000000000000005.zst.age"
        );
        assert_eq!(
            sidecar_key("orders", &w),
            "orders/wal/00000002/000000020000000000000005.json"
        );
    }

    #[test]
    fn segment_arithmetic() {
        let ss = DEFAULT_SEGMENT_SIZE;
        assert_eq!(segno(1, 0, ss), 256);
        assert_eq!(segment_name(1, 256, ss), "000000010000000100000000");
        assert_eq!(segment_name(1, 255, ss), "0000000100000000000000FF");
        assert_eq!(lsn_to_segno("0/3000028", ss), Some(3));
        assert_eq!(lsn_to_segno("1/0", ss), Some(256));
        assert_eq!(lsn_to_segno("nonsense", ss), None);
    }

    #[test]
    fn timelines_are_followed_through_history() {
        let mut h = std::collections::BTreeMap::new();
        h.insert(
            2,
            parse_history("1\t0/5000060\tbefore 2026-11-22 10:00:00+00\n"),
        );
        h.insert(3, parse_history("1\t0/5000060\tx\n2\t0/9000000\ty\n"));
        let ss = DEFAULT_SEGMENT_SIZE;
        let p = timeline_path(1, &h, ss);
        assert_eq!(p, vec![(1, 0), (2, 5), (3, 9)]);
        assert_eq!(timeline_for(&p, 4), 1);
        assert_eq!(timeline_for(&p, 5), 2);
        assert_eq!(timeline_for(&p, 12), 3);
        // A base backup taken on timeline 2 only follows what descends from 2.
        assert_eq!(timeline_path(2, &h, ss), vec![(2, 0), (3, 9)]);
        assert_eq!(timeline_path(3, &h, ss), vec![(3, 0)]);
        assert_eq!(timeline_path(1, &Default::default(), ss), vec![(1, 0)]);
    }

    #[test]
    fn backup_history_files() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                    START TIME: 2026-11-23 00:14:13 UTC\nLABEL: drctl 20261123T001413Z-f226\n\
                    START TIMELINE: 1\nSTOP TIME: 2026-11-23 00:14:13 UTC\nSTOP TIMELINE: 1\n";
        let b = parse_backup_history(text).unwrap();
        assert_eq!(b.label, "drctl 20261123T001413Z-f226");
        assert_eq!(
            (b.start_lsn.as_str(), b.stop_lsn.as_str()),
            ("0/2000028", "0/2000100")
        );
        assert_eq!((b.start_timeline, b.stop_timeline), (1, 1));
        assert!(parse_backup_history("garbage").is_none());
    }

    #[test]
    fn missing_segments_are_named_up_to_the_limit() {
        assert_eq!(missing(&[3, 4, 6], 3, 7, 10), vec![5, 7]);
        assert_eq!(missing(&[3], 3, 9, 2), vec![4, 5]);
    }

    proptest! {
        #[test]
        fn names_round_trip(tli in 1u32..0xFFFF, n in 0u64..(1u64 << 40)) {
            let ss = DEFAULT_SEGMENT_SIZE;
            let name = segment_name(tli, n, ss);
            let w = parse(&name).unwrap();
            let (log, seg) = w.log_seg.unwrap();
            prop_assert_eq!(segno(log, seg, ss), n);
            prop_assert_eq!(w.timeline, tli);
        }
    }
}
