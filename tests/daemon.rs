//! `drctl daemon` against real servers: seconds-level schedules produce
//! backups and prune to keep_last, a failing policy reaches the webhook,
//! /metrics parses and /healthz answers, SIGHUP reloads (an invalid policy
//! keeps its last good version), SIGTERM mid-backup cancels cleanly, and a
//! kill -9 leaves nothing `running` once drctl starts again.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{webhook, Drctl, PgCluster};

/// The daemon process, killed on drop so a failing test leaves nothing.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(d: &Drctl, args: &[&str]) -> Daemon {
        let log = d.path().join(format!("daemon-{}.log", rand_suffix()));
        let mut all = vec!["--log-format", "json", "daemon"];
        all.extend_from_slice(args);
        let child = d
            .command(&all)
            // Its own process group: drop ends the daemon even when it
            // runs under runuser (killing runuser alone orphaned it).
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the process to end; its exit code.
    #[track_caller]
    fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Poll `f` until it returns Some, or fail with `what` and the daemon log.
#[track_caller]
fn wait_for<T>(
    what: &str,
    within: Duration,
    daemon: &Daemon,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; daemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET over plain HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

fn policy_text(d: &Drctl, name: &str, schedule: &str, keep: &str, notify: &str) -> String {
    let p = d.path().join("policies").join(format!("{name}.toml"));
    std::fs::read_to_string(p)
        .unwrap()
        .replace(
            "schedule = \"0 2 * * *\"",
            &format!("schedule = \"{schedule}\""),
        )
        .replace("keep_last = 3\n", keep)
        + notify
}

/// The catalog's rows of `policy` (via an unfiltered list, which works
/// while the policy's file is broken on disk).
fn rows(d: &Drctl, policy: &str) -> Vec<serde_json::Value> {
    let all = d.run(&["list", "--output", "json"]).ok().json();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["policy"] == policy)
        .cloned()
        .collect()
}

fn with_status(rows: &[serde_json::Value], status: &str) -> usize {
    rows.iter().filter(|r| r["status"] == status).count()
}

/// `promtool check metrics` when promtool is there (scripts/install-deps.sh
/// fetches it, scripts/test.sh names it in DRCTL_TEST_PROMTOOL); otherwise a line-level check of
/// the exposition format, so the test never passes without checking.
fn check_exposition(body: &str) {
    let promtool = std::env::var("DRCTL_TEST_PROMTOOL")
        .ok()
        .filter(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| "promtool".into());
    if Command::new(&promtool).arg("--version").output().is_ok() {
        let mut c = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut typed = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            assert!(
                matches!(it.next(), Some("gauge" | "counter")),
                "bad TYPE line: {line}"
            );
            typed.insert(name.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(typed.contains(name), "sample before its TYPE: {line}");
            assert!(value.parse::<f64>().is_ok(), "bad value: {line}");
        }
    }
}

