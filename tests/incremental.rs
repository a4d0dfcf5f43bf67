//! Incremental physical backups on PostgreSQL 17 and 18 (the server's own
//! incremental backup: UPLOAD_MANIFEST, then BASE_BACKUP INCREMENTAL) and
//! on 15 (drctl's block deltas): a full and three incrementals with writes between them, each point
//! restored from its chain equal by content fingerprint; chains in list,
//! show and verify; a flipped byte in a parent fails its dependents; prune
//! keeps a chain whole; what rules an incremental out makes a full with a
//! note.

mod common;

use common::{wait_archived, Drctl, PgCluster, Restored};

fn switch_and_archive(pg: &PgCluster) {
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(pg, &seg);
}

/// A physical policy on `pg` with `extra` in `[backup]` and retention
/// `keep_last`.
fn policy(d: &Drctl, pg: &PgCluster, backup_extra: &str, keep_last: u32) {
    d.write_physical_policy("inc", &pg.url("postgres"));
    let p = d.path().join("policies/inc.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen(
            "[source]\n",
            &format!("[source]\npg_bindir = \"{}\"\n", pg.bin.display()),
            1,
        )
        .replacen(
            "method = \"physical\"\n",
            &format!("method = \"physical\"\n{backup_extra}"),
            1,
        )
        .replace("keep_last = 3", &format!("keep_last = {keep_last}"));
    d.write_policy_text("inc", &text);
}

fn cluster(d: &Drctl, major: u32, summarize: bool) -> PgCluster {
    let mut conf = vec![
        "archive_mode = on".into(),
        d.archive_command("inc"),
        // So the server's log says how each base backup was asked for.
        "log_replication_commands = on".into(),
    ];
    if major >= 17 {
        conf.push(format!(
            "summarize_wal = {}",
            if summarize { "on" } else { "off" }
        ));
    }
    PgCluster::start_major(major, &[], &conf)
}

/// The backup `id`'s chain restored into a fresh directory and started:
/// its content.
fn restore_backup(d: &Drctl, id: &str) -> (Vec<String>, common::Run) {
    let server = Restored::new();
    let r = d.run(&[
        "restore",
        "inc",
        "--backup",
        id,
        "--target-dir",
        &server.dir.display().to_string(),
        "--start",
        "--port",
        &server.port.to_string(),
        "--identity",
        &d.identity_arg(),
    ]);
    if r.code != 0 {
        return (Vec::new(), r);
    }
    (common::fingerprint_url(&server.url("postgres")), r)
}

fn stored(d: &Drctl, id: &str) -> i64 {
    d.list("inc")
        .into_iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["stored_bytes"].as_i64())
        .unwrap()
}

