//! A throwaway PostgreSQL server for drills: initdb + postgres of the
//! backup's major version, on a free loopback port, in a temp dir, as the
//! `postgres` OS user when drctl runs as root, with archiving off so a drill
//! can never write into the production archive.
//!
//! It never outlives drctl:
//! - dropped (success, failure, or a cancelled drill unwinding): the server
//!   is stopped and the directory removed, unless kept on purpose;
//! - drctl killed outright: the postmaster is drctl's own child with a
//!   parent-death signal (SIGQUIT: immediate shutdown), and the next drill
//!   removes directories whose drctl process is gone.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

const PREFIX: &str = "drctl-scratch-";

pub struct Scratch {
    dir: PathBuf,
    pub port: u16,
    pub bindir: PathBuf,
    child: Option<Child>,
    /// The server has been handed over (`--keep`): Drop leaves it.
    keep: bool,
    want_keep: bool,
    /// uid/gid of `postgres` when drctl runs as root.
    ids: Option<(u32, u32)>,
}

impl Scratch {
    /// Connection URL for `db` as the scratch superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the server stays after drctl (`--keep`).
    pub fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
            // Cancellation does not cut this short: it is the cleanup.
            let mut poll =
                crate::poll::Poll::every(Duration::from_secs(10), Duration::from_millis(20))
                    .through_cancel();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if poll.next_blocking().is_err() => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => {}
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// uid and gid of the `postgres` user.
fn postgres_ids() -> Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns NULL or a pointer to static storage, read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("drctl runs as root and there is no `postgres` user to run the scratch server as");
    }
    // SAFETY: non-null result of getpwnam.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The directory holding initdb and postgres of `major`.
pub fn server_bindir(major: u32, bindir: Option<&Path>) -> Result<PathBuf> {
    crate::pg::tools::bindir_with(&["postgres", "initdb", "pg_ctl"], major, bindir)
        .map_err(|e| anyhow!("{e:#}; or pass --scratch postgres://..."))
}

/// Remove scratch directories left by drctl processes that no longer exist
/// (killed with SIGKILL: their servers died with them).
pub fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive && !e.path().join("keep").exists() {
            tracing::info!("removing a stale scratch directory {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A server tool run as the cluster owner.
fn owner(program: &Path, ids: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
        c.env("HOME", "/tmp");
    }
    c
}

/// A new, empty scratch directory (owned by `postgres` when we are root).
/// `keep`: the server started in it stays after drctl exits (no
/// parent-death signal; the sweep leaves it alone).
pub fn create(major: u32, bindir: Option<&Path>, keep: bool) -> Result<Scratch> {
    sweep_stale();
    let bindir = server_bindir(major, bindir)?;
    let dir = std::env::temp_dir().join(format!(
        "{PREFIX}{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let s = Scratch {
        dir: dir.clone(),
        port: 0,
        bindir,
        child: None,
        keep: false,
        want_keep: keep,
        ids: if crate::pg::tools::is_root() {
            Some(postgres_ids()?)
        } else {
            None
        },
    };
    if keep {
        std::fs::write(dir.join("keep"), b"")?;
    }
    if let Some((uid, gid)) = s.ids {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to postgres", dir.display()))?;
    }
    Ok(s)
}

/// initdb and start a fresh scratch server of `major`.
pub async fn start(major: u32, bindir: Option<&Path>, keep: bool) -> Result<Scratch> {
    let mut s = create(major, bindir, keep)?;
    let data = s.data_dir();
    let out = owner(&s.bindir.join("initdb"), s.ids)
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .stdin(Stdio::null())
        .output()
        .context("cannot run initdb")?;
    if !out.status.success() {
        bail!(
            "initdb of the scratch server failed: {}",
            crate::pg::stderr_summary(&out.stderr)
        );
    }
    s.launch(true).await?;
    Ok(s)
}

impl Scratch {
    /// Where the cluster lives: `<dir>/data`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Start postgres on `data_dir()` as drctl's child (archiving off, on a
    /// free loopback port). `wait`: until it accepts queries; a cluster in
    /// recovery is left to the caller to wait for.
    pub async fn launch(&mut self, wait: bool) -> Result<()> {
        let data = self.data_dir();
        let ids = self.ids;
        let keep = self.want_keep;
        // A port can be taken between choosing and binding: retry a few times.
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let logpath = self.dir.join("server.log");
            let logfile = std::fs::File::create(&logpath)?;
            if let Some((uid, gid)) = ids {
                let _ = std::os::unix::fs::chown(&logpath, Some(uid), Some(gid));
            }
            let mut cmd = owner(&self.bindir.join("postgres"), ids);
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", self.dir.display()))
                // Never archive into anyone's repository; speed over durability.
                .args(["-c", "archive_mode=off"])
                .args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "logging_collector=off"])
                .stdin(Stdio::null())
                .stdout(logfile.try_clone()?)
                .stderr(logfile);
            if !keep {
                // SAFETY: prctl in the child between fork and exec only.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                        Ok(())
                    });
                }
            } else {
                // Its own process group: a Ctrl-C at drctl's terminal must
                // not stop it.
                cmd.process_group(0);
            }
            let child = cmd.spawn().context("cannot start the scratch postgres")?;
            self.child = Some(child);
            self.port = port;
            let r = if wait {
                wait_up(self, true).await
            } else {
                wait_up(self, false).await
            };
            match r {
                Ok(()) => {
                    tracing::info!(port, dir = %self.dir.display(), "scratch server started");
                    if keep {
                        // Ours no more: the server outlives this process.
                        self.child = None;
                        self.keep = true;
                    }
                    return Ok(());
                }
                Err(e) => {
                    last_err = format!("{e:#}");
                    if let Some(mut c) = self.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    let log = self.log();
                    if !log.contains("could not bind") && !log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        bail!("the scratch server did not start: {last_err}")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Whether the server process is still running (always true once kept).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => self.keep,
        }
    }
}

fn last_lines(log: &str) -> String {
    log.lines().rev().take(3).collect::<Vec<_>>().join(" / ")
}

/// Until the postmaster accepts TCP connections and, with `answering`,
/// also answers a query as postgres (or dies).
async fn wait_up(s: &mut Scratch, answering: bool) -> Result<()> {
    let (what, pause) = if answering {
        ("ready", Duration::from_millis(100))
    } else {
        ("listening", Duration::from_millis(50))
    };
    let mut poll = crate::poll::Poll::every(Duration::from_secs(60), pause);
    loop {
        if !s.alive() {
            bail!("exited: {}", last_lines(&s.log()));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .is_ok()
            && (!answering || answers(s).await)
        {
            return Ok(());
        }
        match poll.next().await {
            Ok(()) => {}
            Err(crate::poll::Gave::Up) => bail!("not {what} within 60s"),
            Err(crate::poll::Gave::Cancelled) => bail!("cancelled"),
        }
    }
}

/// `select 1` through psql as the scratch server's superuser.
async fn answers(s: &Scratch) -> bool {
    let psql = if s.bindir.join("psql").is_file() {
        s.bindir.join("psql")
    } else {
        crate::pg::tools::psql().to_path_buf()
    };
    tokio::process::Command::new(psql)
        .args(["-X", "-q", "-w", "-At", "-c", "select 1"])
        .arg(format!("--dbname={}", s.url("postgres")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|st| st.success())
        .unwrap_or(false)
}
