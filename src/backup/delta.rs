//! Block-level incrementals for PostgreSQL 15 and 16, which have no
//! incremental backup of their own: the base backup's tar stream is read
//! as it comes, every 8 KiB page of every relation file is hashed, and a
//! file the parent had is stored as only the pages whose hash differs from
//! the parent's block map (kept in the catalog, never read back from the
//! encrypted repository). Other files are stored whole.
//!
//! A relation file `P` becomes entries `P.drctl-delta.0`, `.1`, … (at most
//! `CHUNK_PAGES` pages each, so memory stays bounded): `DRCTLDL1`, the
//! file's new length (u64 LE), the page count (u32 LE), the page numbers
//! (u32 LE each), then the pages. The last page of a file may be short;
//! its length follows from the file's. A file with no changed page still
//! gets one entry with no pages (its length may have changed).
//!
//! Hashes are the first 8 bytes of SHA-256. A collision would keep a
//! parent's page, and the restore would then fail: pg_verifybackup checks
//! every restored file against the server's SHA-256 of it.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub const PAGE: usize = 8192;
/// Pages per delta entry (8 MiB).
pub const CHUNK_PAGES: usize = 1024;
const MAGIC: &[u8; 8] = b"DRCTLDL1";
const SUFFIX: &str = ".drctl-delta.";

/// A relation file (paged): `base/<db>/<relfilenode>[_fork][.segment]`,
/// `global/<relfilenode>[_fork][.segment]`, or in a tablespace
/// `pg_tblspc/<oid>/PG_<major>_<catversion>/<db>/<relfilenode>[_fork][.segment]`.
pub fn is_paged(path: &str) -> bool {
    let in_tablespace = path
        .strip_prefix("pg_tblspc/")
        .and_then(|r| r.split_once('/'))
        .filter(|(oid, _)| digits(oid))
        .and_then(|(_, r)| r.split_once('/'))
        .filter(|(version, _)| version.starts_with("PG_"))
        .and_then(|(_, r)| r.split_once('/'));
    let name = if let Some((db, name)) = in_tablespace {
        if !digits(db) {
            return false;
        }
        name
    } else if path.starts_with("pg_tblspc/") {
        return false;
    } else if let Some(rest) = path.strip_prefix("base/") {
        match rest.split_once('/') {
            Some((db, name)) if digits(db) => name,
            _ => return false,
        }
    } else if let Some(name) = path.strip_prefix("global/") {
        name
    } else {
        return false;
    };
    let (stem, seg) = match name.split_once('.') {
        Some((s, seg)) => (s, Some(seg)),
        None => (name, None),
    };
    if seg.is_some_and(|s| !digits(s)) {
        return false;
    }
    let (rel, fork) = match stem.split_once('_') {
        Some((r, f)) => (r, Some(f)),
        None => (stem, None),
    };
    digits(rel) && fork.is_none_or(|f| matches!(f, "fsm" | "vm" | "init"))
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

pub fn page_hash(page: &[u8]) -> u64 {
    let d = Sha256::digest(page);
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The relation file a delta entry patches, and the entry's number.
pub fn delta_target(path: &str) -> Option<(&str, u32)> {
    let (file, k) = path.rsplit_once(SUFFIX)?;
    Some((file, k.parse().ok()?))
}

/// What a transform did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub paged_files: u64,
    pub pages: u64,
    /// Pages stored (changed, or in files the parent did not have).
    pub stored_pages: u64,
}

/// Read fully, as far as the stream goes.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match r.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Hashes pages of what goes through it.
struct Hashing<'a> {
    inner: &'a mut dyn Read,
    page: Vec<u8>,
    hashes: Vec<u64>,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = (PAGE - self.page.len()).min(rest.len());
            self.page.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.page.len() == PAGE {
                self.hashes.push(page_hash(&self.page));
                self.page.clear();
            }
        }
        if n == 0 && !self.page.is_empty() {
            self.hashes.push(page_hash(&self.page));
            self.page.clear();
        }
        Ok(n)
    }
}

fn chunk_header(path: &str, k: u32, len: usize, like: &tar::Header) -> (tar::Header, String) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(len as u64);
    h.set_mtime(like.mtime().unwrap_or(0));
    (h, format!("{path}{SUFFIX}{k}"))
}

