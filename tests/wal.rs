//! WAL archiving: a real server's archive_command is `drctl wal-push`, and
//! `drctl wal-fetch` gives the segments back byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Drctl, PgCluster};

const SEG: u64 = 16 * 1024 * 1024;

/// Wait until the server reports `name` archived (and nothing failed).
fn wait_archived(pg: &PgCluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = pg.query(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver",
        );
        let mut it = row.split(' ');
        let (last, failed) = (it.next().unwrap_or(""), it.next().unwrap_or("0"));
        assert_eq!(failed, "0", "archive_command failed: {row}");
        if last >= name {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never archived: {row}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Switch to a new segment after some writes; returns the finished segment.
fn switch(pg: &PgCluster, n: i32) -> String {
    pg.psql(
        "postgres",
        &format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {n}) g;"),
    );
    pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
}

fn fetch(d: &Drctl, policy: &str, name: &str, dest: &Path) -> common::Run {
    d.run(&[
        "wal-fetch",
        policy,
        name,
        dest.to_str().unwrap(),
        "--identity",
        &d.identity_arg(),
    ])
}

#[test]
fn archive_command_pushes_segments_that_fetch_restores_exactly() {
    let d = Drctl::for_owner();
    let mut pg_conf = vec![
        "archive_mode = on".to_string(),
        "wal_keep_size = '1GB'".into(),
    ];
    pg_conf.push(d.archive_command("wal"));
    let pg = PgCluster::start_conf(&pg_conf);
    d.write_physical_policy("wal", &pg.url("postgres"));
    pg.psql("postgres", "CREATE TABLE t (id int, v text);");
    let segs: Vec<String> = (0..3).map(|i| switch(&pg, 1000 * (i + 1))).collect();
    wait_archived(&pg, segs.last().unwrap());

    let out = tempfile::tempdir().unwrap();
    common::give_to_owner(out.path());
    for s in &segs {
        assert_eq!(d.repo_files(&format!("{s}.zst.age")).len(), 1, "{s} stored");
        assert_eq!(d.repo_files(&format!("{s}.json")).len(), 1, "{s} committed");
        let dest = out.path().join(s);
        fetch(&d, "wal", s, &dest).ok();
        let got = std::fs::read(&dest).unwrap();
        let want = std::fs::read(pg.data_dir().join("pg_wal").join(s)).unwrap();
        assert_eq!(got.len() as u64, SEG);
        assert!(got == want, "{s} differs from the server's copy");
    }
    // Stored encrypted: no plaintext WAL header bytes in the object.
    let obj = std::fs::read(&d.repo_files(&format!("{}.zst.age", segs[0]))[0]).unwrap();
    assert!(obj.starts_with(b"age-encryption.org/v1"));

    // PostgreSQL retries a push after a crash: same content is success.
    let seg0 = pg.data_dir().join("pg_wal").join(&segs[0]);
    d.run(&["wal-push", "wal", seg0.to_str().unwrap()]).ok();

    // Different content under an archived name is refused, archive untouched.
    let forged_dir = tempfile::tempdir().unwrap();
    common::give_to_owner(forged_dir.path());
    let forged = forged_dir.path().join(&segs[0]);
    let mut bytes = std::fs::read(&seg0).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&forged, &bytes).unwrap();
    common::give_to_owner(&forged);
    let r = d.run(&["wal-push", "wal", forged.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("different content"), "{}", r.stderr);
    let again = out.path().join("again");
    fetch(&d, "wal", &segs[0], &again).ok();
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&seg0).unwrap());

    // Absent files: exit 1, nothing written (PostgreSQL probes for these).
    for absent in ["0000000100000000000000F0", "00000002.history"] {
        let dest = out.path().join(absent);
        let r = fetch(&d, "wal", absent, &dest);
        assert_eq!(r.code, 1, "{absent}: {}", r.stderr);
        assert!(!dest.exists());
    }

    // A key that does not match is fatal for recovery, not "absent".
    let other = d.path().join("other.txt");
    common::age_keygen(&other);
    common::give_to_owner(&other);
    let dest = out.path().join("wrongkey");
    let r = d.run(&[
        "wal-fetch",
        "wal",
        &segs[1],
        dest.to_str().unwrap(),
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(!dest.exists());

    // Inside a data directory, wal-fetch prefetches the next segments and
    // hands them over from its spool.
    let data = out.path().join("data");
    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    common::give_to_owner(&data);
    let xlog = data.join("pg_wal/RECOVERYXLOG");
    fetch(&d, "wal", &segs[0], &xlog).ok();
    let spooled = data.join("drctl-prefetch").join(&segs[1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spooled.exists() {
        assert!(Instant::now() < deadline, "{} never prefetched", segs[1]);
        std::thread::sleep(Duration::from_millis(50));
    }
    fetch(&d, "wal", &segs[1], &xlog).ok();
    assert!(!spooled.exists(), "handed over from the spool");
    let want = std::fs::read(pg.data_dir().join("pg_wal").join(&segs[1])).unwrap();
    assert!(std::fs::read(&xlog).unwrap() == want);
    // The end of the archive clears the spool.
    let r = fetch(&d, "wal", "0000000100000000000000F0", &xlog);
    assert_eq!(r.code, 1);
    std::thread::sleep(Duration::from_millis(300));
    let r = fetch(&d, "wal", "0000000100000000000000F0", &xlog);
    assert_eq!(r.code, 1);
    assert!(!data.join("drctl-prefetch").exists());

    // Not a WAL file name: a usage error for push.
    let r = d.run(&["wal-push", "wal", "/etc/hostname"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn history_partial_and_backup_files_round_trip() {
    let d = Drctl::for_owner();
    d.write_physical_policy("wal", "postgres://postgres@127.0.0.1:1/postgres");
    let src = tempfile::tempdir().unwrap();
    common::give_to_owner(src.path());
    let out = tempfile::tempdir().unwrap();
    common::give_to_owner(out.path());
    for (name, body) in [
        (
            "00000002.history",
            b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        ),
        ("000000010000000000000003.partial", vec![7u8; 1 << 20]),
        (
            "000000010000000000000002.00000028.backup",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".to_vec(),
        ),
    ] {
        let p: PathBuf = src.path().join(name);
        std::fs::write(&p, &body).unwrap();
        common::give_to_owner(&p);
        d.run(&["wal-push", "wal", p.to_str().unwrap()]).ok();
        let dest = out.path().join(name);
        fetch(&d, "wal", name, &dest).ok();
        assert_eq!(std::fs::read(&dest).unwrap(), body, "{name}");
    }
}

#[test]
fn wal_fetch_fails_hard_when_the_repository_is_down() {
    let d = Drctl::new();
    let port = common::free_port(); // nothing listens here
    d.write_policy_repo(
        "wal",
        "postgres://postgres@127.0.0.1:1/postgres",
        &format!(
            "url = \"s3://bucket/wal\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\n"
        ),
        "",
    );
    let p = d.path().join("policies/wal.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("method = \"dump\"", "method = \"physical\"");
    std::fs::write(&p, text).unwrap();
    let dest = d.path().join("000000010000000000000001");
    let mut c = d.command(&[
        "wal-fetch",
        "wal",
        "000000010000000000000001",
        dest.to_str().unwrap(),
        "--identity",
        &d.identity_arg(),
        "--attempts",
        "2",
    ]);
    c.env("AWS_MAX_ATTEMPTS", "1");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(126), "{stderr}");
    assert!(stderr.contains("wal-fetch"), "{stderr}");
    assert!(!dest.exists());

    // A broken policy must not look like "file absent" either.
    std::fs::write(&p, "[source\n").unwrap();
    let r = fetch(&d, "wal", "000000010000000000000001", &dest);
    assert_eq!(r.code, 126, "{}", r.stderr);

    // And wal-push to a dead repository is a failure, never success.
    let seg = d.path().join("000000010000000000000001");
    std::fs::write(&seg, vec![0u8; 1024]).unwrap();
    d.write_physical_policy("wal2", "postgres://postgres@127.0.0.1:1/postgres");
    let p2 = d.path().join("policies/wal2.toml");
    let text = std::fs::read_to_string(&p2).unwrap().replace(
        &format!("url = \"file://{}\"", d.repo_dir().display()),
        &format!(
            "url = \"s3://bucket/wal\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true"
        ),
    );
    std::fs::write(&p2, text).unwrap();
    let mut c = d.command(&["wal-push", "wal2", seg.to_str().unwrap()]);
    c.env("AWS_MAX_ATTEMPTS", "1");
    let out = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_flipped_byte_in_an_archived_segment_is_caught_by_verify_and_deep_verify() {
    let d = Drctl::new();
    d.write_physical_policy("wal", "postgres://postgres@127.0.0.1:1/postgres");
    let seg = d.path().join("000000010000000000000001");
    let body: Vec<u8> = (0..SEG as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&seg, &body).unwrap();
    d.run(&["wal-push", "wal", seg.to_str().unwrap()]).ok();
    let id = d.identity_arg();
    let v = d.run(&["verify", "wal"]).ok();
    assert!(
        v.stdout.contains("ok      WAL archive (wal)"),
        "{}",
        v.stdout
    );
    let v = d.run(&["verify", "wal", "--deep", "--identity", &id]).ok();
    assert!(
        v.stdout.contains("ok      WAL archive (wal, deep)"),
        "{}",
        v.stdout
    );

    let objects = d.repo_files(".zst.age");
    assert_eq!(objects.len(), 1);
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&objects[0], &bytes).unwrap();
    for args in [
        vec!["verify", "wal"],
        vec!["verify", "wal", "--deep", "--identity", &id],
    ] {
        let v = d.run(&args);
        assert_eq!(v.code, 1, "{args:?}: {}", v.stdout);
        assert!(
            v.stdout.contains("000000010000000000000001.zst.age"),
            "{args:?}: {}",
            v.stdout
        );
    }
}

#[test]
fn a_flipped_digit_in_a_wal_sidecar_is_caught() {
    let d = Drctl::new();
    d.write_physical_policy("wal", "postgres://postgres@127.0.0.1:1/postgres");
    let seg = d.path().join("000000010000000000000001");
    std::fs::write(&seg, vec![7u8; SEG as usize]).unwrap();
    d.run(&["wal-push", "wal", seg.to_str().unwrap()]).ok();
    d.run(&["verify", "wal"]).ok();
    let side = d.repo_files("000000010000000000000001.json")[0].clone();
    let text = std::fs::read_to_string(&side).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // last_write_at moves the recoverable window; it still parses.
    let at = v["last_write_at"].as_str().unwrap().to_string();
    let later = at.replacen(
        &at[..4],
        &(at[..4].parse::<u32>().unwrap() + 1).to_string(),
        1,
    );
    std::fs::write(&side, text.replacen(&at, &later, 1)).unwrap();
    let r = d.run(&["verify", "wal"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("seal"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains("the WAL archive of wal failed verification"),
        "{}",
        r.stderr
    );
    // In JSON the archive has a field of its own, not a pseudo-backup.
    let r = d.run(&["verify", "wal", "--output", "json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["failed_wal_archives"], 1, "{v}");
    assert_eq!(v["wal_archives"][0]["policy"], "wal", "{v}");
    assert_eq!(v["wal_archives"][0]["ok"], false, "{v}");
    assert!(
        v["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["id"] != "wal"),
        "{v}"
    );
    // wal-fetch will not hand it to recovery either (126, not "absent").
    let dest = d.path().join("RECOVERYXLOG");
    let r = fetch(&d, "wal", "000000010000000000000001", &dest);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("seal"), "{}", r.stderr);
}
