//! The failure paths of the PITR chain, tried the way they happen: an
//! archive_command that fails (a repository folder the archiving user
//! cannot write), a repository that accepts connections and never answers,
//! an unmounted repository, SIGTERM in the middle of a wait, a restored
//! copy that would archive into production. Each must fail loudly, in
//! bounded time, and leave nothing that looks like a backup.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Drctl, PgCluster};

/// What a bounded run of drctl did.
struct Timed {
    code: Option<i32>,
    took: Duration,
    stdout: String,
    stderr: String,
}

/// Run `c`; SIGTERM it after `term_after` if given; kill -9 at `limit`
/// (then `code` is None: the bound was broken, and the test says so).
fn run_bounded(mut c: Command, term_after: Option<Duration>, limit: Duration) -> Timed {
    let t0 = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut termed = false;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if let Some(after) = term_after.filter(|a| !termed && t0.elapsed() >= *a) {
            let _ = after;
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            termed = true;
        }
        if t0.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Timed {
        code,
        took: t0.elapsed(),
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// A physical policy whose archive_command (run by the server as its OS
/// user) cannot write the WAL folder: it was made by someone else (root,
/// in CI) or is read-only. drctl itself runs as the invoking user.
fn broken_archiving(extra: &str) -> (Drctl, PgCluster) {
    let mut d = Drctl::for_owner();
    d.as_owner = false;
    // A log the server keeps itself, so drctl can quote the failure.
    let pg = PgCluster::start_conf(&[
        "archive_mode = on".into(),
        d.archive_command("pitr"),
        "logging_collector = on".into(),
    ]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    let p = d.path().join("policies/pitr.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "method = \"physical\"\n",
        &format!("method = \"physical\"\n{extra}"),
    );
    std::fs::write(&p, text).unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    let wal = d.repo_dir().join("pitr/wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::set_permissions(&wal, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    (d, pg)
}

#[test]
fn a_physical_backup_fails_within_archive_timeout_when_archiving_fails() {
    let (d, pg) = broken_archiving("archive_timeout = \"4s\"\n");
    let r = run_bounded(
        d.command(&["backup", "pitr"]),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.took < Duration::from_secs(4 + 10),
        "took {:?}: {}",
        r.took,
        r.stderr
    );
    // The message names the segment the backup waited for and what the
    // server says about its archiver.
    let failed = pg.query(
        "postgres",
        "SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver",
    );
    assert!(
        !failed.is_empty(),
        "the server never saw archive_command fail"
    );
    assert!(r.stderr.contains("archive_timeout"), "{}", r.stderr);
    assert!(r.stderr.contains("pg_stat_archiver"), "{}", r.stderr);
    assert!(r.stderr.contains("last_failed_wal"), "{}", r.stderr);
    // wal-push's own complaint, quoted from the server's log.
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    let seg_name = |s: &str| {
        s.split(|c: char| !c.is_ascii_hexdigit())
            .any(|w| w.len() == 24)
    };
    assert!(seg_name(&r.stderr), "no segment named: {}", r.stderr);
    // Nothing left that could be taken for a backup, no temp objects.
    assert!(common::files_containing(&d.repo_dir(), "manifest.json").is_empty());
    assert!(common::files_containing(&d.repo_dir(), ".tmp-").is_empty());
    assert!(common::files_containing(&d.repo_dir(), "base.tar").is_empty());
    let listed = d.list("pitr");
    assert_eq!(listed[0]["status"], "failed", "{listed:?}");

    // Where an on-call engineer looks, archiving shows as failing.
    let st = d.run(&["status", "--output", "json"]).json();
    let a = &st[0]["archive"];
    assert_eq!(a["failing"], true, "{st}");
    assert_eq!(a["from"], "server", "{st}");
    assert_eq!(a["last_failed_wal"], failed.as_str(), "{st}");
    assert!(a["failed_count"].as_u64().unwrap() >= 1, "{st}");
    let text = d.run(&["status"]).stdout;
    assert!(text.contains("archive_command FAILING"), "{text}");
    // verify does not call a stalled archive ok.
    let v = d.run(&["verify", "pitr"]);
    assert_eq!(v.code, 1, "{}", v.stdout);
    assert!(v.stdout.contains("archive_command FAILING"), "{}", v.stdout);
}

#[test]
fn sigterm_ends_a_physical_backup_waiting_for_wal_within_10s() {
    let (d, _pg) = broken_archiving("archive_timeout = \"300s\"\n");
    let r = run_bounded(
        d.command(&["backup", "pitr"]),
        Some(Duration::from_secs(5)),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(r.took < Duration::from_secs(5 + 10), "took {:?}", r.took);
    assert!(common::files_containing(&d.repo_dir(), "manifest.json").is_empty());
    assert!(common::files_containing(&d.repo_dir(), ".tmp-").is_empty());
    assert!(common::files_containing(&d.repo_dir(), "base.tar").is_empty());
}

#[test]
fn sigterm_ends_a_dump_backup_blocked_on_a_lock_within_10s() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    // A session holding an exclusive lock: pg_dump waits for it forever.
    let mut locker = Command::new(common::pg_tool("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("--dbname={}", pg.url("shop")))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut stdin = locker.stdin.take().unwrap();
    writeln!(stdin, "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE;").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.query("shop", "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 't'::regclass::oid AND granted") != "1" {
        assert!(Instant::now() < deadline, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let r = run_bounded(
        d.command(&["backup", "shop"]),
        Some(Duration::from_secs(3)),
        Duration::from_secs(60),
    );
    drop(stdin);
    let _ = locker.kill();
    let _ = locker.wait();
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(r.took < Duration::from_secs(3 + 10), "took {:?}", r.took);
    assert!(common::files_containing(&d.repo_dir(), "manifest.json").is_empty());
    assert!(common::files_containing(&d.repo_dir(), ".tmp-").is_empty());
    // Stopped, not failed: recorded as cancelled and not counted as a
    // failure.
    assert_eq!(d.list("shop")[0]["status"], "cancelled");
    let s = d.run(&["status", "shop", "--output", "json"]).json();
    assert_eq!(s[0]["failures_since_success"], 0, "{s}");
}

fn silent_s3_policy(d: &Drctl, name: &str, port: u16, method: &str) {
    d.write_policy_repo(
        name,
        "postgres://postgres@127.0.0.1:1/postgres",
        &format!(
            "url = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\nrequest_timeout = \"1s\"\n"
        ),
        "",
    );
    let p = d.path().join(format!("policies/{name}.toml"));
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("method = \"dump\"", &format!("method = \"{method}\""));
    std::fs::write(&p, text).unwrap();
}

#[test]
fn a_repository_that_never_answers_fails_every_command_in_bounded_time() {
    let (port, _srv) = common::silent_server();
    let d = Drctl::new();
    silent_s3_policy(&d, "shop", port, "dump");
    silent_s3_policy(&d, "pitr", port, "physical");
    let bounded = |args: &[&str]| {
        let mut c = d.command(args);
        c.env("AWS_MAX_ATTEMPTS", "2");
        run_bounded(c, None, Duration::from_secs(90))
    };
    // request_timeout 1s × 2 attempts, plus backoff: well under 30 s.
    let bound = Duration::from_secs(30);

    let r = bounded(&["backup", "shop"]);
    assert_eq!(r.code, Some(1), "backup: {}", r.stderr);
    assert!(r.took < bound, "backup took {:?}", r.took);

    let r = bounded(&[
        "restore",
        "shop",
        "--latest",
        "--target",
        "postgres://postgres@127.0.0.1:1/x",
        "--identity",
        &d.identity_arg(),
    ]);
    assert_eq!(r.code, Some(1), "restore: {}", r.stderr);
    assert!(r.took < bound, "restore took {:?}", r.took);

    let r = bounded(&["verify", "shop"]);
    assert_eq!(r.code, Some(1), "verify: {}", r.stderr);
    assert!(r.took < bound, "verify took {:?}", r.took);

    let dest = d.path().join("RECOVERYXLOG");
    let r = bounded(&[
        "wal-fetch",
        "pitr",
        "000000010000000000000002",
        dest.to_str().unwrap(),
        "--identity",
        &d.identity_arg(),
    ]);
    assert!(
        r.code.is_some_and(|c| c >= 126),
        "wal-fetch must abort recovery, not say absent: {:?} {}",
        r.code,
        r.stderr
    );
    assert!(r.took < bound, "wal-fetch took {:?}", r.took);
    assert!(!dest.exists());
}

#[test]
fn sigterm_ends_every_command_waiting_on_a_silent_repository_within_10s() {
    let (port, _srv) = common::silent_server();
    let d = Drctl::new();
    silent_s3_policy(&d, "pitr", port, "physical");
    silent_s3_policy(&d, "shop", port, "dump");
    for name in ["pitr", "shop"] {
        let p = d.path().join(format!("policies/{name}.toml"));
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("request_timeout = \"1s\"", "request_timeout = \"120s\"");
        std::fs::write(&p, text).unwrap();
    }
    let dest = d.path().join("RECOVERYXLOG");
    let id = d.identity_arg();
    let dest_s = dest.to_str().unwrap();
    let cases: [(&str, Vec<&str>); 4] = [
        (
            "wal-fetch",
            vec![
                "wal-fetch",
                "pitr",
                "000000010000000000000002",
                dest_s,
                "--identity",
                &id,
            ],
        ),
        ("backup", vec!["backup", "shop"]),
        (
            "restore",
            vec![
                "restore",
                "shop",
                "--latest",
                "--target",
                "postgres://postgres@127.0.0.1:1/x",
                "--identity",
                &id,
            ],
        ),
        (
            "verify --deep",
            vec!["verify", "shop", "--deep", "--identity", &id],
        ),
    ];
    for (what, args) in cases {
        let r = run_bounded(
            d.command(&args),
            Some(Duration::from_secs(2)),
            Duration::from_secs(60),
        );
        assert!(
            r.took < Duration::from_secs(2 + 10),
            "{what} took {:?}",
            r.took
        );
        if what == "wal-fetch" {
            // Never "absent": recovery must stop, not end.
            assert!(
                r.code.is_some_and(|c| c >= 126),
                "{what}: {:?} {}",
                r.code,
                r.stderr
            );
        } else {
            assert_eq!(r.code, Some(1), "{what}: {}", r.stderr);
        }
    }
    assert!(!dest.exists());
}

#[test]
fn wal_fetch_from_a_missing_repository_root_is_not_absent() {
    let d = Drctl::new();
    d.write_physical_policy("pitr", "postgres://postgres@127.0.0.1:1/postgres");
    // A segment pushed, so the repository exists and answers.
    let seg = d.path().join("000000010000000000000001");
    let body: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&seg, &body).unwrap();
    d.run(&["wal-push", "pitr", seg.to_str().unwrap()]).ok();
    let dest = d.path().join("RECOVERYXLOG");
    let fetch = |name: &str| {
        d.run(&[
            "wal-fetch",
            "pitr",
            name,
            dest.to_str().unwrap(),
            "--identity",
            &d.identity_arg(),
            "--prefetch",
            "0",
        ])
    };
    let r = fetch("000000010000000000000001");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    std::fs::remove_file(&dest).unwrap();
    // Healthy repository, segment never archived: absent (1).
    let r = fetch("000000010000000000000002");
    assert_eq!(r.code, 1, "{}", r.stderr);

    // The disk is not mounted: the root is gone. That is no answer.
    let moved = d.path().join("repo-unmounted");
    std::fs::rename(d.repo_dir(), &moved).unwrap();
    for name in ["000000010000000000000001", "000000010000000000000002"] {
        let r = fetch(name);
        assert_eq!(r.code, 126, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("drctl-repo.json"), "{}", r.stderr);
        assert!(!dest.exists());
    }
}

#[test]
fn drctl_check_proves_the_chain_and_names_each_broken_link() {
    let d = Drctl::for_owner();
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), d.archive_command("pitr")]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    let check = || d.run(&["check", "pitr"]);

    // Healthy: every link holds, and a forced switch lands and decodes.
    let r = check();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("check of pitr passed"), "{}", r.stdout);
    assert!(
        r.stdout.contains("WAL switch reaches the repository"),
        "{}",
        r.stdout
    );
    let r = d.run(&[
        "check",
        "pitr",
        "--identity",
        &d.identity_arg(),
        "--output",
        "json",
    ]);
    let v = r.ok().json();
    assert_eq!(v["passed"], true, "{v}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["detail"].as_str().unwrap().contains("decrypted")),
        "{v}"
    );

    // archive_command pointing elsewhere, then at another policy.
    let set = |cmd: &str| {
        pg.psql(
            "postgres",
            &format!(
                "ALTER SYSTEM SET archive_command = '{}'; SELECT pg_reload_conf();",
                cmd.replace('\'', "''")
            ),
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    set("cp %p /tmp/elsewhere/%f");
    let r = check();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("does not run drctl wal-push"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let right = d.archive_command("pitr");
    let right = right
        .split_once(" = '")
        .unwrap()
        .1
        .trim_end_matches('\'')
        .to_string();
    set(&right.replace("wal-push pitr", "wal-push billing"));
    let r = check();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("policy billing, not pitr"),
        "{}",
        r.stderr
    );
    set(&right);
    check().ok();

    // The repository's WAL folder is not writable by the archiving user.
    let wal = d.repo_dir().join("pitr/wal");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wal, PermissionsExt::from_mode(0o555)).unwrap();
    let r = check();
    std::fs::set_permissions(&wal, PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("cannot write"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&wal.display().to_string()),
        "{}",
        r.stderr
    );
    check().ok();

    // archive_mode off: named, with what to do.
    let off = PgCluster::start();
    d.write_physical_policy("off", &off.url("postgres"));
    let r = d.run(&["check", "off"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("archive_mode = off"), "{}", r.stderr);
    // A backup says the archive_command to set as the server will run
    // it: drctl by its full path, with the policies directory.
    let r = d.run(&["backup", "off"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let policies = d.path().join("policies");
    let want = format!(
        "archive_command = '{} --policies {} wal-push off %p'",
        Drctl::bin(),
        policies.display()
    );
    assert!(r.stderr.contains(&want), "{want}\n{}", r.stderr);
}
