//! The deploy examples under deploy/ are checked by the tools that exist
//! for them (systemd-analyze for the unit; PyYAML for the CronJob) and
//! their command lines are run for real: the crontab line and the CronJob's
//! container back up a real database, the unit's ExecStart serves /healthz
//! and stops cleanly on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Drctl, PgCluster};

fn deploy(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Run a drctl command line taken from a deploy file, with the installed
/// binary's path swapped for the one under test and the file's DRCTL_*
/// paths moved into the test's work dir.
fn run_as_deployed(d: &Drctl, env: &BTreeMap<String, String>, args: &[String]) -> common::Run {
    let mut c = d.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (k, v) in env {
        c.env(k, relocate(d, k, v));
    }
    let out = c.output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn relocate(d: &Drctl, key: &str, value: &str) -> String {
    match key {
        "DRCTL_POLICIES" => d.path().join("policies").display().to_string(),
        "DRCTL_CATALOG" => d.catalog().display().to_string(),
        _ => value.to_string(),
    }
}

fn backed_up(d: &Drctl, policy: &str) -> usize {
    d.list(policy)
        .iter()
        .filter(|b| b["status"] == "complete")
        .count()
}

#[test]
fn crontab_line_is_valid_cron_and_backs_up() {
    let text = deploy("cron/drctl");
    let mut env = BTreeMap::new();
    let mut jobs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=').filter(|(k, _)| !k.contains(' ')) {
            env.insert(k.to_string(), v.to_string());
            continue;
        }
        // /etc/cron.d format: five schedule fields, the user, the command.
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() > 6, "not a cron.d job line: {line}");
        let schedule = f[..5].join(" ");
        drctl::testing::Schedule::parse(&schedule).unwrap_or_else(|e| panic!("{schedule}: {e}"));
        assert_eq!(f[5], "drctl", "jobs run as the drctl user: {line}");
        assert_eq!(
            f[6], "drctl",
            "the command is drctl (found via PATH): {line}"
        );
        jobs.push(f[7..].iter().map(|s| s.to_string()).collect::<Vec<_>>());
    }
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0], ["backup", "orders"]);
    for key in ["DRCTL_POLICIES", "DRCTL_CATALOG", "PATH"] {
        assert!(env.contains_key(key), "{key} not set in the crontab");
    }
    env.remove("PATH");
    env.remove("SHELL");

    let pg = PgCluster::start();
    pg.createdb("orders");
    pg.psql("orders", "CREATE TABLE t AS SELECT 1 AS id;");
    let d = Drctl::new();
    d.write_policy("orders", &pg.url("orders"), "");
    run_as_deployed(&d, &env, &jobs[0]).ok();
    assert_eq!(backed_up(&d, "orders"), 1);
}

/// `Key=Value` lines of a systemd unit, repeated keys in order.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first value of `key` in a unit's entries; missing is a failure.
fn unit_value(entries: &[(String, String)], key: &str) -> String {
    entries
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{key}= missing"))
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1)?.parse().ok()
}

