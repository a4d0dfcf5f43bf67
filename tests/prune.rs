//! Retention against a real repository: prune --dry-run changes nothing,
//! prune deletes exactly what no rule keeps, pins and the newest survive,
//! `backup` prunes after itself, WAL older than the oldest kept base backup
//! goes with it, and one policy never runs two jobs at once.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Drctl, PgCluster};

fn setup(keep: &str) -> (PgCluster, Drctl) {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g;",
    );
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let p = d.path().join("policies/shop.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("keep_last = 3\n", keep);
    d.write_policy_text("shop", &text);
    (pg, d)
}

fn ids(d: &Drctl) -> Vec<String> {
    d.list("shop")
        .iter()
        .filter(|b| b["status"] == "complete")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_keeps_what_the_rules_and_pins_say_and_deletes_the_rest() {
    let (_pg, d) = setup("");
    // No rules: backup prunes nothing and prune keeps everything.
    let mut made: Vec<String> = (0..4).map(|_| d.backup("shop")).collect();
    made.reverse(); // newest first, like prune's answer
    assert_eq!(ids(&d), made);
    let r = d.run(&["prune", "shop", "--output", "json"]).ok().json();
    assert!(r.as_array().unwrap().iter().all(|e| e["action"] == "keep"
        && e["reasons"][0] == "no retention rules"
        && e["dry_run"] == false));

    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace("[retention]\n", "[retention]\nkeep_last = 2\n");
    d.write_policy_text("shop", &text);
    let oldest = made[3].clone();
    d.run(&["pin", &oldest]).ok();

    let before = d.repo_files("");
    let r = d
        .run(&["prune", "shop", "--dry-run", "--output", "json"])
        .ok()
        .json();
    assert!(
        r.as_array().unwrap().iter().all(|e| e["dry_run"] == true),
        "{r}"
    );
    let plan: Vec<(String, String, Vec<String>)> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        plan,
        vec![
            (made[0].clone(), "keep".into(), s(&["newest", "last"])),
            (made[1].clone(), "keep".into(), s(&["last"])),
            (made[2].clone(), "delete".into(), vec![]),
            (made[3].clone(), "keep".into(), s(&["pinned"])),
        ]
    );
    assert_eq!(d.repo_files(""), before, "dry run changed the repository");
    assert_eq!(ids(&d).len(), 4);

    let out = d.run(&["prune", "shop"]).ok();
    assert!(out.stdout.contains("3 kept, 1 deleted"), "{}", out.stdout);
    assert_eq!(
        ids(&d),
        vec![made[0].clone(), made[1].clone(), oldest.clone()]
    );
    assert!(!d.repo_dir().join("shop/backups").join(&made[2]).exists());
    let r = d.run(&[
        "restore",
        "shop",
        "--backup",
        &made[2],
        "--target",
        "postgres://x@127.0.0.1/y",
    ]);
    assert_ne!(r.code, 0);

    // `backup` prunes after itself; unpinned, the oldest goes too.
    d.run(&["unpin", &oldest]).ok();
    let newest = d.backup("shop");
    assert_eq!(ids(&d), vec![newest, made[0].clone()]);
    d.run(&["verify", "shop"]).ok();
}

