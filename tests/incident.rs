//! Incident hazards seen on a stock host (issue 22), each run as a service
//! runs drctl: as the postgres user where the server's archive_command is
//! involved, with PATH=/usr/local/bin:/usr/bin:/bin (no PostgreSQL bin
//! folder: drctl finds pg_verifybackup, pg_waldump and pg_ctl itself).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{archiving_cluster, wait_archived, Drctl, PgCluster, Restored, SAMPLE_SQL};

fn psql_port(port: u16, sql: &str) -> String {
    let out = Command::new(common::pg_tool("psql"))
        .args(["-X", "-A", "-t", "-w"])
        .arg(format!(
            "--dbname=postgres://postgres@127.0.0.1:{port}/postgres"
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

/// A physical policy `pitr` on a cluster that archives into it, loaded
/// with `sql`.
fn pitr_with(sql: &str) -> (Drctl, PgCluster) {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "pitr");
    d.write_physical_policy("pitr", &pg.url("postgres"));
    pg.psql("postgres", sql);
    (d, pg)
}

/// Close the current WAL segment and wait until the server archived it.
fn archive_now(pg: &PgCluster) -> String {
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(pg, &seg);
    seg
}

const ROWS_300K: &str =
    "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 300000) g;";

fn ts(v: &serde_json::Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

/// `--backup ID` means that backup's consistent state: a DELETE after it is
/// not replayed, the plan's WAL ends at the backup's stop segment, and
/// `--start` without `--port` runs the server on a free port it prints.
#[test]
fn restore_of_a_named_backup_stops_at_it_on_a_free_port() {
    let (d, pg) = pitr_with(
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT g FROM generate_series(1, 100) g;",
    );
    let id = d.backup("pitr");
    // The bad DELETE, after the backup, archived.
    pg.psql("postgres", "DELETE FROM orders WHERE id > 10;");
    let seg = archive_now(&pg);

    let m = d.run(&["show", &id, "--output", "json"]).ok().json()["manifest"].clone();
    let plan = d
        .run(&[
            "restore",
            "pitr",
            "--backup",
            &id,
            "--dry-run",
            "--output",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(ts(&plan["target_time"]), ts(&m["consistent_at"]), "{plan}");
    let segs = plan["wal_segments"].as_array().unwrap();
    assert_eq!(segs.last().unwrap(), &m["wal"]["stop_segment"], "{plan}");
    assert!(
        segs.iter().all(|s| s.as_str() < Some(seg.as_str())),
        "{plan}"
    );

    let server = Restored::new();
    let dir = server.dir.display().to_string();
    let key = d.identity_arg();
    let r = d
        .run(&[
            "restore",
            "pitr",
            "--backup",
            &id,
            "--target-dir",
            &dir,
            "--identity",
            &key,
            "--start",
            "--output",
            "json",
        ])
        .ok()
        .json();
    let port = r["port"].as_u64().expect("the port is reported") as u16;
    assert_ne!(port, 5432, "{r}");
    assert_eq!(psql_port(port, "SELECT count(*) FROM orders"), "100", "{r}");
    assert!(
        r["reached_at"]
            .as_str()
            .is_some_and(|s| !s.contains("end of the archive")),
        "{r}"
    );
}

/// archive_command naming a program that does not exist (exit 127) ends
/// PostgreSQL's archiver before pg_stat_archiver counts a failure: check
/// fails saying archiving does not run, and status calls it failing.
#[test]
fn an_archive_command_that_cannot_run_is_failing_not_ok() {
    let d = Drctl::for_owner();
    let cmd = format!(
        "archive_command = '/nonexistent/drctl --policies {} wal-push pitr %p'",
        d.path().join("policies").display()
    );
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), cmd]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    let t0 = Instant::now();
    let r = d.run(&["check", "pitr"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("NOT RUNNING"), "{all}");
    assert!(!all.contains("no failures"), "{all}");
    assert!(t0.elapsed() < Duration::from_secs(58), "{all}");

    let v = d.run(&["status", "--output", "json"]).json();
    let a = &v.as_array().unwrap()[0]["archive"];
    assert_eq!(a["failing"], true, "{v}");
    assert_eq!(a["stalled"], true, "{v}");
    assert!(a["ready_count"].as_u64().unwrap() >= 1, "{v}");
    let text = d.run(&["status"]).stdout;
    assert!(text.contains("archive_command NOT RUNNING"), "{text}");
}

/// The runbook's fix for archive permissions (run drctl as postgres from
/// then on) met a catalog root made: read-only commands still answer, and
/// a write names the files and the chown.
#[test]
fn a_catalog_made_by_root_is_readable_by_the_archiving_user() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let mut d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    // Others may read the work dir (the policies, the catalog); the
    // catalog, its folder and its locks stay root's.
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    d.as_owner = true;
    let v = d.run(&["status", "--output", "json"]).ok().json();
    assert_eq!(v[0]["last_backup_id"], id.as_str(), "{v}");
    let listed = d.list("shop");
    assert_eq!(listed[0]["id"], id.as_str());
    d.run(&["show", &id]).ok();
    let r = d.run(&["pin", &id]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot write the catalog")
            && r.stderr.contains("chown -R postgres")
            && r.stderr.contains("(root)"),
        "{}",
        r.stderr
    );
}

/// `drctl copy` from a primary whose folder is gone copies nothing and
/// fails, naming the copy that still holds the backups.
#[test]
fn copy_from_a_missing_primary_fails_naming_the_copy() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    let offsite = d.path().join("offsite");
    d.write_policy(
        "shop",
        &pg.url("shop"),
        &format!(
            "\n[[copy]]\nname = \"offsite\"\nurl = \"file://{}\"\n",
            offsite.display()
        ),
    );
    d.backup("shop");
    std::fs::remove_dir_all(d.repo_dir()).unwrap();
    let r = d.run(&["copy", "shop", "--to", "offsite"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("is missing") && r.stderr.contains("offsite (1 backup)"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("0 backups"), "{}", r.stdout);
}

/// A time copied from `list` or from a refusal's window is accepted; a
/// policy's `[backup] jobs` runs pg_restore in parallel (and is refused
/// where nothing would use it).
#[test]
fn printed_dump_times_are_accepted_and_jobs_act() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let before = pg.fingerprint("shop");
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let p = d.path().join("policies/shop.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("method = \"dump\"", "method = \"dump\"\njobs = 2");
    d.write_policy_text("shop", &text);
    d.backup("shop");
    // Rounded up, the newest point can be a fraction of a second ahead of
    // now, which a restore refuses as a time in the future.
    std::thread::sleep(Duration::from_millis(1100));
    let at = d.list("shop")[0]["consistent_at"]
        .as_str()
        .unwrap()
        .to_string();
    d.run(&["restore", "shop", "--to", &at, "--dry-run"]).ok();
    // The window in a refusal is just as usable.
    let early = d.run(&[
        "restore",
        "shop",
        "--to",
        "2020-01-01T00:00:00Z",
        "--dry-run",
    ]);
    assert_eq!(early.code, 2, "{}", early.stderr);
    let from = early
        .stderr
        .split("1 backup from ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}", early.stderr))
        .to_string();
    d.run(&["restore", "shop", "--to", &from, "--dry-run"]).ok();

    let key = d.identity_arg();
    let url = pg.url("shop_restored");
    let r = d
        .run(&[
            "-v",
            "restore",
            "shop",
            "--latest",
            "--target",
            &url,
            "--identity",
            &key,
        ])
        .ok();
    assert!(r.stderr.contains("parallel restore"), "{}", r.stderr);
    assert_eq!(pg.fingerprint("shop_restored"), before);

    d.write_physical_policy("phys", &pg.url("postgres"));
    let p = d.path().join("policies/phys.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("method = \"physical\"", "method = \"physical\"\njobs = 4");
    d.write_policy_text("phys", &text);
    let r = d.run(&["policy", "check", "phys"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("backup.jobs"), "{}", r.stderr);
}

/// Spawn drctl `args`; SIGTERM it once `ready()` holds; its exit code,
/// stderr and how long it took after the signal.
fn term_when(
    d: &Drctl,
    args: &[&str],
    ready: impl Fn() -> bool,
) -> (Option<i32>, String, Duration) {
    use std::io::Read;
    let mut child = d
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "drctl ended ({st}) before the moment: {}",
                e.join().unwrap()
            );
        }
        assert!(Instant::now() < deadline, "the moment never came");
        std::thread::sleep(Duration::from_millis(20));
    }
    // drctl itself, not runuser around it (runuser forwards the signal
    // but SIGKILLs its child 2 s later, which would cut the cleanup short
    // in a way no service manager does).
    let pid = if d.as_owner && common::is_root() {
        let out = Command::new("pgrep")
            .args(["-P", &child.id().to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    } else {
        child.id() as i32
    };
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, e.join().unwrap(), t.elapsed())
}

fn pid_alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

/// SIGTERM during extraction, and again once the restored server runs:
/// each time drctl ends within seconds, stops the server it started,
/// removes what it extracted, calls it a cancel (never corruption), and
/// the same command then succeeds.
#[test]
fn a_cancelled_restore_stops_its_server_and_leaves_nothing_behind() {
    let (d, pg) = pitr_with(ROWS_300K);
    d.backup("pitr");
    archive_now(&pg);
    let key = d.identity_arg();
    let server = Restored::new();
    let dir = server.dir.clone();
    let dir_s = dir.display().to_string();
    let args = [
        "restore",
        "pitr",
        "--latest",
        "--target-dir",
        &dir_s,
        "--identity",
        &key,
        "--start",
    ];

    // 1: in the middle of extraction.
    let (code, err, took) = term_when(&d, &args, || dir.join("base").exists());
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(took < Duration::from_secs(10), "{took:?} {err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!err.contains("differ"), "{err}");
    assert!(!dir.exists(), "left behind after SIGTERM: {err}");

    // 2: once the restored server runs.
    let pidfile = dir.join("postmaster.pid");
    let (code, err, took) = term_when(&d, &args, || {
        std::fs::read_to_string(&pidfile).is_ok_and(|t| t.lines().count() > 1)
    });
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(took < Duration::from_secs(10), "{took:?} {err}");
    assert!(
        err.contains("cancelled") && err.contains("stopped the restored server"),
        "{err}"
    );
    assert!(!dir.exists(), "left behind after SIGTERM: {err}");
    let procs = Command::new("pgrep")
        .args(["-f", &format!("postgres -D {dir_s}")])
        .output()
        .unwrap();
    assert!(procs.stdout.is_empty(), "a restored server still runs");

    // The retry is not blocked.
    let r = d.run(&args).ok();
    assert!(r.stdout.contains("server running on port"), "{}", r.stdout);
    let _ = pid_alive;
}

/// A restored cluster whose pg_hba.conf (from the source) wants a password
/// drctl does not have: named at once, the server stopped, nothing left.
#[test]
fn a_restored_server_that_wants_a_password_is_named_not_waited_on() {
    let (d, pg) = pitr_with("SELECT 1");
    // On disk only: the source keeps trusting its loopback until a reload
    // it never gets; the backup carries the file.
    let hba = pg.data_dir().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    d.backup("pitr");
    archive_now(&pg);
    let server = Restored::new();
    let dir_s = server.dir.display().to_string();
    let key = d.identity_arg();
    let t0 = Instant::now();
    let r = d.run(&[
        "restore",
        "pitr",
        "--latest",
        "--target-dir",
        &dir_s,
        "--identity",
        &key,
        "--start",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    assert!(
        r.stderr.contains("asks for a password") && r.stderr.contains("PGPASSWORD"),
        "{}",
        r.stderr
    );
    assert!(!server.dir.exists(), "{}", r.stderr);
}

/// A catalog cut to half its size: every command names it and the way
/// back, and `drctl catalog rebuild` brings the backups back.
#[test]
fn a_damaged_catalog_points_to_rebuild_which_restores_it() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let id = d.backup("shop");
    // The damage where no write-ahead log covers it (a catalog copied
    // without its -wal, a disk error).
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(d.catalog().with_extension(ext));
    }
    let len = std::fs::metadata(d.catalog()).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.catalog())
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    std::fs::write(d.catalog(), {
        let mut b = std::fs::read(d.catalog()).unwrap();
        b[..100].fill(0x5a);
        b
    })
    .unwrap();
    let r = d.run(&["list", "shop"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("drctl catalog rebuild"), "{}", r.stderr);
    let r = d.run(&["catalog", "rebuild"]).ok();
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_eq!(d.list("shop")[0]["id"], id.as_str());
}

/// A physical restore into a filesystem too small for it is refused
/// before a byte is written, naming the space it has and needs.
#[test]
fn a_restore_onto_a_small_disk_says_no_space_before_writing() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let disk = common::SmallDisk::mount("20m");
    let (d, pg) = pitr_with(ROWS_300K);
    d.backup("pitr");
    archive_now(&pg);
    let target = disk.dir.path().join("data");
    let key = d.identity_arg();
    let r = d.run(&[
        "restore",
        "pitr",
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
        "--identity",
        &key,
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("No space left on device") && r.stderr.contains("needs about"),
        "{}",
        r.stderr
    );
    assert!(!target.exists(), "{}", r.stderr);
    assert!(disk.used_bytes() < 1 << 20);
}

/// `drctl init --owner postgres` run as root gives the archiving user what
/// it needs (policies, catalog and locks, a file repository), keeps the
/// identity, and says when the catalog's folder is not that user's.
#[test]
fn init_gives_the_archiving_user_its_files() {
    use std::os::unix::fs::MetadataExt;
    if !common::is_root() {
        eprintln!("skipped: giving files to postgres needs root");
        return;
    }
    let mut d = Drctl::new();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let repo = format!("file://{}", d.repo_dir().display());
    let r = d
        .run(&[
            "init",
            "--name",
            "shop",
            "--repo",
            &repo,
            "--identity-file",
            "key.txt",
            "--owner",
            "postgres",
        ])
        .ok();
    assert!(r.stderr.contains("postgres cannot write"), "{}", r.stderr);
    let uid = |p: &std::path::Path| std::fs::metadata(p).unwrap().uid();
    let postgres = {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    for p in [
        d.path().join("policies"),
        d.path().join("policies/shop.toml"),
        d.catalog(),
        d.path().join("locks"),
        d.repo_dir(),
    ] {
        assert_eq!(uid(&p), postgres, "{}", p.display());
    }
    assert_eq!(uid(&d.path().join("key.txt")), 0);
    d.as_owner = true;
    d.run(&["status"]).ok();
}

/// Exit code (None: killed at the limit), time taken, stderr.
type Timed = (Option<i32>, Duration, String);

/// Run drctl `args` to its end (at most `limit`).
fn timed(c: Command, limit: Duration) -> Timed {
    let t0 = Instant::now();
    let mut c = c;
    let mut child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                t0.elapsed(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (None, t0.elapsed(), String::new());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A silent S3 (accepts, never answers) with request_timeout = 5s and the
/// SDK's default attempts: every command ends within request_timeout ×
/// attempts plus the attempt in flight, wal-fetch answers 126 within two
/// request_timeouts, and a silent [[copy]] costs a backup at most the same
/// bound, after which the copy is recorded as behind.
#[test]
fn a_silent_repository_costs_a_command_its_bound_and_no_more() {
    let (port, _srv) = common::silent_server();
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let d = Drctl::new();
    let silent = format!(
        "url = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\nrequest_timeout = \"5s\"\n"
    );
    d.write_policy_repo("gone", &pg.url("shop"), &silent, "");
    d.write_policy(
        "shop",
        &pg.url("shop"),
        &format!(
            "\n[[copy]]\nname = \"offsite\"\nurl = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\nrequest_timeout = \"5s\"\n"
        ),
    );
    let dest = d.path().join("RECOVERYXLOG");
    let key = d.identity_arg();
    let limit = Duration::from_secs(120);
    // At once, as an incident would have them.
    let runs: Vec<(&str, std::thread::JoinHandle<Timed>)> = vec![
        ("backup", d.command(&["backup", "gone"])),
        ("verify", d.command(&["verify", "gone"])),
        (
            "wal-fetch",
            d.command(&[
                "wal-fetch",
                "gone",
                "000000010000000000000002",
                dest.to_str().unwrap(),
                "--identity",
                &key,
            ]),
        ),
        ("copy-backup", d.command(&["backup", "shop"])),
    ]
    .into_iter()
    .map(|(n, c)| (n, std::thread::spawn(move || timed(c, limit))))
    .collect();
    for (name, h) in runs {
        let (code, took, err) = h.join().unwrap();
        eprintln!("{name}: exit {code:?} after {took:?}");
        // 5 s × 6 attempts of silence, then the attempt in flight and the
        // retry backoff it waited in, and start-up (before: 41-51 s, the
        // copy 86 s, wal-fetch 151 s).
        let bound = if name == "wal-fetch" {
            Duration::from_secs(10 + 5)
        } else {
            Duration::from_secs(30 + 5 + 20)
        };
        assert!(took < bound, "{name} took {took:?}: {err}");
        match name {
            "wal-fetch" => assert_eq!(code, Some(126), "{err}"),
            _ => assert_eq!(code, Some(1), "{name}: {err}"),
        }
        if name != "wal-fetch" {
            assert!(err.contains("has not answered for"), "{name}: {err}");
        }
    }
    // The primary has the backup; the copy is behind, for `drctl copy`.
    let listed = d.list("shop");
    assert_eq!(listed[0]["status"], "complete", "{listed:?}");
    let st = d.run(&["status", "--output", "json"]).json();
    let shop = st
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "shop")
        .unwrap();
    assert_eq!(shop["copies"][0]["missing_backups"], 1, "{shop}");
}

/// SIGTERM in the middle of `verify --deep` (extracting a physical backup
/// under TMPDIR): it ends well before the 8 s watchdog, leaves no scratch
/// extraction, and records no verdict.
#[test]
fn a_cancelled_deep_verify_leaves_no_scratch_and_no_verdict() {
    let (mut d, pg) = pitr_with(ROWS_300K);
    let id = d.backup("pitr");
    archive_now(&pg);
    let tmp = d.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    common::give_to_owner(&tmp);
    d.extra_env
        .push(("TMPDIR".into(), tmp.display().to_string()));
    let key = d.identity_arg();
    let scratch = || {
        std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("drctl-verify-"))
            .count()
    };
    let (code, err, took) = term_when(
        &d,
        &["verify", "pitr", "--deep", "--identity", &key],
        || scratch() > 0,
    );
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(took < Duration::from_secs(6), "{took:?} {err}");
    assert_eq!(scratch(), 0, "{err}");
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    assert!(show["verification"].is_null(), "{show}");
}

/// SIGTERM once a dump restore has created its database: the database is
/// dropped again, and the retry is not blocked.
#[test]
fn a_cancelled_dump_restore_drops_the_database_it_created() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    pg.psql("shop", ROWS_300K);
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    d.backup("shop");
    let key = d.identity_arg();
    let url = pg.url("shop_restored");
    let args = [
        "restore",
        "shop",
        "--latest",
        "--target",
        &url,
        "--identity",
        &key,
    ];
    let (code, err, took) = term_when(&d, &args, || pg.database_exists("shop_restored"));
    assert!(code.is_some_and(|c| c != 0), "{code:?} {err}");
    assert!(took < Duration::from_secs(10), "{took:?} {err}");
    assert!(!pg.database_exists("shop_restored"), "{err}");
    d.run(&args).ok();
}

/// The same silent endpoint with the default request_timeout (60 s):
/// recovery's restore_command still answers 126 within two of them.
#[test]
fn wal_fetch_from_a_silent_repository_answers_within_its_bound_by_default() {
    let (port, _srv) = common::silent_server();
    let d = Drctl::new();
    d.write_policy_repo(
        "gone",
        "postgres://postgres@127.0.0.1:1/postgres",
        &format!(
            "url = \"s3://bucket/p\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\n"
        ),
        "",
    );
    let dest = d.path().join("RECOVERYXLOG");
    let key = d.identity_arg();
    let (code, took, err) = timed(
        d.command(&[
            "wal-fetch",
            "gone",
            "000000010000000000000002",
            dest.to_str().unwrap(),
            "--identity",
            &key,
        ]),
        Duration::from_secs(200),
    );
    eprintln!("wal-fetch: exit {code:?} after {took:?}");
    assert_eq!(code, Some(126), "{err}");
    assert!(took < Duration::from_secs(120), "{took:?}: {err}");
    assert!(!dest.exists());
}