/// Copy the tar archive `src` to `dst`. Relation files go through whole
/// when `parent` has no block map for them, else as delta entries; each
/// one's block map goes to `record`. `root` is where the archive sits in
/// the data directory ("" for the data directory, `pg_tblspc/<oid>/` for
/// a tablespace's): block maps are keyed by the path under the data
/// directory, as the server's manifest names files.
pub fn transform(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    root: &str,
    parent: &mut dyn FnMut(&str) -> io::Result<Option<Vec<u64>>>,
    record: &mut dyn FnMut(&str, &[u64]) -> io::Result<()>,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let mut ar = tar::Archive::new(src);
    let mut out = tar::Builder::new(dst);
    out.mode(tar::HeaderMode::Complete);
    let mut page = vec![0u8; PAGE];
    for e in ar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let key = format!("{root}{path}");
        let mut header = e.header().clone();
        let kind = header.entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e.link_name()?.map(|l| l.into_owned()).unwrap_or_default();
            out.append_link(&mut header, &path, target)?;
            continue;
        }
        if !(kind.is_file() && is_paged(&key)) {
            out.append_data(&mut header, &path, &mut e)?;
            continue;
        }
        stats.paged_files += 1;
        let size = header.size()? as usize;
        let Some(old) = parent(&key)? else {
            let mut h = Hashing {
                inner: &mut e,
                page: Vec::with_capacity(PAGE),
                hashes: Vec::with_capacity(size / PAGE + 1),
            };
            out.append_data(&mut header, &path, &mut h)?;
            if !h.page.is_empty() {
                h.hashes.push(page_hash(&h.page));
            }
            stats.pages += h.hashes.len() as u64;
            stats.stored_pages += h.hashes.len() as u64;
            record(&key, &h.hashes)?;
            continue;
        };
        let mut hashes = Vec::with_capacity(size / PAGE + 1);
        let (mut numbers, mut pages): (Vec<u32>, Vec<u8>) = (Vec::new(), Vec::new());
        let mut k = 0u32;
        let mut emit =
            |numbers: &mut Vec<u32>, pages: &mut Vec<u8>, k: &mut u32| -> io::Result<()> {
                let mut body = Vec::with_capacity(20 + numbers.len() * 4 + pages.len());
                body.extend_from_slice(MAGIC);
                body.extend_from_slice(&(size as u64).to_le_bytes());
                body.extend_from_slice(&(numbers.len() as u32).to_le_bytes());
                for n in numbers.iter() {
                    body.extend_from_slice(&n.to_le_bytes());
                }
                body.extend_from_slice(pages);
                let (mut h, name) = chunk_header(&path, *k, body.len(), &header);
                out.append_data(&mut h, &name, &body[..])?;
                numbers.clear();
                pages.clear();
                *k += 1;
                Ok(())
            };
        let mut i = 0u32;
        loop {
            let n = read_up_to(&mut e, &mut page)?;
            if n == 0 {
                break;
            }
            let h = page_hash(&page[..n]);
            hashes.push(h);
            if old.get(i as usize) != Some(&h) {
                numbers.push(i);
                pages.extend_from_slice(&page[..n]);
                stats.stored_pages += 1;
                if numbers.len() == CHUNK_PAGES {
                    emit(&mut numbers, &mut pages, &mut k)?;
                }
            }
            i += 1;
            if n < PAGE {
                break;
            }
        }
        if k == 0 || !numbers.is_empty() {
            emit(&mut numbers, &mut pages, &mut k)?;
        }
        stats.pages += hashes.len() as u64;
        record(&key, &hashes)?;
    }
    out.finish()?;
    Ok(stats)
}

