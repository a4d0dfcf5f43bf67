//! The S3 repository driver against a real S3-compatible server (moto) on
//! loopback: multipart streaming, verify, restore, and aborted uploads.

mod common;

use std::time::{Duration, Instant};

use common::{Drctl, PgCluster, S3Server, SAMPLE_SQL};

fn s3_policy(d: &Drctl, s3: &S3Server, name: &str, source: &str) {
    d.write_policy_repo(
        name,
        source,
        &format!(
            "url = \"s3://drctl-test/prod/db\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\npart_size_mib = 5\n",
            s3.endpoint()
        ),
        "",
    );
}

/// ~64 MiB of hex text: compresses about 2:1, so the stored object spans
/// several 5 MiB parts.
const BIG_SQL: &str =
    "CREATE TABLE public.big AS SELECT g AS id, md5(g::text || 'x') || md5(g::text || 'y') AS a \
                       FROM generate_series(1, 1000000) g;";

#[test]
fn s3_round_trip_with_multipart_upload() {
    let s3 = S3Server::start();
    s3.create_bucket("drctl-test");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    pg.psql(
        "shop",
        "CREATE TABLE public.big AS SELECT g AS id, md5(g::text) AS a FROM generate_series(1, 400000) g;",
    );
    let before = pg.fingerprint("shop");
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("shop"));

    let id = d.backup("shop");
    let listing = s3.get("/drctl-test?list-type=2&prefix=prod/db/");
    assert!(
        listing.contains(&format!("prod/db/shop/backups/{id}/manifest.json")),
        "{listing}"
    );
    assert!(listing.contains(&format!("prod/db/shop/backups/{id}/data.zst.age")));
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    let stored = show["manifest"]["objects"][0]["stored_bytes"]
        .as_u64()
        .unwrap();
    assert!(stored > 6 << 20, "object must span parts: {stored}");
    assert!(!s3.get("/drctl-test?uploads").contains("<UploadId>"));

    d.run(&["verify", "shop"]).ok();
    d.run(&["verify", &id, "--deep", "--identity", &d.identity_arg()])
        .ok();
    d.run(&[
        "restore",
        "shop",
        "--backup",
        &id,
        "--target",
        &pg.url("from_s3"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("from_s3"), before);

    // The catalog can be rebuilt from the bucket alone.
    std::fs::remove_file(d.catalog()).unwrap();
    d.run(&["catalog", "rebuild"]).ok();
    let listed = d.list("shop");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["stored_bytes"].as_u64().unwrap(), stored);
}