#[test]
fn daemon_runs_schedules_prunes_notifies_reloads_and_serves_metrics() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g;",
    );
    let (hook, got) = webhook();
    let d = Drctl::new();
    let notify = format!("\n[notify]\nwebhook_url = \"{hook}\"\n");
    d.write_policy("shop", &pg.url("shop"), "");
    let shop = policy_text(&d, "shop", "*/2 * * * * *", "keep_last = 2\n", &notify);
    d.write_policy_text("shop", &shop);
    // A policy whose server is down: every run fails and must notify.
    d.write_policy("gone", "postgres://postgres@127.0.0.1:1/gone", "");
    // With nothing recoverable its RPO is over any budget: notified once.
    let gone = policy_text(
        &d,
        "gone",
        "*/3 * * * * *",
        "",
        &format!("{notify}max_rpo = \"1h\"\n"),
    );
    d.write_policy_text("gone", &gone);

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(&d, &["--listen", &addr, "--no-catch-up", "--grace", "60s"]);

    let (code, body) = wait_for("/healthz", Duration::from_secs(30), &daemon, || {
        http_get(&addr, "/healthz")
    });
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(
        daemon.log().contains("\"next\""),
        "next run not logged:\n{}",
        daemon.log()
    );

    // Backups keep coming, and prune keeps at most two (a third may exist
    // only between a backup's commit and its prune).
    let mut seen = std::collections::BTreeSet::new();
    wait_for(
        "four scheduled backups",
        Duration::from_secs(90),
        &daemon,
        || {
            let r = rows(&d, "shop");
            for b in r.iter().filter(|b| b["status"] == "complete") {
                seen.insert(b["id"].as_str().unwrap().to_string());
            }
            assert!(with_status(&r, "complete") <= 3, "{r:?}");
            (seen.len() >= 4).then_some(())
        },
    );

    let failure = wait_for(
        "a backup_failed webhook",
        Duration::from_secs(60),
        &daemon,
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|b| b["policy"] == "gone" && b["event"] == "backup_failed")
                .cloned()
        },
    );
    assert!(
        failure["text"].as_str().unwrap().contains("gone"),
        "{failure}"
    );
    assert!(
        failure["message"].as_str().unwrap().contains("127.0.0.1"),
        "{failure}"
    );
    assert_eq!(failure["time"].as_str().unwrap().len(), 20, "{failure}");
    // Successes are not sent unless asked for.
    assert!(got.lock().unwrap().iter().all(|b| b["policy"] != "shop"));
    let rpo = wait_for(
        "an rpo_exceeded webhook",
        Duration::from_secs(30),
        &daemon,
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|b| b["event"] == "rpo_exceeded")
                .cloned()
        },
    );
    assert_eq!(rpo["policy"], "gone", "{rpo}");
    assert_eq!(rpo["message"], "no recoverable backup", "{rpo}");

    let (code, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{metrics}");
    check_exposition(&metrics);
    for family in [
        "drctl_backup_last_success_timestamp_seconds{policy=\"shop\"}",
        "drctl_backup_duration_seconds{policy=\"shop\"}",
        "drctl_backup_stored_bytes{policy=\"shop\"}",
        "drctl_backup_failures_total{policy=\"gone\"}",
        "drctl_rpo_seconds{policy=\"shop\"}",
        "drctl_scheduler_heartbeat_timestamp_seconds",
        &format!(
            "drctl_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "drctl_policy_reload_success 1",
        "drctl_policy_reload_timestamp_seconds ",
        // The budget the RPO alert compares against, from [notify] max_rpo.
        "drctl_rpo_budget_seconds{policy=\"gone\"} 3600\n",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("drctl_backup_failures_total{policy=\"gone\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 1.0, "{metrics}");

    // SIGHUP: a new policy is picked up, and a policy broken on disk keeps
    // running in its last good version.
    d.write_policy("late", &pg.url("shop"), "");
    let late = policy_text(
        &d,
        "late",
        "*/2 * * * * *",
        "keep_last = 1\n",
        &format!("{notify}on_success = true\n"),
    );
    d.write_policy_text("late", &late);
    d.write_policy_text("shop", "[backup\nthis is not TOML");
    let before = seen.len();
    daemon.signal("-HUP");
    wait_for(
        "a backup of the policy added on SIGHUP",
        Duration::from_secs(60),
        &daemon,
        || (with_status(&rows(&d, "late"), "complete") >= 1).then_some(()),
    );
    wait_for(
        "shop to keep running after it was broken on disk",
        Duration::from_secs(60),
        &daemon,
        || {
            for b in rows(&d, "shop")
                .iter()
                .filter(|b| b["status"] == "complete")
            {
                seen.insert(b["id"].as_str().unwrap().to_string());
            }
            (seen.len() >= before + 2).then_some(())
        },
    );
    let ok = wait_for(
        "a backup_succeeded webhook",
        Duration::from_secs(30),
        &daemon,
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|b| b["policy"] == "late" && b["event"] == "backup_succeeded")
                .cloned()
        },
    );
    assert!(ok["message"].as_str().unwrap().contains("complete"), "{ok}");
    let log = daemon.log();
    assert!(log.contains("invalid policy"), "{log}");
    assert!(log.contains("keeping the previous valid version"), "{log}");
    // The reload says what it changed and when the new policy runs; the
    // broken file shows in /metrics.
    let line = log
        .lines()
        .find(|l| l.contains("SIGHUP: policies reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{log}"));
    assert!(line.contains("added late (next backup 20"), "{line}");
    assert!(!line.contains("removed"), "{line}");
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("drctl_policy_reload_success 0\n"),
        "{metrics}"
    );

    // The RPO notification is sent once, not on every turn of the loop.
    let rpo_sent = got
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["event"] == "rpo_exceeded")
        .count();
    assert_eq!(rpo_sent, 1);

    daemon.signal("-TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(90)),
        0,
        "{}",
        daemon.log()
    );
    d.write_policy_text("shop", &shop);
    let r = rows(&d, "shop");
    assert_eq!(with_status(&r, "running"), 0, "{r:?}");
    // The last job finished (grace was long enough) and pruned after itself.
    assert_eq!(with_status(&r, "complete"), 2, "{r:?}");
    assert_eq!(
        d.repo_files("manifest.json")
            .iter()
            .filter(|p| p.to_string_lossy().contains("/shop/"))
            .count(),
        2
    );
    assert_eq!(with_status(&rows(&d, "gone"), "running"), 0);
    drop(pg);
}

