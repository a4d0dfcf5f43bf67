//! Streaming stages between a source and a repository object.
//!
//! encode: plain -> sha256(plain) -> zstd (multithreaded) -> age -> sha256(stored) -> object
//! decode: object -> sha256(stored) -> age -> zstd -> sha256(plain) -> sink
//!
//! Blocking code, run on a blocking thread. Memory is bounded by the zstd
//! window and worker buffers, age's 64 KiB chunks and one copy buffer.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::manifest::ObjectEntry;
use crate::repo::ObjectWriter;

const BUF: usize = 1 << 20;

/// How much plaintext the decoder withholds from its sink until every
/// checksum matched. pg_restore cannot finish (and so cannot commit) without
/// the end of its archive, so a mismatch found at the very end still aborts
/// before anything is committed.
pub const HOLDBACK: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub plain_bytes: u64,
    pub plain_sha256: String,
    pub stored_bytes: u64,
    pub stored_sha256: String,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    n: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            n: 0,
        }
    }

    pub fn finish(self) -> (u64, String) {
        (self.n, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

pub fn parse_recipients(recipients: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    recipients
        .iter()
        .map(|r| {
            r.parse::<age::x25519::Recipient>()
                .map_err(|e| anyhow::anyhow!("'{r}' is not an age public key: {e}"))
        })
        .collect()
}

pub struct EncodeOptions<'a> {
    pub level: i32,
    pub threads: u32,
    pub recipients: &'a [age::x25519::Recipient],
}

/// Stream `src` into `dst`. `progress` is told the plain bytes read so far
/// and returns false to cancel. `before_commit` runs after the last byte is
/// written and before the object is made visible; its error aborts the
/// object. On any error the writer is dropped unfinished, which aborts it.
pub fn encode(
    src: &mut dyn Read,
    dst: Box<dyn ObjectWriter>,
    opts: &EncodeOptions<'_>,
    progress: &dyn Fn(u64) -> bool,
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<Digests> {
    let stored = HashWriter {
        inner: dst,
        hasher: Sha256::new(),
        n: 0,
    };
    let encryptor =
        age::Encryptor::with_recipients(opts.recipients.iter().map(|r| r as &dyn age::Recipient))
            .context("no age recipients")?;
    let age_w = encryptor
        .wrap_output(stored)
        .context("cannot start age encryption")?;
    let mut z = zstd::stream::write::Encoder::new(age_w, opts.level).context("zstd init")?;
    if opts.threads > 1 {
        z.multithread(opts.threads).context("zstd workers")?;
    }
    z.include_checksum(true)?;

    let mut plain = HashReader::new(src);
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the source stream"),
        };
        z.write_all(&buf[..n])
            .context("writing to the repository")?;
        if !progress(plain.n) {
            bail!("interrupted");
        }
    }
    let age_w = z.finish().context("finishing zstd")?;
    let stored = age_w.finish().context("finishing age")?;
    let HashWriter {
        inner: dst,
        hasher,
        n: stored_bytes,
    } = stored;
    let stored_sha256 = hex::encode(hasher.finalize());
    let (plain_bytes, plain_sha256) = plain.finish();
    before_commit()?;
    let size = dst.finish().context("committing the object")?;
    if size != stored_bytes {
        bail!("repository stored {size} bytes but {stored_bytes} were written");
    }
    Ok(Digests {
        plain_bytes,
        plain_sha256,
        stored_bytes,
        stored_sha256,
    })
}

/// Load X25519 identities from an age identity file (`age-keygen` format).
pub fn load_identities(path: &Path) -> Result<Vec<age::x25519::Identity>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::error::usage(format!("cannot read identity file {}: {e}", path.display()))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            if m.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "identity file is readable by group/others; chmod 600 it");
            }
        }
    }
    let ids: Vec<age::x25519::Identity> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.parse::<age::x25519::Identity>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            crate::error::usage(format!(
                "{} is not an age identity file (expected AGE-SECRET-KEY-1... lines)",
                path.display()
            ))
        })?;
    if ids.is_empty() {
        return Err(crate::error::usage(format!(
            "{} holds no age identity",
            path.display()
        )));
    }
    Ok(ids)
}

