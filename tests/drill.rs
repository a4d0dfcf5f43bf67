//! `drctl drill` against real servers: a healthy dump drill passes and its
//! JUnit parses; a failing check, a corrupted artifact and blown budgets
//! fail with what was expected and found; no scratch server or directory
//! outlives a drill, however it ends.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_archived, Drctl, PgCluster};

const CHECKS: &str = r#"
[drill]
max_rto = "10m"
[[drill.checks]]
name = "orders not empty"
sql = "select count(*) > 0 from sales.orders"
expect = "t"
[[drill.checks]]
name = "customers in range"
sql = "select count(*) from sales.customers"
expect_min = 300
expect_max = 300
"#;

fn setup(extra: &str) -> (PgCluster, Drctl) {
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", common::SAMPLE_SQL);
    let mut d = Drctl::new();
    isolate_tmp(&mut d);
    d.write_policy("shop", &pg.url("shop"), extra);
    (pg, d)
}

/// Give this work dir its own TMPDIR, so the scratch directories its drills
/// make are seen by this test alone (tests run in parallel).
fn isolate_tmp(d: &mut Drctl) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tmp = d.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // The scratch server runs as postgres: it must reach its directory.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    d.extra_env
        .push(("TMPDIR".into(), tmp.display().to_string()));
    tmp
}

/// Scratch directories in this work dir's TMPDIR.
fn scratch_dirs(d: &Drctl) -> Vec<PathBuf> {
    std::fs::read_dir(d.path().join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("drctl-scratch-")
        })
        .map(|e| e.path())
        .collect()
}

/// Processes whose command line mentions `needle` (a scratch data dir).
fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Run a drill, returning (exit code, stdout JSON) and asserting that it
/// left no scratch directory or server behind.
fn drill(d: &Drctl, args: &[&str]) -> (i32, serde_json::Value) {
    drill_policy(d, "shop", args)
}

