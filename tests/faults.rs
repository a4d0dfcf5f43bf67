//! The fault suite: what happens to backups, restores and the WAL archive
//! on the day things break, against real PostgreSQL 15, the loopback S3
//! server and a fault-injecting proxy (tests/common/proxy.rs).
//!
//! - kill -9 at seeded random points of dump and physical backups and of
//!   wal-push: nothing partial is ever listed, the next run succeeds and
//!   leaves no temp object or unfinished upload, the data comes back equal;
//! - 5xx, dropped connections and stalls on at least a quarter of S3
//!   requests during backup, restore and wal-fetch: retried, data equal;
//! - one flipped byte in each kind of stored file: caught by `verify`,
//!   `verify --deep` and restore; a backup whose bytes agree with drctl's
//!   own checksums but not with what the server sent is caught by
//!   pg_verifybackup;
//! - a full disk under a file repository, and PostgreSQL restarted
//!   mid-backup: exit 1 promptly, nothing listed, space given back.
//!
//! The target server stopping mid-restore and a restore into the policy's
//! own source are in tests/dump.rs. `DRCTL_FAULT_SEED=N` repeats a run's
//! random choices; each test prints its seed. `scripts/chaos.sh` runs the
//! same faults in a loop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::proxy::FaultProxy;
use common::{archiving_cluster, wait_archived, Drctl, PgCluster, Restored, S3Server, SmallDisk};

fn seed(test: &str) -> u64 {
    let s = std::env::var("DRCTL_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: DRCTL_FAULT_SEED={s}");
    s
}

/// One machine-readable line per test for scripts/chaos.sh to add up.
fn chaos_line(test: &str, faults: u64, backups: (u64, u64, u64), restores_equal: u64) {
    let (attempted, complete, failed) = backups;
    eprintln!(
        "chaos: test={test} faults={faults} backups_attempted={attempted} backups_complete={complete} backups_failed={failed} restores_equal={restores_equal}"
    );
}

