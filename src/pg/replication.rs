//! A small client of PostgreSQL's replication protocol: just enough for
//! `BASE_BACKUP`. drctl reads the archives off the wire itself, each into
//! its own object: pg_basebackup can stream only one tablespace to stdout
//! (writing the others to files would leave plaintext on disk), and relays
//! every byte through its own buffers and a pipe. With `COMPRESSION 'zstd'`
//! the server sends zstd streams.
//!
//! Speaks: startup, trust / password / md5 / SCRAM-SHA-256, simple queries,
//! CopyOut. Connection defaults follow libpq (PGHOST, PGPORT, PGUSER,
//! PGPASSWORD, PGPASSFILE / ~/.pgpass). No TLS: `sslmode=require` and
//! stricter are refused rather than silently downgraded.

use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::Conn;

/// The per-file checksum of the server's backup manifest, which
/// pg_verifybackup checks each restored file against: PostgreSQL's
/// default. Its job is to catch an extraction that differs from what the
/// server sent; drctl's own SHA-256 of the whole stream already proves the
/// repository returned what drctl wrote. SHA256 here cost a second
/// cryptographic pass over every byte on the server and in every restore
/// (pg_verifybackup: 1.0 s against 0.4 s for 826 MiB).
pub const CHECKSUMS: &str = "CRC32C";

/// Where and as whom to connect, resolved the way libpq would.
#[derive(Clone)]
pub struct Params {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    sslmode: String,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return env("USER").unwrap_or_else(|| "postgres".into());
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

impl Params {
    pub fn from_conn(conn: &Conn) -> Result<Params> {
        let url = &conn.url.url;
        let q: std::collections::HashMap<String, String> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let sslmode = q
            .get("sslmode")
            .cloned()
            .or_else(|| env("PGSSLMODE"))
            .unwrap_or_else(|| "prefer".into());
        if matches!(sslmode.as_str(), "require" | "verify-ca" | "verify-full") {
            return Err(crate::error::usage(format!(
                "sslmode={sslmode}: backups of clusters with tablespaces use drctl's own replication connection, which has no TLS yet; use a local socket or a trusted network with sslmode=prefer"
            )));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .or_else(|| q.get("host").cloned())
            .or_else(|| env("PGHOST"))
            .unwrap_or_else(|| "/var/run/postgresql".into());
        if host.contains(',') {
            return Err(crate::error::usage(format!(
                "source host {host}: several hosts are not supported for backups of clusters with tablespaces; name the primary"
            )));
        }
        let port = match url.port() {
            Some(p) => p,
            None => match q.get("port").cloned().or_else(|| env("PGPORT")) {
                Some(p) => p
                    .parse()
                    .map_err(|_| crate::error::usage(format!("source port {p} is not a number")))?,
                None => 5432,
            },
        };
        let user = Some(url.username())
            .filter(|u| !u.is_empty())
            .map(super::percent_decode)
            .or_else(|| q.get("user").cloned())
            .or_else(|| env("PGUSER"))
            .unwrap_or_else(os_user);
        Ok(Params {
            host,
            port,
            user,
            password: conn.password.clone(),
            sslmode,
        })
    }

    /// Whether this connection is one libpq would not encrypt either: a
    /// local socket or loopback, or TLS turned off in the URL. Only then
    /// may drctl's own (TLS-less) client stand in for pg_basebackup.
    pub fn plain_is_what_libpq_would_do(&self) -> bool {
        let loopback = self.host.starts_with('/')
            || self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        loopback || matches!(self.sslmode.as_str(), "disable" | "allow")
    }

    /// The password libpq would use: given, PGPASSWORD, or the password file.
    fn password(&self) -> Option<String> {
        self.password
            .clone()
            .or_else(|| env("PGPASSWORD"))
            .or_else(|| {
                let file = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
                let text = std::fs::read_to_string(file).ok()?;
                let host = if self.host.starts_with('/') {
                    "localhost"
                } else {
                    &self.host
                };
                pgpass_lookup(&text, host, self.port, "replication", &self.user)
            })
    }
}

/// The first `host:port:database:user:password` line matching; `*` matches
/// anything, `\:` and `\\` escape.
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let want = [host, port.as_str(), db, user];
        if fields[..4]
            .iter()
            .zip(want)
            .all(|(f, w)| f == "*" || f == w)
        {
            return Some(fields.pop().expect("five fields"));
        }
    }
    None
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One backend message: its type and body.
struct Wire {
    io: BufReader<Box<dyn Stream>>,
    ty: u8,
    body: Vec<u8>,
}

impl Wire {
    fn send(&mut self, ty: Option<u8>, body: &[u8]) -> io::Result<()> {
        let mut m = Vec::with_capacity(body.len() + 5);
        m.extend(ty);
        m.extend(((body.len() + 4) as i32).to_be_bytes());
        m.extend(body);
        let w = self.io.get_mut();
        w.write_all(&m)?;
        w.flush()
    }

