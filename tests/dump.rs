//! `method = "dump"` end to end against real PostgreSQL 15 clusters and a
//! file repository: backup, list, show, verify, restore, and the ways each
//! must fail.

mod common;

use std::process::Command;

use common::{Drctl, PgCluster, CHANGE_SQL, SAMPLE_SQL};

fn sample_cluster() -> PgCluster {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    pg
}

#[test]
fn round_trip_restores_exactly_the_backed_up_content() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let before = pg.fingerprint("shop");
    assert!(before.len() > 8, "fingerprint too small: {before:?}");

    let id = d.backup("shop");
    // The source moves on after the backup; the restore must not see it.
    pg.psql("shop", CHANGE_SQL);
    let after_change = pg.fingerprint("shop");
    assert_ne!(
        before, after_change,
        "the change must alter the fingerprint"
    );

    let listed = d.list("shop");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "complete");
    assert_eq!(listed[0]["method"], "dump");
    assert!(listed[0]["stored_bytes"].as_i64().unwrap() > 0);

    let r = d
        .run(&[
            "restore",
            "shop",
            "--latest",
            "--target",
            &pg.url("shop_restored"),
            "--identity",
            &d.identity_arg(),
        ])
        .ok();
    assert!(
        r.stdout.contains(&id),
        "restore names the backup: {}",
        r.stdout
    );
    assert_eq!(pg.fingerprint("shop_restored"), before);
    // Sanity on the comparison itself: specific values survive.
    assert_eq!(
        pg.query(
            "shop_restored",
            "SELECT v FROM \"Ünïcode schema\".\"Tëst tablé\" WHERE k = 'emoji 🐘'"
        ),
        "🚀"
    );
    assert_eq!(
        pg.query(
            "shop_restored",
            "SELECT count(*) FROM sales.orders WHERE blob IS NULL"
        ),
        "454"
    );
}