#[test]
fn systemd_unit_verifies_and_its_command_serves_and_stops() {
    let text = deploy("systemd/drctl.service");
    let entries = unit_entries(&text);
    let get = |k: &str| unit_value(&entries, k);
    assert_eq!(
        get("KillMode"),
        "mixed",
        "children must outlive SIGTERM for --grace"
    );
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    let exec = get("ExecStart");
    let args: Vec<String> = exec.split_whitespace().map(String::from).collect();
    assert_eq!(args[0], "/usr/local/bin/drctl");
    assert_eq!(args[1], "daemon");

    let local = exec.replacen("/usr/local/bin/drctl", Drctl::bin(), 1);
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("drctl.service");
        std::fs::write(&unit, text.replace(&exec, &local)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Parse problems are warnings with exit 0: any output is a failure.
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
        // The sandbox: exposure at most 3.0 of 10 (it was 8.5 EXPOSED).
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--threshold=30", "--no-pager"])
            .arg(&unit)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "exposure over 3.0:\n{report}");
        let level: f64 = report
            .lines()
            .find_map(|l| l.split("exposure level for drctl.service: ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
        assert!(level <= 3.0, "{level}\n{report}");
    } else {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
    }

    let mut env = BTreeMap::new();
    for (_, v) in entries.iter().filter(|(k, _)| k == "Environment") {
        let (name, value) = v.split_once('=').unwrap();
        env.insert(name.to_string(), value.to_string());
    }
    assert!(env.contains_key("DRCTL_POLICIES") && env.contains_key("DRCTL_CATALOG"));

    let pg = PgCluster::start();
    pg.createdb("orders");
    let d = Drctl::new();
    d.write_policy("orders", &pg.url("orders"), "");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let daemon_args: Vec<&str> = args[1..]
        .iter()
        .map(|a| {
            if a == "127.0.0.1:9187" {
                addr.as_str()
            } else {
                a.as_str()
            }
        })
        .collect();
    assert!(
        daemon_args.contains(&addr.as_str()),
        "--listen not found in {exec}"
    );
    let mut c = d.command(&daemon_args);
    for (k, v) in &env {
        c.env(k, relocate(&d, k, v));
    }
    let log = d.path().join("daemon.log");
    let mut child = c
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(&addr, "/healthz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no /healthz: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.starts_with('{'),
        "DRCTL_LOG_FORMAT=json ignored: {logged}"
    );
    let pid = guard.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = guard.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
}

/// The CronJob manifest as JSON, via PyYAML (the venv scripts/install-deps.sh
/// makes has it; so do most Pythons).
fn load_yaml(path: &str) -> Option<serde_json::Value> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let python: PathBuf = if venv.exists() {
        venv
    } else {
        "python3".into()
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy")
                .join(path),
        )
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'yaml'") {
        return None;
    }
    assert!(out.status.success(), "{path} is not valid YAML: {stderr}");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn kubernetes_cronjob_is_well_formed_and_its_container_backs_up() {
    let text = deploy("kubernetes/cronjob.yaml");
    assert!(!text.contains('\t'), "tabs in YAML");
    let Some(v) = load_yaml("kubernetes/cronjob.yaml") else {
        eprintln!("PyYAML not available: CronJob manifest not parsed");
        return;
    };
    assert_eq!(v["apiVersion"], "batch/v1");
    assert_eq!(v["kind"], "CronJob");
    let spec = &v["spec"];
    let schedule = spec["schedule"].as_str().unwrap();
    drctl::testing::Schedule::parse(schedule).unwrap_or_else(|e| panic!("{schedule}: {e}"));
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let image = c["image"].as_str().unwrap();
    assert!(
        image.contains(':') && !image.ends_with(":latest"),
        "unpinned image {image}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/tmp"),
        "a read-only root needs a writable /tmp"
    );
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args, ["backup", "orders"]);
    // Secrets come from a Secret, never inline values.
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        assert!(
            !name.contains("PASSWORD") && !name.contains("SECRET"),
            "secret {name} inline"
        );
        env.insert(name.to_string(), e["value"].as_str().unwrap().to_string());
    }
    assert!(c["envFrom"][0]["secretRef"]["name"].is_string());
    // Every mount names a volume the pod defines.
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(volumes.contains(&m["name"].as_str().unwrap()), "{m}");
    }
    let catalog_dir = Path::new(&env["DRCTL_CATALOG"]).parent().unwrap();
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| Path::new(m["mountPath"].as_str().unwrap()) == catalog_dir),
        "the catalog is not on a volume"
    );

    let pg = PgCluster::start();
    pg.createdb("orders");
    pg.psql("orders", "CREATE TABLE t AS SELECT 1 AS id;");
    let d = Drctl::new();
    d.write_policy("orders", &pg.url("orders"), "");
    run_as_deployed(&d, &env, &args).ok();
    assert_eq!(backed_up(&d, "orders"), 1);
}

#[test]
fn github_actions_drill_workflow_is_well_formed() {
    let Some(v) = load_yaml("../docs/examples/github-actions-drill.yml") else {
        eprintln!("PyYAML not available: workflow not parsed");
        return;
    };
    // YAML 1.1 reads the key `on` as true.
    let on = if v["on"].is_null() {
        &v["true"]
    } else {
        &v["on"]
    };
    let cron = on["schedule"][0]["cron"].as_str().unwrap();
    drctl::testing::Schedule::parse(cron).unwrap_or_else(|e| panic!("{cron}: {e}"));
    let steps = v["jobs"]["drill"]["steps"].as_array().unwrap();
    let drill = steps
        .iter()
        .find(|s| s["run"].as_str() == Some("scripts/ci-restore-test.sh"))
        .expect("a step runs scripts/ci-restore-test.sh");
    assert!(
        drill["env"]["DRCTL_AGE_IDENTITY"]
            .as_str()
            .unwrap()
            .contains("secrets."),
        "the key must come from a secret"
    );
    let junit = drill["env"]["JUNIT"].as_str().unwrap();
    let publish = steps
        .iter()
        .find(|s| s["with"]["report_paths"].is_string())
        .expect("a step publishes the JUnit report");
    assert_eq!(publish["with"]["report_paths"], junit);
    assert_eq!(publish["if"], "always()");
    assert!(Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/ci-restore-test.sh")
        .exists());
}

