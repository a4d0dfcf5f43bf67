//! Fleet mode: runs of one policy on many hosts kept apart by the policy's
//! lease in S3 (conditional writes), against real PostgreSQL 15 and the
//! loopback S3 server. The lease tests give most processes a catalog of
//! their own, as a host without a shared catalog has, so only the lease can
//! keep them apart; the takeover test and the rest share one catalog in
//! PostgreSQL, as a fleet does.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Drctl, PgCluster, S3Server, SAMPLE_SQL};

fn s3_policy(d: &Drctl, s3: &S3Server, name: &str, source: &str, extra_repo: &str) {
    d.write_policy_repo(
        name,
        source,
        &format!(
            "url = \"s3://fleet/prod\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n{extra_repo}",
            s3.endpoint()
        ),
        "",
    );
}

/// `drctl ARGS` as a worker on a host of its own: its own catalog, its own
/// process group (so kill -9 reaches everything it started).
fn worker(d: &Drctl, n: usize, args: &[&str]) -> Command {
    let mut c = d.command(args);
    c.env(
        "DRCTL_CATALOG",
        d.path().join(format!("host{n}/catalog.db")),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    c
}

struct Finished {
    code: i32,
    stderr: String,
}

fn finish(child: Child) -> Finished {
    let out = child.wait_with_output().unwrap();
    Finished {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn kill9(child: &mut Child) {
    // SAFETY: a process group this test created.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// A session holding an ACCESS EXCLUSIVE lock on `table`, so a pg_dump of
/// the database waits until the session ends: a run that holds its lease as
/// long as the test needs. Ended (terminated) on drop.
struct TableLock {
    pg_url: String,
    child: Child,
}

impl TableLock {
    fn take(pg: &PgCluster, db: &str, table: &str) -> TableLock {
        let mut child = Command::new(common::pg_tool("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-w"])
            .arg(format!("--dbname={}", pg.url(db)))
            .arg("-c")
            .arg(format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SET application_name = 'fleet-test-lock'; SELECT pg_sleep(300);"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pg
            .query(
                "postgres",
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'fleet-test-lock' AND l.mode = 'AccessExclusiveLock' AND l.granted",
            )
            .trim()
            != "1"
        {
            assert!(Instant::now() < deadline, "the test's table lock was not taken");
            if let Ok(Some(s)) = child.try_wait() {
                panic!("the locking session ended: {s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        TableLock {
            pg_url: pg.url("postgres"),
            child,
        }
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = common::psql_url(
            &self.pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleet-test-lock'",
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many committed backups of `policy` the bucket holds.
fn manifests(s3: &S3Server, policy: &str) -> usize {
    s3.get(&format!("/fleet?list-type=2&prefix=prod/{policy}/backups/"))
        .matches("/manifest.json</Key>")
        .count()
}

fn lease_exists(s3: &S3Server, policy: &str) -> bool {
    s3.head(&format!("/fleet/prod/{policy}/lease.json"))
        .starts_with("HTTP/1.1 200")
}

fn wait_for_lease(s3: &S3Server, policy: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lease_exists(s3, policy) {
        assert!(Instant::now() < deadline, "no run took the lease");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn eight_workers_started_at_once_run_one_backup_and_the_rest_name_the_holder() {
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    let before = pg.fingerprint("shop");
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("shop"), "");
    d.run(&["init"]).ok();

    let lock = TableLock::take(&pg, "shop", "sales.customers");
    let mut workers: Vec<Child> = (0..8)
        .map(|n| worker(&d, n, &["backup", "shop"]).spawn().unwrap())
        .collect();
    let pids: Vec<u32> = workers.iter().map(|c| c.id()).collect();
    // The seven that lose exit at once; the winner waits on the lock.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done: Vec<(u32, Finished)> = Vec::new();
    while done.len() < 7 {
        assert!(
            Instant::now() < deadline,
            "only {} of 8 workers ended while one held the lease",
            done.len()
        );
        let mut i = 0;
        while i < workers.len() {
            if workers[i].try_wait().unwrap().is_some() {
                let c = workers.remove(i);
                let pid = c.id();
                done.push((pid, finish(c)));
            } else {
                i += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(workers.len(), 1, "more than one worker is still running");
    let winner = workers.pop().unwrap();
    let winner_pid = winner.id();
    for (pid, f) in &done {
        assert_eq!(f.code, 1, "worker {pid} should be refused:\n{}", f.stderr);
        assert!(
            f.stderr.contains(&format!(
                "policy shop is busy: backup by pid {winner_pid} on "
            )) && f.stderr.contains("its lease expires at")
                && f.stderr.contains("/prod/shop/lease.json"),
            "worker {pid} must name the holder {winner_pid} and its expiry:\n{}",
            f.stderr
        );
    }
    assert!(pids.contains(&winner_pid));
    assert!(
        lease_exists(&s3, "shop"),
        "the running backup holds no lease"
    );
    // `status` on the winner's catalog says who holds the lease now.
    let host = pids.iter().position(|p| *p == winner_pid).unwrap();
    let status = |n: usize| {
        let out = worker(&d, n, &["status", "shop", "--output", "json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let held = status(host);
    let lease = &held[0]["leases"][0];
    assert_eq!(lease["what"], "backup", "{held:#}");
    assert_eq!(lease["pid"], winner_pid, "{held:#}");
    assert_eq!(lease["lease"], "run", "{held:#}");
    drop(lock);
    let w = finish(winner);
    assert_eq!(w.code, 0, "the winner failed:\n{}", w.stderr);
    assert_eq!(
        manifests(&s3, "shop"),
        1,
        "exactly one backup must have run"
    );
    assert!(
        !lease_exists(&s3, "shop"),
        "a finished run must release its lease"
    );
    let after = status(host);
    assert!(after[0]["leases"].is_null(), "{after:#}");
    // The free policy runs again at once, and the backup restores equal.
    let id = d.backup("shop");
    assert_eq!(manifests(&s3, "shop"), 2);
    d.run(&[
        "restore",
        "shop",
        "--backup",
        &id,
        "--target",
        &pg.url("shop_restored"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("shop_restored"), before);
}

#[test]
fn a_dead_holder_is_taken_over_at_once_here_and_after_its_lease_expires_elsewhere() {
    assert!(
        common::is_root(),
        "this test runs the holder in a pid namespace of its own (unshare), which needs root"
    );
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    // One catalog in PostgreSQL for every host, as a fleet has.
    pg.createdb("drctl_catalog");
    let catalog = pg.url("drctl_catalog");
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("shop"), "lease_ttl = \"4s\"\n");
    fleet_run(&d, 9, &catalog, &["init"]).ok();
    let worker = |d: &Drctl, n: usize, args: &[&str]| fleet_worker(d, n, &catalog, args);

    // 1. A holder on this host killed -9: its pid is provably gone, so the
    //    next run takes the lease over without waiting for the expiry.
    {
        let _lock = TableLock::take(&pg, "shop", "sales.customers");
        let mut holder = worker(&d, 0, &["backup", "shop"]).spawn().unwrap();
        wait_for_lease(&s3, "shop");
        kill9(&mut holder);
    }
    assert!(
        lease_exists(&s3, "shop"),
        "kill -9 cannot have released the lease"
    );
    let r = finish(worker(&d, 1, &["backup", "shop"]).spawn().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("took over the lease of backup by pid")
            && r.stderr.contains("its process is gone from this host"),
        "the takeover must be logged with its reason:\n{}",
        r.stderr
    );
    assert_eq!(manifests(&s3, "shop"), 1);

    // 2. A holder elsewhere (another pid namespace: drctl cannot see its
    //    pid): its lease is renewed while it lives, past the lease time,
    //    and taken over only after it expires.
    let lock = TableLock::take(&pg, "shop", "sales.customers");
    let mut holder = {
        let mut c = Command::new("/usr/bin/unshare");
        c.args([
            "--pid",
            "--fork",
            "--mount-proc",
            Drctl::bin(),
            "backup",
            "shop",
        ]);
        let template = worker(&d, 2, &[]);
        for (k, v) in template.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.current_dir(d.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    wait_for_lease(&s3, "shop");
    // Three lease times: renewed, so still held.
    std::thread::sleep(Duration::from_secs(12));
    let r = finish(worker(&d, 3, &["backup", "shop"]).spawn().unwrap());
    assert_eq!(
        r.code, 1,
        "a renewed lease must keep others out:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("policy shop is busy: backup by pid"),
        "{}",
        r.stderr
    );
    kill9(&mut holder);
    drop(lock);
    let killed_at = Instant::now();
    let r = finish(worker(&d, 4, &["backup", "shop"]).spawn().unwrap());
    assert_eq!(
        r.code, 1,
        "a lease not yet expired must be respected:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("unless renewed"), "{}", r.stderr);
    // Past the lease time (4 s, and a renewal may have landed just before
    // the kill), the next run takes over.
    let wait = Duration::from_secs(6).saturating_sub(killed_at.elapsed());
    std::thread::sleep(wait);
    let r = finish(worker(&d, 5, &["backup", "shop"]).spawn().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("took over the lease of backup by pid")
            && r.stderr.contains("it was not renewed"),
        "{}",
        r.stderr
    );
    assert_eq!(manifests(&s3, "shop"), 2);
    assert!(!lease_exists(&s3, "shop"));

    // The shared catalog holds the two backups that committed, and the two
    // killed runs as not complete: what `catalog rebuild` derives from the
    // bucket alone equals it.
    let complete = |v: serde_json::Value| -> Vec<(String, String, String, u64)> {
        rows(&v).into_iter().filter(|r| r.2 == "complete").collect()
    };
    let listed = fleet_run(&d, 6, &catalog, &["list", "shop", "--output", "json"])
        .ok()
        .json();
    let before = complete(listed.clone());
    assert_eq!(before.len(), 2, "{listed:#}");
    // The holder killed in another pid namespace (its pid means nothing
    // here) is failed too: the run that found its lease expired knows it
    // is dead. None is left `running`.
    let rows_of = |status: &str| -> Vec<serde_json::Value> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == status)
            .cloned()
            .collect()
    };
    assert!(rows_of("running").is_empty(), "{listed:#}");
    assert!(
        rows_of("failed").iter().any(|r| r["error"]
            .as_str()
            .unwrap()
            .contains("found the policy's lease free")),
        "{listed:#}"
    );
    fleet_run(&d, 6, &catalog, &["catalog", "rebuild"]).ok();
    let rebuilt = fleet_run(&d, 7, &catalog, &["list", "shop", "--output", "json"])
        .ok()
        .json();
    assert_eq!(complete(rebuilt), before);
}

#[test]
fn a_restore_on_one_host_keeps_its_backup_from_a_prune_on_another() {
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", SAMPLE_SQL);
    // Big enough that the restore is still reading when it is stopped.
    pg.psql(
        "shop",
        "CREATE TABLE public.bulk AS SELECT g AS id, md5(g::text) AS a FROM generate_series(1, 300000) g;",
    );
    let before = pg.fingerprint("shop");
    let d = Drctl::new();
    s3_policy(&d, &s3, "shop", &pg.url("shop"), "");
    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace("keep_last = 3", "keep_last = 1");
    d.write_policy_text("shop", &text);
    d.run(&["init"]).ok();
    let old = d.backup("shop");
    pg.psql(
        "shop",
        "INSERT INTO sales.customers (name) VALUES ('later')",
    );

    let mut restore = worker(
        &d,
        0,
        &[
            "restore",
            "shop",
            "--backup",
            &old,
            "--target",
            &pg.url("shop_restored"),
            "--identity",
            &d.identity_arg(),
        ],
    )
    .spawn()
    .unwrap();
    let leases = format!("/fleet?list-type=2&prefix=prod/shop/leases/{old}/");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s3.get(&leases).contains("<Key>") {
        assert!(Instant::now() < deadline, "the restore wrote no lease");
        assert!(
            restore.try_wait().unwrap().is_none(),
            "the restore ended before it was seen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Frozen mid-restore: its lease lives on until it expires.
    let group = -(restore.id() as i32);
    // SAFETY: a process group this test created.
    unsafe { libc::kill(group, libc::SIGSTOP) };
    // Another host backs up (keep_last = 1 lets the old backup go) and prunes.
    let new = {
        let r = finish(worker(&d, 1, &["backup", "shop"]).spawn().unwrap());
        assert_eq!(r.code, 0, "{}", r.stderr);
        d.run(&[
            "--catalog",
            &d.path().join("host1/catalog.db").to_string_lossy(),
            "list",
            "shop",
            "--output",
            "json",
        ])
        .ok()
        .json()[0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(new, old);
    let prune = worker(&d, 1, &["prune", "shop", "--output", "json"])
        .output()
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(group, libc::SIGCONT) };
    assert!(
        prune.status.success(),
        "{}",
        String::from_utf8_lossy(&prune.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&prune.stdout).unwrap();
    let kept = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == old.as_str())
        .unwrap_or_else(|| panic!("{entries}"));
    assert_eq!(kept["action"], "keep", "{entries}");
    let why = kept["reasons"][0].as_str().unwrap();
    assert!(
        why.starts_with("in use by a restore on ") && why.contains("leased until"),
        "{why}"
    );
    let r = finish(restore);
    assert_eq!(r.code, 0, "the restore failed:\n{}", r.stderr);
    assert_eq!(pg.fingerprint("shop_restored"), before);
    assert!(
        s3.get(&format!(
            "/fleet?list-type=2&prefix=prod/shop/backups/{old}/"
        ))
        .contains("manifest.json"),
        "the prune on the other host deleted the backup being restored"
    );
    assert!(
        !s3.get(&leases).contains("<Key>"),
        "a finished restore must remove its lease"
    );
    // With the restore done, the next prune lets the old backup go.
    let r = finish(worker(&d, 1, &["prune", "shop"]).spawn().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(manifests(&s3, "shop"), 1);
}

/// A daemon as a host of its own: its own catalog, log file, and port.
struct HostDaemon {
    child: Child,
    log: std::path::PathBuf,
    addr: String,
}

impl HostDaemon {
    /// Daemon `n` of a fleet sharing the PostgreSQL catalog `catalog`.
    fn start(d: &Drctl, n: usize, catalog: &str) -> HostDaemon {
        let log = d.path().join(format!("daemon{n}.log"));
        let addr = format!("127.0.0.1:{}", common::free_port());
        let child = fleet_service(
            d,
            n,
            catalog,
            &[
                "daemon",
                "--no-catch-up",
                "--grace",
                "60s",
                "--listen",
                &addr,
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
        HostDaemon { child, log, addr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.addr) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    fn stop(mut self) -> String {
        // The daemon alone, as the shipped unit's KillMode=mixed does: a
        // SIGTERM to the whole group would kill the pg_dump of the slot
        // being drained, and that slot would end failed.
        // SAFETY: a process this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "daemon did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log()
    }
}

impl Drop for HostDaemon {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn three_daemons_run_each_slot_once_even_when_one_is_killed_mid_run() {
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("ha");
    pg.psql("ha", SAMPLE_SQL);
    pg.createdb("drctl_catalog");
    let catalog = pg.url("drctl_catalog");
    let d = Drctl::new();
    s3_policy(&d, &s3, "ha", &pg.url("ha"), "lease_ttl = \"4s\"\n");
    let text = std::fs::read_to_string(d.path().join("policies/ha.toml"))
        .unwrap()
        .replace("schedule = \"0 2 * * *\"", "schedule = \"*/10 * * * * *\"")
        .replace("keep_last = 3", "keep_last = 1000");
    d.write_policy_text("ha", &text);
    fleet_run(&d, 9, &catalog, &["init"]).ok();

    let started = Instant::now();
    let mut daemons: Vec<Option<HostDaemon>> = (0..3)
        .map(|n| Some(HostDaemon::start(&d, n, &catalog)))
        .collect();
    let pids: Vec<u32> = daemons
        .iter()
        .map(|h| h.as_ref().unwrap().child.id())
        .collect();

    // Halfway, kill -9 the daemon that is running a backup right then.
    std::thread::sleep(Duration::from_secs(55));
    let deadline = Instant::now() + Duration::from_secs(30);
    let killed = loop {
        assert!(Instant::now() < deadline, "no daemon took a lease in 30 s");
        let lease = s3.get("/fleet/prod/ha/lease.json");
        if let Some(body) = lease.split_once("\r\n\r\n").map(|(_, b)| b) {
            if let Ok(h) = serde_json::from_str::<serde_json::Value>(body) {
                let pid = h["pid"].as_u64().unwrap_or(0) as u32;
                // A run that started just now: killed mid-run, so its slot is
                // run again (a committed one is not: the test below).
                let fresh = h["started"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| {
                        jiff::Timestamp::now().duration_since(t)
                            < jiff::SignedDuration::from_millis(150)
                    });
                if let Some(i) = pids.iter().position(|p| *p == pid).filter(|_| fresh) {
                    let mut h = daemons[i].take().unwrap();
                    // SAFETY: a process group this test created.
                    unsafe { libc::kill(-(h.child.id() as i32), libc::SIGKILL) };
                    let _ = h.child.wait();
                    break i;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed_pid = pids[killed];
    while started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let metrics: Vec<String> = daemons.iter().flatten().map(|h| h.metrics()).collect();
    let logs: Vec<String> = daemons
        .iter_mut()
        .filter_map(|h| h.take())
        .map(|h| h.stop())
        .collect();
    let all_logs = logs.join("\n----\n");

    // Every slot's marker, in slot order.
    let listing = s3.get("/fleet?list-type=2&prefix=prod/ha/slots/backup/");
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .collect();
    assert!(
        keys.len() >= 9,
        "too few slots ran in 2 minutes: {keys:?}\n{all_logs}"
    );
    let markers: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            let r = s3.get(&format!("/fleet/{k}"));
            serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap()
        })
        .collect();
    let slot_secs: Vec<i64> = markers
        .iter()
        .map(|m| {
            m["slot"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_second()
        })
        .collect();
    for w in slot_secs.windows(2) {
        assert_eq!(w[1] - w[0], 10, "a slot was missed: {keys:?}\n{all_logs}");
    }
    let mut backup_ids = std::collections::BTreeSet::new();
    let mut taken_over = 0;
    for m in &markers {
        assert!(
            m["finished_at"].is_string(),
            "a slot never finished: {m}\n{all_logs}"
        );
        match m["outcome"].as_str().unwrap() {
            "complete" => {
                assert!(
                    backup_ids.insert(m["backup_id"].as_str().unwrap().to_string()),
                    "one backup recorded for two slots: {m}"
                );
            }
            // The slot after the killed one may find the takeover still
            // running (lease time 4 s + the takeover's run).
            "skipped" => assert!(
                m["detail"].as_str().unwrap_or_default().contains("busy"),
                "{m}"
            ),
            other => panic!("slot {m} ended {other}\n{all_logs}"),
        }
    }
    let skipped = markers.len() - backup_ids.len();
    assert!(skipped <= 1, "{skipped} slots skipped:\n{all_logs}");
    for l in &logs {
        if l.contains("taking over the backup slot") {
            taken_over += 1;
        }
    }
    assert_eq!(
        taken_over, 1,
        "the killed run's slot must be taken over once:\n{all_logs}"
    );
    // The slot the killed daemon was running is finished by a survivor.
    let line = all_logs
        .lines()
        .find(|l| l.contains("taking over the backup slot"))
        .unwrap();
    let slot = line.rsplit("slot=").next().unwrap().trim();
    let m = markers
        .iter()
        .find(|m| m["slot"].as_str().unwrap().starts_with(&slot[..19]))
        .unwrap_or_else(|| panic!("no marker for {slot}"));
    assert_ne!(
        m["claimed_by"]["pid"].as_u64().unwrap() as u32,
        killed_pid,
        "{m}"
    );
    assert!(line.contains(&format!("pid {killed_pid})")), "{line}");
    // Exactly the slots' backups are in the repository: none doubled, none
    // lost.
    let listing = s3.get("/fleet?list-type=2&prefix=prod/ha/backups/");
    let committed: std::collections::BTreeSet<String> = listing
        .split("<Key>prod/ha/backups/")
        .skip(1)
        .filter_map(|k| {
            k.split_once("/manifest.json</Key>")
                .map(|(id, _)| id.to_string())
        })
        .collect();
    assert_eq!(committed, backup_ids, "{all_logs}");
    // The shared catalog lists exactly those as complete (the killed run's
    // row failed), and `catalog rebuild` derives the same from the bucket.
    let complete = |v: serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "complete")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let listed = fleet_run(&d, 9, &catalog, &["list", "ha", "--output", "json"])
        .ok()
        .json();
    assert_eq!(complete(listed), committed);
    fleet_run(&d, 9, &catalog, &["catalog", "rebuild"]).ok();
    let rebuilt = fleet_run(&d, 9, &catalog, &["list", "ha", "--output", "json"])
        .ok()
        .json();
    assert_eq!(complete(rebuilt), committed);
    // Each surviving daemon says which runs it took.
    let ran_here: u64 = metrics
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| {
            l.starts_with("drctl_daemon_slots_total{policy=\"ha\",kind=\"backup\",ran=\"this\"}")
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        ran_here >= 1,
        "no survivor reports the slots it ran: {metrics:?}"
    );
    for m in &metrics {
        assert!(m.contains("ran=\"other\"}"), "{m}");
    }
}

#[test]
fn a_taken_over_slot_whose_backup_was_committed_is_not_run_again() {
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("ha");
    pg.psql("ha", SAMPLE_SQL);
    let d = Drctl::new();
    s3_policy(&d, &s3, "ha", &pg.url("ha"), "lease_ttl = \"3s\"\n");
    let text = std::fs::read_to_string(d.path().join("policies/ha.toml"))
        .unwrap()
        .replace("schedule = \"0 2 * * *\"", "schedule = \"*/10 * * * * *\"")
        .replace("keep_last = 3", "keep_last = 1000");
    d.write_policy_text("ha", &text);
    d.run(&["init"]).ok();

    // A daemon elsewhere claimed the next slot, recorded the backup it
    // started, committed it and died in the prune after it, before writing
    // the slot's outcome.
    let id = d.backup("ha");
    let now = jiff::Timestamp::now().as_second();
    let mut due = (now / 10 + 1) * 10;
    if due - now < 6 {
        due += 10;
    }
    let due = jiff::Timestamp::from_second(due).unwrap();
    let slot = due.strftime("%Y%m%dT%H%M%SZ").to_string();
    let claimed_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(20);
    let marker = serde_json::json!({
        "slot": due.to_string(),
        "claimed_by": {"host": "gone", "pid": 999_999, "boot": "elsewhere"},
        "claimed_at": claimed_at.to_string(),
        "backup_id": id,
    });
    let key = format!("/fleet/prod/ha/slots/backup/{slot}.json");
    s3.put(&key, marker.to_string().as_bytes());

    let daemon = HostDaemon::start(&d, 0, d.path().join("host0/catalog.db").to_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let r = s3.get(&key);
        let m: serde_json::Value =
            serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
        if m["finished_at"].is_string() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was never finished: {m}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = daemon.stop();
    assert_eq!(finished["outcome"], "complete", "{finished}");
    assert_eq!(finished["backup_id"], id.as_str(), "{finished}");
    assert!(
        finished["detail"]
            .as_str()
            .unwrap()
            .contains("not run again"),
        "{finished}"
    );
    assert!(log.contains("not run again"), "{log}");
    // No second backup for that slot: none started in its ten seconds.
    let listing = s3.get("/fleet?list-type=2&prefix=prod/ha/backups/");
    let next = (due + jiff::SignedDuration::from_secs(10))
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let doubled: Vec<&str> = listing
        .split("<Key>prod/ha/backups/")
        .skip(1)
        .filter_map(|k| k.split_once("/manifest.json</Key>").map(|(id, _)| id))
        .filter(|i| *i != id && i[..16] >= *slot && i[..16] < *next)
        .collect();
    assert!(doubled.is_empty(), "the slot ran again: {doubled:?}\n{log}");
}

/// `drctl ARGS` on host `n` of a fleet whose catalog is in PostgreSQL.
fn fleet_worker(d: &Drctl, n: usize, catalog: &str, args: &[&str]) -> Command {
    let mut c = worker(d, n, args);
    c.env("DRCTL_CATALOG", catalog)
        .env("DRCTL_STATE_DIR", d.path().join(format!("host{n}/state")));
    c
}

/// `fleet_worker`, started directly as the catalog owner (see
/// `Drctl::service`).
fn fleet_service(d: &Drctl, n: usize, catalog: &str, args: &[&str]) -> Command {
    let mut c = d.service(args);
    c.env("DRCTL_CATALOG", catalog)
        .env("DRCTL_STATE_DIR", d.path().join(format!("host{n}/state")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    c
}

fn fleet_run(d: &Drctl, n: usize, catalog: &str, args: &[&str]) -> common::Run {
    let out = fleet_worker(d, n, catalog, args).output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Policy, id, status and stored bytes of every row `list` shows.
fn rows(v: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["policy"].as_str().unwrap().to_string(),
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["stored_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_catalog_in_postgresql_takes_eight_hosts_at_once_and_serves_every_command() {
    let s3 = S3Server::start();
    s3.create_bucket("fleet");
    let pg = PgCluster::start();
    pg.createdb("drctl_catalog");
    let catalog = pg.url("drctl_catalog");
    let d = Drctl::new();
    for i in 0..8 {
        let db = format!("db{i}");
        pg.createdb(&db);
        pg.psql(&db, SAMPLE_SQL);
        s3_policy(&d, &s3, &format!("p{i}"), &pg.url(&db), "");
    }
    fleet_run(&d, 9, &catalog, &["init"]).ok();

    // Eight hosts back up eight policies at once into one catalog.
    let workers: Vec<Child> = (0..8)
        .map(|i| {
            fleet_worker(&d, i, &catalog, &["backup", &format!("p{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let f = finish(w);
        assert_eq!(f.code, 0, "backup of p{i}:\n{}", f.stderr);
    }
    let listed = fleet_run(&d, 10, &catalog, &["list", "--output", "json"])
        .ok()
        .json();
    let before = rows(&listed);
    assert_eq!(before.len(), 8, "{listed:#}");
    // Which worker ran each: the host its row names.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for e in listed.as_array().unwrap() {
        assert_eq!(e["host"], host.trim(), "{e:#}");
    }
    for (i, (policy, _, status, stored)) in before.iter().enumerate() {
        assert_eq!(
            (status.as_str(), policy.as_str()),
            ("complete", format!("p{i}").as_str())
        );
        assert!(*stored > 0);
    }
    for (policy, id, _, _) in &before {
        assert!(
            s3.head(&format!("/fleet/prod/{policy}/backups/{id}/manifest.json"))
                .starts_with("HTTP/1.1 200"),
            "{id} is in the catalog but not in the bucket"
        );
    }

    // Every other host sees them, and every command works on them.
    let id0 = before[0].1.clone();
    let show = fleet_run(&d, 11, &catalog, &["show", &id0, "--output", "json"])
        .ok()
        .json();
    assert_eq!(show["manifest"]["id"], id0.as_str(), "{show}");
    let status = fleet_run(&d, 11, &catalog, &["status", "--output", "json"])
        .ok()
        .json();
    let with_backup = status
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["last_backup_id"].is_string() && s["last_backup_host"] == host.trim())
        .count();
    assert_eq!(with_backup, 8, "{status:#}");
    fleet_run(&d, 11, &catalog, &["verify", "p0"]).ok();
    let want = pg.fingerprint("db0");
    fleet_run(
        &d,
        12,
        &catalog,
        &[
            "restore",
            "p0",
            "--backup",
            &id0,
            "--target",
            &pg.url("db0_restored"),
            "--identity",
            &d.identity_arg(),
        ],
    )
    .ok();
    assert_eq!(pg.fingerprint("db0_restored"), want);
    let drill = fleet_run(
        &d,
        13,
        &catalog,
        &[
            "drill",
            "p0",
            "--scratch",
            &pg.url("postgres"),
            "--identity",
            &d.identity_arg(),
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    assert_eq!(drill["passed"], true, "{drill:#}");
    let status = fleet_run(&d, 14, &catalog, &["status", "p0", "--output", "json"])
        .ok()
        .json();
    assert_eq!(status[0]["last_drill_passed"], true, "{status}");
    // The drill trend comes from the PostgreSQL catalog too.
    assert_eq!(
        status[0]["drill_trend"]["drills"][0]["rto_seconds"], drill["rto_seconds"],
        "{status}"
    );
    fleet_run(&d, 14, &catalog, &["pin", &id0]).ok();
    fleet_run(&d, 14, &catalog, &["prune", "p0", "--dry-run"]).ok();

    // What the catalog says equals what `catalog rebuild` derives from the
    // repository alone.
    let mut pinned = fleet_run(&d, 15, &catalog, &["list", "p0", "--output", "json"])
        .ok()
        .json();
    assert_eq!(pinned[0]["pinned"], true, "{pinned}");
    fleet_run(&d, 15, &catalog, &["catalog", "rebuild"]).ok();
    let after = fleet_run(&d, 15, &catalog, &["list", "--output", "json"])
        .ok()
        .json();
    assert_eq!(rows(&after), before);
    pinned = fleet_run(&d, 15, &catalog, &["list", "p0", "--output", "json"])
        .ok()
        .json();
    assert_eq!(pinned[0]["pinned"], true, "{pinned}");
    // The rows are in PostgreSQL, not in a file on some host.
    let n = pg.query(
        "drctl_catalog",
        "SELECT count(*) FROM backups WHERE status = 'complete'",
    );
    assert_eq!(n.trim(), "8");
    assert!(!d.path().join("host0/catalog.db").exists());
}