#[test]
fn a_second_job_on_a_busy_policy_is_refused_naming_the_holder() {
    let (_pg, d) = setup("keep_last = 3\n");
    let lock = d.path().join("locks").join("shop.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        "backup by pid 4242 on testhost since 2026-11-22T02:00:00Z",
    )
    .unwrap();
    // -o: the lock stays with flock itself, not with its `sleep` child.
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until flock holds it: a non-blocking probe fails from then on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n"])
        .arg(&lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = d.run(&["backup", "shop"]);
    let p = d.run(&["prune", "shop"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("policy shop is busy: backup by pid 4242 on testhost"),
        "{}",
        r.stderr
    );
    assert_eq!(p.code, 1, "{}", p.stderr);
    assert!(ids(&d).is_empty(), "a refused backup must not run");
    // Released with its holder (the kernel drops flocks of dead processes).
    d.backup("shop");
    assert_eq!(ids(&d).len(), 1);
}

fn wal_sidecars(d: &Drctl, policy: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .repo_files(".json")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&format!("{policy}/wal/")))
        .map(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn pruning_a_physical_policy_takes_the_wal_only_the_deleted_backups_needed() {
    let d = Drctl::for_owner();
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), d.archive_command("phys")]);
    d.write_physical_policy("phys", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let first = d.backup("phys");
    for _ in 0..3 {
        pg.psql(
            "postgres",
            "INSERT INTO t SELECT g FROM generate_series(1, 1000) g; SELECT pg_switch_wal();",
        );
    }
    let second = d.backup("phys");
    let show = d.run(&["show", &second, "--output", "json"]).ok().json();
    let start = show["manifest"]["wal"]["start_segment"]
        .as_str()
        .unwrap()
        .to_string();
    let before = wal_sidecars(&d, "phys");
    assert!(
        before.iter().any(|n| n.len() == 24 && *n < start),
        "{before:?}"
    );

    let text = std::fs::read_to_string(d.path().join("policies/phys.toml"))
        .unwrap()
        .replace("keep_last = 3", "keep_last = 1");
    d.write_policy_text("phys", &text);
    let out = d.run(&["prune", "phys"]).ok();
    assert!(
        out.stdout.contains(&format!("WAL kept from {start}")),
        "{}",
        out.stdout
    );
    let after = wal_sidecars(&d, "phys");
    let expect: Vec<String> = before
        .iter()
        .filter(|n| n.ends_with(".history") || n[..24] >= start[..24])
        .cloned()
        .collect();
    assert_eq!(after, expect);
    // No orphan objects: every remaining WAL object has its sidecar.
    let objects = d
        .repo_files(".zst.age")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("phys/wal/"))
        .count();
    assert_eq!(objects, after.len());
    assert_eq!(
        d.list("phys")
            .iter()
            .filter(|b| b["status"] == "complete")
            .map(|b| b["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![second.as_str()]
    );
    assert!(!d.repo_dir().join("phys/backups").join(&first).exists());
    // What is left still verifies, the WAL chain from the kept backup on.
    d.run(&["verify", "phys"]).ok();
}

/// A restore in progress leases its backup: prune (here the one `backup`
/// runs after itself) keeps it, saying why, and deletes it once the
/// restore has ended.
#[test]
fn a_backup_being_restored_is_not_pruned_until_the_restore_ends() {
    let (_pg, d) = setup("keep_last = 1\n");
    let first = d.backup("shop");
    // A target server that accepts and never answers keeps the restore
    // busy (connecting) for PGCONNECT_TIMEOUT seconds, lease held.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!(
        "postgres://postgres@127.0.0.1:{}/copy",
        silent.local_addr().unwrap().port()
    );
    let restore = d
        .command(&[
            "restore",
            "shop",
            "--backup",
            &first,
            "--target",
            &target,
            "--identity",
            &d.identity_arg(),
        ])
        .env("PGCONNECT_TIMEOUT", "8")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lease = d.path().join("locks").join(format!("shop.{first}.lease"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = lease.exists()
            && !Command::new("flock")
                .arg("-n")
                .arg(&lease)
                .arg("true")
                .status()
                .unwrap()
                .success();
        if held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restore never leased its backup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = d.backup("shop");
    assert_eq!(ids(&d), [second.clone(), first.clone()]);
    let r = d
        .run(&["prune", "shop", "--dry-run", "--output", "json"])
        .ok()
        .json();
    let e = r
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == first.as_str())
        .unwrap()
        .clone();
    assert_eq!(e["action"], "keep", "{e}");
    assert_eq!(
        e["reasons"][0], "in use by a running restore or drill",
        "{e}"
    );

    let out = restore.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(silent);
    d.run(&["prune", "shop"]).ok();
    assert_eq!(ids(&d), [second]);
    assert!(
        !lease.exists(),
        "the pruned backup's lease file stays behind"
    );
}

#[test]
fn what_a_killed_backup_left_is_gone_after_the_next_run() {
    let (pg, d) = setup("keep_last = 3\n");
    pg.psql(
        "shop",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 3)::text) AS a FROM generate_series(1, 1500000) g;",
    );
    // kill -9 while the data object is being written.
    let mut child = d
        .command(&["backup", "shop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Killed once the data object has bytes (verify lists them by size);
    // the repository marker's temp file, written first, is not it.
    let writing = |d: &Drctl| {
        common::files_containing(&d.repo_dir(), ".data.zst.age.tmp-")
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    };
    while !writing(&d) {
        assert!(
            Instant::now() < deadline,
            "the backup never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!common::files_containing(&d.repo_dir(), ".tmp-").is_empty());
    // And a folder of a run that died after its first object, a temp file
    // of a wal-push killed an hour ago, and one of a push still running.
    let dead = d.repo_dir().join("shop/backups/20200101T000000Z-dead");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("data.zst.age"), b"partial").unwrap();
    let wal = d.repo_dir().join("shop/wal/00000001");
    std::fs::create_dir_all(&wal).unwrap();
    let old_push = wal.join(".000000010000000000000003.zst.age.tmp-0badf00d");
    let live_push = wal.join(".000000010000000000000004.zst.age.tmp-1badf00d");
    std::fs::write(&old_push, b"x").unwrap();
    std::fs::write(&live_push, b"x").unwrap();
    let st = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old_push)
        .status()
        .unwrap();
    assert!(st.success());

    // verify lists what is left, with its size.
    let v = d.run(&["verify", "shop", "--output", "json"]).json();
    let left = v["incomplete"].as_array().unwrap();
    assert!(
        left.iter()
            .any(|l| l["id"] == "20200101T000000Z-dead" && l["bytes"] == 7),
        "{v}"
    );
    assert!(
        left.iter().any(|l| l["leftover"]
            .as_str()
            .is_some_and(|k| k.contains(".data.zst.age.tmp-"))
            && l["bytes"].as_u64().unwrap() > 0),
        "{v}"
    );
    let text = d.run(&["verify", "shop"]).stdout;
    assert!(text.contains("left by an interrupted run"), "{text}");

    // prune --dry-run counts them and changes nothing.
    let r = d.run(&["prune", "shop", "--dry-run"]).ok();
    assert!(
        r.stdout.contains("leftovers of interrupted runs"),
        "{}",
        r.stdout
    );
    assert!(old_push.exists() && dead.exists());

    let id = d.backup("shop");
    let temps = common::files_containing(&d.repo_dir(), ".tmp-");
    assert_eq!(
        temps,
        vec![live_push.clone()],
        "a recent wal-push temp stays, nothing else"
    );
    assert!(!dead.exists(), "the incomplete folder stays behind");
    let folders: Vec<String> = std::fs::read_dir(d.repo_dir().join("shop/backups"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(folders, vec![id], "only the committed backup is left");
}
