//! Second copies (`[[copy]]`) against real PostgreSQL 15 and the loopback
//! S3 server: one read of the database written to every repository,
//! restores and WAL that fail over when the primary is gone, a copy that
//! is down failing the backup and `drctl copy` bringing it level.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{wait_archived, Drctl, PgCluster, Restored, S3Server, SAMPLE_SQL};

/// The `[[copy]]` section for bucket `bucket` on `endpoint`.
fn copy_section(name: &str, bucket: &str, endpoint: &str) -> String {
    format!(
        "\n[[copy]]\nname = \"{name}\"\nurl = \"s3://{bucket}/pg\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nforce_path_style = true\nrequest_timeout = \"5s\"\n"
    )
}

/// An S3 server with bucket `offsite`, and a cluster with database `shop`
/// loaded with the sample data; its fingerprint.
fn shop_and_offsite() -> (S3Server, PgCluster, Vec<String>) {
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let before = pg.fingerprint("shop");
    (s3, pg, before)
}

/// The copy in bucket `offsite` holds the file primary's manifest of `id`,
/// byte for byte.
fn same_manifest(d: &Drctl, s3: &S3Server, policy: &str, id: &str) {
    let local = std::fs::read_to_string(
        d.repo_dir()
            .join(format!("{policy}/backups/{id}/manifest.json")),
    )
    .unwrap();
    let remote = s3.get(&format!("/offsite/pg/{policy}/backups/{id}/manifest.json"));
    assert!(remote.ends_with(&local), "{remote}");
}

fn add_to_policy(d: &Drctl, name: &str, text: &str) {
    let p = d.path().join("policies").join(format!("{name}.toml"));
    let all = std::fs::read_to_string(&p).unwrap() + text;
    d.write_policy_text(name, &all);
}

fn restore_dump(d: &Drctl, pg: &PgCluster, db: &str, extra: &[&str]) -> common::Run {
    let id = d.identity_arg();
    let url = pg.url(db);
    let mut args = vec![
        "restore",
        "shop",
        "--latest",
        "--target",
        &url,
        "--identity",
        &id,
    ];
    args.extend_from_slice(extra);
    d.run(&args)
}