/// A backup of a large database into S3, returned once its multipart
/// upload is in flight.
fn backup_uploading() -> (S3Server, PgCluster, Drctl, std::process::Child) {
    let s3 = S3Server::start();
    s3.create_bucket("drctl-test");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", BIG_SQL);
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("shop"));
    let mut child = d.command(&["backup", "shop"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !s3.get("/drctl-test?uploads").contains("<UploadId>") {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the backup never started a multipart upload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (s3, pg, d, child)
}

#[test]
fn interrupted_backup_aborts_its_multipart_upload() {
    let (s3, _pg, d, mut child) = backup_uploading();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted backup must not exit 0");

    let uploads = s3.get("/drctl-test?uploads");
    assert!(
        !uploads.contains("<UploadId>"),
        "multipart upload left dangling: {uploads}"
    );
    let listing = s3.get("/drctl-test?list-type=2&prefix=prod/db/shop/");
    assert!(!listing.contains("manifest.json"), "{listing}");
    assert!(!listing.contains("data.zst.age"), "{listing}");
    let listed = d.list("shop");
    assert_eq!(listed.len(), 1);
    // Stopped by the signal: recorded as cancelled, not failed.
    assert_eq!(listed[0]["status"], "cancelled");
    // Nothing the catalog or `verify` could mistake for a backup.
    let r = d.run(&["restore", "shop", "--latest", "--dry-run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
}

#[test]
fn missing_bucket_is_one_clear_error() {
    let s3 = S3Server::start();
    let pg = PgCluster::start();
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("postgres"));
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("drctl-test"),
        "names the bucket: {}",
        r.stderr
    );
}

#[test]
fn a_multipart_upload_left_by_kill_9_is_aborted_by_the_next_backup() {
    let (s3, _pg, d, mut child) = backup_uploading();
    child.kill().unwrap(); // kill -9: nothing aborts the upload
    child.wait().unwrap();
    assert!(s3.get("/drctl-test?uploads").contains("<UploadId>"));

    d.backup("shop");
    let uploads = s3.get("/drctl-test?uploads");
    assert!(!uploads.contains("<UploadId>"), "left dangling: {uploads}");
}

/// The value of one HTTP header in a raw response, case-insensitively.
fn header(response: &str, name: &str) -> Option<String> {
    response
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
}

/// S3 Object Lock: every object a backup writes carries a retain-until
/// date; a locked version cannot be deleted; prune keeps a backup retention
/// lets go while it is locked and says until when; `check` refuses a bucket
/// without Object Lock; retention shorter than the lock is a policy error.
#[test]
fn object_lock_makes_backups_immutable_and_prune_respects_it() {
    let s3 = S3Server::start();
    s3.create_bucket("plain");
    s3.create_locked_bucket("locked");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    let repo = |bucket: &str, days: u32| {
        format!(
            "url = \"s3://{bucket}/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\nobject_lock_days = {days}\nobject_lock_mode = \"compliance\"\n",
            s3.endpoint()
        )
    };
    d.write_policy_repo("unlocked", &pg.url("shop"), &repo("plain", 1), "");
    let r = d.run(&["check", "unlocked"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("does not have S3 Object Lock enabled")
            && r.stderr.contains("repository.object_lock_days = 1"),
        "{}",
        r.stderr
    );
    // A copy's lock is named as the copy's, not the primary's.
    d.write_policy_repo(
        "copylock",
        &pg.url("shop"),
        &repo("locked", 1).replace(
            "object_lock_days = 1\nobject_lock_mode = \"compliance\"\n",
            "",
        ),
        &format!("\n[[copy]]\nname = \"vault\"\n{}", repo("plain", 1)),
    );
    let r = d.run(&["check", "copylock"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("object_lock_days of [[copy]] vault = 1")
            && !r.stderr.contains("repository.object_lock_days"),
        "{}",
        r.stderr
    );

    // Retention shorter than the lock: a policy error naming both.
    d.write_policy_repo("short", &pg.url("shop"), &repo("locked", 35), "");
    let text = std::fs::read_to_string(d.path().join("policies/short.toml"))
        .unwrap()
        .replace("keep_last = 3", "keep_daily = 7");
    d.write_policy_text("short", &text);
    let r = d.run(&["policy", "check", "short"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("object_lock_days = 35"), "{all}");
    assert!(all.contains("keep_daily = 7"), "{all}");
    std::fs::remove_file(d.path().join("policies/short.toml")).unwrap();
    std::fs::remove_file(d.path().join("policies/unlocked.toml")).unwrap();

    d.write_policy_repo("shop", &pg.url("shop"), &repo("locked", 1), "");
    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace("keep_last = 3", "keep_last = 1");
    d.write_policy_text("shop", &text);
    let r = d.run(&["check", "shop"]).ok();
    assert!(
        r.stdout
            .contains("ok   Object Lock: objects written now stay locked until"),
        "{}",
        r.stdout
    );

    let old = d.backup("shop");
    let new = d.backup("shop");
    for name in ["manifest.json", "data.zst.age"] {
        let got = s3.head(&format!("/locked/pg/shop/backups/{old}/{name}"));
        assert_eq!(
            header(&got, "x-amz-object-lock-mode").as_deref(),
            Some("COMPLIANCE"),
            "{name}: {got}"
        );
        let until = header(&got, "x-amz-object-lock-retain-until-date").expect("retain-until");
        let until: jiff::Timestamp = until.parse().unwrap_or_else(|e| panic!("{until}: {e}"));
        let left = until.duration_since(jiff::Timestamp::now()).as_secs();
        assert!(
            (86_000..=86_400).contains(&left),
            "{name} locked for {left}s"
        );
    }
    // The lock acts: the stored version cannot be deleted.
    let data = format!("/locked/pg/shop/backups/{old}/data.zst.age");
    let version = header(&s3.head(&data), "x-amz-version-id").expect("versioned");
    let refused = s3.delete(&format!("{data}?versionId={version}"));
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(s3.head(&data).starts_with("HTTP/1.1 200"));

    // keep_last = 1 lets the older backup go; its lock keeps it, and says so.
    let reason = |r: &serde_json::Value| {
        r.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == old.as_str())
            .map(|e| {
                (
                    e["action"].clone(),
                    e["reasons"][0].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap()
    };
    let dry = d
        .run(&["prune", "shop", "--dry-run", "--output", "json"])
        .ok()
        .json();
    let (action, why) = reason(&dry);
    assert_eq!(action, "keep");
    assert!(why.starts_with("locked until 20"), "{why}");
    let done = d.run(&["prune", "shop", "--output", "json"]).ok().json();
    assert_eq!(reason(&done).0, "keep");
    let listed: Vec<String> = d
        .list("shop")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(listed.contains(&old) && listed.contains(&new), "{listed:?}");
    assert!(s3
        .head(&format!("/locked/pg/shop/backups/{old}/manifest.json"))
        .starts_with("HTTP/1.1 200"));
    d.run(&["verify", "shop"]).ok();
}

#[test]
fn missing_aws_credentials_are_one_line_saying_so_and_where_drctl_looked() {
    let s3 = S3Server::start();
    s3.create_bucket("drctl-test");
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", "postgres://postgres@127.0.0.1:1/shop");
    let mut c = d.command(&["verify", "shop"]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_MAX_ATTEMPTS", "1");
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("no AWS credentials found"), "{stderr}");
    assert!(lines[0].contains("AWS_ACCESS_KEY_ID"), "{stderr}");
    assert!(lines[0].contains("~/.aws/credentials"), "{stderr}");
}

/// A backup Object Lock keeps keeps its chain: an incremental still locked
/// keeps the full it was taken on, which retention lets go and which no
/// lock holds, and prune says why.
#[test]
fn a_locked_incremental_keeps_its_unlocked_parent() {
    let s3 = S3Server::start();
    s3.create_locked_bucket("locked");
    let d = Drctl::for_owner();
    let archive = d.s3_archive_command("chain");
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), archive]);
    let repo = format!(
        "url = \"s3://locked/pg\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n",
        s3.endpoint()
    );
    let write = |lock: bool| {
        d.write_policy_repo("chain", &pg.url("postgres"), &repo, "");
        let mut text = std::fs::read_to_string(d.path().join("policies/chain.toml"))
            .unwrap()
            .replace(
                "method = \"dump\"",
                "method = \"physical\"\nincremental = true",
            )
            .replace("keep_last = 3", "keep_last = 1");
        if lock {
            text = text.replace(
                "force_path_style = true\n",
                "force_path_style = true\nobject_lock_days = 1\nobject_lock_mode = \"governance\"\n",
            );
        }
        d.write_policy_text("chain", &text);
    };
    // The full is written before the policy locks anything.
    write(false);
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let full = d.backup("chain");
    let got = s3.head(&format!("/locked/pg/chain/backups/{full}/manifest.json"));
    assert_eq!(header(&got, "x-amz-object-lock-mode"), None, "{got}");
    write(true);
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g FROM generate_series(1001, 2000) g",
    );
    let inc = d.run(&["backup", "chain", "--output", "json"]).ok().json();
    assert_eq!(inc["kind"], "incremental", "{inc:#}");
    let inc = inc["id"].as_str().unwrap().to_string();
    let got = s3.head(&format!("/locked/pg/chain/backups/{inc}/manifest.json"));
    assert_eq!(
        header(&got, "x-amz-object-lock-mode").as_deref(),
        Some("GOVERNANCE"),
        "{got}"
    );
    // A newer full: keep_last = 1 keeps only it, the lock keeps the
    // incremental, and the incremental keeps its parent.
    d.run(&["backup", "chain", "--full"]).ok();
    let newest = d.list("chain")[0]["id"].as_str().unwrap().to_string();
    assert!(newest != full && newest != inc);
    let why = |out: &serde_json::Value, id: &str| {
        out.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or("").to_string(),
                    e["reasons"][0].as_str().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_else(|| panic!("{id} not in {out:#}"))
    };
    let dry = d
        .run(&["prune", "chain", "--dry-run", "--output", "json"])
        .ok()
        .json();
    let (action, reason) = why(&dry, &inc);
    assert_eq!(action, "keep", "{dry:#}");
    assert!(reason.starts_with("locked until 20"), "{reason}");
    assert_eq!(
        why(&dry, &full),
        ("keep".to_string(), format!("parent of {inc}")),
        "{dry:#}"
    );
    d.run(&["prune", "chain", "--output", "json"]).ok();
    let listed: Vec<String> = d
        .list("chain")
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        [&full, &inc, &newest].iter().all(|id| listed.contains(id)),
        "{listed:?}"
    );
    d.run(&["verify", "chain"]).ok();
}
