//! The last commit time in a WAL segment, read from its records while
//! wal-push has the plain segment at hand. Pure code.
//!
//! Why: a segment's mtime bounds its commits from above, but the window's
//! honest end for a `--to` target is the last commit the archive holds
//! (`last_commit_at`): between it and the end of the WAL nothing changed.
//!
//! Only what is needed of the format (PostgreSQL's `xlog_internal.h`,
//! `xlogrecord.h`, `xact.h`, stable since 9.5): pages with a short header
//! (a long one on the first page of a segment) whose `xlp_pageaddr` must be
//! the page's own address (a recycled segment's stale pages stop the
//! scan), records aligned to 8 bytes that may span pages, and for a
//! transaction commit (`RM_XACT_ID`, `XLOG_XACT_COMMIT` or
//! `XLOG_XACT_COMMIT_PREPARED`) the `xact_time` that opens its main data.
//! Anything unexpected ends the scan with what was found so far: the answer
//! is a lower bound of the segment's last commit, never a later time.

/// PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
const SHORT_HEADER: usize = 24;
const LONG_HEADER: usize = 40;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const RECORD_HEADER: usize = 24;
const RM_XACT_ID: u8 = 1;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The segment's record bytes with page headers left out: a logical
/// offset maps to a physical one. Headers are multiples of 8 bytes, so
/// 8-byte alignment is the same in both.
struct Pages<'a> {
    seg: &'a [u8],
    page: usize,
    /// Pages that belong to this segment's WAL (address and magic match).
    valid: usize,
}

impl Pages<'_> {
    fn header(&self, p: usize) -> usize {
        if p == 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        }
    }

    /// Logical bytes in the valid pages.
    fn len(&self) -> usize {
        if self.valid == 0 {
            return 0;
        }
        self.valid * (self.page - SHORT_HEADER) - (LONG_HEADER - SHORT_HEADER)
    }

    fn physical(&self, logical: usize) -> usize {
        let first = self.page - LONG_HEADER;
        if logical < first {
            return LONG_HEADER + logical;
        }
        let rest = logical - first;
        let per = self.page - SHORT_HEADER;
        let p = 1 + rest / per;
        p * self.page + self.header(p) + rest % per
    }

    /// `n` logical bytes from `at`, gathered across page boundaries
    /// (borrowed when they lie in one page, as nearly all do).
    fn bytes(&self, at: usize, n: usize) -> Option<std::borrow::Cow<'_, [u8]>> {
        if at.checked_add(n)? > self.len() {
            return None;
        }
        let phys = self.physical(at);
        if phys % self.page + n <= self.page {
            return self.seg.get(phys..phys + n).map(std::borrow::Cow::Borrowed);
        }
        let mut out = Vec::with_capacity(n);
        let mut pos = at;
        while out.len() < n {
            let phys = self.physical(pos);
            let page_end = (phys / self.page + 1) * self.page;
            let take = (n - out.len()).min(page_end - phys);
            out.extend_from_slice(self.seg.get(phys..phys + take)?);
            pos += take;
        }
        Some(std::borrow::Cow::Owned(out))
    }
}

/// The commit time (Unix microseconds) of the last transaction committed
/// in `seg`, the segment that starts at WAL address `seg_start`; None when
/// it holds no commit or is not a WAL segment.
pub fn last_commit_micros(seg: &[u8], seg_start: u64) -> Option<i64> {
    let info = u16_at(seg, 2)?;
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let magic = u16_at(seg, 0)?;
    let page = u32_at(seg, 36)? as usize;
    if !(1024..=65536).contains(&page) || !page.is_power_of_two() || !seg.len().is_multiple_of(page)
    {
        return None;
    }
    let mut valid = 0;
    while valid < seg.len() / page {
        let at = valid * page;
        if u16_at(seg, at)? != magic || u64_at(seg, at + 8)? != seg_start + at as u64 {
            break;
        }
        valid += 1;
    }
    let pages = Pages { seg, page, valid };
    // A record begun in the previous segment continues here: skip it.
    let mut pos = 0usize;
    if info & XLP_FIRST_IS_CONTRECORD != 0 {
        pos = u32_at(seg, 16)? as usize;
    }
    let mut last = None;
    loop {
        pos = pos.checked_add(7)? & !7;
        let Some(head) = pages.bytes(pos, RECORD_HEADER) else {
            break;
        };
        let total = u32_at(&head, 0)? as usize;
        if total < RECORD_HEADER {
            // Zeros: the end of the WAL written so far.
            break;
        }
        if pos + total > pages.len() {
            // Goes on in the next segment: its commit belongs there.
            break;
        }
        let (xl_info, rmid) = (head[16], head[17]);
        let op = xl_info & XLOG_XACT_OPMASK;
        if rmid == RM_XACT_ID && (op == XLOG_XACT_COMMIT || op == XLOG_XACT_COMMIT_PREPARED) {
            if let Some(t) = commit_time(&pages.bytes(pos + RECORD_HEADER, total - RECORD_HEADER)?)
            {
                last = Some(t);
            }
        }
        pos += total;
    }
    last.map(|pg| pg + PG_EPOCH_UNIX_SECONDS * 1_000_000)
}