fn chain_restores_each_point(major: u32) {
    let d = Drctl::for_owner();
    let pg = cluster(&d, major, true);
    policy(&d, &pg, "incremental = true\n", 10);
    // ~40 MB of table; each round changes 1% of its rows, together (as
    // most changes are: recent rows), so about 1% of its pages.
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) || repeat('x', 150) FROM generate_series(1, 200000) g;",
    );
    let first = d.run(&["backup", "inc"]).ok();
    assert!(
        first.stderr.contains("no backup yet"),
        "the first is a full, saying why: {}",
        first.stderr
    );
    let mut points = vec![(
        d.list("inc")[0]["id"].as_str().unwrap().to_string(),
        pg.fingerprint("postgres"),
    )];
    for round in 1..=3 {
        pg.psql(
            "postgres",
            &format!(
                "UPDATE t SET v = 'round {round}' WHERE id BETWEEN {round} * 20000 AND {round} * 20000 + 2000; INSERT INTO t SELECT g, 'new' FROM generate_series(300000 + {round} * 1000, 300000 + {round} * 1000 + 500) g; CREATE TABLE r{round} AS SELECT {round} AS n;"
            ),
        );
        let want = pg.fingerprint("postgres");
        let r = d.run(&["backup", "inc", "--output", "json"]).ok();
        let v = r.json();
        assert_eq!(v["kind"], "incremental", "{v:#}");
        assert_eq!(v["parent"], points.last().unwrap().0.as_str(), "{v:#}");
        points.push((v["id"].as_str().unwrap().to_string(), want));
    }
    // A write after the last backup, so the switch ends a segment.
    pg.psql("postgres", "CREATE TABLE after_all (x int)");
    switch_and_archive(&pg);

    // list and show say the kind, the parent and the chain.
    let ids: Vec<&str> = points.iter().map(|(id, _)| id.as_str()).collect();
    let list = d.list("inc");
    let newest = list.iter().find(|e| e["id"] == ids[3]).unwrap();
    assert_eq!(newest["kind"], "incremental");
    assert_eq!(newest["chain"], serde_json::json!(ids), "{newest:#}");
    let full = list.iter().find(|e| e["id"] == ids[0]).unwrap();
    assert_eq!(full["kind"], "full");
    let show = d.run(&["show", ids[2], "--output", "json"]).ok().json();
    assert_eq!(show["parent"], ids[1]);
    assert_eq!(show["manifest"]["kind"], "incremental");
    // The full is compressed by the server, as every full is; a block
    // delta (15, 16) reads plain pages, the server's incremental does not.
    let log = pg.server_log();
    let asked = |id: &str| {
        log.lines()
            .find(|l| l.contains("BASE_BACKUP") && l.contains(&format!("'drctl {id}'")))
            .unwrap_or_else(|| panic!("no BASE_BACKUP for {id} in the server log:\n{log}"))
            .to_string()
    };
    assert!(
        asked(ids[0]).contains("COMPRESSION 'zstd'"),
        "PostgreSQL {major}: the full was not compressed by the server: {}",
        asked(ids[0])
    );
    for id in &ids[1..] {
        assert_eq!(
            asked(id).contains("COMPRESSION"),
            major >= 17,
            "PostgreSQL {major}: {}",
            asked(id)
        );
    }
    // Each incremental holds the changed blocks, not the table again.
    let (full_bytes, inc_bytes) = (stored(&d, ids[0]), stored(&d, ids[3]));
    assert!(
        inc_bytes * 4 < full_bytes,
        "PostgreSQL {major}: an incremental stored {inc_bytes} bytes against the full's {full_bytes}"
    );

    // Every point restores from its chain, equal to what it held.
    for (id, want) in &points {
        let (got, r) = restore_backup(&d, id);
        assert_eq!(r.code, 0, "restore {id}: {}", r.stderr);
        assert_eq!(
            &got, want,
            "PostgreSQL {major}: the restore of {id} differs"
        );
    }
    // What a kill -9 left of an earlier chain restore to the same place
    // (its pid gone) goes with the next one.
    if major >= 17 {
        let server = Restored::new();
        let stale = server
            .dir
            .parent()
            .unwrap()
            .join(".data.drctl-chain-4194305");
        std::fs::create_dir_all(stale.join("0-x")).unwrap();
        std::fs::write(stale.join("0-x/PG_VERSION"), "17").unwrap();
        common::give_to_owner(&stale);
        let r = d
            .run(&[
                "restore",
                "inc",
                "--backup",
                ids[3],
                "--target-dir",
                &server.dir.display().to_string(),
                "--identity",
                &d.identity_arg(),
            ])
            .ok();
        assert!(!stale.exists(), "{}", r.stderr);
        assert!(
            r.stderr
                .contains("left by a restore (pid 4194305) that was killed"),
            "{}",
            r.stderr
        );
    }
    // A dry run names the chain.
    let plan = d
        .run(&[
            "restore",
            "inc",
            "--backup",
            ids[3],
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["chain"], serde_json::json!(ids), "{plan:#}");

    // verify --deep combines each chain and proves it.
    let v = d
        .run(&["verify", "inc", "--deep", "--identity", &d.identity_arg()])
        .ok();
    assert_eq!(v.stdout.matches("ok ").count(), 5, "{}", v.stdout);

    // Prune with keep_last = 1 keeps the newest and so its whole chain.
    policy(&d, &pg, "incremental = true\n", 1);
    let p = d
        .run(&["prune", "inc", "--dry-run", "--output", "json"])
        .ok()
        .json();
    let backups = p.as_array().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let e = backups.iter().find(|e| e["id"] == *id).unwrap();
        assert_eq!(e["action"], "keep", "{e:#}");
        if i < 3 {
            assert_eq!(
                e["reasons"][0],
                format!("parent of {}", ids[i + 1]),
                "{e:#}"
            );
        }
    }

    // A flipped byte in the first incremental fails it and both of its
    // dependents, by name, and a restore of the newest.
    let obj = d
        .repo_dir()
        .join(format!("inc/backups/{}/base.tar.zst.age", ids[1]));
    let mut b = std::fs::read(&obj).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    std::fs::write(&obj, b).unwrap();
    let v = d.run(&["verify", "inc"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    for dep in &ids[2..] {
        let line = v
            .stdout
            .lines()
            .find(|l| l.contains(dep))
            .unwrap_or_default();
        assert!(
            line.contains("FAIL")
                || v.stdout
                    .contains(&format!("{}, a backup in its chain", ids[1])),
            "{dep} passed with a corrupt parent: {}",
            v.stdout
        );
    }
    assert_eq!(
        v.stdout
            .matches(&format!(
                "{}, a backup in its chain, failed verification",
                ids[1]
            ))
            .count(),
        2,
        "{}",
        v.stdout
    );
    let (_, r) = restore_backup(&d, ids[3]);
    assert_eq!(r.code, 1, "a restore over a corrupt parent: {}", r.stdout);
    assert!(r.stderr.contains(ids[1]), "{}", r.stderr);
}

#[test]
fn postgresql_15_block_deltas_restore_each_point() {
    chain_restores_each_point(15);
}

#[test]
fn postgresql_17_full_and_three_incrementals_restore_each_point() {
    chain_restores_each_point(17);
}

#[test]
fn postgresql_18_full_and_three_incrementals_restore_each_point() {
    chain_restores_each_point(18);
}

/// A cluster with tablespaces: incrementals of it (the server's own on
/// 17+, drctl's block deltas on 15/16) restore each point equal, with the
/// tablespaces where --tablespace-map says; a tablespace created and one
/// dropped between links, and a table dropped in a tablespace, come back
/// as they were at each point.
fn tablespace_chain_restores_each_point(major: u32) {
    let d = Drctl::for_owner();
    let pg = cluster(&d, major, true);
    policy(&d, &pg, "incremental = true\n", 10);
    let homes = tempfile::tempdir().unwrap();
    for t in ["ts1", "ts2", "ts3"] {
        std::fs::create_dir(homes.path().join(t)).unwrap();
    }
    common::give_to_owner(homes.path());
    let home = |t: &str| homes.path().join(t).display().to_string();
    let oid = |t: &str| {
        pg.query(
            "postgres",
            &format!("SELECT oid FROM pg_tablespace WHERE spcname = '{t}'"),
        )
    };
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE ts1 LOCATION '{}';
             CREATE TABLESPACE ts3 LOCATION '{}';
             CREATE TABLE hot (id int PRIMARY KEY, v text) TABLESPACE ts1;
             INSERT INTO hot SELECT g, md5(g::text) || repeat('x', 150) FROM generate_series(1, 50000) g;
             CREATE TABLE doomed TABLESPACE ts1 AS SELECT g AS id FROM generate_series(1, 1000) g;
             CREATE TABLE gone_with_ts3 (id int) TABLESPACE ts3;
             CREATE TABLE cold AS SELECT g AS id FROM generate_series(1, 300) g;",
            home("ts1"),
            home("ts3")
        ),
    );
    let (ts1, ts3) = (oid("ts1"), oid("ts3"));
    let first = d.run(&["backup", "inc", "--output", "json"]).ok().json();
    assert_eq!(first["kind"], "full", "{first:#}");
    let mut points = vec![(
        first["id"].as_str().unwrap().to_string(),
        pg.fingerprint("postgres"),
        vec![ts1.clone(), ts3.clone()],
    )];
    // 1: rows change in ts1. 2: ts2 is created, a table in ts1 and
    // all of ts3 are dropped.
    let rounds = [
        "UPDATE hot SET v = 'round 1' WHERE id BETWEEN 1000 AND 1500;".to_string(),
        format!(
            "CREATE TABLESPACE ts2 LOCATION '{}';
             CREATE TABLE fresh TABLESPACE ts2 AS SELECT g AS id, 'in ts2' AS v FROM generate_series(1, 700) g;
             DROP TABLE doomed; DROP TABLE gone_with_ts3; DROP TABLESPACE ts3;
             UPDATE hot SET v = 'round 2' WHERE id BETWEEN 2000 AND 2300;",
            home("ts2")
        ),
    ];
    for (n, sql) in rounds.iter().enumerate() {
        pg.psql("postgres", sql);
        let want = pg.fingerprint("postgres");
        let v = d.run(&["backup", "inc", "--output", "json"]).ok().json();
        assert_eq!(
            v["kind"],
            "incremental",
            "PostgreSQL {major}: round {} of a cluster with tablespaces: {v:#}",
            n + 1
        );
        assert_eq!(v["parent"], points.last().unwrap().0.as_str(), "{v:#}");
        let ts = if n == 0 {
            vec![ts1.clone(), ts3.clone()]
        } else {
            vec![ts1.clone(), oid("ts2")]
        };
        points.push((v["id"].as_str().unwrap().to_string(), want, ts));
    }
    pg.psql("postgres", "CREATE TABLE after_all (x int)");
    switch_and_archive(&pg);
    let (full_bytes, inc_bytes) = (stored(&d, &points[0].0), stored(&d, &points[1].0));
    assert!(
        inc_bytes * 3 < full_bytes,
        "PostgreSQL {major}: an incremental of a cluster with tablespaces stored {inc_bytes} bytes against the full's {full_bytes}"
    );

    // ts1's own archive holds only what changed in it. Round 2's, not
    // round 1's: on 15 the first writes after the load also set hint bits
    // on every page of the table (no WAL, same LSN), and a page hash sees
    // that change once.
    let ts_object = |id: &str| {
        let show = d.run(&["show", id, "--output", "json"]).ok().json();
        show["manifest"]["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == format!("tablespace-{ts1}"))
            .map(|o| o["stored_bytes"].as_u64().unwrap())
            .unwrap()
    };
    let (full_ts, inc_ts) = (ts_object(&points[0].0), ts_object(&points[2].0));
    assert!(
        inc_ts * 5 < full_ts,
        "PostgreSQL {major}: ts1 stored {inc_ts} bytes in an incremental against the full's {full_ts}"
    );

    for (id, want, ts) in &points {
        let server = Restored::new();
        let mut args: Vec<String> = [
            "restore",
            "inc",
            "--backup",
            id,
            "--target-dir",
            &server.dir.display().to_string(),
            "--start",
            "--port",
            &server.port.to_string(),
            "--identity",
            &d.identity_arg(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        for t in ts {
            args.push("--tablespace-map".into());
            let to = server.dir.parent().unwrap().join(format!("ts-{t}"));
            args.push(format!("{t}={}", to.display()));
        }
        let r = d.run(&args.iter().map(|a| a.as_str()).collect::<Vec<_>>());
        assert_eq!(r.code, 0, "PostgreSQL {major}: restore {id}: {}", r.stderr);
        let got = common::fingerprint_url(&server.url("postgres"));
        assert_eq!(
            &got, want,
            "PostgreSQL {major}: the restore of {id} differs"
        );
        // Each tablespace is where it was mapped, and only those.
        let links: Vec<String> = std::fs::read_dir(server.dir.join("pg_tblspc"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let to = std::fs::read_link(e.path()).unwrap();
                assert!(
                    to.starts_with(server.dir.parent().unwrap()),
                    "{} points at {}",
                    e.path().display(),
                    to.display()
                );
                e.file_name().to_string_lossy().into_owned()
            })
            .collect();
        let mut links = links;
        links.sort();
        let mut want_ts = ts.clone();
        want_ts.sort();
        assert_eq!(links, want_ts, "PostgreSQL {major}: tablespaces of {id}");
    }
    // The restores did not touch the source's tablespaces.
    assert_eq!(pg.query("postgres", "SELECT count(*) FROM fresh"), "700");
    let r = d.run(&["verify", "inc", "--deep", "--identity", &d.identity_arg()]);
    assert_eq!(r.code, 0, "PostgreSQL {major}: {}{}", r.stdout, r.stderr);
}

#[test]
fn postgresql_15_block_deltas_of_a_cluster_with_tablespaces_restore_each_point() {
    tablespace_chain_restores_each_point(15);
}

#[test]
fn postgresql_17_incrementals_of_a_cluster_with_tablespaces_restore_each_point() {
    tablespace_chain_restores_each_point(17);
}

#[test]
fn what_rules_an_incremental_out_makes_a_full_with_a_note_and_check_says_so() {
    let d = Drctl::for_owner();
    let pg = cluster(&d, 17, false);
    policy(&d, &pg, "incremental = true\n", 10);
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let c = d.run(&["check", "inc"]);
    assert_eq!(c.code, 1, "{}", c.stdout);
    assert!(c.stdout.contains("summarize_wal is off"), "{}", c.stdout);
    d.backup("inc");
    let r = d.run(&["backup", "inc"]).ok();
    assert!(
        r.stderr
            .contains("a full backup, not an incremental: summarize_wal is off"),
        "{}",
        r.stderr
    );
    assert!(d.list("inc").iter().all(|e| e["kind"] == "full"));
    // Insisting fails, naming why, and takes nothing.
    let forced = d.run(&["backup", "inc", "--incremental"]);
    assert_eq!(forced.code, 1, "{}", forced.stderr);
    assert!(
        forced.stderr.contains("summarize_wal is off"),
        "{}",
        forced.stderr
    );
    assert_eq!(d.list("inc").len(), 2);
    // Turned on: the next is an incremental; --full forces a full.
    pg.psql(
        "postgres",
        "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf();",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    let c = d.run(&["check", "inc"]).ok();
    assert!(c.stdout.contains("summarize_wal = on"), "{}", c.stdout);
    // Summaries start from when it was turned on: the newest full is older,
    // so this one falls back to a full with the server's reason.
    let r = d.run(&["backup", "inc"]).ok();
    let kinds: Vec<String> = d
        .list("inc")
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    if kinds[0] == "full" {
        assert!(
            r.stderr.contains("note"),
            "a full without a note: {}",
            r.stderr
        );
    }
    let r = d.run(&["backup", "inc", "--output", "json"]).ok();
    assert_eq!(r.json()["kind"], "incremental", "{}", r.stderr);
    let r = d.run(&["backup", "inc", "--full", "--output", "json"]).ok();
    assert_eq!(r.json()["kind"], "full");
    // Dump policies have no kinds.
    d.write_policy("dump", &pg.url("postgres"), "");
    let r = d.run(&["backup", "dump", "--incremental"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = d.run(&["policy", "check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    d.write_policy("dump", &pg.url("postgres"), "");
    let p = d.path().join("policies/dump.toml");
    let text = std::fs::read_to_string(&p).unwrap().replacen(
        "method = \"dump\"\n",
        "method = \"dump\"\nincremental = true\n",
        1,
    );
    d.write_policy_text("dump", &text);
    let r = d.run(&["policy", "check"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("backup.incremental"),
        "{} {}",
        r.stdout,
        r.stderr
    );
}

/// Spawned in its own process group, so that kill -9 reaches drctl also
/// when it runs under runuser as the cluster owner.
fn spawn(d: &Drctl, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    d.command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_during_an_incremental_leaves_nothing_listed_and_the_next_builds_on_the_last_good_one() {
    let d = Drctl::for_owner();
    let pg = cluster(&d, 15, false);
    policy(&d, &pg, "incremental = true\n", 10);
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) || repeat('x', 150) FROM generate_series(1, 200000) g;",
    );
    let full = d.backup("inc");
    pg.psql("postgres", "UPDATE t SET v = 'one' WHERE id <= 2000");
    // Killed once its objects are being written (mid-stream), not before.
    let mut landed = false;
    for _ in 0..3 {
        let mut child = spawn(&d, &["backup", "inc", "--incremental"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            let writing = std::fs::read_dir(d.repo_dir().join("inc/backups"))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy() != full)
                .any(|e| std::fs::read_dir(e.path()).is_ok_and(|mut r| r.next().is_some()));
            if writing {
                // SAFETY: a process group this test created.
                unsafe {
                    libc::kill(-(child.id() as i32), libc::SIGKILL);
                }
                landed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.wait();
        if landed {
            break;
        }
        // It finished first: take it away and try again.
        let newest = d.list("inc")[0]["id"].as_str().unwrap().to_string();
        assert_ne!(newest, full);
        std::fs::remove_dir_all(d.repo_dir().join(format!("inc/backups/{newest}"))).unwrap();
        d.run(&["catalog", "rebuild"]).ok();
    }
    assert!(landed, "every incremental finished before its kill");
    // Nothing of it is listed as a backup, and the repository holds no
    // manifest of it.
    let complete: Vec<String> = d
        .list("inc")
        .iter()
        .filter(|e| e["status"] == "complete")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(complete.len(), 1, "{complete:?}");
    assert_eq!(d.repo_files("manifest.json").len(), 1);
    // The next run clears what the killed one left and builds on the
    // last complete backup; its chain restores equal.
    let want = pg.fingerprint("postgres");
    let v = d.run(&["backup", "inc", "--output", "json"]).ok().json();
    assert_eq!(v["kind"], "incremental", "{v:#}");
    assert_eq!(v["parent"], complete[0].as_str());
    pg.psql("postgres", "CREATE TABLE after_all (x int)");
    switch_and_archive(&pg);
    let (got, r) = restore_backup(&d, v["id"].as_str().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(got, want);
}

/// With the catalog in PostgreSQL (fleet mode): the block maps the
/// incrementals compare against and the copy's bookkeeping live there too.
#[test]
fn a_copy_restores_a_chain_with_the_primary_gone_and_the_catalog_in_postgresql() {
    let mut d = Drctl::for_owner();
    let pg = cluster(&d, 15, false);
    pg.createdb("drctl_catalog");
    d.extra_env
        .push(("DRCTL_CATALOG".into(), pg.url("drctl_catalog")));
    d.extra_env.push((
        "DRCTL_STATE_DIR".into(),
        d.path().join("state").display().to_string(),
    ));
    policy(&d, &pg, "incremental = true\n", 10);
    let copy_dir = d.path().join("copy-repo");
    let p = d.path().join("policies/inc.toml");
    let text = std::fs::read_to_string(&p).unwrap()
        + &format!(
            "\n[[copy]]\nname = \"second\"\nurl = \"file://{}\"\n",
            copy_dir.display()
        );
    d.write_policy_text("inc", &text);
    pg.psql(
        "postgres",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
    );
    d.backup("inc");
    pg.psql("postgres", "UPDATE t SET v = 'one' WHERE id <= 500");
    let one = d.run(&["backup", "inc", "--output", "json"]).ok().json();
    pg.psql(
        "postgres",
        "UPDATE t SET v = 'two' WHERE id > 49000; DELETE FROM t WHERE id % 1000 = 7",
    );
    let want = pg.fingerprint("postgres");
    let two = d.run(&["backup", "inc", "--output", "json"]).ok().json();
    assert_eq!(two["parent"], one["id"]);
    // Both repositories hold every backup, by the catalog's bookkeeping.
    for e in d.list("inc") {
        assert_eq!(
            e["repositories"],
            serde_json::json!(["primary", "second"]),
            "{e:#}"
        );
    }
    let maps = pg.query(
        "drctl_catalog",
        "SELECT count(DISTINCT backup_id) FROM block_maps",
    );
    assert_eq!(
        maps.trim(),
        "3",
        "every physical backup's block map is in PostgreSQL"
    );
    assert!(!d.catalog().exists(), "a SQLite catalog was made");
    pg.psql("postgres", "CREATE TABLE after_all (x int)");
    switch_and_archive(&pg);
    std::fs::remove_dir_all(d.repo_dir()).unwrap();
    let (got, r) = restore_backup(&d, two["id"].as_str().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(got, want, "the chain from the copy differs");
}

/// The policy's server becomes another cluster (a new one, or pg_upgrade,
/// which carries the WAL position over): the chain starts again with a
/// full and a note, never an incremental the server refuses or a chain of
/// two clusters; --incremental says why not.
#[test]
fn another_cluster_behind_the_policy_starts_a_new_chain() {
    let d = Drctl::for_owner();
    let old = cluster(&d, 17, true);
    policy(&d, &old, "incremental = true\n", 10);
    old.psql("postgres", "CREATE TABLE t AS SELECT 1 AS x");
    d.run(&["backup", "inc"]).ok();
    drop(old);

    let new = cluster(&d, 17, true);
    // Its WAL names follow the old cluster's, as after pg_upgrade.
    new.reset_wal_to("000000010000000100000000");
    policy(&d, &new, "incremental = true\n", 10);
    new.psql("postgres", "CREATE TABLE u AS SELECT 2 AS y");
    let refused = d.run(&["backup", "inc", "--incremental"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("another cluster"),
        "{}",
        refused.stderr
    );
    let r = d.run(&["backup", "inc", "--output", "json"]).ok();
    assert_eq!(r.json()["kind"], "full", "{}", r.stdout);
    assert!(
        r.stderr
            .contains("a full backup, not an incremental: the server is another cluster"),
        "{}",
        r.stderr
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let (got, r) = restore_backup(&d, &id);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(got, new.fingerprint("postgres"));
}