#[test]
fn one_backup_writes_every_repository_and_restores_from_the_copy_when_the_primary_is_gone() {
    let (s3, pg, before) = shop_and_offsite();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    add_to_policy(
        &d,
        "shop",
        &copy_section("offsite", "offsite", &s3.endpoint()),
    );
    d.run(&["policy", "check", "shop"]).ok();

    let id = d.backup("shop");
    // The copy holds the same committed backup: its manifest is the
    // primary's, and its objects pass that manifest's checksums (the
    // encrypted bytes are identical, so the database was read once).
    same_manifest(&d, &s3, "shop", &id);
    d.run(&["verify", "shop", "--repo", "offsite"]).ok();
    d.run(&["verify", "shop", "--repo", "primary"]).ok();
    assert_eq!(
        d.list("shop")[0]["repositories"],
        serde_json::json!(["primary", "offsite"])
    );

    // The primary repository is lost: restores read the copy.
    std::fs::remove_dir_all(d.repo_dir()).unwrap();
    let r = restore_dump(&d, &pg, "from_copy", &[]).ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(pg.fingerprint("from_copy"), before);
    // A drill proves the copy restores, and says it read the copy.
    let id_arg = d.identity_arg();
    let junit = d.path().join("offsite.xml");
    let drill = d
        .run(&[
            "drill",
            "shop",
            "--repo",
            "offsite",
            "--output",
            "json",
            "--identity",
            &id_arg,
            "--junit",
            junit.to_str().unwrap(),
        ])
        .ok()
        .json();
    assert_eq!(drill["passed"], true, "{drill}");
    assert_eq!(drill["backup_id"], id.as_str());
    assert_eq!(drill["repository"], "offsite", "{drill}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<property name=\"repository\" value=\"offsite\"/>"),
        "{xml}"
    );
    // So does a restore's plan.
    let plan = restore_dump(
        &d,
        &pg,
        "planned",
        &["--repo", "offsite", "--dry-run", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(plan["repository"], "offsite", "{plan}");
    let plan = restore_dump(&d, &pg, "planned", &["--repo", "offsite", "--dry-run"]).ok();
    assert!(
        plan.stdout.contains("repository:    offsite"),
        "{}",
        plan.stdout
    );
    // --repo pins one: the primary has nothing left to give.
    let r = restore_dump(&d, &pg, "pinned", &["--repo", "primary"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let r = restore_dump(&d, &pg, "nowhere", &["--repo", "elsewhere"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no repository named 'elsewhere'"),
        "{}",
        r.stderr
    );

    // A rebuilt catalog knows where each backup lives: only the copy now.
    std::fs::remove_file(d.catalog()).unwrap();
    d.run(&["catalog", "rebuild"]).ok();
    let listed = d.list("shop");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["repositories"], serde_json::json!(["offsite"]));
}

#[test]
fn a_copy_that_is_down_fails_the_backup_and_drctl_copy_brings_it_level() {
    let (s3, pg, before) = shop_and_offsite();
    let mut d = Drctl::new();
    d.extra_env.push(("AWS_MAX_ATTEMPTS".into(), "1".into()));
    d.write_policy("shop", &pg.url("shop"), "");
    let (hook, got) = common::webhook();
    let policy = std::fs::read_to_string(d.path().join("policies/shop.toml")).unwrap()
        + &format!("\n[notify]\nwebhook_url = \"{hook}\"\n");
    // Nothing listens there: the copy is down.
    let down = format!("http://127.0.0.1:{}", common::free_port());
    d.write_policy_text(
        "shop",
        &format!("{policy}{}", copy_section("offsite", "offsite", &down)),
    );
    let r = d.run(&["check", "shop"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("copy offsite writable"), "{}", r.stderr);
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("complete in the primary repository but not in offsite"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("drctl copy shop"), "{}", r.stderr);
    let events: Vec<serde_json::Value> = got.lock().unwrap().clone();
    let failed = events
        .iter()
        .find(|e| e["event"] == "copy_failed")
        .unwrap_or_else(|| panic!("no copy_failed webhook: {events:?}"));
    assert!(
        failed["message"].as_str().unwrap().contains("offsite"),
        "{failed}"
    );
    // The primary has it, committed.
    let listed = d.list("shop");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed[0]["status"], "complete");
    assert_eq!(listed[0]["repositories"], serde_json::json!(["primary"]));
    let copy_of = |d: &Drctl| {
        let s = d.run(&["status", "shop", "--output", "json"]).json();
        s[0]["copies"][0].clone()
    };
    let behind = copy_of(&d);
    assert_eq!(behind["name"], "offsite", "{behind}");
    assert_eq!(behind["missing_backups"], 1, "{behind}");

    // The copy answers again: `drctl copy` brings it level, and only once.
    d.write_policy_text(
        "shop",
        &format!(
            "{policy}{}",
            copy_section("offsite", "offsite", &s3.endpoint())
        ),
    );
    let r = d.run(&["copy", "shop", "--output", "json"]).ok().json();
    assert_eq!(r[0]["copy"], "offsite");
    assert_eq!(r[0]["backups"][0], id.as_str());
    assert!(r[0]["error"].is_null(), "{r}");
    let again = d.run(&["copy", "shop", "--output", "json"]).ok().json();
    assert!(
        again[0]["backups"].as_array().unwrap().is_empty(),
        "{again}"
    );
    let level = copy_of(&d);
    assert_eq!(level["missing_backups"], 0, "{level}");
    assert_eq!(level["lag_seconds"], 0, "{level}");
    assert_eq!(
        d.list("shop")[0]["repositories"],
        serde_json::json!(["primary", "offsite"])
    );
    d.run(&["verify", "shop", "--repo", "offsite"]).ok();
    let r = restore_dump(&d, &pg, "from_copy", &["--repo", "offsite"]).ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    assert_eq!(pg.fingerprint("from_copy"), before);

    // Down again for one run; the next run catches the copy up.
    d.write_policy_text(
        "shop",
        &format!("{policy}{}", copy_section("offsite", "offsite", &down)),
    );
    assert_eq!(d.run(&["backup", "shop"]).code, 1);
    d.write_policy_text(
        "shop",
        &format!(
            "{policy}{}",
            copy_section("offsite", "offsite", &s3.endpoint())
        ),
    );
    d.backup("shop");
    let level = copy_of(&d);
    assert_eq!(level["missing_backups"], 0, "{level}");
    let listed = d.list("shop");
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed
        .iter()
        .all(|b| b["repositories"] == serde_json::json!(["primary", "offsite"])));
    d.run(&["verify", "shop", "--repo", "offsite"]).ok();

    // A flipped byte in the primary is caught on the way, not copied.
    let data = d.repo_dir().join(format!("shop/backups/{id}/data.zst.age"));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let r = d.run(&["copy", "shop", "--to", "offsite2"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = d.run(&["copy", "shop", "--backup", "20200101T000000Z-0000"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no complete backup"), "{}", r.stderr);
    add_to_policy(
        &d,
        "shop",
        &copy_section("second", "second", &s3.endpoint()),
    );
    s3.create_bucket("second");
    let r = d.run(&["copy", "shop", "--to", "second"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("sha256"), "{}", r.stderr);
    let listing = s3.get("/second?list-type=2&prefix=pg/shop/backups/");
    assert!(!listing.contains("data.zst.age"), "{listing}");
}

#[test]
fn point_in_time_restore_and_wal_fetch_fail_over_to_the_copy() {
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let d = Drctl::for_owner();
    let archive = d.s3_archive_command("pitr");
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), archive]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    add_to_policy(
        &d,
        "pitr",
        &copy_section("offsite", "offsite", &s3.endpoint()),
    );
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int); INSERT INTO batches SELECT 0, g FROM generate_series(1, 100) g;",
    );
    let id = d.backup("pitr");
    // One BASE_BACKUP fed both: the copy's manifest is the primary's.
    same_manifest(&d, &s3, "pitr", &id);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g FROM generate_series(1, 1000) g;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 2, g FROM generate_series(1, 1000) g;",
    );
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);
    // Every archived segment reached the copy, sidecar and all.
    let listing = s3.get("/offsite?list-type=2&prefix=pg/pitr/wal/");
    assert!(listing.contains(&format!("{seg}.json")), "{listing}");
    assert!(listing.contains(&format!("{seg}.zst.age")), "{listing}");
    assert!(!s3
        .get("/offsite?list-type=2&prefix=pg/pitr/copies/")
        .contains("<Key>"));

    std::fs::remove_dir_all(d.repo_dir()).unwrap();
    // wal-fetch alone, as restore_command runs it: from the copy.
    let out = d.path().join("fetched");
    let r = d.run(&[
        "wal-fetch",
        "pitr",
        &seg,
        &out.display().to_string(),
        "--identity",
        &d.identity_arg(),
        "--prefetch",
        "0",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 16 << 20);

    let server = Restored::new();
    let r = d.run(&[
        "restore",
        "pitr",
        "--to",
        &target,
        "--target-dir",
        &server.dir.display().to_string(),
        "--identity",
        &d.identity_arg(),
        "--start",
        "--port",
        &server.port.to_string(),
    ]);
    let r = r.ok();
    assert!(r.stdout.contains(&id), "{}", r.stdout);
    let got = Command::new(common::pg_tool("psql"))
        .args(["-X", "-A", "-t", "-w"])
        .arg(format!("--dbname={}", server.url("postgres")))
        .args([
            "-c",
            "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) || ' ' || count(*) FROM batches",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "0,1 1100");
}

/// wal-push of timeline `tli`'s history file exits 1 saying `why`, and
/// the primary holds the file all the same.
#[track_caller]
fn push_fails_but_primary_holds(d: &Drctl, path: &str, tli: u32, why: &str) {
    let r = d.run(&["wal-push", "pitr", path]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(why), "{}", r.stderr);
    let side = format!("pitr/wal/{tli:08X}/{tli:08X}.history.json");
    assert!(d.repo_dir().join(side).exists());
}

#[test]
fn wal_push_keeps_a_backlog_for_a_copy_that_is_down_and_fails_past_max_lag() {
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let mut d = Drctl::new();
    d.extra_env.push(("AWS_MAX_ATTEMPTS".into(), "1".into()));
    d.write_physical_policy("pitr", "postgres://postgres@127.0.0.1:1/postgres");
    let policy = std::fs::read_to_string(d.path().join("policies/pitr.toml")).unwrap();
    let down = format!("http://127.0.0.1:{}", common::free_port());
    let with_copy = |endpoint: &str| {
        format!(
            "{policy}{}max_lag = \"2s\"\n",
            copy_section("offsite", "offsite", endpoint)
        )
    };
    d.write_policy_text("pitr", &with_copy(&down));
    let history = |tli: u32| {
        let p = d.path().join(format!("{tli:08X}.history"));
        std::fs::write(
            &p,
            format!("{}\t0/3000000\tno recovery target specified\n", tli - 1),
        )
        .unwrap();
        p.display().to_string()
    };
    let backlog = d.repo_dir().join("pitr/copies/offsite/wal-backlog");
    let pending = || std::fs::read_dir(&backlog).map(|r| r.count()).unwrap_or(0);

    // The copy is down: the primary has the file, the copy owes it.
    let first = history(2);
    d.run(&["wal-push", "pitr", &first]).ok();
    assert_eq!(pending(), 1);
    // Past max_lag the push fails loudly, though the primary holds it.
    std::thread::sleep(Duration::from_millis(2500));
    let second = history(3);
    push_fails_but_primary_holds(&d, &second, 3, "copy offsite has not taken WAL");
    assert_eq!(pending(), 2);

    // It answers again: PostgreSQL's retry drains the backlog.
    d.write_policy_text("pitr", &with_copy(&s3.endpoint()));
    d.run(&["wal-push", "pitr", &second]).ok();
    assert_eq!(pending(), 0);
    let listing = s3.get("/offsite?list-type=2&prefix=pg/pitr/wal/");
    for name in ["00000002.history", "00000003.history"] {
        assert!(listing.contains(&format!("{name}.json")), "{listing}");
        assert!(listing.contains(&format!("{name}.zst.age")), "{listing}");
    }

    // A new copy is brought level with every archived WAL file by
    // `drctl copy`, and a second run finds nothing to do.
    s3.create_bucket("second");
    d.write_policy_text(
        "pitr",
        &format!(
            "{}{}",
            with_copy(&s3.endpoint()),
            copy_section("second", "second", &s3.endpoint())
        ),
    );
    let r = d
        .run(&["copy", "pitr", "--to", "second", "--output", "json"])
        .ok()
        .json();
    assert_eq!(r[0]["wal_files"], 2, "{r}");
    let r = d.run(&["copy", "pitr", "--output", "json"]).ok().json();
    assert!(
        r.as_array().unwrap().iter().all(|c| c["wal_files"] == 0),
        "{r}"
    );
    let listing = s3.get("/second?list-type=2&prefix=pg/pitr/wal/");
    assert!(listing.contains("00000003.history.zst.age"), "{listing}");

    // A copy that answers and refuses (its bucket is gone) fails the push
    // at once: only an unreachable copy may lag.
    let text = with_copy(&s3.endpoint()).replace("s3://offsite/pg", "s3://no-such-bucket/pg");
    d.write_policy_text("pitr", &text);
    push_fails_but_primary_holds(&d, &history(4), 4, "copy offsite refused the file");
}

#[test]
fn two_buckets_one_backup_and_the_copy_restores_when_the_primary_bucket_is_emptied() {
    let (s3, pg, before) = shop_and_offsite();
    s3.create_bucket("main");
    let d = Drctl::new();
    d.write_policy_repo(
        "shop",
        &pg.url("shop"),
        &format!(
            "url = \"s3://main/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n",
            s3.endpoint()
        ),
        &copy_section("offsite", "offsite", &s3.endpoint()),
    );
    d.run(&["check", "shop"]).ok();
    let id = d.backup("shop");
    let main = s3.get(&format!("/main/pg/shop/backups/{id}/manifest.json"));
    let copy = s3.get(&format!("/offsite/pg/shop/backups/{id}/manifest.json"));
    let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    assert!(
        !body(&main).is_empty() && body(&main) == body(&copy),
        "{main}\n{copy}"
    );

    // Every object of the primary bucket deleted.
    let listing = s3.get("/main?list-type=2");
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .collect();
    assert!(keys.len() >= 3, "{listing}");
    for k in keys {
        assert!(s3.delete(&format!("/main/{k}")).starts_with("HTTP/1.1 204"));
    }
    assert!(!s3.get("/main?list-type=2").contains("<Key>"));
    restore_dump(&d, &pg, "from_copy", &[]).ok();
    assert_eq!(pg.fingerprint("from_copy"), before);
}

/// `drctl check` run with credentials the archiving user lacks: the
/// server's wal-push cannot reach the copy (a refusal, not an outage), and
/// check fails naming the copy instead of passing on the primary alone.
#[test]
fn check_fails_naming_a_copy_the_archiving_user_cannot_reach() {
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let d = Drctl::for_owner();
    let archive = format!(
        "archive_command = 'AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_CONFIG_FILE=/nonexistent AWS_EC2_METADATA_DISABLED=true {} --policies {} wal-push pitr %p'",
        Drctl::bin(),
        d.path().join("policies").display()
    );
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), archive]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    add_to_policy(
        &d,
        "pitr",
        &copy_section("offsite", "offsite", &s3.endpoint()),
    );
    let r = d.run(&["check", "pitr"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("ok   copy offsite writable")
            && r.stdout.contains("FAIL WAL switch reaches")
            && r.stdout.contains("offsite (s3://offsite/pg)"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("passed"), "{}", r.stdout);
    // wal-push failed on the copy's refusal rather than queueing quietly.
    let v = d.run(&["status", "--output", "json"]).json();
    assert!(
        v[0]["archive"]["failed_count"].as_u64().unwrap() >= 1,
        "{v}"
    );
}