/// `xact_time` from a commit record's body: the main data follows the
/// header ids a commit can carry (origin, top-level xid); one with block
/// references is not a plain commit and is skipped.
fn commit_time(body: &[u8]) -> Option<i64> {
    let mut at = 0;
    loop {
        match *body.get(at)? {
            XLR_BLOCK_ID_DATA_SHORT => {
                at += 2;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                at += 5;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => at += 3,
            XLR_BLOCK_ID_TOPLEVEL_XID => at += 5,
            _ => return None,
        }
    }
    Some(i64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 8192;
    const MAGIC: u16 = 0xD110;

    /// A segment of `pages` pages starting at `start`, records laid out in
    /// logical space as PostgreSQL does.
    struct Builder {
        logical: Vec<u8>,
        start: u64,
    }

    impl Builder {
        fn record(&mut self, rmid: u8, info: u8, body: &[u8]) {
            while !self.logical.len().is_multiple_of(8) {
                self.logical.push(0);
            }
            let total = (RECORD_HEADER + body.len()) as u32;
            self.logical.extend(total.to_le_bytes());
            self.logical.extend([0u8; 12]);
            self.logical.extend([info, rmid, 0, 0]);
            self.logical.extend([0u8; 4]);
            self.logical.extend(body);
        }

        fn commit(&mut self, unix_micros: i64) {
            let mut body = vec![XLR_BLOCK_ID_ORIGIN, 1, 0, XLR_BLOCK_ID_DATA_SHORT, 12];
            body.extend((unix_micros - PG_EPOCH_UNIX_SECONDS * 1_000_000).to_le_bytes());
            body.extend(0u32.to_le_bytes());
            self.record(RM_XACT_ID, XLOG_XACT_COMMIT, &body);
        }

        fn build(&self, pages: usize) -> Vec<u8> {
            let mut seg = vec![0u8; pages * PAGE];
            let mut src = 0;
            for p in 0..pages {
                let at = p * PAGE;
                let hdr = if p == 0 { LONG_HEADER } else { SHORT_HEADER };
                seg[at..at + 2].copy_from_slice(&MAGIC.to_le_bytes());
                let info: u16 = if p == 0 { XLP_LONG_HEADER } else { 0 };
                seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
                seg[at + 8..at + 16].copy_from_slice(&(self.start + at as u64).to_le_bytes());
                if p == 0 {
                    seg[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
                }
                let room = PAGE - hdr;
                let n = room.min(self.logical.len().saturating_sub(src));
                seg[at + hdr..at + hdr + n].copy_from_slice(&self.logical[src..src + n]);
                src += n;
            }
            seg
        }
    }

    #[test]
    fn the_last_commit_is_found_across_page_boundaries() {
        let mut b = Builder {
            logical: Vec::new(),
            start: 0x0300_0000,
        };
        let t0 = 1_795_000_000_000_000i64;
        for i in 0..400 {
            // Inserts (heap rmgr) between commits; some records straddle pages.
            b.record(10, 0, &vec![7u8; 50 + i % 37]);
            b.commit(t0 + i as i64 * 1000);
        }
        b.record(0, 0x40, &[]); // a WAL switch, then zeros
        let seg = b.build(8);
        assert_eq!(last_commit_micros(&seg, 0x0300_0000), Some(t0 + 399 * 1000));
        // A stale page from a recycled segment stops the scan.
        let mut stale = seg.clone();
        stale[PAGE + 8..PAGE + 16].copy_from_slice(&0x0100_2000u64.to_le_bytes());
        let early = last_commit_micros(&stale, 0x0300_0000).unwrap();
        assert!(early < t0 + 399 * 1000 && early >= t0, "{early}");
        // The wrong address from the start: nothing.
        assert_eq!(last_commit_micros(&seg, 0x0400_0000), None);
        // Not WAL at all.
        assert_eq!(last_commit_micros(&[0u8; 65536], 0), None);
        assert_eq!(last_commit_micros(&[], 0), None);
    }

    #[test]
    fn no_commit_no_time_and_aborts_do_not_count() {
        let mut b = Builder {
            logical: Vec::new(),
            start: 0,
        };
        b.record(10, 0, &[1, 2, 3]);
        b.record(
            RM_XACT_ID,
            0x20,
            &[XLR_BLOCK_ID_DATA_SHORT, 8, 1, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(last_commit_micros(&b.build(2), 0), None);
    }
}