fn drill_policy(d: &Drctl, policy: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["drill", policy, "--output", "json", "--identity"];
    let id = d.identity_arg();
    all.push(&id);
    all.extend_from_slice(args);
    let child = d
        .command(&all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(scratch_dirs(d).is_empty(), "scratch dir left behind");
    let tmp = d.path().join("tmp").display().to_string();
    assert!(
        processes_with(&tmp).is_empty(),
        "scratch server left running"
    );
    (out.status.code().unwrap_or(-1), v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

/// JUnit XML as JSON via Python's ElementTree (a real XML parser).
fn parse_junit(path: &std::path::Path) -> serde_json::Value {
    let script = r#"
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
print(json.dumps({
  "tag": root.tag, "tests": root.get("tests"), "failures": root.get("failures"),
  "errors": root.get("errors"),
  "suites": [{"name": s.get("name"), "tests": s.get("tests"), "failures": s.get("failures"),
              "errors": s.get("errors"),
              "cases": [{"name": c.get("name"), "time": c.get("time"),
                         "failure": (c.find("failure").text if c.find("failure") is not None else None),
                         "error": (c.find("error").get("message") if c.find("error") is not None else None)}
                        for c in s.findall("testcase")]}
             for s in root.findall("testsuite")]}))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "JUnit does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn healthy_dump_drill_passes_with_junit_and_status() {
    let (_pg, d) = setup(CHECKS);
    let id = d.backup("shop");
    let junit = d.path().join("drill.xml");
    let (code, v) = drill(&d, &["--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["passed"], true);
    assert_eq!(v["backup_id"], id.as_str());
    let rto = v["rto_seconds"].as_f64().unwrap();
    assert!(rto > 0.0 && rto < 600.0, "{v}");
    assert!(v["rpo_seconds"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(check(&v, "tables and row counts")["detail"]
        .as_str()
        .unwrap()
        .contains("row counts equal"));
    assert_eq!(check(&v, "orders not empty")["actual"], "t");
    assert_eq!(check(&v, "customers in range")["actual"], "300");
    // postgresql-contrib ships amcheck: the indexes were checked.
    assert!(
        check(&v, "amcheck (btree indexes)")["passed"] == true,
        "{v}"
    );
    for name in ["restore", "RTO", "RPO"] {
        assert_eq!(check(&v, name)["passed"], true, "{v}");
    }

    let j = parse_junit(&junit);
    assert_eq!(j["tag"], "testsuites");
    assert_eq!(j["failures"], "0");
    let suite = &j["suites"][0];
    assert_eq!(suite["name"], "drill shop");
    let cases: Vec<&str> = suite["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cases,
        [
            "restore",
            "tables and row counts",
            "amcheck (btree indexes)",
            "orders not empty",
            "customers in range",
            "RTO",
            "RPO"
        ]
    );

    // --random-point picks among the backups (here the only one).
    let (code, r) = drill(&d, &["--random-point"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["backup_id"], id.as_str());
    assert_eq!(r["rpo_seconds"], 0.0, "a backup's own point loses nothing");

    let s = d.run(&["status", "shop", "--output", "json"]).ok().json();
    assert_eq!(s[0]["last_drill_passed"], true, "{s}");
    assert!(s[0]["last_drill_at"].is_string(), "{s}");
    assert!(s[0]["last_drill_rto_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn failing_check_and_blown_budgets_fail_with_expected_and_actual() {
    let extra = r#"
[drill]
max_rpo = "1s"
[[drill.checks]]
name = "wrong on purpose"
sql = "select count(*) from sales.customers"
expect = "42"
[[drill.checks]]
name = "errors"
sql = "select * from no_such_table"
expect = "1"
"#;
    let (_pg, d) = setup(extra);
    d.backup("shop");
    // The newest data is now more than a second older than the drill.
    std::thread::sleep(Duration::from_millis(2100));
    let junit = d.path().join("drill.xml");
    let (code, v) = drill(&d, &["--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["passed"], false);
    let wrong = check(&v, "wrong on purpose");
    assert_eq!(wrong["passed"], false);
    assert_eq!(wrong["expected"], "= 42");
    assert_eq!(wrong["actual"], "300");
    let errors = check(&v, "errors");
    assert_eq!(errors["passed"], false);
    // It could not be judged: an error, not a failure.
    assert_eq!(errors["errored"], true, "{errors}");
    assert_eq!(wrong.get("errored"), None, "{wrong}");
    assert!(
        errors["detail"].as_str().unwrap().contains("no_such_table"),
        "{errors}"
    );
    let rpo = check(&v, "RPO");
    assert_eq!(rpo["passed"], false, "{v}");
    assert!(rpo["detail"]
        .as_str()
        .unwrap()
        .contains("exceeds the budget of 1s"));
    // The restore itself was fine.
    assert_eq!(check(&v, "restore")["passed"], true);

    let j = parse_junit(&junit);
    assert_eq!(j["failures"], "2", "{j}");
    assert_eq!(j["errors"], "1", "{j}");
    let cases = j["suites"][0]["cases"].as_array().unwrap();
    assert!(
        cases
            .iter()
            .all(|c| c["time"].as_str().is_some_and(|t| t.parse::<f64>().is_ok())),
        "{j}"
    );
    let error = cases.iter().find(|c| c["name"] == "errors").unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(message.contains("no_such_table"), "{j}");
    // Nothing in it changes from run to run: no scratch port.
    let port_like = message
        .split(|c: char| !c.is_ascii_digit())
        .any(|n| n.len() >= 4 && n.parse::<u32>().is_ok_and(|p| p > 1024));
    assert!(!port_like, "{message}");
    let failure = j["suites"][0]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wrong on purpose")
        .unwrap()["failure"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(failure.contains("expected: = 42"), "{failure}");
    assert!(failure.contains("actual: 300"), "{failure}");

    let s = d.run(&["status", "shop", "--output", "json"]).ok().json();
    assert_eq!(s[0]["last_drill_passed"], false, "{s}");
}

#[test]
fn corrupted_artifact_fails_the_drill() {
    let (_pg, d) = setup("");
    d.backup("shop");
    let data = d.repo_files("data.zst.age").pop().unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let (code, v) = drill(&d, &[]);
    assert_eq!(code, 1, "{v:#}");
    let restore = check(&v, "restore");
    assert_eq!(restore["passed"], false, "{v}");
    assert!(v["rto_seconds"].is_null(), "{v}");
    assert_eq!(check(&v, "RTO")["passed"], false);
}

#[test]
fn a_killed_drill_leaves_no_scratch_server_behind() {
    let (_pg, d) = setup("");
    d.backup("shop");
    for signal in ["-TERM", "-KILL"] {
        let id = d.identity_arg();
        let mut child = d
            .command(&["drill", "shop", "--identity", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for the scratch server to be up (its directory exists and a
        // postgres runs in it), then kill the drill.
        let deadline = Instant::now() + Duration::from_secs(60);
        let dir = loop {
            if let Some(dir) = scratch_dirs(&d).pop() {
                if !processes_with(&dir.join("data").display().to_string()).is_empty() {
                    break dir;
                }
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "drill ended before its scratch server was seen"
            );
            assert!(Instant::now() < deadline, "no scratch server appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{signal}: a killed drill must not succeed"
        );
        let needle = dir.join("data").display().to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !processes_with(&needle).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{signal}: scratch server still running: {:?}",
                processes_with(&needle)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if signal == "-TERM" {
            assert!(!dir.exists(), "SIGTERM: {} left behind", dir.display());
        }
    }
    // After kill -9 the directory may stay until the next drill sweeps it.
    let (code, v) = drill(&d, &[]);
    assert_eq!(code, 0, "{v:#}");
    // The sweep at its start removed what the killed drill left.
    let leftovers = scratch_dirs(&d);
    assert!(leftovers.is_empty(), "stale scratch dirs: {leftovers:?}");
}

/// A PITR drill to a time between two batches passes a count check that
/// holds only at that time, measures RPO from what the archive covers (not
/// from the last commit: a quiet second before the target lost nothing),
/// and leaves no scratch server; the production archive gets nothing from it.
#[test]
fn pitr_drill_to_a_time_between_batches_passes_a_count_check() {
    let mut d = Drctl::for_owner();
    isolate_tmp(&mut d);
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), d.archive_command("pitr")]);
    d.write_physical_policy("pitr", &pg.url("postgres"));
    let p = d.path().join("policies/pitr.toml");
    let text = std::fs::read_to_string(&p).unwrap()
        + "\n[drill]\nmax_rpo = \"10m\"\n[[drill.checks]]\nname = \"batch 1 only\"\nsql = \"select count(*) from batches\"\nexpect = \"1100\"\n";
    d.write_policy_text("pitr", &text);
    pg.psql(
        "postgres",
        "CREATE TABLE batches (batch int, id int); INSERT INTO batches SELECT 0, g FROM generate_series(1, 100) g; CREATE TABLE scratchpad (x int);",
    );
    d.backup("pitr");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 1, g FROM generate_series(1, 1000) g; DROP TABLE scratchpad;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let between = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "postgres",
        "INSERT INTO batches SELECT 2, g FROM generate_series(1, 1000) g;",
    );
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    wait_archived(&pg, &seg);
    let archived_before = d.repo_files(".zst.age").len();

    let (code, v) = drill_policy(&d, "pitr", &["--to", &between]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(check(&v, "batch 1 only")["actual"], "1100", "{v}");
    // Built in: the base backup's tables at the target, each counted in
    // full; the one dropped before the target is named, not failed.
    let t = check(&v, "tables and row counts");
    assert_eq!(t["passed"], true, "{t}");
    let detail = t["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 tables counted in full (1100 rows)"),
        "{detail}"
    );
    assert!(detail.contains("1 of the 2 in base backup"), "{detail}");
    assert!(
        detail.contains("dropped after the base backup: public.scratchpad"),
        "{detail}"
    );
    // WAL past the target is archived: nothing up to the target is lost,
    // though the last commit replayed (batch 1's) is ~1.1 s before it.
    let rpo = v["rpo_seconds"].as_f64().unwrap();
    assert_eq!(rpo, 0.0, "{v}");
    let last: jiff::Timestamp = v["last_commit_at"].as_str().unwrap().parse().unwrap();
    let target: jiff::Timestamp = between.parse().unwrap();
    let quiet = target.duration_since(last).as_secs_f64();
    assert!((0.5..30.0).contains(&quiet), "{v}");
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        d.repo_files(".zst.age").len(),
        archived_before,
        "the drill's server archived into the repository"
    );
}

/// `--scratch URL`: the drill restores into a new database on a given
/// server and drops it afterwards.
#[test]
fn drill_into_a_given_server_drops_its_database() {
    let (pg, d) = setup(CHECKS);
    d.backup("shop");
    let other = PgCluster::start();
    let url = other.url("postgres");
    let (code, v) = drill(&d, &["--scratch", &url]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(check(&v, "customers in range")["actual"], "300");
    let left = other.query(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'drctl_drill_%'",
    );
    assert_eq!(left, "0");
    drop(pg);
}

/// scripts/ci-restore-test.sh as CI runs it: the key from a secret
/// variable, every policy with a [drill] section, a JUnit report, exit 1
/// when a check fails, and no key file left behind.
#[test]
fn ci_script_drills_every_drill_policy_and_fails_the_job_on_a_bad_check() {
    let (pg, d) = setup(CHECKS);
    // A policy without [drill] is not drilled by --all.
    d.write_policy("nodrill", &pg.url("shop"), "");
    d.backup("shop");
    let key = std::fs::read_to_string(&d.identity).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ci-restore-test.sh");
    let junit = d.path().join("report.xml");
    let run = || {
        Command::new("bash")
            .arg(&script)
            .current_dir(d.path())
            .env("DRCTL_BIN", Drctl::bin())
            .env("DRCTL_AGE_IDENTITY", &key)
            .env_remove("DRCTL_IDENTITY")
            .env("DRCTL_POLICIES", d.path().join("policies"))
            .env("DRCTL_CATALOG", d.catalog())
            .env("JUNIT", &junit)
            .env("TMPDIR", d.path().join("tmp"))
            .env("PATH", common::test_path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let j = parse_junit(&junit);
    let suites: Vec<&str> = j["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(suites, ["drill shop"]);
    assert_eq!(j["failures"], "0");
    let tmp_files: Vec<_> = std::fs::read_dir(d.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(tmp_files.is_empty(), "left in TMPDIR: {tmp_files:?}");

    let text = std::fs::read_to_string(d.path().join("policies/shop.toml"))
        .unwrap()
        .replace("expect = \"t\"", "expect = \"f\"");
    d.write_policy_text("shop", &text);
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(parse_junit(&junit)["failures"], "1");
}
