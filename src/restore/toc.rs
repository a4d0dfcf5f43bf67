//! Splitting a custom-format archive's table of contents (`pg_restore -l`)
//! into per-worker restore lists, for parallel restores from a stream.
//!
//! `pg_restore -j` needs a seekable file, and drctl never writes a plaintext
//! copy to disk. Instead each worker reads its own decrypted stream and
//! restores only its share of the `TABLE DATA` entries (`-L list`), which
//! pg_restore can do from a pipe as long as the list keeps archive order.
//! Shares are balanced by the manifest's row counts (longest first onto the
//! least-loaded worker). Pure code: no I/O.

use crate::repo::manifest::TableCount;

/// Rows assumed for a table the manifest has no count for.
const UNKNOWN_ROWS: i64 = 1000;

/// One line of `pg_restore -l` that restores table data, with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataEntry {
    line_no: usize,
    rows: i64,
}

/// `3366; 0 16395 TABLE DATA sales orders postgres` → "sales orders postgres".
fn table_data_rest(line: &str) -> Option<&str> {
    if line.trim_start().starts_with(';') {
        return None;
    }
    let (_, rest) = line.split_once("; ")?;
    let mut it = rest.splitn(3, ' ');
    let (_cat, _oid, tail) = (it.next()?, it.next()?, it.next()?);
    tail.strip_prefix("TABLE DATA ")
}

fn rows_for(rest: &str, counts: &[TableCount]) -> i64 {
    // Names may contain spaces, so match "schema name " as a prefix and
    // prefer the longest match.
    counts
        .iter()
        .filter(|t| rest.starts_with(&format!("{} {} ", t.schema, t.name)))
        .max_by_key(|t| t.schema.len() + t.name.len())
        .map(|t| t.rows.max(0))
        .unwrap_or(UNKNOWN_ROWS)
}

/// Per-worker `-L` list files for the data section. Every line of the TOC
/// that is not `TABLE DATA` goes to the first worker (pg_restore's
/// `--section=data` skips what is not data); each `TABLE DATA` line goes to
/// exactly one worker; every list keeps the archive's order. Returns at most
/// `jobs` lists and never an empty one beyond the first.
pub fn partition(toc: &str, counts: &[TableCount], jobs: usize) -> Vec<String> {
    let lines: Vec<&str> = toc.lines().collect();
    let mut data: Vec<DataEntry> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            table_data_rest(l).map(|rest| DataEntry {
                line_no: i,
                rows: rows_for(rest, counts),
            })
        })
        .collect();
    let workers = jobs.max(1).min(data.len().max(1));
    let mut owner = vec![0usize; lines.len()];
    let mut load = vec![0i64; workers];
    // Longest processing time first: heaviest table onto the lightest worker.
    data.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.line_no.cmp(&b.line_no)));
    for e in &data {
        let w = (0..workers)
            .min_by_key(|&w| (load[w], w))
            .expect("at least one worker");
        load[w] += e.rows.max(1);
        owner[e.line_no] = w;
    }
    let mut lists = vec![String::new(); workers];
    for (i, l) in lines.iter().enumerate() {
        let w = if table_data_rest(l).is_some() {
            owner[i]
        } else {
            0
        };
        lists[w].push_str(l);
        lists[w].push('\n');
    }
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOC: &str = "\
;
; Archive created at 2026-11-22 10:00:00 UTC
;
215; 1259 16390 TABLE public big postgres
216; 1259 16391 TABLE sales orders postgres
217; 1259 16392 TABLE Ünïcode schema Tëst tablé postgres
3350; 0 16390 TABLE DATA public big postgres
3351; 0 16391 TABLE DATA sales orders postgres
3352; 0 16392 TABLE DATA Ünïcode schema Tëst tablé postgres
3353; 0 0 SEQUENCE SET public invoice_no postgres
3200; 2606 16400 CONSTRAINT sales orders orders_pkey postgres
";

    fn counts() -> Vec<TableCount> {
        vec![
            TableCount {
                schema: "public".into(),
                name: "big".into(),
                rows: 1_000_000,
            },
            TableCount {
                schema: "sales".into(),
                name: "orders".into(),
                rows: 5000,
            },
            TableCount {
                schema: "Ünïcode schema".into(),
                name: "Tëst tablé".into(),
                rows: 3,
            },
        ]
    }

    #[test]
    fn heaviest_table_gets_a_worker_of_its_own() {
        let lists = partition(TOC, &counts(), 2);
        assert_eq!(lists.len(), 2);
        assert!(lists[0].contains("TABLE DATA public big"));
        assert!(!lists[0].contains("TABLE DATA sales orders"));
        assert!(lists[1].contains("TABLE DATA sales orders"));
        assert!(lists[1].contains("TABLE DATA Ünïcode schema Tëst tablé"));
        // Non-data lines stay with the first worker only.
        assert!(lists[0].contains("SEQUENCE SET"));
        assert!(!lists[1].contains("SEQUENCE SET"));
    }

    #[test]
    fn more_jobs_than_tables_makes_one_worker_per_table() {
        assert_eq!(partition(TOC, &counts(), 16).len(), 3);
        assert_eq!(partition(TOC, &counts(), 1).len(), 1);
        assert_eq!(partition("; empty\n", &[], 4).len(), 1);
    }

    #[test]
    fn names_with_spaces_find_their_counts() {
        let rest =
            table_data_rest("3352; 0 16392 TABLE DATA Ünïcode schema Tëst tablé postgres").unwrap();
        assert_eq!(rows_for(rest, &counts()), 3);
        assert_eq!(rows_for("x y postgres", &counts()), UNKNOWN_ROWS);
    }

    proptest! {
        /// Every TOC line lands in some list, every TABLE DATA line in
        /// exactly one, and every list keeps archive order.
        #[test]
        fn partition_is_a_cover_in_order(n in 0usize..40, jobs in 1usize..8, seed in any::<u64>()) {
            let mut toc = String::from(";\n");
            let mut counts = Vec::new();
            for i in 0..n {
                toc.push_str(&format!("{}; 1259 {} TABLE s t{i} o\n", 100 + i, 16000 + i));
            }
            for i in 0..n {
                toc.push_str(&format!("{}; 0 {} TABLE DATA s t{i} o\n", 3000 + i, 16000 + i));
                counts.push(TableCount { schema: "s".into(), name: format!("t{i}"), rows: ((seed >> (i % 60)) & 0xffff) as i64 });
            }
            let lists = partition(&toc, &counts, jobs);
            prop_assert!(!lists.is_empty() && lists.len() <= jobs.max(1));
            let all: Vec<&str> = toc.lines().collect();
            for l in &all {
                let holders = lists.iter().filter(|x| x.lines().any(|y| y == *l)).count();
                if l.contains(" TABLE DATA ") {
                    prop_assert_eq!(holders, 1);
                } else {
                    prop_assert!(holders >= 1);
                }
            }
            for list in &lists {
                let idx: Vec<usize> = list.lines().map(|l| all.iter().position(|a| *a == l).unwrap()).collect();
                prop_assert!(idx.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