/// Withholds the last `HOLDBACK` bytes written until `release`.
pub struct Holdback<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Holdback<W> {
    pub fn new(inner: W) -> Self {
        Holdback {
            inner,
            buf: Vec::with_capacity(2 * HOLDBACK),
        }
    }

    pub fn release(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Holdback<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 2 * HOLDBACK {
            let cut = self.buf.len() - HOLDBACK;
            self.inner.write_all(&self.buf[..cut])?;
            self.buf.drain(..cut);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a decode failed, so callers can word the error for the user.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the identity does not match any recipient of this object")]
    WrongKey,
    #[error("{0}")]
    Corrupt(String),
    #[error("the consumer stopped reading: {0}")]
    Sink(io::Error),
    #[error("{0}")]
    Io(io::Error),
}

/// Stream an object to `sink`, checking sizes and sha256 of stored and plain
/// bytes against the manifest. The final `HOLDBACK` bytes reach the sink only
/// after every check passed. With `drain_after_sink_closes`, a sink that
/// stops early (pg_restore --list) is fine: the rest is still read and checked.
pub fn decode(
    src: Box<dyn Read + Send>,
    identities: &[age::x25519::Identity],
    expect: &ObjectEntry,
    sink: &mut dyn Write,
    drain_after_sink_closes: bool,
    progress: &dyn Fn(u64),
) -> Result<Digests, DecodeError> {
    let mut stored = HashReader::new(src);
    let plain_digest;
    {
        let decryptor = age::Decryptor::new(&mut stored).map_err(|e| match e {
            age::DecryptError::Io(e) => DecodeError::Io(e),
            other => DecodeError::Corrupt(format!("not an age file: {other}")),
        })?;
        let age_r = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => DecodeError::WrongKey,
                age::DecryptError::Io(e) => DecodeError::Io(e),
                other => DecodeError::Corrupt(format!("age header: {other}")),
            })?;
        let z = zstd::stream::read::Decoder::new(age_r).map_err(DecodeError::Io)?;
        let mut plain = HashReader::new(z);
        let mut held = Holdback::new(&mut *sink);
        let mut sink_open = true;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // age reports a failed chunk tag as InvalidData; zstd reports
                // a bad frame or checksum as an io error too.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData
                            | io::ErrorKind::Other
                            | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Err(DecodeError::Corrupt(format!(
                        "at plain byte {}: {e}",
                        plain.n
                    )))
                }
                Err(e) => return Err(DecodeError::Io(e)),
            };
            if sink_open {
                if let Err(e) = held.write_all(&buf[..n]) {
                    if drain_after_sink_closes && e.kind() == io::ErrorKind::BrokenPipe {
                        sink_open = false;
                    } else {
                        return Err(DecodeError::Sink(e));
                    }
                }
            }
            progress(plain.n);
        }
        let (plain_bytes, plain_sha256) = plain.finish();
        plain_digest = (plain_bytes, plain_sha256, held);
    }
    let (plain_bytes, plain_sha256, held) = plain_digest;
    // Anything after age's final chunk is tampering too.
    let mut rest = [0u8; 1];
    if stored.read(&mut rest).map_err(DecodeError::Io)? != 0 {
        return Err(DecodeError::Corrupt(
            "trailing bytes after the end of the age stream".into(),
        ));
    }
    let (stored_bytes, stored_sha256) = stored.finish();
    let got = Digests {
        plain_bytes,
        plain_sha256,
        stored_bytes,
        stored_sha256,
    };
    if got.stored_bytes != expect.stored_bytes || got.stored_sha256 != expect.stored_sha256 {
        return Err(DecodeError::Corrupt(format!(
            "stored bytes do not match the manifest (size {} vs {}, sha256 {} vs {})",
            got.stored_bytes, expect.stored_bytes, got.stored_sha256, expect.stored_sha256
        )));
    }
    if got.plain_bytes != expect.plain_bytes || got.plain_sha256 != expect.plain_sha256 {
        return Err(DecodeError::Corrupt(format!(
            "decrypted data does not match the manifest (size {} vs {}, sha256 {} vs {})",
            got.plain_bytes, expect.plain_bytes, got.plain_sha256, expect.plain_sha256
        )));
    }
    match held.release() {
        Ok(_) => {}
        Err(e) if drain_after_sink_closes && e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(DecodeError::Sink(e)),
    }
    Ok(got)
}

