//! PostgreSQL: connection URLs, psql queries and sessions, pg_dump/pg_restore.
//!
//! Everything goes through libpq's own tools (psql, pg_dump, pg_restore), so
//! sslmode, service files, .pgpass and PG* variables behave exactly as a DBA
//! expects. Passwords travel only in the child's PGPASSWORD, never in argv.

pub mod archiver;
pub mod dump;
pub mod replication;
pub mod tools;

use std::collections::HashMap;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A `postgres://` URL without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnUrl {
    url: url::Url,
}

impl ConnUrl {
    pub fn parse(s: &str) -> Result<ConnUrl, String> {
        let url = url::Url::parse(s).map_err(|e| {
            format!("not a connection URL ({e}); use postgres://user@host:5432/dbname")
        })?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(format!(
                "scheme '{}' is not postgres://; use postgres://user@host:5432/dbname",
                url.scheme()
            ));
        }
        if url.password().is_some() {
            return Err(
                "contains a password; remove it and use password_env, PGPASSWORD or ~/.pgpass"
                    .into(),
            );
        }
        if url.query_pairs().any(|(k, _)| k == "password") {
            return Err(
                "contains a password parameter; use password_env, PGPASSWORD or ~/.pgpass".into(),
            );
        }
        let c = ConnUrl { url };
        if c.database().is_empty() {
            return Err("names no database; use postgres://user@host:5432/dbname".into());
        }
        Ok(c)
    }

    /// The port the URL names, if it names one.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    pub fn database(&self) -> String {
        let path = self.url.path().trim_start_matches('/');
        percent_decode(path)
    }

    /// Where the server is, with local spellings made one: a Unix socket,
    /// `localhost`, 127.0.0.1 and ::1 are all "local"; no port is 5432.
    fn endpoint(&self) -> (String, u16) {
        let q: HashMap<_, _> = self.url.query_pairs().collect();
        let host = self
            .url
            .host_str()
            .filter(|h| !h.is_empty())
            .map(|h| {
                h.trim_matches(|c| c == '[' || c == ']')
                    .to_ascii_lowercase()
            })
            .or_else(|| q.get("host").map(|h| h.to_string()))
            .unwrap_or_default();
        let local = host.is_empty()
            || host.starts_with('/')
            || host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        let port = self
            .url
            .port()
            .or_else(|| q.get("port").and_then(|p| p.parse().ok()))
            .unwrap_or(5432);
        (if local { "local".into() } else { host }, port)
    }

    /// The same database on the same server, however the URLs spell it.
    pub fn same_database(&self, other: &ConnUrl) -> bool {
        self.database() == other.database() && self.endpoint() == other.endpoint()
    }

    pub fn host(&self) -> String {
        let q: HashMap<_, _> = self.url.query_pairs().collect();
        let host = self
            .url
            .host_str()
            .map(str::to_string)
            .or_else(|| q.get("host").map(|h| h.to_string()))
            .unwrap_or_else(|| "localhost".into());
        match self.url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> ConnUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", percent_encode(db)));
        ConnUrl { url }
    }

    /// A URL from its parts (names as they are, encoded here).
    pub fn from_parts(host: &str, port: u16, user: &str, db: &str) -> Result<ConnUrl, String> {
        let mut url = url::Url::parse("postgres://localhost/").expect("a valid URL");
        url.set_username(user)
            .map_err(|()| format!("user '{user}' cannot be put in a URL"))?;
        let c = ConnUrl { url }.with_host(host, port)?;
        Ok(c.with_database(db))
    }

    /// The same user, database and parameters (sslmode...) on another server.
    pub fn with_host(&self, host: &str, port: u16) -> Result<ConnUrl, String> {
        let mut url = self.url.clone();
        url.set_host(Some(host))
            .map_err(|e| format!("host '{host}': {e}"))?;
        url.set_port(Some(port))
            .map_err(|()| format!("cannot set port {port}"))?;
        Ok(ConnUrl { url })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

impl std::fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where to connect and with which secret.
#[derive(Clone)]
pub struct Conn {
    pub url: ConnUrl,
    password: Option<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// `password_env` names a variable; unset means libpq's own lookup
    /// (PGPASSWORD, ~/.pgpass).
    pub fn new(url: ConnUrl, password_env: Option<&str>) -> Result<Conn> {
        let password = match password_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                crate::error::usage(format!(
                    "password_env names {var}, but {var} is not set in drctl's environment"
                ))
            })?),
            None => None,
        };
        Ok(Conn { url, password })
    }

    pub fn with_database(&self, db: &str) -> Conn {
        Conn {
            url: self.url.with_database(db),
            password: self.password.clone(),
        }
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("PGAPPNAME", "drctl".to_string())];
        if let Some(p) = &self.password {
            v.push(("PGPASSWORD", p.clone()));
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            v.push(("PGCONNECT_TIMEOUT", "15".into()));
        }
        v
    }

    /// A libpq tool ready to run against this connection (async).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(self.envs());
        c.kill_on_drop(true);
        c
    }

    /// The same for tools fed from a blocking pipeline thread.
    pub fn std_command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.envs(self.envs());
        c
    }

    fn psql(&self) -> Command {
        let mut c = self.command(tools::psql());
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-F",
            "\x1f",
            "-R",
            "\x1e",
            "-w",
            "-f",
            "-",
        ]);
        c.arg(format!("--dbname={}", self.url));
        c
    }

    /// Run SQL (psql variables via `vars`, referenced as :'name' / :"name")
    /// and return rows of text fields. NULL comes back as "".
    pub async fn query(&self, sql: &str, vars: &[(&str, &str)]) -> Result<Vec<Vec<String>>> {
        let mut cmd = self.psql();
        for (k, v) in vars {
            cmd.arg("-v").arg(format!("{k}={v}"));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("cannot run psql (install the PostgreSQL client tools)")?;
        let mut stdin = child.stdin.take().expect("piped");
        let sql = sql.to_string();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(sql.as_bytes()).await;
        });
        let out = child.wait_with_output().await.context("psql")?;
        let _ = writer.await;
        if !out.status.success() {
            bail!("{} (on {})", stderr_summary(&out.stderr), self.url.host());
        }
        Ok(parse_rows(&out.stdout))
    }

    pub async fn query_one(&self, sql: &str, vars: &[(&str, &str)]) -> Result<String> {
        let rows = self.query(sql, vars).await?;
        match rows.as_slice() {
            [row] if row.len() == 1 => Ok(row[0].clone()),
            _ => bail!("expected one value from `{sql}`, got {} rows", rows.len()),
        }
    }

    /// `server_version_num` (170004 for 17.4).
    pub async fn server_version_num(&self) -> Result<u32> {
        let v = self
            .query_one("select current_setting('server_version_num')", &[])
            .await?;
        v.parse()
            .with_context(|| format!("the server's server_version_num '{v}' is not a number"))
    }

    /// Cheap reachability check with a clear error.
    pub async fn ping(&self) -> Result<()> {
        self.query("select 1", &[])
            .await
            .with_context(|| format!("cannot connect to {}", self.url))
            .map(|_| ())
    }
}

