//! Test harness: real PostgreSQL 15 clusters in temp dirs on free loopback
//! ports, a real S3-compatible server (moto) on loopback, and the `drctl`
//! binary driven as a user would. Every server is stopped on drop, so a
//! failing test cleans up too.
#![allow(dead_code)]

pub mod proxy;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn pg_tool(name: &str) -> PathBuf {
    let p = Path::new(PG_BIN).join(name);
    if p.exists() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// The bin folder of PostgreSQL `major`: Debian's for 15, the ones
/// scripts/install-deps.sh unpacks into .cache/pg/N/ for 16-18.
pub fn pg_bin(major: u32) -> PathBuf {
    if major == 15 {
        return PathBuf::from(PG_BIN);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/pg")
        .join(major.to_string())
        .join("bin");
    assert!(
        bin.join("postgres").exists(),
        "no PostgreSQL {major} in {}: run scripts/install-deps.sh",
        bin.display()
    );
    bin
}

/// util-linux keeps runuser in /usr/sbin, off a service's PATH.
pub const RUNUSER: &str = "/usr/sbin/runuser";

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Run a command as the cluster owner: `postgres` when we are root
/// (PostgreSQL refuses to run as root), else ourselves.
pub fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new(RUNUSER);
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Write (or append to) a file the cluster owner owns.
fn write_as_owner(path: &Path, body: &str, append: bool) {
    let op = if append { ">>" } else { ">" };
    let mut c = as_owner(Path::new("sh"));
    c.arg("-c")
        .arg(format!("cat {op} '{}'", path.display()))
        .stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Give a directory tree to the cluster owner (when we are root), so the
/// server's archive_command/restore_command, which run as that user, can
/// use it.
pub fn give_to_owner(path: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// pg_ctl's `-o` for a test server: loopback on `port`, its socket in
/// `dir`, no fsync (it is thrown away).
fn server_opts(port: u16, dir: &Path) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        dir.display()
    )
}

/// A throwaway PostgreSQL 15 cluster.
pub struct PgCluster {
    pub port: u16,
    pub major: u32,
    /// The server's bin folder.
    pub bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        Self::start_with(&[])
    }

    /// `hba` lines replace the default trust rules (e.g. to require scram).
    pub fn start_with(hba: &[&str]) -> PgCluster {
        Self::start_full(hba, &[])
    }

    /// Extra postgresql.conf lines (archive_command and the like).
    pub fn start_conf(conf: &[String]) -> PgCluster {
        Self::start_full(&[], conf)
    }

    /// Both: hba rules and postgresql.conf lines.
    pub fn start_full(hba: &[&str], conf: &[String]) -> PgCluster {
        Self::start_major(15, hba, conf)
    }

    /// A cluster of PostgreSQL `major` (see `pg_bin`).
    pub fn start_major(major: u32, hba: &[&str], conf: &[String]) -> PgCluster {
        let bin = pg_bin(major);
        let dir = tempfile::Builder::new()
            .prefix("drctl-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        let data = dir.path().join("data");
        check(
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .output()
                .unwrap(),
            "initdb",
        );
        if !hba.is_empty() {
            let body = hba.join("\n") + "\nlocal all postgres trust\n";
            write_as_owner(&data.join("pg_hba.conf"), &body, false);
        }
        if !conf.is_empty() {
            write_as_owner(
                &data.join("postgresql.conf"),
                &(conf.join("\n") + "\n"),
                true,
            );
        }
        // The port can be taken between probe and bind; retry a few times.
        for attempt in 0..5 {
            let port = free_port();
            let opts = server_opts(port, dir.path());
            let out = as_owner(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(dir.path().join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .output()
                .unwrap();
            if out.status.success() {
                return PgCluster {
                    port,
                    major,
                    bin,
                    data,
                    _dir: dir,
                };
            }
            if attempt == 4 {
                let log =
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!(
                    "pg_ctl start failed: {}\n{log}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        unreachable!()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// What the server has logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data.parent().unwrap().join("server.log")).unwrap_or_default()
    }

    /// Stop, make the next WAL file `segment` (as pg_upgrade does, so a new
    /// cluster's WAL names follow the old one's), start again on the same
    /// port.
    pub fn reset_wal_to(&self, segment: &str) {
        let dir = self.data.parent().unwrap();
        let ctl = |args: &[&str]| {
            check(
                as_owner(&self.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&self.data)
                    .args(args)
                    .output()
                    .unwrap(),
                "pg_ctl",
            )
        };
        ctl(&["-m", "fast", "-w", "stop"]);
        check(
            as_owner(&self.bin.join("pg_resetwal"))
                .args(["-l", segment, "-D"])
                .arg(&self.data)
                .output()
                .unwrap(),
            "pg_resetwal",
        );
        let opts = server_opts(self.port, dir);
        let log = dir.join("server.log").display().to_string();
        ctl(&["-o", &opts, "-l", &log, "-w", "-t", "60", "start"]);
    }

    /// Connection URL for a database as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn url_as(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL (a script) in `db`, fail the test on any error, return the
    /// unaligned tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = check(self.try_psql(db, sql), &format!("psql {db}"));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Output {
        psql_url(&self.url(db), sql)
    }

    pub fn database_exists(&self, db: &str) -> bool {
        self.query(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        ) == "1"
    }

    /// One value (first line, trimmed).
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = check(self.try_psql(db, sql), &format!("psql {db}: {sql}"));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Per-table row count and content checksum, sequence positions and
    /// view definitions, in a stable order: equal fingerprints mean equal
    /// logical content.
    pub fn fingerprint(&self, db: &str) -> Vec<String> {
        fingerprint_url(&self.url(db))
    }

    /// The server's clock now, in UTC to the microsecond (a --to target).
    pub fn now_utc(&self) -> String {
        self.query(
            "postgres",
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
    }

    pub fn createdb(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    }
}

/// psql on a script against any server.
pub fn psql_url(url: &str, sql: &str) -> Output {
    let mut child = Command::new(pg_tool("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"])
        .arg(format!("--dbname={url}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sql = sql.to_string();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(sql.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

/// `PgCluster::fingerprint` of any server.
pub fn fingerprint_url(url: &str) -> Vec<String> {
    let sql = r#"
SELECT format('SELECT %L || ''|'' || count(*) || ''|'' || coalesce(md5(string_agg(t::text, E''\n'' ORDER BY t::text)), ''-'') FROM %I.%I t',
              n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
ORDER BY n.nspname, c.relname
\gexec
SELECT 'seq ' || schemaname || '.' || sequencename || '=' || coalesce(last_value::text, 'null') FROM pg_sequences ORDER BY 1;
SELECT 'view ' || schemaname || '.' || viewname || '=' || md5(definition) FROM pg_views
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1;
SELECT 'index ' || schemaname || '.' || indexname || '=' || md5(indexdef) FROM pg_indexes
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1;
"#;
    let out = check(psql_url(url, sql), "fingerprint");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Data with the shapes a dump must carry: several schemas, unicode names
/// and text, NULLs, bytea, jsonb, sequences, views, foreign keys, an empty
/// table, a materialized view, a function and a trigger.
pub const SAMPLE_SQL: &str = r#"
CREATE SCHEMA sales;
CREATE SCHEMA "Ünïcode schema";
CREATE TABLE sales.customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE sales.orders (
  id bigserial PRIMARY KEY,
  customer_id int REFERENCES sales.customers(id),
  amount numeric(12,2),
  note text,
  created timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00',
  payload jsonb,
  blob bytea
);
INSERT INTO sales.customers (name, email)
SELECT 'customer ' || g || CASE WHEN g % 3 = 0 THEN ' Zoë Ångström 日本語 ✓' ELSE '' END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || g || '@example.com' END
FROM generate_series(1, 300) g;
INSERT INTO sales.orders (customer_id, amount, note, created, payload, blob)
SELECT 1 + g % 300, g * 1.25,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g || E' with "quotes", tabs\t and \\ backslashes' END,
       '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
       jsonb_build_object('g', g, 'tags', jsonb_build_array('a', 'β', g % 4), 'nested', jsonb_build_object('ok', g % 2 = 0)),
       CASE WHEN g % 11 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') || '\x00ff00'::bytea END
FROM generate_series(1, 5000) g;
CREATE TABLE "Ünïcode schema"."Tëst tablé" (k text PRIMARY KEY, v text, n int);
INSERT INTO "Ünïcode schema"."Tëst tablé" VALUES ('ключ', 'значение', 1), ('鍵', NULL, 2), ('emoji 🐘', '🚀', NULL);
CREATE TABLE public.empty_table (id int, v text);
CREATE SEQUENCE public.invoice_no START 1000;
SELECT nextval('public.invoice_no') FROM generate_series(1, 42);
CREATE VIEW sales.big_orders AS SELECT id, amount FROM sales.orders WHERE amount > 5000;
CREATE MATERIALIZED VIEW sales.daily AS SELECT date_trunc('day', created) AS day, count(*) AS n FROM sales.orders GROUP BY 1;
CREATE INDEX orders_created_idx ON sales.orders (created);
CREATE FUNCTION sales.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON sales.orders FOR EACH ROW EXECUTE FUNCTION sales.touch();
"#;

/// Change every kind of thing the sample holds, so a restore that returned
/// the current state instead of the backup's would be caught.
pub const CHANGE_SQL: &str = r#"
DELETE FROM sales.orders WHERE id % 10 = 0;
UPDATE sales.customers SET name = name || ' (changed)' WHERE id < 50;
INSERT INTO "Ünïcode schema"."Tëst tablé" VALUES ('new', 'row', 9);
SELECT nextval('public.invoice_no');
"#;

/// An S3-compatible server (moto) on a loopback port, killed on drop.
pub struct S3Server {
    pub port: u16,
    child: Child,
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DRCTL_TEST_MOTO") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    http_with(port, method, path, "")
}

const MOTO_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n";

/// `headers`: extra header lines, each ending in \r\n.
fn http_with(port: u16, method: &str, path: &str, headers: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Object bodies are binary: the headers are what callers read.
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = moto_binary();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start the S3 test server {}: {e}; run scripts/install-deps.sh (or set DRCTL_TEST_MOTO)",
                        bin.display()
                    )
                });
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if http(port, "GET", "/moto-api/").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                    return S3Server { port, child };
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the S3 test server did not come up");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let r = http(self.port, "PUT", &format!("/{bucket}")).unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "create bucket: {r}");
    }

    /// A bucket with S3 Object Lock enabled (and so versioning).
    pub fn create_locked_bucket(&self, bucket: &str) {
        let r = http_with(
            self.port,
            "PUT",
            &format!("/{bucket}"),
            "x-amz-bucket-object-lock-enabled: true\r\n",
        )
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "create locked bucket: {r}");
    }

    /// Raw S3 API GET. The signature is not checked (moto does not
    /// enforce auth), but an anonymous request would be refused objects.
    pub fn get(&self, path: &str) -> String {
        http_with(self.port, "GET", path, MOTO_AUTH).unwrap()
    }

    pub fn head(&self, path: &str) -> String {
        http_with(self.port, "HEAD", path, MOTO_AUTH).unwrap()
    }

    pub fn delete(&self, path: &str) -> String {
        http_with(self.port, "DELETE", path, MOTO_AUTH).unwrap()
    }

    /// Raw S3 API PUT of one object.
    pub fn put(&self, path: &str, body: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{MOTO_AUTH}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let r = String::from_utf8_lossy(&out).into_owned();
        assert!(r.starts_with("HTTP/1.1 200"), "PUT {path}: {r}");
        r
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A drctl working directory: policies/, a catalog and an age key pair.
pub struct Drctl {
    pub dir: tempfile::TempDir,
    pub identity: PathBuf,
    pub recipient: String,
    pub extra_env: Vec<(String, String)>,
    /// Run drctl as the cluster owner (physical backups and WAL, where the
    /// server's own archive_command shares the repository).
    pub as_owner: bool,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "drctl failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Generate an age key pair with the stock `age-keygen`, so the test also
/// proves drctl reads keys made by other tools.
pub fn age_keygen(path: &Path) -> String {
    let out = check(
        Command::new("age-keygen")
            .arg("-o")
            .arg(path)
            .output()
            .expect("age-keygen (apt package age; run scripts/install-deps.sh)"),
        "age-keygen",
    );
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    text.trim()
        .strip_prefix("Public key: ")
        .unwrap_or_else(|| panic!("age-keygen said: {text}"))
        .to_string()
}

impl Drctl {
    pub fn new() -> Drctl {
        let dir = tempfile::Builder::new()
            .prefix("drctl-work-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        // Empty AWS files: credentials come from the environment only.
        std::fs::write(dir.path().join("aws-config"), "").unwrap();
        std::fs::write(dir.path().join("aws-credentials"), "").unwrap();
        let identity = dir.path().join("identity.txt");
        let recipient = age_keygen(&identity);
        Drctl {
            dir,
            identity,
            recipient,
            extra_env: Vec::new(),
            as_owner: false,
        }
    }

    /// A work dir owned by the cluster owner, and drctl run as that user.
    pub fn for_owner() -> Drctl {
        let mut d = Drctl::new();
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        give_to_owner(d.path());
        d.as_owner = true;
        d
    }

    pub fn bin() -> &'static str {
        env!("CARGO_BIN_EXE_drctl")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.path().join("repo")
    }

    pub fn catalog(&self) -> PathBuf {
        self.path().join("catalog.db")
    }

    /// A dump policy for `source_url` into a file repository under the
    /// work dir. `extra` is appended TOML (more keys or sections).
    pub fn write_policy(&self, name: &str, source_url: &str, extra: &str) {
        let repo = format!("file://{}", self.repo_dir().display());
        self.write_policy_repo(name, source_url, &format!("url = \"{repo}\"\n"), extra);
    }

    pub fn write_policy_repo(&self, name: &str, source_url: &str, repo_keys: &str, extra: &str) {
        let text = format!(
            r#"[source]
kind = "postgres"
url = "{source_url}"

[backup]
method = "dump"
schedule = "0 2 * * *"

[retention]
keep_last = 3

[repository]
{repo_keys}
[encryption]
recipients = ["{}"]

[compression]
level = 3
{extra}"#,
            self.recipient
        );
        self.write_policy_text(name, &text);
    }

    /// A `method = "physical"` policy (file repository).
    pub fn write_physical_policy(&self, name: &str, source_url: &str) {
        self.write_policy(name, source_url, "");
        let p = self.path().join("policies").join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("method = \"dump\"", "method = \"physical\"");
        std::fs::write(p, text).unwrap();
    }

    /// The postgresql.conf line that archives into `policy` on S3 (the
    /// loopback server): archive_command runs in the server's environment,
    /// so the test credentials come through a file, never a command line.
    pub fn s3_archive_command(&self, policy: &str) -> String {
        let creds = self.path().join("aws-credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        format!(
            "archive_command = 'AWS_SHARED_CREDENTIALS_FILE={} AWS_EC2_METADATA_DISABLED=true {} --policies {} wal-push {policy} %p'",
            creds.display(),
            Self::bin(),
            self.path().join("policies").display()
        )
    }

    /// The postgresql.conf line that archives into `policy`.
    pub fn archive_command(&self, policy: &str) -> String {
        format!(
            "archive_command = '{} --policies {} wal-push {policy} %p'",
            Self::bin(),
            self.path().join("policies").display()
        )
    }

    pub fn write_policy_text(&self, name: &str, text: &str) {
        std::fs::write(
            self.path().join("policies").join(format!("{name}.toml")),
            text,
        )
        .unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let c = if self.as_owner {
            as_owner(Path::new(Self::bin()))
        } else {
            Command::new(Self::bin())
        };
        self.setup(c, args)
    }

    /// Like `command`, but drctl is the process started (no runuser in
    /// between, which forwards a SIGTERM and SIGKILLs 2 s later): for a
    /// daemon whose drain a test signals, as systemd's KillMode=mixed would.
    pub fn service(&self, args: &[&str]) -> Command {
        let c = if self.as_owner && is_root() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(Self::bin());
            c
        } else {
            Command::new(Self::bin())
        };
        self.setup(c, args)
    }

    fn setup(&self, mut c: Command, args: &[&str]) -> Command {
        if self.as_owner {
            c.env("HOME", self.path());
        }
        c.args(args)
            .current_dir(self.path())
            .env("DRCTL_POLICIES", self.path().join("policies"))
            .env("DRCTL_CATALOG", self.catalog())
            .env_remove("DRCTL_IDENTITY")
            .env_remove("DRCTL_LOG")
            .env_remove("PGPASSWORD")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.path().join("aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path().join("aws-credentials"),
            )
            .env("PATH", test_path())
            .stdin(Stdio::null());
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `drctl list --output json` as values.
    pub fn list(&self, policy: &str) -> Vec<serde_json::Value> {
        let v = self.run(&["list", policy, "--output", "json"]).ok().json();
        v.as_array().unwrap().clone()
    }

    /// Back up and return the new backup's id.
    pub fn backup(&self, policy: &str) -> String {
        let v = self
            .run(&["backup", policy, "--output", "json"])
            .ok()
            .json();
        v["id"].as_str().unwrap().to_string()
    }

    pub fn identity_arg(&self) -> String {
        self.identity.display().to_string()
    }

    /// Every file under the repository directory whose path ends in `suffix`.
    pub fn repo_files(&self, suffix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.repo_dir(), &mut out);
        out.retain(|p| p.to_string_lossy().ends_with(suffix));
        out.sort();
        out
    }
}

/// Every file below `dir` whose path contains `needle` (temp files too).
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.retain(|p| p.to_string_lossy().contains(needle));
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// The PATH a service has (systemd, cron, deploy/): drctl must find
/// PostgreSQL's tools in /usr/lib/postgresql/N/bin by itself, as on a
/// stock Debian host.
pub const SERVICE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub fn test_path() -> String {
    SERVICE_PATH.to_string()
}

/// A webhook endpoint on loopback: records every JSON body it is sent.
pub fn webhook() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::BufRead;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = std::io::BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().unwrap().push(v);
                }
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

/// A cluster whose archive_command is `drctl wal-push POLICY`.
pub fn archiving_cluster(d: &Drctl, policy: &str) -> PgCluster {
    PgCluster::start_conf(&["archive_mode = on".into(), d.archive_command(policy)])
}

/// The segment `n` after `name` on the same timeline (16 MiB segments,
/// small numbers: no carry into the log part).
pub fn seg_plus(name: &str, n: u32) -> String {
    let low = u32::from_str_radix(&name[16..], 16).unwrap() + n;
    format!("{}{low:08X}", &name[..16])
}

/// Wait (at most 90 s) until the server reports `name` or a later WAL file
/// archived.
pub fn wait_archived(pg: &PgCluster, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let last = pg.query(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        );
        if last.as_str() >= name {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never archived (last {last})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stop a server drctl restored (immediate: it is thrown away), whatever
/// state it is in.
pub fn stop_server(dir: &Path) {
    let _ = as_owner(&pg_tool("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
}

/// A data directory for a restore (in a fresh parent the cluster owner
/// may write), and the server drctl may start in it: stopped when the test
/// ends however it ends.
pub struct Restored {
    pub dir: PathBuf,
    pub port: u16,
    _parent: tempfile::TempDir,
}

impl Restored {
    pub fn new() -> Restored {
        let parent = tempfile::tempdir().unwrap();
        give_to_owner(parent.path());
        Restored {
            dir: parent.path().join("data"),
            port: free_port(),
            _parent: parent,
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        stop_server(&self.dir);
    }
}

/// A small tmpfs, unmounted when the test ends however it ends.
pub struct SmallDisk {
    pub dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallDisk { dir }
    }

    pub fn used_bytes(&self) -> u64 {
        // SAFETY: a zeroed statvfs filled in by the call.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            let p = std::ffi::CString::new(self.dir.path().to_str().unwrap()).unwrap();
            assert_eq!(libc::statvfs(p.as_ptr(), &mut s), 0);
            (s.f_blocks - s.f_bfree) * s.f_frsize
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// An "S3 endpoint" that accepts connections, reads and never answers: a
/// hung proxy or a stopped server. Lives as long as the test.
pub fn silent_server() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut held = Vec::new();
        l.set_nonblocking(true).unwrap();
        // Bounded: the test is over long before this.
        while t0.elapsed() < Duration::from_secs(240) {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_read_timeout(Some(Duration::from_millis(10))).ok();
                    held.push(s);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            let mut buf = [0u8; 4096];
            for s in &mut held {
                let _ = s.read(&mut buf);
            }
        }
    });
    (port, h)
}

/// Run `c` on a pseudo-terminal (util-linux `script`), as a user at a
/// terminal does: drctl draws its progress bars only there. Returns the
/// exit code and everything the terminal showed.
pub fn on_tty(c: &Command) -> (i32, String) {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let mut line = String::from("stty cols 200 2>/dev/null; exec ");
    line.push_str(&quote(c.get_program()));
    for a in c.get_args() {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut s = Command::new("/usr/bin/script");
    s.args(["-qfec", &line, "/dev/null"]);
    if let Some(d) = c.get_current_dir() {
        s.current_dir(d);
    }
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    let out = s
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A frame of a drawn progress bar: its label, percentage and total.
#[derive(Debug, Clone, PartialEq)]
pub struct BarFrame {
    pub label: String,
    pub percent: u32,
    pub total: String,
}

/// Every frame with a percentage in what a terminal showed, in order
/// (terminal escapes stripped; frames end at a CR or LF).
pub fn bar_frames(screen: &str) -> Vec<BarFrame> {
    let mut plain = String::new();
    let mut chars = screen.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(ch);
    }
    plain
        .split(['\r', '\n'])
        .filter_map(|f| {
            let (label, rest) = f.split_once(" [")?;
            let (_, rest) = rest.split_once("] ")?;
            let (pct, rest) = rest.trim_start().split_once("% ")?;
            // "1.50 MiB/30.00 MiB (…/s, ETA 2s)"
            let (sizes, _) = rest.split_once(" (")?;
            let (_, total) = sizes.split_once('/')?;
            Some(BarFrame {
                label: label.trim().to_string(),
                percent: pct.trim().parse().ok()?,
                total: total.trim().to_string(),
            })
        })
        .collect()
}