#[test]
fn manifest_records_counts_versions_and_checksums() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    let m = show["manifest"].clone();
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["policy"], "shop");
    assert_eq!(m["row_counts"], "exact");
    let tables = m["tables"].as_array().unwrap();
    let count_of = |name: &str| {
        tables
            .iter()
            .find(|t| {
                format!(
                    "{}.{}",
                    t["schema"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                ) == name
            })
            .unwrap_or_else(|| panic!("{name} not in {tables:?}"))["rows"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count_of("sales.orders"), 5000);
    assert_eq!(count_of("sales.customers"), 300);
    assert_eq!(count_of("public.empty_table"), 0);
    assert!(m["source"]["server_version"]
        .as_str()
        .unwrap()
        .starts_with("15"));
    assert!(m["source"]["pg_dump_version"]
        .as_str()
        .unwrap()
        .contains("15"));
    assert_eq!(m["encryption"]["recipients"][0], d.recipient.as_str());
    let obj = &m["objects"][0];
    let stored = std::fs::read(&d.repo_files("data.zst.age")[0]).unwrap();
    assert_eq!(obj["stored_bytes"].as_u64().unwrap(), stored.len() as u64);
    use sha2::Digest;
    assert_eq!(
        obj["stored_sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(&stored))
    );
    // Encrypted at rest: the age header, and no plaintext table content.
    assert!(stored.starts_with(b"age-encryption.org/v1"));
    assert!(!stored.windows(8).any(|w| w == b"customer"));
}

#[test]
fn stock_age_and_zstd_decode_the_stored_object() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.backup("shop");
    let before = pg.fingerprint("shop");
    let obj = &d.repo_files("data.zst.age")[0];
    // The runbook in docs/restore-without-drctl.md, verbatim in spirit.
    pg.createdb("manual");
    let script = format!(
        "set -o pipefail; age -d -i '{}' '{}' | zstd -d | pg_restore --exit-on-error --dbname='{}'",
        d.identity.display(),
        obj.display(),
        pg.url("manual")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("PATH", common::test_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stock pipeline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.fingerprint("manual"), before);
}

#[test]
fn corrupted_byte_is_detected_by_verify_and_restore() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    d.run(&["verify", "shop"]).ok();
    d.run(&["verify", "shop", "--deep", "--identity", &d.identity_arg()])
        .ok();

    let obj = d.repo_files("data.zst.age")[0].clone();
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();

    let v = d.run(&["verify", "shop"]);
    assert_eq!(v.code, 1, "verify must fail: {} {}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains(&id) && v.stdout.contains("sha256"),
        "{}",
        v.stdout
    );

    let r = d.run(&[
        "restore",
        "shop",
        "--backup",
        &id,
        "--target",
        &pg.url("from_corrupt"),
        "--identity",
        &d.identity_arg(),
    ]);
    assert_eq!(r.code, 1, "restore must fail: {} {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(
        !pg.database_exists("from_corrupt"),
        "the half-restored database drctl created must be dropped"
    );
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    assert_eq!(
        show["verification"]["ok"], false,
        "verification recorded: {show}"
    );
    assert!(show["verification"]["detail"]
        .as_str()
        .unwrap()
        .contains("sha256"));
}

#[test]
fn wrong_identity_is_refused_before_the_target_is_touched() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.backup("shop");
    let other = d.path().join("other.txt");
    common::age_keygen(&other);
    let r = d.run(&[
        "restore",
        "shop",
        "--latest",
        "--target",
        &pg.url("nope"),
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("does not match"), "{}", r.stderr);
    assert!(!pg.database_exists("nope"));

    let r = d.run(&["restore", "shop", "--latest", "--target", &pg.url("nope")]);
    assert_eq!(r.code, 2, "no identity is a usage error: {}", r.stderr);
    assert!(!pg.database_exists("nope"));
}

#[test]
fn existing_non_empty_target_is_refused_unless_forced() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.backup("shop");
    let before = pg.fingerprint("shop");
    pg.createdb("busy");
    pg.psql(
        "busy",
        "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1);",
    );
    let args = |force: bool| {
        let mut v = vec![
            "restore".to_string(),
            "shop".into(),
            "--latest".into(),
            "--target".into(),
            pg.url("busy"),
            "--identity".into(),
            d.identity_arg(),
        ];
        if force {
            v.push("--force".into());
        }
        v
    };
    let a: Vec<String> = args(false);
    let r = d.run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // Refused before anything is touched, as a non-empty --target-dir is.
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(pg.query("busy", "SELECT count(*) FROM keep_me"), "1");

    // An existing but empty database is fine without --force.
    pg.createdb("empty_db");
    d.run(&[
        "restore",
        "shop",
        "--latest",
        "--target",
        &pg.url("empty_db"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("empty_db"), before);

    let a: Vec<String> = args(true);
    d.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    let mut got = pg.fingerprint("busy");
    got.retain(|l| !l.starts_with("public.keep_me"));
    assert_eq!(got, before);
}

#[test]
fn pg_dump_failure_leaves_no_complete_backup() {
    let pg = sample_cluster();
    // A role that can connect but not read one table: pg_dump fails
    // mid-stream, after the upload has started.
    pg.psql(
        "shop",
        "CREATE ROLE weak LOGIN; GRANT USAGE ON SCHEMA sales TO weak; \
         GRANT SELECT ON ALL TABLES IN SCHEMA sales TO weak; GRANT SELECT ON ALL SEQUENCES IN SCHEMA sales TO weak; \
         GRANT USAGE ON SCHEMA \"Ünïcode schema\" TO weak; GRANT SELECT ON ALL TABLES IN SCHEMA \"Ünïcode schema\" TO weak; \
         REVOKE ALL ON public.empty_table FROM weak;",
    );
    let d = Drctl::new();
    d.write_policy("shop", &pg.url_as("weak", "shop"), "");
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(d.repo_files("manifest.json").is_empty());
    assert!(
        d.repo_files("data.zst.age").is_empty(),
        "partial object removed"
    );
    let listed = d.list("shop");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "failed");
    assert!(listed[0]["error"]
        .as_str()
        .unwrap()
        .contains("permission denied"));

    // A database that does not exist: same story.
    d.write_policy("gone", &pg.url("no_such_db"), "");
    let r = d.run(&["backup", "gone"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no_such_db"), "{}", r.stderr);
    assert!(d.repo_files("manifest.json").is_empty());
    let r = d.run(&["restore", "gone", "--latest", "--dry-run"]);
    assert_eq!(r.code, 1, "nothing to restore: {}", r.stderr);
}

#[test]
fn restore_to_time_picks_the_newest_backup_at_or_before_it() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let first = d.backup("shop");
    let first_fp = pg.fingerprint("shop");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    pg.psql("shop", CHANGE_SQL);
    let second = d.backup("shop");
    assert_ne!(first, second);

    let show = d.run(&["show", &first, "--output", "json"]).ok().json();
    let m = show["manifest"].clone();
    let first_at = m["consistent_at"].as_str().unwrap().to_string();
    let t = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%:z", &first_at)
        .or_else(|_| first_at.parse::<jiff::Timestamp>())
        .unwrap();
    let between = (t + jiff::SignedDuration::from_millis(500)).to_string();

    let plan = d
        .run(&[
            "restore",
            "shop",
            "--to",
            &between,
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["backup_id"], first.as_str());
    assert_eq!(plan["method"], "dump");
    assert_eq!(plan["dry_run"], true);
    assert!(plan["gap_seconds"].as_i64().unwrap() >= 0);
    assert_eq!(plan["wal_segments"].as_array().unwrap().len(), 0);

    let latest = d
        .run(&[
            "restore",
            "shop",
            "--to",
            "now",
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(latest["backup_id"], second.as_str());

    let before_all = (t - jiff::SignedDuration::from_secs(3600)).to_string();
    let r = d.run(&["restore", "shop", "--to", &before_all, "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("window"),
        "prints the window: {}",
        r.stderr
    );

    let r = d.run(&["restore", "shop", "--to", "yesterday-ish", "--dry-run"]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    d.run(&[
        "restore",
        "shop",
        "--to",
        &between,
        "--target",
        &pg.url("as_of_first"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("as_of_first"), first_fp);
}

#[test]
fn parallel_restore_with_jobs_equals_the_backup() {
    let pg = sample_cluster();
    pg.psql(
        "shop",
        "CREATE TABLE public.big AS SELECT g AS id, md5(g::text) AS a FROM generate_series(1, 100000) g; \
         ALTER TABLE public.big ADD PRIMARY KEY (id);",
    );
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    let before = pg.fingerprint("shop");
    d.run(&[
        "restore",
        "shop",
        "--latest",
        "--jobs",
        "3",
        "--target",
        &pg.url("par"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("par"), before);

    // Several transactions cannot replace contents safely.
    let r = d.run(&[
        "restore",
        "shop",
        "--latest",
        "--jobs",
        "2",
        "--force",
        "--target",
        &pg.url("par"),
        "--identity",
        &d.identity_arg(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);

    // A corrupt object fails the parallel restore too, and the database
    // drctl created is dropped.
    let obj = d.repo_files("data.zst.age")[0].clone();
    let mut bytes = std::fs::read(&obj).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x80;
    std::fs::write(&obj, &bytes).unwrap();
    let r = d.run(&[
        "restore",
        "shop",
        "--backup",
        &id,
        "--jobs",
        "2",
        "--target",
        &pg.url("par_corrupt"),
        "--identity",
        &d.identity_arg(),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert!(!pg.database_exists("par_corrupt"));
}

#[test]
fn a_restore_into_the_policy_s_own_source_is_refused_even_with_force() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.backup("shop");
    pg.psql(
        "shop",
        "INSERT INTO public.empty_table VALUES (1, 'written after the backup')",
    );
    let id = d.identity_arg();
    // As spelled in the policy, and as another spelling of the same server.
    let other = format!("postgres://postgres@localhost:{}/shop", pg.port);
    for target in [pg.url("shop"), other] {
        let r = d.run(&[
            "restore",
            "shop",
            "--latest",
            "--target",
            &target,
            "--force",
            "--identity",
            &id,
        ]);
        assert_eq!(r.code, 2, "{target}: {}", r.stderr);
        assert!(r.stderr.contains("own source database"), "{}", r.stderr);
        assert!(r.stderr.contains("--overwrite-source"), "{}", r.stderr);
    }
    assert_eq!(
        pg.query("shop", "SELECT count(*) FROM public.empty_table"),
        "1"
    );

    // Asked for explicitly: it goes ahead, and the plan says what is lost.
    let r = d
        .run(&[
            "restore",
            "shop",
            "--latest",
            "--target",
            &pg.url("shop"),
            "--force",
            "--overwrite-source",
            "--identity",
            &id,
        ])
        .ok();
    assert!(
        r.stdout.contains("overwrites:    THE SOURCE DATABASE"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("is lost"), "{}", r.stdout);
    assert_eq!(
        pg.query("shop", "SELECT count(*) FROM public.empty_table"),
        "0"
    );
}

#[test]
fn a_target_server_that_stops_mid_restore_is_reported_as_it_is() {
    let src = PgCluster::start();
    src.createdb("shop");
    src.psql(
        "shop",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b FROM generate_series(1, 2000000) g;",
    );
    let d = Drctl::new();
    d.write_policy("shop", &src.url("shop"), "");
    d.backup("shop");
    let target = PgCluster::start();
    let child = d
        .command(&[
            "restore",
            "shop",
            "--latest",
            "--target",
            &target.url("copy"),
            "--identity",
            &d.identity_arg(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once drctl has created the database and is loading, the server stops.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !target.database_exists("copy") {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never created its database"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let st = common::as_owner(&common::pg_tool("pg_ctl"))
        .arg("-D")
        .arg(target.data_dir())
        .args(["-m", "immediate", "-w", "stop"])
        .output()
        .unwrap();
    assert!(st.status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Dropping it needed the server that is gone: the message says the
    // database is left behind, never that it was dropped.
    assert!(stderr.contains("LEFT BEHIND"), "{stderr}");
    assert!(!stderr.contains("was dropped"), "{stderr}");
    let st = common::as_owner(&common::pg_tool("pg_ctl"))
        .arg("-D")
        .arg(target.data_dir())
        .args([
            "-w",
            "-o",
            &format!("-p {} -c listen_addresses=127.0.0.1 -k /tmp", target.port),
            "-l",
        ])
        .arg(target.data_dir().join("restart.log"))
        .arg("start")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(
        target.database_exists("copy"),
        "the message said it was left behind"
    );
}

#[test]
fn a_flipped_digit_in_a_manifest_field_is_caught_and_never_restored_from() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let good = d.backup("shop");
    let bad = d.backup("shop");
    let path = d
        .repo_dir()
        .join(format!("shop/backups/{bad}/manifest.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"seal\""), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let at = v["consistent_at"].as_str().unwrap().to_string();
    let rows = v["tables"][0]["rows"].as_i64().unwrap();
    // A digit of consistent_at (the planner picks by it), then a row count
    // (a drill judges by it): each still parses, each is caught.
    let year = &at[..4];
    let flipped_year = format!(
        "{}{}",
        &year[..3],
        if &year[3..] == "9" { "8" } else { "9" }
    );
    let cases = [
        text.replacen(&at, &at.replacen(year, &flipped_year, 1), 1),
        text.replacen(
            &format!("\"rows\": {rows}"),
            &format!("\"rows\": {}", rows + 1),
            1,
        ),
    ];
    for flipped in cases {
        assert_ne!(flipped, text);
        std::fs::write(&path, &flipped).unwrap();
        let r = d.run(&["verify", "shop"]);
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(
            r.stdout.contains(&bad) && r.stdout.contains("seal"),
            "{}",
            r.stdout
        );
        // The planner never sees it: the newest good backup is restored.
        let plan = d
            .run(&[
                "restore",
                "shop",
                "--latest",
                "--dry-run",
                "--output",
                "json",
            ])
            .ok()
            .json();
        assert_eq!(plan["backup_id"], good.as_str(), "{plan}");
        let r = d.run(&["show", &bad]);
        assert_eq!(r.code, 1, "{}", r.stderr);
    }

    // A manifest from before seals is read and reported unsealed.
    let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
    old.as_object_mut().unwrap().remove("seal");
    old["format"] = 1.into();
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let r = d.run(&["verify", "shop"]).ok();
    assert!(
        r.stdout
            .contains(&format!("note    {bad}: unsealed manifest")),
        "{}",
        r.stdout
    );
}

/// `[repository] max_rate`: a backup's upload and a restore's download each
/// take the stored size over the rate, within 15% (plus what the same run
/// takes unthrottled), and the restore is still equal.
#[test]
fn max_rate_holds_backup_upload_and_restore_download_to_the_rate() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    // Hex text: compresses about 2:1, so several MiB are stored.
    pg.psql(
        "shop",
        "CREATE TABLE blob AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS a FROM generate_series(1, 200000) g;",
    );
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let timed = |args: &[&str]| {
        let t = std::time::Instant::now();
        d.run(args).ok();
        t.elapsed().as_secs_f64()
    };
    let restore_into = |db: &str| {
        let url = pg.url(db);
        let key = d.identity_arg();
        timed(&[
            "restore",
            "shop",
            "--latest",
            "--target",
            &url,
            "--identity",
            &key,
        ])
    };
    let free_backup = timed(&["backup", "shop"]);
    let free_restore = restore_into("free");

    let rate = 2u64 << 20;
    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace("[repository]\n", "[repository]\nmax_rate = \"2MiB/s\"\n");
    d.write_policy_text("shop", &text);
    let slow_backup = timed(&["backup", "shop"]);
    let stored = d.list("shop")[0]["stored_bytes"].as_u64().unwrap() as f64;
    let want = stored / rate as f64;
    assert!(want > 2.0, "too little data to measure: {stored} bytes");
    assert!(
        slow_backup >= want * 0.85 && slow_backup <= want * 1.15 + free_backup,
        "backup took {slow_backup:.2}s for {stored} bytes at 2MiB/s ({want:.2}s; {free_backup:.2}s unthrottled)"
    );
    let slow_restore = restore_into("slow");
    assert!(
        slow_restore >= want * 0.85 && slow_restore <= want * 1.15 + free_restore,
        "restore took {slow_restore:.2}s for {stored} bytes at 2MiB/s ({want:.2}s; {free_restore:.2}s unthrottled)"
    );
    assert_eq!(pg.fingerprint("slow"), pg.fingerprint("shop"));
    eprintln!(
        "max_rate 2MiB/s, {stored} bytes stored: want {want:.2}s; backup {slow_backup:.2}s ({free_backup:.2}s free), restore {slow_restore:.2}s ({free_restore:.2}s free)"
    );
}

/// drctl's own queries run psql itself, never the `psql` on PATH: on
/// Debian that is pg_wrapper (Perl, ~90 ms a call, and it points a URL
/// without a port at the local default cluster while pg_dump, run from its
/// bin folder, does not). A psql first on PATH that only leaves a mark
/// must never run.
#[test]
fn queries_never_run_the_psql_on_path() {
    let pg = sample_cluster();
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let shim = d.path().join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let mark = d.path().join("ran-the-psql-on-path");
    std::fs::write(
        shim.join("psql"),
        format!("#!/bin/sh\ntouch '{}'\nexit 3\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        shim.join("psql"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!("{}:{}", shim.display(), common::test_path());
    for args in [["check", "shop"], ["backup", "shop"]] {
        let out = d.command(&args).env("PATH", &path).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!mark.exists(), "drctl ran the psql first on PATH");
}