fn parse_rows(out: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(out);
    text.split('\x1e')
        .map(|r| r.strip_suffix('\n').unwrap_or(r))
        .filter(|r| !r.is_empty())
        .map(|r| r.split('\x1f').map(str::to_string).collect())
        .collect()
}

/// First meaningful line of a libpq tool's stderr, for one-line errors.
pub fn stderr_summary(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("error:") || l.contains("FATAL") || l.contains("ERROR"))
        .or(lines.first())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "failed with no message".into())
}

/// A long-lived psql holding one transaction open (for an exported snapshot).
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    marker: String,
}

impl Session {
    pub async fn open(conn: &Conn) -> Result<Session> {
        let mut cmd = conn.psql();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .context("cannot run psql (install the PostgreSQL client tools)")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let marker = format!("__drctl_{:016x}__", rand::random::<u64>());
        Ok(Session {
            child,
            stdin,
            stdout,
            marker,
        })
    }

    /// Run SQL in the session's transaction and return its rows.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<String>>> {
        let script = format!("{sql}\n\\echo {}\n", self.marker);
        self.stdin.write_all(script.as_bytes()).await.ok();
        self.stdin.flush().await.ok();
        let mut out = Vec::new();
        let end = format!("{}\n", self.marker);
        loop {
            let n = self
                .stdout
                .read_until(b'\n', &mut out)
                .await
                .context("reading from psql")?;
            if n == 0 {
                let mut err = Vec::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_end(&mut err).await;
                }
                bail!("{}", stderr_summary(&err));
            }
            if out.ends_with(end.as_bytes()) {
                out.truncate(out.len() - end.len());
                return Ok(parse_rows(&out));
            }
        }
    }

    pub async fn close(mut self) -> Result<()> {
        self.stdin.write_all(b"commit;\n\\q\n").await.ok();
        drop(self.stdin);
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("psql session ended with {status}");
        }
        Ok(())
    }
}

/// `pg_dump (PostgreSQL) 15.18` -> `15.18`.
pub async fn tool_version(program: &std::path::Path) -> Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    Ok(version_word(&String::from_utf8_lossy(&out.stdout)))
}

/// "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> "15.18".
pub(crate) fn version_word(text: &str) -> String {
    let mut words = text.split_whitespace();
    let after = words.clone().skip_while(|w| *w != "(PostgreSQL)").nth(1);
    after
        .or_else(|| words.nth(2))
        .unwrap_or("unknown")
        .to_string()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_versions() {
        assert_eq!(
            version_word("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            "15.18"
        );
        assert_eq!(version_word("pg_basebackup (PostgreSQL) 16.4\n"), "16.4");
        assert_eq!(version_word(""), "unknown");
    }

    #[test]
    fn urls() {
        let u = ConnUrl::parse("postgres://backup@db1:5432/orders").unwrap();
        assert_eq!(u.database(), "orders");
        assert_eq!(u.host(), "db1:5432");
        assert_eq!(
            u.with_database("postgres").as_str(),
            "postgres://backup@db1:5432/postgres"
        );
        assert_eq!(u.with_database("a b").database(), "a b");
        assert!(ConnUrl::parse("postgres://u:secret@h/db")
            .unwrap_err()
            .contains("password"));
        assert!(!ConnUrl::parse("postgres://u:secret@h/db")
            .unwrap_err()
            .contains("secret"));
        assert!(ConnUrl::parse("mysql://h/db").is_err());
        assert!(ConnUrl::parse("postgres://h").is_err());
        assert!(ConnUrl::parse("postgres://h/db?password=x").is_err());
    }

    #[test]
    fn rows() {
        assert_eq!(
            parse_rows(b"a\x1fb\x1ec\x1fd\n"),
            vec![vec!["a", "b"], vec!["c", "d"]]
        );
        assert!(parse_rows(b"").is_empty());
    }

    #[test]
    fn stderr_lines() {
        assert_eq!(
            stderr_summary(b"pg_dump: error: connection to server failed\ndetail\n"),
            "pg_dump: error: connection to server failed"
        );
    }
}