/// Switch to a new WAL segment and wait until the one written is archived.
fn switch_and_archive(pg: &PgCluster) -> String {
    let seg = pg.query("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.query("postgres", "SELECT pg_switch_wal()");
    wait_archived(pg, &seg);
    seg
}

/// Spawned in its own process group, so that kill -9 reaches drctl also
/// when it runs under runuser as the cluster owner.
fn spawn(d: &Drctl, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt;
    d.command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn kill9(child: &mut Child) {
    // SAFETY: a process group this test created.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// `restore POLICY <to...> --target-dir <new> --start`.
fn restore_started(
    d: &Drctl,
    policy: &str,
    to: &[&str],
    extra: &[&str],
) -> (Restored, common::Run) {
    let server = Restored::new();
    let (dir, port, id) = (
        server.dir.display().to_string(),
        server.port.to_string(),
        d.identity_arg(),
    );
    let mut args = vec!["restore", policy];
    args.extend_from_slice(to);
    args.extend_from_slice(&[
        "--target-dir",
        &dir,
        "--identity",
        &id,
        "--start",
        "--port",
        &port,
    ]);
    args.extend_from_slice(extra);
    let r = d.run(&args);
    (server, r)
}

fn temps_under(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    common::files_containing(dir, ".tmp-")
}

const BIG_SQL: &str = "CREATE TABLE public.big AS SELECT g AS id, md5(g::text || 'x') || md5(g::text || 'y') AS a FROM generate_series(1, 300000) g;";

fn s3_repo_keys(endpoint: &str, extra: &str) -> String {
    format!(
        "url = \"s3://drctl-test/faults\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\nforce_path_style = true\npart_size_mib = 5\n{extra}"
    )
}

/// A physical policy whose repository is S3 at `endpoint`; the server's
/// archive_command finds its (test) credentials by file, never in argv.
fn physical_s3_policy(d: &Drctl, name: &str, source: &str, endpoint: &str, extra: &str) {
    d.write_policy_repo(name, source, &s3_repo_keys(endpoint, extra), "");
    let p = d.path().join("policies").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("method = \"dump\"", "method = \"physical\"");
    std::fs::write(&p, text).unwrap();
    std::fs::write(
        d.path().join("aws-credentials"),
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    common::give_to_owner(d.path());
}

fn s3_archive_command(d: &Drctl, policy: &str) -> String {
    format!(
        "archive_command = 'AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE={} AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true {} --policies {} wal-push {policy} %p'",
        d.path().join("aws-credentials").display(),
        d.path().join("aws-config").display(),
        Drctl::bin(),
        d.path().join("policies").display()
    )
}

#[test]
fn s3_faults_on_a_quarter_of_requests_are_retried_and_every_restore_is_equal() {
    let seed = seed("s3 faults");
    let s3 = S3Server::start();
    s3.create_bucket("drctl-test");
    let proxy = FaultProxy::start(s3.port, seed, Duration::from_millis(1500));
    let d = Drctl::for_owner();
    // Stalls stay under request_timeout: they slow requests, they do not
    // turn into timeouts (the silent-server tests cover those).
    let pg = PgCluster::start_conf(&["archive_mode = on".into(), s3_archive_command(&d, "phys")]);
    physical_s3_policy(
        &d,
        "phys",
        &pg.url("postgres"),
        &proxy.endpoint(),
        "request_timeout = \"20s\"\n",
    );
    d.write_policy_repo(
        "shop",
        &pg.url("shop"),
        &s3_repo_keys(&proxy.endpoint(), "request_timeout = \"20s\"\n"),
        "",
    );
    pg.createdb("shop");
    pg.psql("shop", common::SAMPLE_SQL);
    pg.psql("shop", BIG_SQL);
    pg.psql("postgres", BIG_SQL);
    switch_and_archive(&pg);

    proxy.set_rate(0.3);
    let dump = d.backup("shop");
    let phys = d.backup("phys");
    pg.psql(
        "postgres",
        "CREATE TABLE after AS SELECT g FROM generate_series(1, 5000) g; UPDATE big SET a = 'changed' WHERE id % 11 = 0;",
    );
    let want = pg.fingerprint("postgres");
    let to = pg.now_utc();
    switch_and_archive(&pg);
    let shop = pg.fingerprint("shop");
    let (backup_requests, backup_faults) = proxy.counts();

    proxy.set_rate(0.3);
    d.run(&[
        "restore",
        "shop",
        "--backup",
        &dump,
        "--target",
        &pg.url("shop_copy"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(
        pg.fingerprint("shop_copy"),
        shop,
        "the dump restore differs"
    );
    // The restored server fetches every WAL segment through the faults.
    let (server, r) = restore_started(&d, "phys", &["--to", &to], &[]);
    let r = r.ok();
    assert!(r.stdout.contains(&phys), "{}", r.stdout);
    assert_eq!(common::fingerprint_url(&server.url("postgres")), want);
    let (restore_requests, restore_faults) = proxy.counts();
    drop(server);

    eprintln!(
        "s3 faults: backups {backup_faults}/{backup_requests} requests faulted, restores {restore_faults}/{restore_requests}; by kind {:?}",
        proxy.by_kind()
    );
    for (phase, req, faults) in [
        ("backup", backup_requests, backup_faults),
        ("restore", restore_requests, restore_faults),
    ] {
        assert!(
            req >= 8,
            "{phase}: only {req} requests went through the proxy"
        );
        assert!(
            faults * 4 >= req,
            "{phase}: {faults} of {req} requests faulted"
        );
    }
    let kinds = proxy.by_kind();
    assert!(kinds.len() == 4, "every kind of fault injected: {kinds:?}");
    proxy.set_rate(0.0);
    d.run(&["verify", "shop"]).ok();
    d.run(&["verify", "phys"]).ok();
    chaos_line("s3", backup_faults + restore_faults, (2, 2, 0), 2);
}

/// Kill runs of `args(n)` (n counts attempts) at random moments in
/// (0, `full`) until `points` kills found the process running (a run that
/// finished first is no kill), calling `after` after each; returns the
/// attempts. Bounded: at most four attempts per point.
fn kill_until_landed(
    d: &Drctl,
    args: &dyn Fn(usize) -> Vec<String>,
    full: Duration,
    rng: &mut impl Rng,
    points: usize,
    after: &mut dyn FnMut(&[&str]),
) -> usize {
    let (mut landed, mut attempts) = (0, 0);
    while landed < points {
        let a = args(attempts);
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        assert!(
            attempts < points * 4,
            "only {landed} of {attempts} kills found {a:?} running"
        );
        let mut child = spawn(d, &a);
        std::thread::sleep(full.mul_f64(rng.random_range(0.03..0.97)));
        landed += usize::from(child.try_wait().unwrap().is_none());
        kill9(&mut child);
        after(&a);
        attempts += 1;
    }
    attempts
}

/// Time one undisturbed run of `args`, then kill runs of it at `points`
/// random moments; returns (that time, attempts).
fn kill_at_random_points(
    d: &Drctl,
    args: &[&str],
    rng: &mut impl Rng,
    points: usize,
) -> (Duration, usize) {
    let t0 = Instant::now();
    let mut child = spawn(d, args);
    let st = child.wait().unwrap();
    let full = t0.elapsed();
    assert!(st.success(), "{args:?} failed undisturbed");
    let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let attempts = kill_until_landed(d, &|_| owned.clone(), full, rng, points, &mut |_| {});
    (full, attempts)
}

/// Every backup listed as complete verifies: nothing partial is listed.
fn listed_complete_all_verify(d: &Drctl, policy: &str) -> usize {
    let listed = d.list(policy);
    let complete = listed.iter().filter(|b| b["status"] == "complete").count();
    d.run(&["verify", policy]).ok();
    complete
}

#[test]
fn kill_9_at_seeded_points_loses_nothing_and_the_next_run_leaves_nothing() {
    let seed = seed("kill -9");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s3 = S3Server::start();
    s3.create_bucket("drctl-test");
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "phys");
    d.write_physical_policy("phys", &pg.url("postgres"));
    // Dumps go to S3, where a killed upload leaves an unfinished multipart
    // upload; physical backups and WAL to a file repository, where it
    // leaves temp files.
    d.write_policy_repo(
        "shop",
        &pg.url("shop"),
        &s3_repo_keys(&s3.endpoint(), ""),
        "",
    );
    d.write_physical_policy("walk", &pg.url("postgres"));
    common::give_to_owner(d.path());
    pg.createdb("shop");
    pg.psql("shop", BIG_SQL);
    pg.psql("postgres", BIG_SQL);
    switch_and_archive(&pg);

    let (dump_time, dump_attempts) = kill_at_random_points(&d, &["backup", "shop"], &mut rng, 10);
    listed_complete_all_verify(&d, "shop");
    let (phys_time, phys_attempts) = kill_at_random_points(&d, &["backup", "phys"], &mut rng, 10);
    listed_complete_all_verify(&d, "phys");

    // wal-push of real segments (copies, readable by the cluster owner)
    // into a policy no server archives to, killed at random points; each
    // is pushed again as PostgreSQL would retry it.
    let segs_dir = tempfile::tempdir().unwrap();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(pg.data_dir().join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    segs.sort();
    assert!(segs.len() >= 2, "{segs:?}");
    let segs: Vec<PathBuf> = segs
        .iter()
        .map(|p| {
            let to = segs_dir.path().join(p.file_name().unwrap());
            std::fs::copy(p, &to).unwrap();
            to
        })
        .collect();
    common::give_to_owner(segs_dir.path());
    let push = |seg: &Path| {
        vec![
            "wal-push".to_string(),
            "walk".into(),
            seg.display().to_string(),
        ]
    };
    let t0 = Instant::now();
    let args = push(&segs[0]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    d.run(&args).ok();
    let push_time = t0.elapsed();
    let seg_args = |n: usize| push(&segs[1 + n % (segs.len() - 1)]);
    // The retry is durable, and it removed what the killed push left.
    let push_attempts = kill_until_landed(&d, &seg_args, push_time, &mut rng, 10, &mut |a| {
        d.run(a).ok();
    });
    let walk_wal = d.repo_dir().join("walk/wal");
    assert_eq!(temps_under(&walk_wal), Vec::<PathBuf>::new());
    for seg in &segs[..segs.len().min(11)] {
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        let out = segs_dir.path().join(format!("{name}.fetched"));
        let r = d.run(&[
            "wal-fetch",
            "walk",
            &name,
            out.to_str().unwrap(),
            "--identity",
            &d.identity_arg(),
        ]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(seg).unwrap(),
            "{name} came back different"
        );
    }

    // The next runs succeed and leave nothing of the killed ones behind.
    let dump_id = d.backup("shop");
    let phys_id = d.backup("phys");
    let uploads = s3.get("/drctl-test?uploads");
    assert!(!uploads.contains("<UploadId>"), "left dangling: {uploads}");
    assert_eq!(
        temps_under(&d.repo_dir().join("phys/backups")),
        Vec::<PathBuf>::new()
    );
    for policy in ["shop", "phys"] {
        let v = d.run(&["verify", policy, "--output", "json"]).ok().json();
        assert_eq!(v["incomplete"], serde_json::json!([]), "{policy}: {v}");
    }
    let complete = listed_complete_all_verify(&d, "shop") + listed_complete_all_verify(&d, "phys");
    d.run(&[
        "verify",
        &phys_id,
        "--deep",
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    let want = pg.fingerprint("shop");
    d.run(&[
        "restore",
        "shop",
        "--backup",
        &dump_id,
        "--target",
        &pg.url("shop_copy"),
        "--identity",
        &d.identity_arg(),
    ])
    .ok();
    assert_eq!(pg.fingerprint("shop_copy"), want);
    // Each kind: one undisturbed run, then kills until 10 hit a running
    // process; then one more backup each. Every backup listed complete
    // verified; the rest are listed as failed or not at all.
    let attempted = (2 + dump_attempts + phys_attempts + 2) as u64;
    chaos_line(
        "kill9",
        30,
        (attempted, complete as u64, attempted - complete as u64),
        1 + segs.len().min(11) as u64,
    );
    eprintln!(
        "kill -9 of running processes: 10 dump in {dump_attempts} runs (undisturbed {dump_time:?}), 10 physical in {phys_attempts} ({phys_time:?}), 10 wal-push in {push_attempts} ({push_time:?}); {complete} complete backups, all verified"
    );
}

/// One byte (or one digit of a field) changed in a stored file.
enum Change {
    /// XOR a byte in the middle of the file.
    Flip,
    /// Replace the first occurrence of this text.
    Text(String, String),
}

fn apply(path: &Path, change: &Change) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = orig.clone();
    match change {
        Change::Flip => {
            let at = b.len() / 2;
            b[at] ^= 0x10;
        }
        Change::Text(from, to) => {
            let t = String::from_utf8(b).unwrap();
            assert!(
                t.contains(from.as_str()),
                "{} has no {from}",
                path.display()
            );
            b = t.replacen(from.as_str(), to, 1).into_bytes();
        }
    }
    assert_ne!(b, orig);
    std::fs::write(path, &b).unwrap();
    orig
}

/// A JSON string field's value in a (pretty) sealed file.
fn field(path: &Path, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {v}"))
        .to_string()
}

/// One hex digit or decimal digit of `s` changed.
fn other_digit(s: &str) -> String {
    let (i, c) = s
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_ascii_digit())
        .unwrap();
    let d = if c == '1' { '2' } else { '1' };
    format!("{}{d}{}", &s[..i], &s[i + 1..])
}

/// A cluster archiving into physical policy "phys", with a table t of
/// `rows` rows (analyzed, so the manifest has its estimate, and written
/// out, so its file holds them).
fn physical_with_table(rows: u32) -> (Drctl, PgCluster) {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "phys");
    d.write_physical_policy("phys", &pg.url("postgres"));
    common::give_to_owner(d.path());
    pg.psql(
        "postgres",
        &format!(
            "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, {rows}) g; ANALYZE t; CHECKPOINT;"
        ),
    );
    (d, pg)
}

#[test]
fn a_flipped_byte_in_each_kind_of_stored_file_is_caught_by_verify_deep_verify_and_restore() {
    let (d, pg) = physical_with_table(100000);
    switch_and_archive(&pg);
    let id = d.backup("phys");
    pg.psql(
        "postgres",
        "CREATE TABLE after AS SELECT g FROM generate_series(1, 1000) g;",
    );
    let want = pg.fingerprint("postgres");
    let to = pg.now_utc();
    let seg = switch_and_archive(&pg);
    // A real timeline 2 with its history file: a restored copy that keeps
    // archiving into the policy.
    let (copy, r) = restore_started(&d, "phys", &["--to", &to], &["--keep-archiving"]);
    r.ok();
    let repo = d.repo_dir().join("phys");
    let history = repo.join("wal/00000002/00000002.history.zst.age");
    let history_side = repo.join("wal/00000002/00000002.history.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !history_side.exists() {
        assert!(
            Instant::now() < deadline,
            "the copy never archived its history file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(copy);
    let (server, r) = restore_started(&d, "phys", &["--to", &to], &[]);
    r.ok();
    assert_eq!(common::fingerprint_url(&server.url("postgres")), want);
    drop(server);
    d.run(&["verify", "phys", "--deep", "--identity", &d.identity_arg()])
        .ok();

    let backup = repo.join(format!("backups/{id}"));
    let manifest = backup.join("manifest.json");
    let wal_obj = repo.join(format!("wal/00000001/{seg}.zst.age"));
    let wal_side = repo.join(format!("wal/00000001/{seg}.json"));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let at = m["consistent_at"].as_str().unwrap().to_string();
    let rows = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "t")
        .unwrap_or_else(|| panic!("no row count for t: {m}"))["rows"]
        .as_i64()
        .unwrap();
    let base_sha = m["objects"][0]["plain_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let text = |from: String, to: String| Change::Text(from, to);
    let quoted = |v: String| format!("\"{v}\"");
    let side_field = |p: &Path, f: &str| {
        let v = field(p, f);
        text(quoted(v.clone()), quoted(other_digit(&v)))
    };
    // (what, file, change, what the messages name, whether the restore
    // fails before starting a server)
    let cases: Vec<(&str, PathBuf, Change, String, bool)> = vec![
        (
            "base backup data",
            backup.join("base.tar.zst.age"),
            Change::Flip,
            "base.tar.zst.age".into(),
            true,
        ),
        (
            "server backup manifest",
            backup.join("backup_manifest.zst.age"),
            Change::Flip,
            "backup_manifest".into(),
            true,
        ),
        (
            "manifest consistent_at",
            manifest.clone(),
            text(quoted(at.clone()), quoted(other_digit(&at))),
            id.clone(),
            true,
        ),
        (
            "manifest row count",
            manifest.clone(),
            text(
                format!("\"rows\": {rows}"),
                format!("\"rows\": {}", rows + 1),
            ),
            id.clone(),
            true,
        ),
        (
            "manifest plain_sha256",
            manifest.clone(),
            text(quoted(base_sha.clone()), quoted(other_digit(&base_sha))),
            id.clone(),
            true,
        ),
        (
            "WAL segment",
            wal_obj.clone(),
            Change::Flip,
            seg.clone(),
            false,
        ),
        (
            "WAL sidecar plain_sha256",
            wal_side.clone(),
            side_field(&wal_side, "plain_sha256"),
            seg.clone(),
            false,
        ),
        (
            "WAL sidecar stored_sha256",
            wal_side.clone(),
            side_field(&wal_side, "stored_sha256"),
            seg.clone(),
            false,
        ),
        (
            "WAL sidecar last_write_at",
            wal_side.clone(),
            side_field(&wal_side, "last_write_at"),
            seg.clone(),
            false,
        ),
        (
            "history file",
            history.clone(),
            Change::Flip,
            "00000002.history".into(),
            false,
        ),
        (
            "history sidecar",
            history_side.clone(),
            side_field(&history_side, "plain_sha256"),
            "00000002.history".into(),
            false,
        ),
    ];
    let mut caught = Vec::new();
    for (what, path, change, names, before_start) in &cases {
        let orig = apply(path, change);
        let v = d.run(&["verify", "phys"]);
        assert_eq!(v.code, 1, "verify missed a flipped {what}: {}", v.stdout);
        assert!(
            v.stdout.contains(names.as_str()),
            "verify, {what}: {}",
            v.stdout
        );
        let v = d.run(&["verify", "phys", "--deep", "--identity", &d.identity_arg()]);
        assert_eq!(
            v.code, 1,
            "verify --deep missed a flipped {what}: {}",
            v.stdout
        );
        assert!(
            v.stdout.contains(names.as_str()),
            "verify --deep, {what}: {}{}",
            v.stdout,
            v.stderr
        );
        let (server, r) = restore_started(&d, "phys", &["--to", &to], &[]);
        assert_ne!(
            r.code, 0,
            "a restore went ahead with a flipped {what}: {}",
            r.stdout
        );
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            said.contains(names.as_str()) || (said.contains("corrupt") && *before_start),
            "restore, {what}: {said}"
        );
        if *before_start {
            assert!(
                !server.dir.join("PG_VERSION").exists(),
                "{what}: a restore was left in place"
            );
        }
        drop(server);
        std::fs::write(path, orig).unwrap();
        caught.push(*what);
    }
    eprintln!("flips caught by verify, verify --deep and restore: {caught:?}");
    chaos_line("flips", caught.len() as u64, (1, 1, 0), 1);
    d.run(&["verify", "phys", "--deep", "--identity", &d.identity_arg()])
        .ok();
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// What a bug between the socket and the repository would store: one byte
/// of `file` in backup `id`'s base archive changed (at `at(size)`), then
/// compressed, encrypted and checksummed as drctl would, the manifest
/// resealed to match. Returns the originals (path, bytes) to put back.
fn forge_base(d: &Drctl, id: &str, file: &str, at: impl Fn(u64) -> u64) -> Vec<(PathBuf, Vec<u8>)> {
    let mpath = d
        .repo_dir()
        .join(format!("phys/backups/{id}/manifest.json"));
    let m_orig = std::fs::read(&mpath).unwrap();
    let mut m = drctl::testing::Manifest::from_json(&m_orig).unwrap();
    let base = m.objects.iter_mut().find(|o| o.name == "base").unwrap();
    let opath = d.repo_dir().join(&base.key);
    let o_orig = std::fs::read(&opath).unwrap();
    let ids = drctl::testing::load_identities(&d.identity).unwrap();
    let mut plain = Vec::new();
    drctl::testing::decode(
        Box::new(std::io::Cursor::new(o_orig.clone())),
        &ids,
        base,
        &mut plain,
        false,
        &|_| true,
    )
    .unwrap();
    let mut pos = None;
    for e in tar::Archive::new(&plain[..]).entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == file {
            pos = Some(e.raw_file_position() + at(e.size()));
        }
    }
    let pos = pos.unwrap_or_else(|| panic!("{file} is not in the base archive")) as usize;
    plain[pos] ^= 0x01;
    let compressed = zstd::encode_all(&plain[..], 3).unwrap();
    let recipient: age::x25519::Recipient = d.recipient.parse().unwrap();
    let mut stored = Vec::new();
    {
        use std::io::Write;
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .unwrap();
        let mut w = enc.wrap_output(&mut stored).unwrap();
        w.write_all(&compressed).unwrap();
        w.finish().unwrap();
    }
    base.plain_sha256 = sha256_hex(&plain);
    base.stored_bytes = stored.len() as u64;
    base.stored_sha256 = sha256_hex(&stored);
    std::fs::write(&opath, &stored).unwrap();
    std::fs::write(&mpath, m.to_json()).unwrap();
    vec![(opath, o_orig), (mpath, m_orig)]
}

#[test]
fn a_backup_that_agrees_with_its_own_checksums_but_not_with_the_server_fails_pg_verifybackup() {
    let (d, pg) = physical_with_table(20000);
    let rel = pg.query("postgres", "SELECT pg_relation_filepath('t')");
    switch_and_archive(&pg);
    let id = d.backup("phys");
    let show = d.run(&["show", &id, "--output", "json"]).ok().json();
    let wal = &show["manifest"]["wal"];
    let start_seg = wal["start_segment"].as_str().unwrap().to_string();
    let (hi, lo) = wal["start_lsn"].as_str().unwrap().split_once('/').unwrap();
    let start = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let in_seg = start % wal["segment_size"].as_u64().unwrap();
    // A byte of table t (the server's manifest has its CRC32C), and a byte
    // of the first WAL record the backup needs (pg_waldump's CRC check:
    // WAL that does not parse must never pass as "files checked").
    let cases = [
        (
            rel.clone(),
            rel.clone(),
            Box::new(|size: u64| size / 2) as Box<dyn Fn(u64) -> u64>,
        ),
        (
            format!("pg_wal/{start_seg}"),
            "pg_waldump".to_string(),
            Box::new(move |_| in_seg + 40),
        ),
    ];
    for (file, named, at) in cases {
        let originals = forge_base(&d, &id, &file, at);
        // drctl's own checks pass: only PostgreSQL's tools know better.
        d.run(&["verify", "phys"]).ok();
        let v = d.run(&["verify", "phys", "--deep", "--identity", &d.identity_arg()]);
        assert_eq!(v.code, 1, "{file}: {}", v.stdout);
        assert!(
            v.stdout.contains("pg_verifybackup") && v.stdout.contains(&named),
            "{file}: {}",
            v.stdout
        );
        let (server, r) = restore_started(&d, "phys", &["--latest"], &[]);
        assert_eq!(r.code, 1, "{file}: {}", r.stdout);
        assert!(
            r.stderr.contains("differ from what the server sent") && r.stderr.contains(&named),
            "{file}: {}",
            r.stderr
        );
        assert!(
            !server.dir.exists() || std::fs::read_dir(&server.dir).unwrap().next().is_none(),
            "{file}: the unproven directory was left in place"
        );
        for (p, bytes) in originals {
            std::fs::write(p, bytes).unwrap();
        }
    }
    d.run(&["verify", "phys", "--deep", "--identity", &d.identity_arg()])
        .ok();
    chaos_line("verifybackup", 2, (1, 1, 0), 0);
}

#[test]
fn a_full_disk_under_a_file_repository_fails_the_backup_and_gives_the_space_back() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small tmpfs as the repository's disk needs root");
        return;
    }
    let disk = SmallDisk::mount("8m");
    let pg = PgCluster::start();
    pg.createdb("shop");
    pg.psql("shop", BIG_SQL);
    let d = Drctl::new();
    let repo = disk.dir.path().join("repo");
    d.write_policy_repo(
        "shop",
        &pg.url("shop"),
        &format!("url = \"file://{}\"\n", repo.display()),
        "",
    );
    let before = disk.used_bytes();
    let r = d.run(&["backup", "shop"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(
        d.list("shop").iter().all(|b| b["status"] != "complete"),
        "{:?}",
        d.list("shop")
    );
    assert_eq!(temps_under(&repo), Vec::<PathBuf>::new());
    // Only the repository's marker stays.
    let after = disk.used_bytes();
    assert!(
        after <= before + (64 << 10),
        "{after} bytes still used (was {before})"
    );
    let r = d.run(&["restore", "shop", "--latest", "--dry-run"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    chaos_line("disk_full", 1, (1, 0, 1), 0);
}

#[test]
fn postgresql_restarted_mid_backup_fails_it_within_seconds() {
    let d = Drctl::for_owner();
    let pg = archiving_cluster(&d, "phys");
    d.write_physical_policy("phys", &pg.url("postgres"));
    d.write_policy("shop", &pg.url("postgres"), "");
    common::give_to_owner(d.path());
    pg.psql(
        "postgres",
        "CREATE TABLE big AS SELECT g AS id, md5(g::text || 'x') || md5(g::text || 'y') AS a FROM generate_series(1, 1200000) g;",
    );
    switch_and_archive(&pg);
    let log = pg.data_dir().parent().unwrap().join("restart.log");
    for policy in ["phys", "shop"] {
        let mut child = spawn(&d, &["backup", policy]);
        let writing = d.repo_dir().join(format!("{policy}/backups"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while temps_under(&writing).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{policy}: the backup never started writing"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{policy}: ended before the restart"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let restarted = Instant::now();
        let st = common::as_owner(&common::pg_tool("pg_ctl"))
            .arg("-D")
            .arg(pg.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("restart")
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let limit = Duration::from_secs(30);
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if restarted.elapsed() > limit {
                kill9(&mut child);
                panic!("{policy}: the backup still ran {limit:?} after the server restarted");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = restarted.elapsed();
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(code, Some(1), "{policy}: {stderr}");
        assert!(!stderr.trim().is_empty(), "{policy}: failed without a word");
        eprintln!(
            "{policy}: exit 1 {took:?} after the restart began: {}",
            stderr.trim()
        );
        assert!(
            d.list(policy).iter().all(|b| b["status"] != "complete"),
            "{policy}: a backup is listed"
        );
        // The server is back: the next backup is fine.
        d.backup(policy);
    }
    chaos_line("restart", 2, (4, 2, 2), 0);
}