    /// Fill `buf` from the socket. Reads wake up every `POLL` (the socket's
    /// read timeout) so a cancel request is noticed, and a server silent
    /// for `IDLE_LIMIT` is given up on instead of waited for forever.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut at = 0;
        let mut silent_since = std::time::Instant::now();
        while at < buf.len() {
            match self.io.read(&mut buf[at..]) {
                Ok(0) => bail!("the server closed the replication connection"),
                Ok(n) => {
                    at += n;
                    silent_since = std::time::Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if crate::cancel::requested() {
                        bail!("cancelled");
                    }
                    if silent_since.elapsed() >= IDLE_LIMIT {
                        bail!(
                            "the server sent nothing for {}s during the base backup; giving up",
                            IDLE_LIMIT.as_secs()
                        );
                    }
                }
                Err(e) => {
                    return Err(e).context("reading from the replication connection");
                }
            }
        }
        Ok(())
    }

    /// Read the next message; an ErrorResponse becomes an error.
    fn recv(&mut self) -> Result<u8> {
        loop {
            let mut head = [0u8; 5];
            self.read_full(&mut head)?;
            let len = i32::from_be_bytes(head[1..5].try_into().expect("4 bytes"));
            if !(4..=(1 << 30)).contains(&len) {
                bail!("malformed message from the server (length {len})");
            }
            let mut body = std::mem::take(&mut self.body);
            body.resize(len as usize - 4, 0);
            let r = self.read_full(&mut body);
            self.body = body;
            r?;
            self.ty = head[0];
            match self.ty {
                b'E' => bail!("server: {}", error_text(&self.body)),
                b'N' => tracing::debug!("server notice: {}", error_text(&self.body)),
                // ParameterStatus, BackendKeyData: nothing to do with them.
                b'S' | b'K' => {}
                t => return Ok(t),
            }
        }
    }

    fn expect(&mut self, want: u8) -> Result<()> {
        let got = self.recv()?;
        if got != want {
            bail!(
                "unexpected message '{}' from the server (wanted '{}')",
                got as char,
                want as char
            );
        }
        Ok(())
    }

    /// One ordinary result set: RowDescription, DataRow*, CommandComplete.
    fn result_set(&mut self) -> Result<Vec<Vec<Option<String>>>> {
        self.expect(b'T')?;
        let mut rows = Vec::new();
        loop {
            match self.recv()? {
                b'D' => rows.push(parse_row(&self.body)?),
                b'C' => return Ok(rows),
                t => bail!("unexpected message '{}' in a result set", t as char),
            }
        }
    }
}

fn cstrings(b: &[u8]) -> impl Iterator<Item = String> + '_ {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// "ERROR: message (DETAIL: ...)" from an ErrorResponse body.
fn error_text(b: &[u8]) -> String {
    let (mut sev, mut msg, mut detail) = (String::new(), String::new(), String::new());
    for f in cstrings(b) {
        let (code, text) = f.split_at(1);
        match code {
            "S" => sev = text.to_string(),
            "M" => msg = text.to_string(),
            "D" => detail = format!(" ({text})"),
            _ => {}
        }
    }
    format!("{sev}: {msg}{detail}")
}

fn parse_row(b: &[u8]) -> Result<Vec<Option<String>>> {
    let bad = || anyhow!("malformed DataRow from the server");
    let n = u16::from_be_bytes(b.get(0..2).ok_or_else(bad)?.try_into()?) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4).ok_or_else(bad)?.try_into()?);
        at += 4;
        if len < 0 {
            row.push(None);
            continue;
        }
        let v = b.get(at..at + len as usize).ok_or_else(bad)?;
        row.push(Some(String::from_utf8_lossy(v).into_owned()));
        at += len as usize;
    }
    Ok(row)
}

/// How often a blocked read wakes up to check for cancellation.
const POLL: Duration = Duration::from_millis(500);
/// The longest silence accepted from the server. A fast checkpoint on a
/// large, busy cluster can take minutes before the first byte.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