/// A psql session holding an exclusive lock on `table`, so pg_dump blocks
/// (without output) until it is killed. Released on drop.
struct Locker(Child);

impl Locker {
    fn hold(pg: &PgCluster, db: &str, table: &str) -> Locker {
        let mut c = Command::new(common::pg_tool("psql"))
            .args(["-X", "-q", "-d", &pg.url(db)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(
            c.stdin.as_mut().unwrap(),
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);"
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pg
            .query(
                db,
                &format!("SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"),
            )
            .trim()
            != "1"
        {
            assert!(Instant::now() < deadline, "lock not taken");
            std::thread::sleep(Duration::from_millis(100));
        }
        Locker(c)
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_mid_backup_cancels_cleanly_and_kill_9_is_repaired() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g;",
    );
    let d = Drctl::new();
    d.write_policy("shop", &pg.url("shop"), "");
    let text = policy_text(&d, "shop", "* * * * * *", "", "");
    d.write_policy_text("shop", &text);
    let lock = Locker::hold(&pg, "shop", "t");

    let mut daemon = Daemon::start(&d, &["--no-catch-up", "--grace", "1s"]);
    wait_for("a running backup", Duration::from_secs(60), &daemon, || {
        (with_status(&rows(&d, "shop"), "running") == 1).then_some(())
    });
    // Give pg_dump time to be blocked on the lock, not merely starting.
    std::thread::sleep(Duration::from_secs(2));
    // A concurrent run from cron is refused while the daemon holds the policy.
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is busy"), "{}", r.stderr);

    daemon.signal("-TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        daemon.log()
    );
    let r = rows(&d, "shop");
    assert_eq!(with_status(&r, "running"), 0, "{r:?}");
    // Stopped by the signal: cancelled, not failed.
    assert!(with_status(&r, "cancelled") >= 1, "{r:?}");
    assert_eq!(with_status(&r, "failed"), 0, "{r:?}");
    assert_eq!(with_status(&r, "complete"), 0, "{r:?}");
    // Nothing in the repository passes for a backup: no manifest, no data
    // object left behind, and a catalog rebuild finds none.
    assert!(
        d.repo_files("manifest.json").is_empty(),
        "{:?}",
        d.repo_files("")
    );
    assert!(d.repo_files(".age").is_empty(), "{:?}", d.repo_files(""));
    let leftovers: Vec<_> = d
        .repo_files("")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/shop/backups/"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let rebuilt = d
        .run(&["catalog", "rebuild", "--output", "json"])
        .ok()
        .json();
    assert_eq!(rebuilt["backups"], 0, "{rebuilt}");

    // kill -9 mid-backup: the row stays `running` until the next drctl start
    // notices its process is gone.
    let mut daemon = Daemon::start(&d, &["--no-catch-up"]);
    wait_for("a running backup", Duration::from_secs(60), &daemon, || {
        (with_status(&rows(&d, "shop"), "running") == 1).then_some(())
    });
    daemon.signal("-KILL");
    daemon.wait_exit(Duration::from_secs(10));
    let r = rows(&d, "shop");
    assert_eq!(with_status(&r, "running"), 0, "{r:?}");
    drop(lock);
}

#[test]
fn daemon_runs_scheduled_drills_and_notifies_a_failing_one() {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql(
        "shop",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10) g;",
    );
    let (hook, got) = webhook();
    let d = Drctl::new();
    d.write_policy(
        "shop",
        &pg.url("shop"),
        &format!(
            "\n[notify]\nwebhook_url = \"{hook}\"\n\n[drill]\nschedule = \"*/2 * * * * *\"\n[[drill.checks]]\nname = \"ten rows\"\nsql = \"select count(*) from t\"\nexpect = \"11\"\n"
        ),
    );
    d.backup("shop");
    let id = d.identity_arg();
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut daemon = Daemon::start(&d, &["--no-catch-up", "--identity", &id, "--listen", &addr]);
    let n = wait_for(
        "a drill_failed webhook",
        Duration::from_secs(60),
        &daemon,
        || {
            got.lock()
                .unwrap()
                .iter()
                .find(|b| b["event"] == "drill_failed")
                .cloned()
        },
    );
    let msg = n["message"].as_str().unwrap();
    assert!(msg.contains("ten rows: expected = 11, got '10'"), "{n}");
    // The failed drill's measurements are exported; no passing drill yet.
    let metrics = wait_for("drill metrics", Duration::from_secs(30), &daemon, || {
        http_get(&addr, "/metrics")
            .map(|(_, m)| m)
            .filter(|m| m.contains("drctl_drill_rto_seconds{policy=\"shop\"}"))
    });
    check_exposition(&metrics);
    assert!(metrics.contains("drctl_drill_rpo_seconds{policy=\"shop\"}"));
    assert!(!metrics.contains("drctl_drill_last_success_timestamp_seconds{policy=\"shop\"}"));
    assert!(metrics.contains("drctl_drill_last_passed{policy=\"shop\"} 0\n"));
    assert!(metrics.contains("drctl_drill_rto_p50_seconds{policy=\"shop\"}"));
    assert!(metrics.contains("drctl_drill_rto_max_seconds{policy=\"shop\"}"));
    daemon.signal("-TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(60)),
        0,
        "{}",
        daemon.log()
    );
    let s = d.run(&["status", "shop", "--output", "json"]).ok().json();
    assert_eq!(s[0]["last_drill_passed"], false, "{s}");
    assert!(
        s[0]["last_drill_rto_seconds"].as_f64().unwrap() > 0.0,
        "{s}"
    );
    // The trend: the last drills (up to 10), oldest first, the newest being
    // the one above, with their median and maximum.
    let t = &s[0]["drill_trend"];
    let drills = t["drills"].as_array().unwrap();
    assert!((1..=10).contains(&drills.len()), "{t}");
    assert!(drills.iter().all(|d| d["passed"] == false), "{t}");
    assert_eq!(
        drills.last().unwrap()["rto_seconds"],
        s[0]["last_drill_rto_seconds"],
        "{s}"
    );
    let rtos: Vec<f64> = drills
        .iter()
        .map(|d| d["rto_seconds"].as_f64().unwrap())
        .collect();
    let max = rtos.iter().copied().fold(0.0, f64::max);
    assert_eq!(t["rto_max_seconds"].as_f64().unwrap(), max, "{t}");
    let p50 = t["rto_p50_seconds"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{t}");
    let prefix = format!("drctl-scratch-{}-", daemon.child.id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "scratch dirs left by the daemon: {left:?}");
}

#[test]
fn failing_wal_archiving_is_notified_once_and_again_when_it_recovers() {
    let (hook, got) = webhook();
    let d = Drctl::for_owner();
    // archive_command fails until it is pointed at drctl below.
    let pg = PgCluster::start_conf(&[
        "archive_mode = on".into(),
        "archive_command = 'exit 1'".into(),
    ]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    let text = std::fs::read_to_string(d.path().join("policies/pitr.toml")).unwrap()
        + &format!("\n[notify]\nwebhook_url = \"{hook}\"\n");
    d.write_policy_text("pitr", &text);
    pg.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1);",
    );
    pg.query("postgres", "SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.query("postgres", "SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archive_command never failed");
        std::thread::sleep(Duration::from_millis(100));
    }

    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(&d, &["--listen", &addr, "--no-catch-up"]);
    let events = |kind: &str| {
        got.lock()
            .unwrap()
            .iter()
            .filter(|b| b["event"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let failing = wait_for(
        "an archive_failing webhook",
        Duration::from_secs(30),
        &daemon,
        || events("archive_failing").first().cloned(),
    );
    assert_eq!(failing["policy"], "pitr", "{failing}");
    assert!(
        failing["message"].as_str().unwrap().contains("FAILING"),
        "{failing}"
    );
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("drctl_wal_archive_failing{policy=\"pitr\"} 1"),
        "{metrics}"
    );

    // Fixed: archiving resumes, one archive_recovered follows.
    let cmd = d.archive_command("pitr");
    let value = cmd.split_once(" = ").unwrap().1;
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET archive_command = {value}; SELECT pg_reload_conf();"),
    );
    let recovered = wait_for(
        "an archive_recovered webhook",
        Duration::from_secs(60),
        &daemon,
        || {
            pg.query("postgres", "SELECT pg_switch_wal()");
            events("archive_recovered").first().cloned()
        },
    );
    assert_eq!(recovered["policy"], "pitr", "{recovered}");
    assert_eq!(
        events("archive_failing").len(),
        1,
        "notified once per incident"
    );
    let (_, metrics) = http_get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("drctl_wal_archive_failing{policy=\"pitr\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drctl_wal_archive_last_success_timestamp_seconds{policy=\"pitr\"}"),
        "{metrics}"
    );
}

/// deploy/prometheus/drctl-rules.yml passes `promtool check rules`, and
/// `promtool test rules` proves each alert fires on the series that should
/// fire it and not on a healthy policy beside it.
#[test]
fn the_shipped_alert_rules_check_and_pass_their_unit_tests() {
    let promtool = std::env::var("DRCTL_TEST_PROMTOOL")
        .ok()
        .filter(|p| std::path::Path::new(p).exists())
        .expect("DRCTL_TEST_PROMTOOL: scripts/install-deps.sh fetches promtool, scripts/test.sh names it");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "drctl-rules.yml"],
        ["test", "rules", "drctl-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Debian's chromium, headless, with nothing of its own reaching out
/// (`--dump-dom` or `--screenshot` in `args`); `offline` runs it in a
/// network namespace of its own, so a page that needed the network would
/// show it. Bounded: a browser that hangs fails the test.
fn chromium(args: &[&str], offline: bool, profile: &std::path::Path) -> String {
    let browser =
        std::env::var("DRCTL_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&browser).exists(),
        "{browser} missing: scripts/install-deps.sh installs Debian's chromium"
    );
    let mut c = Command::new("timeout");
    c.arg("90");
    if offline {
        c.args(["unshare", if common::is_root() { "--net" } else { "-rn" }]);
    }
    c.arg(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each policy's (state, reasons) as the rendered DOM shows its row.
fn rows_in_dom(dom: &str) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let mut out = std::collections::BTreeMap::new();
    for part in dom.split("<tr ").skip(1) {
        let row = part.split("</tr>").next().unwrap();
        let attr = |name: &str| {
            row.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(str::to_string)
        };
        let (Some(policy), Some(state)) = (attr("data-policy"), attr("data-state")) else {
            continue;
        };
        let reasons = row
            .split("<li class=\"reason\">")
            .skip(1)
            .map(|r| r.split("</li>").next().unwrap().replace("&amp;", "&"))
            .collect();
        out.insert(policy, (state, reasons));
    }
    out
}

/// Keep a screenshot where CI can pick it up after the temp dir is gone.
fn keep_artifact(png: &std::path::Path, name: &str) {
    let bytes = std::fs::read(png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{} is no screenshot ({} bytes)",
        png.display(),
        bytes.len()
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(png, dir.join(name)).unwrap();
}

/// The status page in a real browser, from a running daemon over four
/// policies in four states: healthy; archiving failing (a server whose
/// archive_command fails); past max_rpo; and a WAL gap (a segment lost
/// from the repository). Each row shows its state and why; a policy's own
/// page shows its history, the gap and the retention plan; `drctl report
/// --html` opens with no network at all and says the same.
#[test]
fn the_status_page_shows_each_policys_state_and_reason_in_a_real_browser() {
    let d = Drctl::for_owner();
    let pg = common::archiving_cluster(&d, "gappy");
    d.write_physical_policy("gappy", &pg.url("postgres"));
    d.write_policy(
        "healthy",
        &pg.url("postgres"),
        "[drill]\nmax_rto = \"10m\"\n[[drill.checks]]\nname = \"t is there\"\nsql = \"select count(*) from t\"\nexpect = \"0\"\n",
    );
    d.write_policy("stale", &pg.url("postgres"), "[notify]\nmax_rpo = \"1s\"\n");
    let failing = PgCluster::start_conf(&[
        "archive_mode = on".into(),
        "archive_command = '/bin/false'".into(),
    ]);
    d.write_physical_policy("archfail", &failing.url("postgres"));

    pg.psql("postgres", "CREATE TABLE t (id int)");
    d.backup("healthy");
    d.backup("stale");
    // Two drills: the trend chart has a line.
    let id = d.identity_arg();
    for _ in 0..2 {
        d.run(&["drill", "healthy", "--identity", &id]).ok();
    }
    let first = d.backup("gappy");
    let show = d.run(&["show", &first, "--output", "json"]).ok().json();
    let stop = show["manifest"]["wal"]["stop_segment"]
        .as_str()
        .unwrap()
        .to_string();
    let mut last = String::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        pg.psql("postgres", &format!("INSERT INTO t VALUES ({i})"));
        last = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    }
    common::wait_archived(&pg, &last);
    std::thread::sleep(Duration::from_millis(1100));
    let second = d.backup("gappy");
    let victim = common::seg_plus(&stop, 2);
    let gone = d.repo_files(&format!("{victim}.json"));
    assert_eq!(gone.len(), 1, "{victim} is not archived");
    std::fs::remove_file(&gone[0]).unwrap();
    // The failing archiver: a switched segment it cannot archive.
    failing.psql(
        "postgres",
        "CREATE TABLE t AS SELECT 1 AS id; SELECT pg_switch_wal()",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while failing.query("postgres", "SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "archive_command never failed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Past max_rpo = 1s.
    std::thread::sleep(Duration::from_millis(1500));

    let addr = format!("127.0.0.1:{}", common::free_port());
    let daemon = Daemon::start(&d, &["--listen", &addr, "--no-catch-up"]);
    wait_for("/healthz", Duration::from_secs(30), &daemon, || {
        http_get(&addr, "/healthz").filter(|(s, _)| *s == 200)
    });
    let profile = d.path().join("chromium-profile");
    let dom = chromium(&["--dump-dom", &format!("http://{addr}/")], false, &profile);
    let rows = rows_in_dom(&dom);
    let expect = |rows: &std::collections::BTreeMap<String, (String, Vec<String>)>, page: &str| {
        let get = |p: &str| {
            rows.get(p)
                .unwrap_or_else(|| panic!("{page}: no row for {p}:\n{dom}"))
        };
        let (state, reasons) = get("healthy");
        assert_eq!(state, "healthy", "{page}: {reasons:?}");
        assert!(reasons[0].starts_with("RPO "), "{page}: {reasons:?}");
        let (state, reasons) = get("stale");
        assert_eq!(state, "failing", "{page}: {reasons:?}");
        assert!(
            reasons[0].contains("is past max_rpo 1s"),
            "{page}: {reasons:?}"
        );
        let (state, reasons) = get("archfail");
        assert_eq!(state, "failing", "{page}: {reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("archive_command FAILING")),
            "{page}: {reasons:?}"
        );
        let (state, reasons) = get("gappy");
        assert_eq!(state, "warning", "{page}: {reasons:?}");
        assert_eq!(
            reasons,
            &[format!(
                "WAL gap: {victim} missing: points in it cannot be restored"
            )],
            "{page}"
        );
        assert_eq!(rows.len(), 4, "{page}: {rows:?}");
    };
    expect(&rows, "/");
    assert!(dom.contains("<meta http-equiv=\"refresh\""), "{dom}");
    assert_eq!(
        dom.matches("<polyline").count(),
        2,
        "the drilled policy has an RTO and an RPO line"
    );
    assert!(
        dom.contains("class=\"gap\""),
        "the window bar draws no gap:\n{dom}"
    );
    let shot = d.path().join("status-page.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,700",
            &format!("http://{addr}/"),
        ],
        false,
        &profile,
    );
    keep_artifact(&shot, "status-page.png");
    // A phone's width: each policy a card.
    let phone = d.path().join("status-page-phone.png");
    chromium(
        &[
            &format!("--screenshot={}", phone.display()),
            "--window-size=390,844",
            &format!("http://{addr}/"),
        ],
        false,
        &profile,
    );
    keep_artifact(&phone, "status-page-phone.png");

    // A policy's own page: both backups on the timeline and in the table,
    // the gap, and what the next prune keeps.
    let dom = chromium(
        &["--dump-dom", &format!("http://{addr}/policy/gappy")],
        false,
        &profile,
    );
    for want in [
        first.as_str(),
        second.as_str(),
        victim.as_str(),
        "Retention: what the next prune keeps",
        "never drilled",
    ] {
        assert!(dom.contains(want), "/policy/gappy lacks {want}:\n{dom}");
    }
    assert_eq!(dom.matches("class=\"complete\"").count(), 2, "{dom}");
    let dom = chromium(
        &["--dump-dom", &format!("http://{addr}/policy/healthy")],
        false,
        &profile,
    );
    assert_eq!(dom.matches("<tr class=\"drill\">").count(), 2, "{dom}");
    assert!(dom.contains("t is there: "), "{dom}");
    let (status, body) = http_get(&addr, "/policy/nosuch").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no policy \"nosuch\""), "{body}");

    // The report file: opened with no network, the same states and
    // reasons, and every policy's detail below the table.
    let file = d.path().join("report.html");
    let r = d.run(&["report", "--html", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("1 healthy, 1 warning, 2 failing"),
        "{}",
        r.stderr
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let both = d.run(&["report", "--html", "-", "--output", "json"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(
        both.stderr.contains("give --html a file name"),
        "{}",
        both.stderr
    );
    let url = format!("file://{}", file.display());
    let dom = chromium(&["--dump-dom", &url], true, &profile);
    expect(&rows_in_dom(&dom), "report.html");
    for p in ["healthy", "stale", "archfail", "gappy"] {
        assert!(
            dom.contains(&format!("id=\"policy-{p}\"")),
            "no detail for {p}"
        );
    }
    assert!(
        !dom.contains("http-equiv=\"refresh\""),
        "a file must not reload itself"
    );
    let shot = d.path().join("report.png");
    chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,700",
            &url,
        ],
        true,
        &profile,
    );
    keep_artifact(&shot, "report.png");

    // The same content as JSON.
    let v = d.run(&["report", "--output", "json"]).ok().json();
    let states: Vec<(String, String)> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["policy"].as_str().unwrap().into(),
                p["health"]["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("archfail", "failing"),
            ("gappy", "warning"),
            ("healthy", "healthy"),
            ("stale", "failing")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(
        v["policies"][1]["detail"]["backups"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{v}"
    );
}