/// The command lines of the runbook's shell blocks, continuation lines
/// joined.
fn runbook_commands() -> Vec<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook-pitr.md");
    let text = std::fs::read_to_string(p).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut cur = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let l = line.trim();
        match l.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => {
                cur.push_str(l);
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    out
}

/// docs/runbook-pitr.md's shell blocks, run in order as the users they
/// name, with only the host's places swapped for the test's (the restore
/// directory, the key, the port, the example time, /var/lib/drctl and
/// /etc/drctl): each must succeed. drctl runs with a service's PATH.
#[test]
fn the_runbook_runs_as_written() {
    let d = Drctl::for_owner();
    let pg = common::archiving_cluster(&d, "orders");
    pg.createdb("orders");
    d.write_physical_policy("orders", &pg.url("orders"));
    pg.psql(
        "orders",
        "CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz DEFAULT now()); INSERT INTO orders (id) SELECT g FROM generate_series(1, 100) g;",
    );
    d.backup("orders");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql(
        "orders",
        "INSERT INTO orders (id) SELECT g FROM generate_series(101, 200) g;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let target = pg.now_utc();
    std::thread::sleep(Duration::from_millis(1100));
    // A partial DELETE: the copy-back must skip the rows it spared.
    pg.psql("orders", "DELETE FROM orders WHERE id > 50;");
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    common::wait_archived(&pg, &seg);

    let restored = common::Restored::new();
    let port = restored.port.to_string();
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = host.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(Drctl::bin(), bin.join("drctl")).unwrap();
    let swap = |line: &str| {
        line.replace("/srv/restore/orders", &restored.dir.display().to_string())
            .replace("/secure/drctl-identity.txt", &d.identity_arg())
            .replace("2026-11-29T23:44:49Z", &target)
            .replace("5433", &port)
            .replace(
                "/var/lib/drctl",
                &host.path().join("var").display().to_string(),
            )
            .replace("/etc/drctl", &host.path().join("etc").display().to_string())
            .replace("-h PRIMARY", &format!("-h 127.0.0.1 -p {}", pg.port))
    };
    let mut ran = 0;
    for line in runbook_commands() {
        if line.contains("--tablespace-map") {
            continue; // this cluster has none: tests/tablespaces.rs
        }
        let line = swap(&line);
        let words = drctl::testing::shell_words(&line);
        let (code, out, err) = if words[0] == "drctl" {
            // The on-call engineer, as the archiving user.
            let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
            let r = d.run(&args);
            (r.code, r.stdout, r.stderr)
        } else {
            // Set-up lines and psql, as root with root's PATH.
            let o = Command::new("bash")
                .args(["-c", &line])
                .current_dir(host.path())
                .env(
                    "PATH",
                    format!(
                        "{}:/usr/local/sbin:/usr/sbin:/sbin:{}",
                        bin.display(),
                        common::SERVICE_PATH
                    ),
                )
                .env_remove("DRCTL_POLICIES")
                .env_remove("DRCTL_CATALOG")
                .output()
                .unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        assert_eq!(code, 0, "{line}\nstdout: {out}\nstderr: {err}");
        if line.starts_with("psql") && line.contains("count(*)") {
            // The restore to the target has the first 200 rows, not the DELETE.
            assert!(out.lines().any(|l| l.trim() == "200"), "{line}: {out}");
        }
        ran += 1;
    }
    assert!(ran >= 11, "only {ran} runbook commands found");
    // The copy-back brought the deleted rows back to the live primary,
    // once each, and left no staging table.
    assert_eq!(
        pg.query("orders", "SELECT count(*), count(DISTINCT id) FROM orders"),
        "200|200"
    );
    assert_eq!(
        pg.query("orders", "SELECT to_regclass('recovered_orders') IS NULL"),
        "t"
    );
}

/// Every YAML document of `text`, parsed by PyYAML.
fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let mut child = Command::new(venv)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the test venv's python3 (scripts/install-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[test]
fn deploy_kubernetes_renders_valid_hardened_cronjobs_whose_container_backs_up() {
    let pg = PgCluster::start();
    pg.createdb("orders");
    pg.psql(
        "orders",
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g;",
    );
    pg.createdb("drctl_catalog");
    let d = Drctl::new();
    d.write_policy(
        "orders",
        &pg.url("orders"),
        "\n[drill]\nschedule = \"0 6 * * 1\"\n",
    );
    d.write_policy("billing", &pg.url("orders"), "");
    let text = std::fs::read_to_string(d.path().join("policies/billing.toml"))
        .unwrap()
        .replace("schedule = \"0 2 * * *\"", "schedule = \"*/10 * * * * *\"");
    d.write_policy_text("billing", &text);

    // A schedule with seconds cannot be a CronJob: refused, naming it.
    let r = d.run(&["deploy", "kubernetes"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("policy billing") && r.stderr.contains("seconds field"),
        "{}",
        r.stderr
    );
    let r = d.run(&["deploy", "kubernetes", "orders", "--image", "drctl:latest"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("pin the image"), "{}", r.stderr);

    let r = d
        .run(&["deploy", "kubernetes", "orders", "--namespace", "backups"])
        .ok();
    let file = d.path().join("cronjobs.yaml");
    std::fs::write(&file, &r.stdout).unwrap();
    // The Kubernetes API schema (kubernetes-validate, from PyPI, strict:
    // no unknown field passes).
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/kubernetes-validate");
    let out = Command::new(&validator)
        .args(["--strict", "--no-warn"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/install-deps.sh", validator.display()));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schema check failed:\n{said}\n{}",
        r.stdout
    );
    assert!(!said.contains("ERROR"), "{said}");

    let docs = yaml_docs(&r.stdout);
    assert_eq!(docs.len(), 2, "a backup and a drill job: {}", r.stdout);
    for (doc, kind) in docs.iter().zip(["backup", "drill"]) {
        assert_eq!(doc["kind"], "CronJob");
        assert_eq!(doc["metadata"]["name"], format!("drctl-{kind}-orders"));
        assert_eq!(doc["metadata"]["namespace"], "backups");
        let spec = &doc["spec"];
        assert_eq!(spec["concurrencyPolicy"], "Forbid");
        assert_eq!(spec["timeZone"], "Etc/UTC");
        let job = &spec["jobTemplate"]["spec"];
        assert!(job["activeDeadlineSeconds"].as_i64().unwrap() >= 600);
        let pod = &job["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0];
        assert!(!c["image"].as_str().unwrap().ends_with(":latest"));
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                !name.contains("PASSWORD") && !name.contains("SECRET") && name != "DRCTL_CATALOG",
                "{name} inline"
            );
        }
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], "drctl-secrets");
    }
    assert_eq!(docs[0]["spec"]["schedule"], "0 2 * * *");
    assert_eq!(docs[1]["spec"]["schedule"], "0 6 * * 1");

    // The backup job's container, as deployed: its args and env, the
    // catalog URL from the Secret, the policies where the ConfigMap is.
    let c = &docs[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env: BTreeMap<String, String> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    env.insert(
        "DRCTL_STATE_DIR".into(),
        d.path().join("state").display().to_string(),
    );
    let mut cmd = d.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (k, v) in &env {
        cmd.env(k, relocate(&d, k, v));
    }
    cmd.env("DRCTL_CATALOG", pg.url("drctl_catalog"));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = pg.query(
        "drctl_catalog",
        "SELECT count(*) FROM backups WHERE policy = 'orders' AND status = 'complete'",
    );
    assert_eq!(n.trim(), "1");
}

/// podman as the unprivileged user scripts/image-base.sh prepared.
struct Podman {
    user: String,
    /// Images and containers this test made, removed however it ends.
    made: std::cell::RefCell<Vec<(&'static str, String)>>,
}

impl Podman {
    fn command(&self, args: &[&str]) -> Command {
        let out = Command::new("id")
            .args(["-u", &self.user])
            .output()
            .unwrap();
        let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut c = Command::new("runuser");
        c.args(["-u", &self.user, "--", "env"])
            .arg(format!("XDG_RUNTIME_DIR=/tmp/drctl-image-run-{uid}"))
            .arg(format!("HOME=/home/{}", self.user))
            .arg("podman")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Exit code and both streams.
    fn run(&self, args: &[&str]) -> (i32, String) {
        let out = self.command(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out) = self.run(args);
        assert_eq!(code, 0, "podman {args:?}: {out}");
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for (kind, name) in self.made.borrow().iter().rev() {
            let _ = self.run(&[kind, "rm", "-f", name]);
        }
    }
}

/// A folder the image user can read, under a fresh temp dir.
fn readable_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// The Dockerfile builds, and its image does the whole job with nothing
/// from the host: as its own non-root user, a PostgreSQL 15 (Debian's) and
/// an 18 (the wheel's) cluster each archive through drctl, are backed up,
/// restored with --start (pg_verifybackup, recovery, the rows written after
/// the backup come back) and drilled (scripts/image-smoke.sh); every major's
/// server is in it; and its HEALTHCHECK passes against `drctl daemon` and
/// fails where no daemon runs. The build is podman's, rootless, on a base
/// made by debootstrap (no registry here), with the Rust stage replaced by
/// the binary under test (--build-context build=...): what is proven is
/// the runtime image, not that rust:1-bookworm compiles drctl.
#[test]
fn the_image_backs_up_restores_and_drills_with_its_own_tools_and_reports_health() {
    let Ok(user) = std::env::var("DRCTL_TEST_IMAGE_USER") else {
        eprintln!("skipped: DRCTL_TEST_IMAGE_USER is unset (scripts/test.sh sets it up with scripts/image-base.sh)");
        return;
    };
    let pm = Podman {
        user,
        made: Default::default(),
    };
    let bin = readable_dir();
    std::fs::create_dir(bin.path().join("out")).unwrap();
    let out = bin.path().join("out/drctl");
    std::fs::copy(Drctl::bin(), &out).unwrap();
    // Debug info is most of a test build's size; the image needs none.
    let _ = Command::new("strip").arg(&out).status();
    std::fs::set_permissions(
        bin.path().join("out"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // This machine reaches PyPI through a TLS-intercepting proxy whose CA
    // the host trusts: the build's PyPI stage gets the same.
    let ca = readable_dir();
    std::fs::create_dir(ca.path().join("certs")).unwrap();
    if let Ok(rd) = std::fs::read_dir("/usr/local/share/ca-certificates") {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "crt") {
                std::fs::copy(e.path(), ca.path().join("certs").join(e.file_name())).unwrap();
            }
        }
    }
    std::fs::set_permissions(
        ca.path().join("certs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let tag = format!("localhost/drctl:test-{}", std::process::id());
    pm.made.borrow_mut().push(("image", tag.clone()));
    let started = Instant::now();
    let (code, log) = pm.run(&[
        "build",
        "--format",
        "docker",
        "--build-context",
        &format!("build={}", bin.path().display()),
        "--build-context",
        &format!("extra-ca={}", ca.path().display()),
        "--build-arg",
        "DEBIAN_IMAGE=localhost/drctl-base:bookworm",
        "-t",
        &tag,
        env!("CARGO_MANIFEST_DIR"),
    ]);
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    assert_eq!(code, 0, "podman build: {:?}", tail);
    eprintln!("image built in {:?}", started.elapsed());

    let version = pm.ok(&["run", "--rm", &tag, "--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    for major in 15..=18 {
        let v = pm.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            &format!("/usr/lib/postgresql/{major}/bin/postgres"),
            &tag,
            "--version",
        ]);
        assert!(
            v.contains(&format!("(PostgreSQL) {major}.")),
            "{major}: {v}"
        );
    }
    for (major, port) in [(15, common::free_port()), (18, common::free_port())] {
        let (code, out) = pm.run(&[
            "run",
            "--rm",
            "--env",
            &format!("PORT={port}"),
            "--entrypoint",
            "/bin/sh",
            &tag,
            "/usr/local/share/drctl/image-smoke.sh",
            &major.to_string(),
        ]);
        assert_eq!(code, 0, "PostgreSQL {major} in the image: {out}");
        assert!(
            out.contains(&format!("image-smoke: PostgreSQL {major}.")) && out.contains("drill ok"),
            "{out}"
        );
    }

    // The HEALTHCHECK: healthy once the daemon serves /healthz, unhealthy
    // where nothing listens.
    let port = common::free_port();
    let daemon = format!("drctl-hc-{}", std::process::id());
    pm.made.borrow_mut().push(("container", daemon.clone()));
    pm.ok(&[
        "run",
        "-d",
        "--name",
        &daemon,
        "--env",
        &format!("DRCTL_HEALTH_URL=http://127.0.0.1:{port}/healthz"),
        "--entrypoint",
        "/bin/sh",
        &tag,
        "-c",
        &format!("drctl init --name x --policies /tmp/p --repo file:///tmp/r >/dev/null && exec drctl --policies /tmp/p daemon --listen 127.0.0.1:{port}"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out) = pm.run(&["healthcheck", "run", &daemon]);
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {out}; {}",
            pm.run(&["logs", &daemon]).1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let idle = format!("drctl-idle-{}", std::process::id());
    pm.made.borrow_mut().push(("container", idle.clone()));
    pm.ok(&[
        "run",
        "-d",
        "--name",
        &idle,
        "--entrypoint",
        "sleep",
        &tag,
        "300",
    ]);
    let (code, out) = pm.run(&["healthcheck", "run", &idle]);
    assert_ne!(code, 0, "healthy without a daemon: {out}");
    // The daemon ends on the engine's SIGTERM, not its SIGKILL.
    let t = Instant::now();
    pm.ok(&["stop", "-t", "20", &daemon]);
    let exit = pm.ok(&["inspect", &daemon, "--format", "{{.State.ExitCode}}"]);
    assert_eq!(exit.trim(), "0", "stopped after {:?}", t.elapsed());
}

/// What of the unit's sandbox applies without systemd as PID 1 (this
/// machine has none; systemd in a rootless container does not start here
/// either): its user, NoNewPrivileges, the empty CapabilityBoundingSet and
/// its UMask, taken from the unit file. Under them a physical backup,
/// a restore --start and a drill still work, and the restore equals the
/// source.
#[test]
fn backup_restore_and_drill_work_under_the_units_privileges_and_umask() {
    let text = deploy("systemd/drctl.service");
    let entries = unit_entries(&text);
    let get = |k: &str| unit_value(&entries, k);
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("CapabilityBoundingSet"), "");
    let umask = get("UMask");

    let d = Drctl::for_owner();
    let pg = PgCluster::start_full(
        &[
            "host all postgres 127.0.0.1/32 trust",
            "host replication postgres 127.0.0.1/32 trust",
        ],
        &["archive_mode = on".into(), d.archive_command("sb")],
    );
    d.write_physical_policy("sb", &pg.url("postgres"));
    pg.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g;",
    );
    // drctl as the unit starts it: no way back to more privileges.
    let sandboxed = |args: &[&str]| {
        let base = d.command(args);
        let mut c = Command::new("/usr/bin/setpriv");
        if common::is_root() {
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
        }
        c.args([
            "--no-new-privs",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
            "/bin/sh",
            "-c",
            &format!("umask {umask} && exec \"$0\" \"$@\""),
            Drctl::bin(),
        ])
        .args(args)
        .stdin(Stdio::null());
        if let Some(dir) = base.get_current_dir() {
            c.current_dir(dir);
        }
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.output().unwrap();
        let run = common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        run
    };
    sandboxed(&["backup", "sb"]);
    pg.psql(
        "postgres",
        "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(5001, 6000) g;",
    );
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    common::wait_archived(&pg, &seg);
    let want = pg.fingerprint("postgres");

    let parent = tempfile::tempdir().unwrap();
    common::give_to_owner(parent.path());
    let target = parent.path().join("data");
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            common::stop_server(&self.0);
        }
    }
    let _stop = Stop(target.clone());
    let port = common::free_port().to_string();
    let key = d.identity_arg();
    sandboxed(&[
        "restore",
        "sb",
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
        "--identity",
        &key,
        "--start",
        "--port",
        &port,
    ]);
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_eq!(common::fingerprint_url(&url), want);
    let drill = sandboxed(&["drill", "sb", "--identity", &key, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&drill.stdout).unwrap();
    assert_eq!(v["passed"], true, "{v}");
}