/// Apply one delta entry's body to the file it patches.
pub fn apply(body: &mut dyn Read, file: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let bad = |what: &str| io::Error::other(format!("delta entry for {}: {what}", file.display()));
    let mut head = [0u8; 20];
    if read_up_to(body, &mut head)? != 20 || &head[..8] != MAGIC {
        return Err(bad("not a drctl block delta"));
    }
    let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
    if count > CHUNK_PAGES {
        return Err(bad("too many pages"));
    }
    let mut nums = vec![0u8; count * 4];
    if read_up_to(body, &mut nums)? != nums.len() {
        return Err(bad("cut short"));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: the file a delta patches is not in the restored parent ({e})",
                    file.display()
                ),
            )
        })?;
    f.set_len(len)?;
    let mut page = vec![0u8; PAGE];
    for n in nums.chunks(4) {
        let no = u32::from_le_bytes(n.try_into().expect("4 bytes")) as u64;
        let at = no * PAGE as u64;
        if at >= len {
            return Err(bad("a page past the file's end"));
        }
        let plen = (len - at).min(PAGE as u64) as usize;
        if read_up_to(body, &mut page[..plen])? != plen {
            return Err(bad("cut short"));
        }
        f.write_all_at(&page[..plen], at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn relation_files_are_recognised() {
        for p in [
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16384_vm.2",
            "global/1262",
            "pg_tblspc/16390/PG_15_202209061/5/16391",
            "pg_tblspc/16390/PG_16_202307071/5/16391_vm.1",
        ] {
            assert!(is_paged(p), "{p}");
        }
        for p in [
            "base/5/PG_VERSION",
            "base/5/pg_filenode.map",
            "global/pg_control",
            "pg_wal/000000010000000000000001",
            "base/5/16384_foo",
            "base/x/16384",
            "backup_label",
            "pg_tblspc/16390/PG_15_202209061/5/PG_VERSION",
            "pg_tblspc/16390/5/16391",
            "pg_tblspc/x/PG_15_202209061/5/16391",
            "pg_tblspc/16390/PG_15_202209061/y/16391",
        ] {
            assert!(!is_paged(p), "{p}");
        }
        assert_eq!(
            delta_target("base/5/1.drctl-delta.3"),
            Some(("base/5/1", 3))
        );
        assert_eq!(delta_target("base/5/1"), None);
    }

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn pages(n: usize, seed: u8) -> Vec<u8> {
        (0..n * PAGE).map(|i| (i / PAGE) as u8 ^ seed).collect()
    }

    /// Transform `t` against `maps`, and return the output tar, the new
    /// maps and the stats.
    fn run(
        t: &[u8],
        maps: &HashMap<String, Vec<u64>>,
    ) -> (Vec<u8>, HashMap<String, Vec<u64>>, Stats) {
        let mut out = Vec::new();
        let mut rec = HashMap::new();
        let s = transform(
            &mut &t[..],
            &mut out,
            "",
            &mut |p| Ok(maps.get(p).cloned()),
            &mut |p, h| {
                rec.insert(p.to_string(), h.to_vec());
                Ok(())
            },
        )
        .unwrap();
        (out, rec, s)
    }

    /// Unpack a transformed tar over `dir` the way a restore does.
    fn overlay(t: &[u8], dir: &std::path::Path) {
        let mut a = tar::Archive::new(t);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            match delta_target(&p) {
                Some((file, _)) => apply(&mut e, &dir.join(file)).unwrap(),
                None => {
                    let _ = std::fs::remove_file(dir.join(&p));
                    e.unpack_in(dir).unwrap();
                }
            }
        }
    }

    #[test]
    fn only_changed_pages_are_stored_and_the_overlay_rebuilds_every_file() {
        let rel = pages(40, 1);
        let full = tar_of(&[
            ("base/5/100", rel.clone()),
            ("base/5/PG_VERSION", b"15\n".to_vec()),
        ]);
        let (full_out, maps, s) = run(&full, &HashMap::new());
        assert_eq!(s.stored_pages, 40);
        let dir = tempfile::tempdir().unwrap();
        tar::Archive::new(&full_out[..]).unpack(dir.path()).unwrap();

        // Pages 3 and 39 change, the file grows by a short page, a new file.
        let mut rel2 = rel.clone();
        rel2[3 * PAGE + 10] ^= 0xff;
        rel2[39 * PAGE] ^= 0x01;
        rel2.extend_from_slice(&[7u8; 100]);
        let new = pages(2, 9);
        let incr = tar_of(&[
            ("base/5/100", rel2.clone()),
            ("base/5/200", new.clone()),
            ("base/5/PG_VERSION", b"15\n".to_vec()),
        ]);
        let (out, maps2, s) = run(&incr, &maps);
        assert_eq!(s.pages, 41 + 2);
        assert_eq!(s.stored_pages, 3 + 2, "{s:?}");
        assert!(out.len() < 10 * PAGE, "{} bytes stored", out.len());
        overlay(&out, dir.path());
        assert_eq!(std::fs::read(dir.path().join("base/5/100")).unwrap(), rel2);
        assert_eq!(std::fs::read(dir.path().join("base/5/200")).unwrap(), new);

        // Then it shrinks, unchanged otherwise: one empty delta entry.
        let rel3 = rel2[..10 * PAGE].to_vec();
        let (out, _, s) = run(&tar_of(&[("base/5/100", rel3.clone())]), &maps2);
        assert_eq!(s.stored_pages, 0);
        overlay(&out, dir.path());
        assert_eq!(std::fs::read(dir.path().join("base/5/100")).unwrap(), rel3);
    }

    #[test]
    fn a_wholly_changed_file_is_cut_into_bounded_entries() {
        let n = CHUNK_PAGES + 5;
        let a = pages(n, 1);
        let b = pages(n, 2);
        let (_, maps, _) = run(&tar_of(&[("global/1262", a)]), &HashMap::new());
        let (out, _, s) = run(&tar_of(&[("global/1262", b.clone())]), &maps);
        assert_eq!(s.stored_pages, n as u64);
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["global/1262.drctl-delta.0", "global/1262.drctl-delta.1"]
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/1262"), pages(3, 5)).unwrap();
        overlay(&out, dir.path());
        assert_eq!(std::fs::read(dir.path().join("global/1262")).unwrap(), b);
    }

    #[test]
    fn a_delta_for_a_missing_file_or_a_bad_body_fails() {
        let dir = tempfile::tempdir().unwrap();
        let e = apply(&mut &b"DRCTLDL1"[..], &dir.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("not a drctl block delta"), "{e}");
        let mut body = MAGIC.to_vec();
        body.extend(8192u64.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        let e = apply(&mut &body[..], &dir.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("not in the restored parent"), "{e}");
    }
}