fn connect(p: &Params) -> Result<Wire> {
    let timeout = Duration::from_secs(
        env("PGCONNECT_TIMEOUT")
            .and_then(|t| t.parse().ok())
            .unwrap_or(15),
    );
    let stream: Box<dyn Stream> = if p.host.starts_with('/') {
        let path = format!("{}/.s.PGSQL.{}", p.host, p.port);
        let s = UnixStream::connect(&path).with_context(|| format!("cannot connect to {path}"))?;
        s.set_read_timeout(Some(POLL))?;
        Box::new(s)
    } else {
        let addrs = (p.host.as_str(), p.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", p.host))?;
        let mut last = None;
        let mut found = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    found = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let s = found.ok_or_else(|| {
            anyhow!(
                "cannot connect to {}:{}: {}",
                p.host,
                p.port,
                last.map(|e| e.to_string()).unwrap_or_default()
            )
        })?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(POLL))?;
        Box::new(s)
    };
    let mut w = Wire {
        io: BufReader::with_capacity(256 << 10, stream),
        ty: 0,
        body: Vec::new(),
    };
    startup(&mut w, p)?;
    Ok(w)
}

fn startup(w: &mut Wire, p: &Params) -> Result<()> {
    let mut b = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", p.user.as_str()),
        ("replication", "true"),
        ("application_name", "drctl"),
    ] {
        b.extend(k.as_bytes());
        b.push(0);
        b.extend(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    w.send(None, &b)?;
    let need_password = || {
        p.password().ok_or_else(|| {
            anyhow!(
                "the server asks for a password for {}: set password_env in the policy, PGPASSWORD, or a ~/.pgpass line for database 'replication'",
                p.user
            )
        })
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        match w.recv()? {
            b'R' => {
                let code = i32::from_be_bytes(w.body.get(0..4).context("short auth")?.try_into()?);
                match code {
                    0 => {}
                    3 => {
                        let mut m = need_password()?.into_bytes();
                        m.push(0);
                        w.send(Some(b'p'), &m)?;
                    }
                    5 => {
                        let salt: [u8; 4] = w.body.get(4..8).context("short salt")?.try_into()?;
                        let pw = need_password()?;
                        let mut m = postgres_protocol::authentication::md5_hash(
                            p.user.as_bytes(),
                            pw.as_bytes(),
                            salt,
                        )
                        .into_bytes();
                        m.push(0);
                        w.send(Some(b'p'), &m)?;
                    }
                    10 => {
                        if !cstrings(&w.body[4..]).any(|m| m == "SCRAM-SHA-256") {
                            bail!("the server offers no SASL mechanism drctl knows (SCRAM-SHA-256)");
                        }
                        let s = ScramSha256::new(
                            need_password()?.as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        let mut m = b"SCRAM-SHA-256\0".to_vec();
                        m.extend((s.message().len() as i32).to_be_bytes());
                        m.extend(s.message());
                        w.send(Some(b'p'), &m)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().context("SASL continue before start")?;
                        s.update(&w.body[4..]).context("SCRAM exchange failed")?;
                        w.send(Some(b'p'), s.message())?;
                    }
                    12 => {
                        let s = scram.as_mut().context("SASL final before start")?;
                        s.finish(&w.body[4..])
                            .context("the server's SCRAM signature does not verify")?;
                    }
                    c => bail!(
                        "the server asks for an authentication method drctl does not speak ({c}); use scram-sha-256, md5, password or trust for replication in pg_hba.conf"
                    ),
                }
            }
            b'Z' => return Ok(()),
            t => bail!("unexpected message '{}' during startup", t as char),
        }
    }
}

/// UPLOAD_MANIFEST: the parent's manifest as CopyData, then CopyDone, and
/// the command's completion.
fn upload_manifest(w: &mut Wire, manifest: &[u8]) -> Result<()> {
    w.send(Some(b'Q'), b"UPLOAD_MANIFEST\0")?;
    w.expect(b'G')?;
    for chunk in manifest.chunks(64 << 10) {
        w.send(Some(b'd'), chunk)?;
    }
    w.send(Some(b'c'), &[])?;
    loop {
        match w.recv()? {
            b'Z' => return Ok(()),
            b'C' | b'T' | b'D' => {}
            t => bail!("unexpected message '{}' after UPLOAD_MANIFEST", t as char),
        }
    }
}

/// One archive of a running base backup, as the server announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeader {
    /// `base.tar` or `<oid>.tar`.
    pub name: String,
    /// The tablespace's directory on the server; empty for the data directory.
    pub location: String,
    /// The server's backup manifest (`backup_manifest`, plain JSON, never
    /// compressed by the server), sent after the last archive.
    pub is_manifest: bool,
}

/// A base backup in flight. Archives are read in the order the server sends
/// them: `next_archive`, then `Read` until it returns 0, then the next one.
pub struct BaseBackup {
    w: Wire,
    pub start_lsn: String,
    pub timeline: u32,
    next: Option<ArchiveHeader>,
    /// Data of the current archive not yet handed out.
    pending: Vec<u8>,
    at: usize,
    in_archive: bool,
    copy_done: bool,
    /// The server's estimate of what it will send, summed over every
    /// tablespace (BASE_BACKUP's PROGRESS option); None if it sent none.
    pub total_bytes: Option<u64>,
    /// Plain bytes the server has read so far, across all archives, as its
    /// progress messages report them: shared with whoever draws a bar.
    pub done: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// The sum of the tablespace list's size column (kB), if the server
/// filled it in for every row.
fn estimated_total(rows: &[Vec<Option<String>>]) -> Option<u64> {
    rows.iter()
        .map(|r| r.get(2)?.as_deref()?.parse::<u64>().ok())
        .sum::<Option<u64>>()
        .filter(|&kb| kb > 0)
        .map(|kb| kb * 1024)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl BaseBackup {
    /// Connect and start `BASE_BACKUP` with WAL included and a fast checkpoint.
    /// With `zstd` = Some((level, workers)) the server compresses each
    /// archive (PostgreSQL 15+ built with zstd): the archives are then zstd
    /// streams. With `parent` (a backup's `backup_manifest`, PostgreSQL
    /// 17+ with summarize_wal) the backup is incremental on that one: the
    /// manifest goes up with UPLOAD_MANIFEST on this same connection first,
    /// and the server then reads and sends only the blocks changed since.
    pub fn start(
        p: &Params,
        label: &str,
        zstd: Option<(i32, u32)>,
        parent: Option<&[u8]>,
    ) -> Result<BaseBackup> {
        let mut w = connect(p)?;
        if let Some(manifest) = parent {
            upload_manifest(&mut w, manifest).context("UPLOAD_MANIFEST")?;
        }
        let incremental = if parent.is_some() {
            ", INCREMENTAL"
        } else {
            ""
        };
        let compression = match zstd {
            Some((level, workers)) if workers > 1 => {
                format!(
                    ", COMPRESSION 'zstd', COMPRESSION_DETAIL 'level={level},workers={workers}'"
                )
            }
            Some((level, _)) => format!(", COMPRESSION 'zstd', COMPRESSION_DETAIL 'level={level}'"),
            None => String::new(),
        };
        // WAIT false: the server does not wait for its stop segment to be
        // archived, which with a failing archive_command is forever; drctl
        // waits for the archive itself, bounded by archive_timeout.
        // The server's manifest (size and CRC32C of every file it sent)
        // comes last, so that pg_verifybackup can prove a restored
        // directory; see CHECKSUMS.
        let cmd = format!(
            "BASE_BACKUP (LABEL {}, CHECKPOINT 'fast', WAL true, WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS '{CHECKSUMS}', TABLESPACE_MAP false, PROGRESS true{incremental}{compression})",
            quote(label)
        );
        let mut q = cmd.into_bytes();
        q.push(0);
        w.send(Some(b'Q'), &q)?;
        let start = w.result_set().context("BASE_BACKUP")?;
        let (start_lsn, timeline) = match start.first().map(|r| r.as_slice()) {
            Some([Some(lsn), Some(tli), ..]) => (lsn.clone(), tli.parse()?),
            _ => bail!("BASE_BACKUP sent no start position"),
        };
        let tablespaces = w.result_set().context("BASE_BACKUP tablespaces")?;
        w.expect(b'H')?;
        let mut b = BaseBackup {
            w,
            start_lsn,
            timeline,
            next: None,
            pending: Vec::new(),
            at: 0,
            in_archive: false,
            copy_done: false,
            total_bytes: estimated_total(&tablespaces),
            done: Default::default(),
        };
        b.fill()?;
        Ok(b)
    }

    /// Read the next CopyData payload into `pending`, or note where the
    /// current archive ends.
    fn fill(&mut self) -> Result<()> {
        while !self.copy_done {
            match self.w.recv()? {
                b'd' => {
                    let (kind, rest) = self.w.body.split_first().context("empty CopyData")?;
                    match kind {
                        b'n' => {
                            let mut parts = rest
                                .split(|&c| c == 0)
                                .map(|p| String::from_utf8_lossy(p).into_owned());
                            let header = ArchiveHeader {
                                name: parts.next().unwrap_or_default(),
                                location: parts.next().unwrap_or_default(),
                                is_manifest: false,
                            };
                            self.in_archive = false;
                            self.next = Some(header);
                            return Ok(());
                        }
                        b'd' => {
                            if !self.in_archive {
                                bail!("archive data before any archive header");
                            }
                            // Taken over, not copied: past the kind byte.
                            std::mem::swap(&mut self.pending, &mut self.w.body);
                            self.at = 1;
                            return Ok(());
                        }
                        b'p' => {
                            if let Some(n) = rest.get(..8) {
                                let n = u64::from_be_bytes(n.try_into()?);
                                self.done.store(n, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        b'm' => {
                            self.in_archive = false;
                            self.next = Some(ArchiveHeader {
                                name: "backup_manifest".into(),
                                location: String::new(),
                                is_manifest: true,
                            });
                            return Ok(());
                        }
                        k => bail!("unknown base backup message '{}'", *k as char),
                    }
                }
                b'c' => {
                    self.copy_done = true;
                    self.in_archive = false;
                }
                t => bail!("unexpected message '{}' in the base backup", t as char),
            }
        }
        Ok(())
    }

    /// Move on to the next archive; None once the server has sent them all.
    pub fn next_archive(&mut self) -> Result<Option<ArchiveHeader>> {
        // Whatever the caller left of the current archive is skipped.
        let mut sink = [0u8; 64 << 10];
        while self.in_archive {
            let _skipped = self.read(&mut sink)?;
        }
        match self.next.take() {
            Some(h) => {
                self.in_archive = true;
                self.pending.clear();
                self.at = 0;
                Ok(Some(h))
            }
            None => Ok(None),
        }
    }

    /// After the last archive: the stop position the server reports.
    pub fn finish(mut self) -> Result<String> {
        while self.next_archive()?.is_some() {}
        let end = self.w.result_set().context("BASE_BACKUP end position")?;
        let stop = match end.first().map(|r| r.as_slice()) {
            Some([Some(lsn), ..]) => lsn.clone(),
            _ => bail!("BASE_BACKUP sent no end position"),
        };
        loop {
            match self.w.recv()? {
                b'Z' => break,
                b'C' | b'T' | b'D' => {}
                t => bail!("unexpected message '{}' after the base backup", t as char),
            }
        }
        let _ = self.w.send(Some(b'X'), &[]);
        Ok(stop)
    }
}

impl Read for BaseBackup {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.at);
                buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if !self.in_archive {
                // The server ends each archive with tar's own end marker.
                return Ok(0);
            }
            self.fill().map_err(io::Error::other)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_every_tablespace_or_none() {
        let row = |size: Option<&str>| vec![None, None, size.map(String::from)];
        assert_eq!(
            estimated_total(&[row(Some("100")), row(Some("28"))]),
            Some(128 * 1024)
        );
        assert_eq!(estimated_total(&[row(Some("100")), row(None)]), None);
        assert_eq!(estimated_total(&[]), None);
    }

    #[test]
    fn pgpass_lines() {
        let text = "# comment\n\
                    db1:5432:*:backup:s3cret\n\
                    *:*:replication:repl:with\\:colon\n\
                    localhost:5433:replication:postgres:pw\n";
        assert_eq!(
            pgpass_lookup(text, "db1", 5432, "replication", "backup").as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            pgpass_lookup(text, "anywhere", 1, "replication", "repl").as_deref(),
            Some("with:colon")
        );
        assert_eq!(
            pgpass_lookup(text, "localhost", 5433, "replication", "postgres").as_deref(),
            Some("pw")
        );
        assert_eq!(
            pgpass_lookup(text, "db2", 5432, "replication", "backup"),
            None
        );
    }

    #[test]
    fn error_responses_read_like_libpq() {
        let body =
            b"SERROR\0VERROR\0C42501\0Mmust be superuser or replication role\0Dnot allowed\0\0";
        assert_eq!(
            error_text(body),
            "ERROR: must be superuser or replication role (not allowed)"
        );
    }

    #[test]
    fn data_rows() {
        let mut b = 2u16.to_be_bytes().to_vec();
        b.extend(3i32.to_be_bytes());
        b.extend(b"0/1");
        b.extend((-1i32).to_be_bytes());
        assert_eq!(parse_row(&b).unwrap(), vec![Some("0/1".into()), None]);
        assert!(parse_row(&b[..5]).is_err());
    }
}