/// Hash a stored object without any key: size and sha256 only.
pub fn hash_stored(src: Box<dyn Read + Send>) -> io::Result<(u64, String)> {
    let mut r = HashReader::new(src);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use std::sync::{Arc, Mutex};

    /// An in-memory ObjectWriter for unit tests of the pure stages only.
    struct Mem(Arc<Mutex<Vec<u8>>>);
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl ObjectWriter for Mem {
        fn finish(self: Box<Self>) -> Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }

    fn roundtrip_setup(data: &[u8]) -> (Vec<u8>, Digests, age::x25519::Identity) {
        let id = age::x25519::Identity::generate();
        let store = Arc::new(Mutex::new(Vec::new()));
        let recips = [id.to_public()];
        let d = encode(
            &mut &data[..],
            Box::new(Mem(store.clone())),
            &EncodeOptions {
                level: 3,
                threads: 2,
                recipients: &recips,
            },
            &|_| true,
            &mut || Ok(()),
        )
        .unwrap();
        let stored = store.lock().unwrap().clone();
        (stored, d, id)
    }

    fn entry(d: &Digests) -> ObjectEntry {
        ObjectEntry {
            name: "data".into(),
            key: "k".into(),
            plain_bytes: d.plain_bytes,
            plain_sha256: d.plain_sha256.clone(),
            stored_bytes: d.stored_bytes,
            stored_sha256: d.stored_sha256.clone(),
        }
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn round_trip_is_exact() {
        let data = sample(3_000_000);
        let (stored, d, id) = roundtrip_setup(&data);
        assert_eq!(d.plain_bytes, data.len() as u64);
        assert!(d.stored_bytes < d.plain_bytes, "compressed");
        let mut out = Vec::new();
        let got = decode(
            Box::new(io::Cursor::new(stored)),
            &[id],
            &entry(&d),
            &mut out,
            false,
            &|_| {},
        )
        .unwrap();
        assert_eq!(got, d);
        assert_eq!(out, data);
    }

    #[test]
    fn corrupted_byte_is_detected_and_tail_withheld() {
        let data = sample(2_000_000);
        let (mut stored, d, id) = roundtrip_setup(&data);
        let mid = stored.len() / 2;
        stored[mid] ^= 0x01;
        let mut out = Vec::new();
        let err = decode(
            Box::new(io::Cursor::new(stored)),
            &[id],
            &entry(&d),
            &mut out,
            false,
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
        assert!(
            out.len() < data.len(),
            "sink got the whole stream despite corruption"
        );
    }

    #[test]
    fn manifest_mismatch_withholds_the_tail() {
        let data = sample(1_000_000);
        let (stored, d, id) = roundtrip_setup(&data);
        let mut e = entry(&d);
        e.plain_sha256 = "00".repeat(32);
        let mut out = Vec::new();
        let err = decode(
            Box::new(io::Cursor::new(stored)),
            &[id],
            &e,
            &mut out,
            false,
            &|_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("does not match the manifest"),
            "{err}"
        );
        assert!(
            out.len() <= data.len() - HOLDBACK,
            "tail must be withheld until verified"
        );
    }

    #[test]
    fn wrong_key_is_named() {
        let data = sample(1000);
        let (stored, d, _) = roundtrip_setup(&data);
        let other = age::x25519::Identity::generate();
        let err = decode(
            Box::new(io::Cursor::new(stored)),
            &[other],
            &entry(&d),
            &mut io::sink(),
            false,
            &|_| {},
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::WrongKey), "{err:?}");
    }

    #[test]
    fn identity_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let p = dir.path().join("k.txt");
        std::fs::write(
            &p,
            format!(
                "# created: now\n# public key: {}\n{}\n",
                id.to_public(),
                id.to_string().expose_secret()
            ),
        )
        .unwrap();
        assert_eq!(load_identities(&p).unwrap().len(), 1);
        std::fs::write(&p, "nonsense\n").unwrap();
        assert!(load_identities(&p).is_err());
    }
}
