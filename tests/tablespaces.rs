//! A cluster with a tablespace: the base backup goes over drctl's own
//! replication connection (SCRAM-authenticated here), one object per
//! archive; the restore puts the tablespace where --tablespace-map says and
//! brings back the same data, including WAL replayed into the tablespace.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{wait_archived, Drctl, PgCluster};

const SECRET: &str = "repl-Secret-4411";

struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        common::stop_server(&self.0);
    }
}

#[test]
fn a_cluster_with_a_tablespace_restores_with_the_tablespace_relocated() {
    let mut d = Drctl::for_owner();
    let pg = PgCluster::start_full(
        &[
            "host all postgres 127.0.0.1/32 trust",
            "host all backup 127.0.0.1/32 scram-sha-256",
            "host replication backup 127.0.0.1/32 scram-sha-256",
        ],
        &["archive_mode = on".into(), d.archive_command("ts")],
    );
    let place = tempfile::tempdir().unwrap();
    let ts_dir = place.path().join("ts1");
    std::fs::create_dir(&ts_dir).unwrap();
    common::give_to_owner(place.path());
    pg.psql(
        "postgres",
        &format!(
            "CREATE ROLE backup LOGIN REPLICATION PASSWORD '{SECRET}';
             GRANT pg_monitor TO backup;
             CREATE TABLESPACE ts1 LOCATION '{}';
             CREATE TABLE hot (id int PRIMARY KEY, v text) TABLESPACE ts1;
             INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
             CREATE TABLE cold AS SELECT g AS id FROM generate_series(1, 300) g;",
            ts_dir.display()
        ),
    );
    let oid = pg.query(
        "postgres",
        "SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'",
    );
    d.write_physical_policy("ts", &pg.url_as("backup", "postgres"));
    let text = std::fs::read_to_string(d.path().join("policies/ts.toml"))
        .unwrap()
        .replace(
            "kind = \"postgres\"\n",
            "kind = \"postgres\"\npassword_env = \"TS_PW\"\n",
        )
        // drctl compresses (the PITR test covers the server doing it).
        .replace("level = 3\n", "level = 3\non_server = false\n");
    d.write_policy_text("ts", &text);

    // A wrong password: the server's own words, exit 1, nothing committed.
    d.extra_env = vec![("TS_PW".into(), "not-the-password".into())];
    let r = d.run(&["backup", "ts"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("not-the-password"));
    assert!(
        d.list("ts").iter().all(|b| b["status"] != "complete"),
        "{:?}",
        d.list("ts")
    );
    assert!(d.repo_files(".tar.zst.age").is_empty());

    d.extra_env = vec![("TS_PW".into(), SECRET.into())];
    let id = d.backup("ts");
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    let m = &show["manifest"];
    assert_eq!(m["tablespaces"][0]["oid"].to_string(), oid);
    assert_eq!(
        m["tablespaces"][0]["location"],
        ts_dir.display().to_string()
    );
    let names: Vec<&str> = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    // The server's own manifest comes last: restores prove the restored
    // directory with pg_verifybackup against it.
    assert_eq!(
        names,
        [
            "base".to_string(),
            format!("tablespace-{oid}"),
            "backup_manifest".into()
        ]
    );
    assert_eq!(m["server_manifest"], "object");
    for f in d.repo_files("") {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "secret in {}",
            f.display()
        );
    }

    // Written after the backup: comes back only by WAL replay into ts1.
    pg.psql(
        "postgres",
        "INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(5001, 6000) g;
         UPDATE hot SET v = 'changed' WHERE id % 7 = 0;",
    );
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);
    let want = pg.fingerprint("postgres");
    assert!(
        want.iter().any(|l| l.starts_with("public.hot|6000|")),
        "{want:?}"
    );

    let parent = tempfile::tempdir().unwrap();
    common::give_to_owner(parent.path());
    let target = parent.path().join("data");
    let new_ts = parent.path().join("ts1-restored");
    let target_s = target.display().to_string();
    let identity = d.identity_arg();

    // The tablespace's home on this host is in use: refused before writing.
    let r = d.run(&[
        "restore",
        "ts",
        "--latest",
        "--target-dir",
        &target_s,
        "--identity",
        &identity,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--tablespace-map"), "{}", r.stderr);
    assert!(!target.exists());

    // A map naming a tablespace the backup does not have is a usage error.
    let r = d.run(&[
        "restore",
        "ts",
        "--latest",
        "--target-dir",
        &target_s,
        "--identity",
        &identity,
        "--tablespace-map",
        "99999=/tmp/nowhere",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no tablespace 99999"), "{}", r.stderr);

    let port = common::free_port();
    let map = format!("{}={}", ts_dir.display(), new_ts.display());
    // Stops the restored server however the test ends.
    let _server = StopOnDrop(target.clone());
    d.run(&[
        "restore",
        "ts",
        "--latest",
        "--target-dir",
        &target_s,
        "--identity",
        &identity,
        "--tablespace-map",
        &map,
        "--start",
        "--port",
        &port.to_string(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_link(target.join("pg_tblspc").join(&oid)).unwrap(),
        new_ts
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_eq!(common::fingerprint_url(&url), want);
    let out = Command::new(common::pg_tool("psql"))
        .args(["-X", "-A", "-t", "-w", "--dbname", &url, "-c"])
        .arg("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        new_ts.display().to_string()
    );
    // The source's tablespace was not touched by the restore.
    assert!(std::fs::read_dir(&ts_dir).unwrap().next().is_some());

    d.run(&["verify", "ts", "--deep", "--identity", &identity])
        .ok();
}

/// On a terminal, each operation draws one bar with a percentage against a
/// known total: a base backup of two archives (data directory and
/// tablespace) and its restore do not start again at 0 B per archive, and
/// a dump's bar has the tables' size as its estimate.
#[test]
fn each_operation_draws_one_bar_with_a_percentage_on_a_terminal() {
    let d = Drctl::for_owner();
    let pg = PgCluster::start_full(
        &[
            "host all postgres 127.0.0.1/32 trust",
            "host replication postgres 127.0.0.1/32 trust",
        ],
        &["archive_mode = on".into(), d.archive_command("ts")],
    );
    let place = tempfile::tempdir().unwrap();
    let ts_dir = place.path().join("ts1");
    std::fs::create_dir(&ts_dir).unwrap();
    common::give_to_owner(place.path());
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLESPACE ts1 LOCATION '{}';
             CREATE TABLE hot (id int PRIMARY KEY, v text) TABLESPACE ts1;
             INSERT INTO hot SELECT g, md5(g::text) FROM generate_series(1, 200000) g;",
            ts_dir.display()
        ),
    );
    d.write_physical_policy("ts", &pg.url("postgres"));
    d.write_policy("shop", &pg.url("postgres"), "");
    // "55.76 MiB" as bytes.
    let bytes = |shown: &str| -> f64 {
        let (n, unit) = shown.split_once(' ').unwrap();
        let scale = match unit {
            "B" => 1.0,
            "KiB" => 1024f64,
            "MiB" => 1024f64 * 1024.0,
            "GiB" => 1024f64 * 1024.0 * 1024.0,
            u => panic!("unit {u}"),
        };
        n.parse::<f64>().unwrap() * scale
    };

    // Every frame of one operation: the same label, percentages that only
    // grow, and one total (an estimate may grow at the end, by a little).
    let one_bar = |screen: &str, label: &str| {
        let frames = common::bar_frames(screen);
        assert!(!frames.is_empty(), "no bar with a percentage: {screen:?}");
        let first = bytes(&frames[0].total);
        for f in &frames {
            assert_eq!(f.label, label, "{frames:?}");
            let t = bytes(&f.total);
            assert!(t >= first && t < first * 1.01, "{frames:?}");
        }
        assert!(
            frames.windows(2).all(|w| w[0].percent <= w[1].percent),
            "{frames:?}"
        );
        frames
    };

    let (code, screen) = common::on_tty(&d.command(&["backup", "ts"]));
    assert_eq!(code, 0, "{screen}");
    one_bar(&screen, "base backup");
    let id = d.list("ts")[0]["id"].as_str().unwrap().to_string();

    let parent = tempfile::tempdir().unwrap();
    common::give_to_owner(parent.path());
    let target = parent.path().join("data");
    let map = format!(
        "{}={}",
        ts_dir.display(),
        parent.path().join("ts").display()
    );
    let key = d.identity_arg();
    let (code, screen) = common::on_tty(&d.command(&[
        "restore",
        "ts",
        "--backup",
        &id,
        "--target-dir",
        target.to_str().unwrap(),
        "--tablespace-map",
        &map,
        "--identity",
        &key,
    ]));
    assert_eq!(code, 0, "{screen}");
    let frames = one_bar(&screen, &format!("restore {id}"));
    // The total is the backup's plain size, as `show` gives it.
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    let plain: u64 = show["manifest"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["name"] != "backup_manifest")
        .map(|o| o["plain_bytes"].as_u64().unwrap())
        .sum();
    let ratio = bytes(&frames[0].total) / plain as f64;
    assert!((0.99..1.01).contains(&ratio), "{frames:?} vs {plain}");

    let (code, screen) = common::on_tty(&d.command(&["backup", "shop"]));
    assert_eq!(code, 0, "{screen}");
    one_bar(&screen, "pg_dump");
}
