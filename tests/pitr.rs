//! Point-in-time recovery with real servers: a physical base backup, WAL
//! archived by the server's own archive_command (`drctl wal-push`), and
//! restores to times between batches of commits that bring back exactly
//! the batches committed before the target.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{archiving_cluster, seg_plus, wait_archived, Drctl, PgCluster, Restored};

/// pg_ctl as the cluster owner.
fn pg_ctl() -> Command {
    common::as_owner(&common::pg_tool("pg_ctl"))
}

impl Restored {
    fn sql(&self, sql: &str) -> String {
        let out = Command::new(common::pg_tool("psql"))
            .args(["-X", "-A", "-t", "-w"])
            .arg(format!(
                "--dbname=postgres://postgres@127.0.0.1:{}/postgres",
                self.port
            ))
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn batches(&self) -> String {
        self.sql("SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) || ' ' || count(*) FROM batches")
    }
}

fn restore(d: &Drctl, to: &[&str]) -> (Restored, common::Run) {
    restore_with(d, to, true)
}

fn restore_with(d: &Drctl, to: &[&str], start: bool) -> (Restored, common::Run) {
    let server = Restored::new();
    let mut args = vec!["restore", "pitr"];
    args.extend_from_slice(to);
    let dir_s = server.dir.display().to_string();
    let port_s = server.port.to_string();
    let id = d.identity_arg();
    args.extend_from_slice(&["--target-dir", &dir_s, "--identity", &id]);
    if start {
        args.extend_from_slice(&["--start", "--port", &port_s]);
    }
    let r = d.run(&args);
    (server, r)
}

#[test]
fn restore_to_a_time_brings_back_exactly_the_batches_committed_before_it() {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text); INSERT INTO batches SELECT 0, g, 'base' FROM generate_series(1, 100) g;",
    );
    let before_backup = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    let id = d.backup("pitr");
    // The backup's own sessions end cleanly: no warning in the server's log.
    let log = pg.server_log();
    assert!(!log.is_empty());
    assert!(
        !log.contains("there is no transaction in progress"),
        "{log}"
    );
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    assert_eq!(show["manifest"]["method"], "physical");
    assert!(show["manifest"]["wal"]["start_lsn"]
        .as_str()
        .unwrap()
        .contains('/'));
    assert!(
        show["manifest"]["source"]["system_identifier"]
            .as_str()
            .unwrap()
            .len()
            > 5
    );

    // Batches with a recorded time after each and a WAL switch between them.
    let mut after = Vec::new();
    let mut last_seg = String::new();
    for b in 1..=3 {
        std::thread::sleep(Duration::from_millis(1100));
        pg.psql(
            "postgres",
            &format!(
                "INSERT INTO batches SELECT {b}, g, md5(g::text) FROM generate_series(1, 1000) g;"
            ),
        );
        std::thread::sleep(Duration::from_millis(1100));
        after.push(pg.now_utc());
        last_seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    }
    wait_archived(&pg, &last_seg);

    // Dry run: the plan, nothing written.
    let plan = d
        .run(&[
            "restore",
            "pitr",
            "--to",
            &after[0],
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["backup_id"], id.as_str());
    assert!(!plan["wal_segments"].as_array().unwrap().is_empty());
    assert!(plan["window_start"].is_string() && plan["window_end"].is_string());

    // Relative times resolve against now and come back as absolute UTC.
    let rel = d
        .run(&[
            "restore",
            "pitr",
            "--to",
            "2s-ago",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let t: jiff::Timestamp = rel["target_time"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(t).as_secs_f64();
    assert!((1.0..30.0).contains(&age), "2s-ago resolved {age}s back");

    // Before the first backup: refused, with the window.
    let r = d.run(&["restore", "pitr", "--to", &before_backup, "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("window"), "{}", r.stderr);
    // After the end of the archive: refused, with the window.
    let r = d.run(&[
        "restore",
        "pitr",
        "--to",
        "2099-01-01T00:00:00Z",
        "--dry-run",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("window"), "{}", r.stderr);

    let (s1, r) = restore(&d, &["--to", &after[0]]);
    let r = r.ok();
    assert!(r.stdout.contains("recovered"), "{}", r.stdout);
    assert_eq!(s1.batches(), "0,1 1100");
    drop(s1);

    let (s2, r) = restore(&d, &["--to", &after[1]]);
    r.ok();
    assert_eq!(s2.batches(), "0,1,2 2100");
    drop(s2);

    // A second base backup through pg_basebackup (the first came over
    // drctl's own replication client, compressed by the server): --latest
    // restores from it, the newest.
    let text = std::fs::read_to_string(d.path().join("policies/pitr.toml"))
        .unwrap()
        .replace(
            "method = \"physical\"\n",
            "method = \"physical\"\nuse_pg_basebackup = true\n",
        );
    d.write_policy_text("pitr", &text);
    let id2 = d.backup("pitr");
    let show2 = d.run(&["show", &id2, "--output", "json"]).ok().json();
    // The manifest names pg_basebackup's version only when it was used.
    assert!(show["manifest"]["source"]["pg_dump_version"].is_null());
    assert!(
        show2["manifest"]["source"]["pg_dump_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("15")),
        "{show2}"
    );
    // Each path keeps the server's manifest, so both restores below were
    // proven by pg_verifybackup (which fails without it).
    assert_eq!(show["manifest"]["server_manifest"], "object");
    assert_eq!(show2["manifest"]["server_manifest"], "in_base");
    let (s3, r) = restore(&d, &["--latest"]);
    let r = r.ok();
    assert!(r.stdout.contains(&id2), "{}", r.stdout);
    assert_eq!(s3.batches(), "0,1,2,3 3100");

    // A non-empty target directory is refused before anything is written.
    let r = d.run(&[
        "restore",
        "pitr",
        "--latest",
        "--target-dir",
        s3.dir.to_str().unwrap(),
        "--identity",
        &d.identity_arg(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert!(Path::new(&s3.dir).join("PG_VERSION").exists());
    drop(s3);

    // verify covers the base backup and the WAL chain; list shows the window.
    let v = d.run(&["verify", "pitr"]).ok();
    assert!(v.stdout.contains("WAL archive"), "{}", v.stdout);
    let listed = d.list("pitr");
    assert!(listed[0]["recoverable_until"].is_string(), "{listed:?}");
    let text = d.run(&["list", "pitr"]).ok();
    assert!(
        text.stdout.contains("recoverable window of pitr"),
        "{}",
        text.stdout
    );

    // Failover: restore without --start, start it by hand with the base's own
    // archive_command, so it promotes to timeline 2 and archives there.
    let (promoted, r) = restore_no_start(&d);
    r.ok();
    start_by_hand(&promoted);
    let deadline = Instant::now() + Duration::from_secs(60);
    while promoted.sql("SELECT pg_is_in_recovery()") != "f" {
        assert!(
            Instant::now() < deadline,
            "the restored server never promoted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    promoted
        .sql("INSERT INTO batches SELECT 4, g, 'after failover' FROM generate_series(1, 500) g");
    let seg = promoted.sql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "new timeline: {seg}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while promoted.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg {
        assert!(Instant::now() < deadline, "{seg} never archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(promoted);
    let (s4, r) = restore(&d, &["--latest"]);
    r.ok();
    assert_eq!(s4.batches(), "0,1,2,3,4 3600", "followed timeline 2");
    drop(s4);

    // A lost segment: verify names it, and times after the gap are refused.
    // The segment after the first backup's stop holds batch 1: without it
    // nothing after batch 1 is reachable from that backup. (The newest
    // timeline-1 segments vary: pg_backup_start switches segments only
    // when the current one has records, such as the bgwriter's.)
    let stop = show["manifest"]["wal"]["stop_segment"].as_str().unwrap();
    let victim = seg_plus(stop, 1);
    for f in d.repo_files(&format!("{victim}.json")) {
        std::fs::remove_file(f).unwrap();
    }
    let v = d.run(&["verify", "pitr"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(v.stdout.contains(&victim), "{}", v.stdout);
    let r = d.run(&["restore", "pitr", "--to", &after[2], "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("window"), "{}", r.stderr);
}

/// `restore --latest` without --start, keeping the source's archiving: a
/// failover, where the restored server replaces the primary.
fn restore_no_start(d: &Drctl) -> (Restored, common::Run) {
    restore_with(d, &["--latest", "--keep-archiving"], false)
}

fn start_by_hand(s: &Restored) {
    let out = pg_ctl()
        .arg("-D")
        .arg(&s.dir)
        .args([
            "-o",
            &format!("-p {} -c unix_socket_directories=/tmp", s.port),
            "-l",
        ])
        .arg(s.dir.join("server.log"))
        .args(["-w", "start"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_restored_copy_never_archives_into_production_unless_asked() {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    // The settings a DBA set with ALTER SYSTEM travel in postgresql.auto.conf.
    let cmd = d.archive_command("pitr");
    let value = cmd.split_once(" = ").unwrap().1;
    pg.psql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET archive_mode = 'on'; ALTER SYSTEM SET archive_command = {value};"
        ),
    );
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text); INSERT INTO batches SELECT 0, g, 'base' FROM generate_series(1, 100) g;",
    );
    d.backup("pitr");
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);

    // Restored and started by hand with plain pg_ctl, as a runbook would.
    let (copy, r) = restore_with(&d, &["--latest"], false);
    let r = r.ok();
    assert!(r.stdout.contains("archiving off"), "{}", r.stdout);
    assert!(!copy.dir.join("postmaster.opts").exists());
    let auto = std::fs::read_to_string(copy.dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("archive_command"),
        "the source's setting came along: {auto}"
    );
    assert!(auto.trim_end().ends_with("archive_mode = 'off'"), "{auto}");
    assert!(
        !auto.contains("recovery_target_timeline = 'latest'"),
        "{auto}"
    );
    start_by_hand(&copy);
    let deadline = Instant::now() + Duration::from_secs(60);
    while copy.sql("SELECT pg_is_in_recovery()") != "f" {
        assert!(
            Instant::now() < deadline,
            "the restored server never promoted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(copy.sql("SHOW archive_mode"), "off");
    copy.sql("INSERT INTO batches SELECT 9, g, 'copy' FROM generate_series(1, 100) g");
    copy.sql("SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(copy.sql("SELECT archived_count FROM pg_stat_archiver"), "0");
    assert!(
        d.repo_files(".json")
            .iter()
            .all(|p| !p.to_string_lossy().contains("/wal/00000002")),
        "the copy archived its timeline into production"
    );
    drop(copy);

    // --start runs it with archiving off too, and says so.
    let (s, r) = restore(&d, &["--latest"]);
    let r = r.ok();
    assert!(r.stdout.contains("archiving off"), "{}", r.stdout);
    assert_eq!(s.sql("SHOW archive_mode"), "off");
}

#[test]
fn a_wal_gap_splits_the_window_and_a_target_inside_it_is_refused() {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text)",
    );
    let first = d.backup("pitr");
    // Right after the first base backup: a window that does not end
    // before it starts.
    let st = d.run(&["status", "--output", "json"]).ok().json();
    let w = &st[0]["windows"][0];
    assert!(
        w["start"].as_str().unwrap() <= w["end"].as_str().unwrap(),
        "{st}"
    );
    let show = d.run(&["show", &first, "--output", "json"]).ok().json();
    let stop = show["manifest"]["wal"]["stop_segment"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = String::new();
    for b in 1..=3 {
        std::thread::sleep(Duration::from_millis(1100));
        pg.psql(
            "postgres",
            &format!("INSERT INTO batches SELECT {b}, g, 'x' FROM generate_series(1, 100) g"),
        );
        last = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    }
    wait_archived(&pg, &last);
    std::thread::sleep(Duration::from_millis(1100));
    d.backup("pitr");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 4, g, 'x' FROM generate_series(1, 100) g",
    );
    let last = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &last);

    // Lose a segment between the two base backups.
    let victim = seg_plus(&stop, 2);
    let gone = d.repo_files(&format!("{victim}.json"));
    assert_eq!(gone.len(), 1, "{victim} is not archived");
    std::fs::remove_file(&gone[0]).unwrap();

    let st = d.run(&["status", "--output", "json"]).ok().json();
    let p = &st[0];
    let windows = p["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 2, "{p}");
    assert_eq!(p["wal_gaps"][0]["first_missing"], victim.as_str(), "{p}");
    assert_eq!(p["window_start"], windows[1]["start"], "{p}");
    assert_eq!(p["window_end"], windows[1]["end"], "{p}");
    for w in windows {
        assert!(w["start"].as_str() <= w["end"].as_str(), "{p}");
    }
    let text = d.run(&["list", "pitr"]).ok().stdout;
    assert!(text.contains(&victim), "{text}");

    // Inside the gap: refused, naming it and the points on either side.
    let end0: jiff::Timestamp = windows[0]["end"].as_str().unwrap().parse().unwrap();
    let start1: jiff::Timestamp = windows[1]["start"].as_str().unwrap().parse().unwrap();
    assert!(start1.duration_since(end0).as_secs() >= 2, "{p}");
    let inside = (end0 + jiff::SignedDuration::from_secs(1)).to_string();
    let r = d.run(&["restore", "pitr", "--to", &inside, "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&victim), "{}", r.stderr);
    assert!(
        r.stderr.contains(windows[0]["end"].as_str().unwrap()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(windows[1]["start"].as_str().unwrap()),
        "{}",
        r.stderr
    );
    // Either side of it: planned, with every range in the plan.
    for t in [
        windows[0]["end"].as_str().unwrap(),
        windows[1]["end"].as_str().unwrap(),
    ] {
        let plan = d
            .run(&[
                "restore",
                "pitr",
                "--to",
                t,
                "--dry-run",
                "--output",
                "json",
            ])
            .ok()
            .json();
        assert_eq!(plan["windows"].as_array().unwrap().len(), 2, "{plan}");
    }
}

/// A cluster archiving into policy "pitr", table `batches` holding batch 0,
/// and a first base backup.
fn with_base_backup(d: &Drctl) -> PgCluster {
    let pg = archiving_cluster(d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text); INSERT INTO batches SELECT 0, g, 'base' FROM generate_series(1, 100) g;",
    );
    d.backup("pitr");
    pg
}

#[test]
fn a_target_after_the_last_commit_on_a_quiet_database_restores_that_state() {
    let d = Drctl::for_owner();
    let pg = with_base_backup(&d);
    let before_commit = pg.now_utc();
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g, 'last' FROM generate_series(1, 10) g",
    );
    let after_commit = pg.now_utc();
    // Nothing is written after this; T lies in the quiet stretch, and the
    // archive holds WAL written after T (the switch that archived it).
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);

    // The archive knows the last commit (wal-push read it from the
    // segment): status, the plan and list show it.
    let st = d.run(&["status", "--output", "json"]).ok().json();
    let last: jiff::Timestamp = st[0]["last_commit_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{st}"))
        .parse()
        .unwrap();
    let lo: jiff::Timestamp = before_commit.parse().unwrap();
    let hi: jiff::Timestamp = after_commit.parse().unwrap();
    assert!(
        lo <= last && last <= hi,
        "last commit {last} not in [{lo}, {hi}]"
    );
    let w = st[0]["windows"].as_array().unwrap();
    assert_eq!(
        w.last().unwrap()["last_commit_at"],
        st[0]["last_commit_at"],
        "{st}"
    );
    let plan = d
        .run(&[
            "restore",
            "pitr",
            "--to",
            &t,
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["last_commit_at"], st[0]["last_commit_at"], "{plan}");
    let text = d.run(&["list", "pitr"]).ok().stdout;
    assert!(text.contains("last commit"), "{text}");

    let (s, r) = restore(&d, &["--to", &t]);
    let r = r.ok();
    assert!(
        r.stdout.contains("no transaction committed"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("end of the archived WAL"), "{}", r.stdout);
    assert_eq!(s.batches(), "0,1 110");
    assert_eq!(s.sql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(s.sql("SHOW archive_mode"), "off");
    drop(s);

    // A drill to the same point passes too.
    let r = d.run(&[
        "drill",
        "pitr",
        "--to",
        &t,
        "--identity",
        &d.identity_arg(),
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let v = r.json();
    assert_eq!(v["passed"], true, "{v}");
}

#[test]
fn a_target_on_production_s_timeline_is_not_diverted_by_a_copy_s_timeline() {
    let d = Drctl::for_owner();
    let pg = with_base_backup(&d);
    let batch = |b: i32| {
        std::thread::sleep(Duration::from_millis(1100));
        pg.psql(
            "postgres",
            &format!("INSERT INTO batches SELECT {b}, g, 'x' FROM generate_series(1, 1000) g"),
        );
        std::thread::sleep(Duration::from_millis(1100));
        let t = pg.now_utc();
        let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
        wait_archived(&pg, &seg);
        t
    };
    let after1 = batch(1);
    batch(2);

    // Someone restores to after batch 1 with archiving kept, and the copy
    // promotes and pushes timeline 2 into the production archive.
    let (copy, r) = restore_with(&d, &["--to", &after1, "--keep-archiving"], false);
    r.ok();
    start_by_hand(&copy);
    let deadline = Instant::now() + Duration::from_secs(60);
    while copy.sql("SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "the copy never promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    copy.sql("INSERT INTO batches SELECT 9, g, 'copy' FROM generate_series(1, 500) g");
    let seg = copy.sql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    while copy.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg {
        assert!(Instant::now() < deadline, "{seg} never archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(copy);

    // Production went on on timeline 1: a target there is restored from
    // timeline 1, not from the copy's branch.
    let after3 = batch(3);
    let (s, r) = restore(&d, &["--to", &after3]);
    r.ok();
    assert_eq!(s.batches(), "0,1,2,3 3100");
}

/// pgBackRest's other restore types: up to an LSN, up to and including a
/// transaction, up to a restore point `drctl restore-point` made, each
/// replayed for real and equal to what was committed up to it, each from
/// the newest backup that ends before it; with `--start`,
/// `--target-action pause` leaves the server in recovery at the target for
/// an operator to look before promoting, and `shutdown` stops it there.
#[test]
fn restore_to_an_lsn_an_xid_or_a_restore_point_replays_exactly_to_it_and_pause_waits_there() {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text); INSERT INTO batches SELECT 0, g, 'base' FROM generate_series(1, 100) g;",
    );
    let id = d.backup("pitr");
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g, 'one' FROM generate_series(1, 100) g;",
    );
    let lsn = pg.query("postgres", "SELECT pg_current_wal_insert_lsn()");
    let xid = pg.query(
        "postgres",
        "BEGIN; INSERT INTO batches SELECT 2, g, 'two' FROM generate_series(1, 100) g; SELECT txid_current(); COMMIT;",
    );
    let made = d.run(&["restore-point", "pitr", "before-three"]).ok();
    assert!(
        made.stdout.contains("--to-name before-three"),
        "{}",
        made.stdout
    );
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 3, g, 'three' FROM generate_series(1, 100) g;",
    );
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);
    // A newer backup, after every target below: each must start from the
    // first one.
    let newer = d.backup("pitr");
    let list = d.run(&["list", "pitr"]).ok().stdout;
    assert!(
        list.contains("restore point of pitr: before-three at "),
        "{list}"
    );
    let r = d.run(&["restore-point", "pitr", &"x".repeat(64)]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // The plan names the target and what happens there.
    let plan = d
        .run(&[
            "restore",
            "pitr",
            "--to-lsn",
            &lsn,
            "--target-action",
            "pause",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["backup_id"], id.as_str(), "{plan}");
    assert_eq!(plan["recovery_target"], format!("lsn {lsn}"), "{plan}");
    assert_eq!(plan["target_action"], "pause", "{plan}");

    let (s, r) = restore(&d, &["--to-lsn", &lsn]);
    r.ok();
    assert_eq!(s.batches(), "0,1 200", "restored to LSN {lsn}");
    drop(s);
    // An xid does not say where it is: --backup names the base.
    let (s, r) = restore(&d, &["--to-xid", &xid, "--backup", &id]);
    r.ok();
    assert_eq!(s.batches(), "0,1,2 300", "restored to xid {xid}");
    drop(s);
    let plan = d
        .run(&[
            "restore",
            "pitr",
            "--to-name",
            "before-three",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["backup_id"], id.as_str(), "not {newer}: {plan}");
    let (s, r) = restore(&d, &["--to-name", "before-three"]);
    r.ok();
    assert_eq!(s.batches(), "0,1,2 300", "restored to the restore point");
    drop(s);

    // Pause with --start: drctl waits until recovery waits at the target,
    // and leaves the server there, in recovery, until pg_wal_replay_resume().
    let (s, r) = restore_with(
        &d,
        &[
            "--to-xid",
            &xid,
            "--backup",
            &id,
            "--target-action",
            "pause",
            "--output",
            "json",
        ],
        true,
    );
    let out = r.ok().json();
    assert_eq!(out["server_state"], "paused", "{out}");
    assert!(
        out["reached_at"].as_str().unwrap().contains(&format!(
            "recovery stopping after commit of transaction {xid}"
        )),
        "{out}"
    );
    let auto = std::fs::read_to_string(s.dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("recovery_target_xid = '{xid}'"))
            && auto.contains("recovery_target_action = 'pause'"),
        "{auto}"
    );
    assert_eq!(s.sql("SELECT pg_get_wal_replay_pause_state()"), "paused");
    assert_eq!(s.sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(s.batches(), "0,1,2 300");
    s.sql("SELECT pg_wal_replay_resume()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.sql("SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "never promoted after resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(s);

    // Shutdown with --start: the server replays to the target and stops;
    // drctl says so, and a start by hand with promote brings back exactly it.
    let (s, r) = restore_with(&d, &["--to-lsn", &lsn, "--target-action", "shutdown"], true);
    let r = r.ok();
    assert!(
        r.stdout.contains("the server shut down")
            && r.stdout.contains("recovery_target_action = 'promote'"),
        "{}",
        r.stdout
    );
    assert!(!s.dir.join("postmaster.pid").exists(), "still running");
    let mut auto = std::fs::read_to_string(s.dir.join("postgresql.auto.conf")).unwrap();
    auto.push_str("recovery_target_action = 'promote'\n");
    std::fs::write(s.dir.join("postgresql.auto.conf"), auto).unwrap();
    start_by_hand(&s);
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.sql("SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "never promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.batches(), "0,1 200", "shut down at LSN {lsn}");
    drop(s);

    // Bad input: one line, exit 2, nothing written.
    for (args, want) in [
        (vec!["--to-lsn", "16B374D848"], "--to-lsn"),
        (vec!["--to-xid", "abc"], "--to-xid"),
        (
            vec!["--latest", "--target-action", "pause"],
            "needs a target",
        ),
        (vec!["--to-lsn", "0/1"], "ends at or before LSN 0/1"),
    ] {
        let server = Restored::new();
        let mut a = vec!["restore", "pitr"];
        a.extend_from_slice(&args);
        let dir = server.dir.display().to_string();
        let key = d.identity_arg();
        a.extend_from_slice(&["--target-dir", &dir, "--identity", &key]);
        let r = d.run(&a);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        assert!(
            !server.dir.exists(),
            "{args:?} wrote {}",
            server.dir.display()
        );
    }
}
