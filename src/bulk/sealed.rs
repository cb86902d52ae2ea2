//! The encrypted export file: NDJSON cut into frames of about 256 KiB, each
//! sealed (AES-256-GCM, the store's data key) with associated data that names the
//! file, the frame's place and whether it is the last, so frames cannot be
//! reordered, moved between files, dropped or cut off without the reader noticing.
//!
//! Layout: `FGEXP001`, then frames `flags(1) || key_id(8, big-endian) ||
//! length(4, big-endian) || sealed`; flag 1 marks the last frame. A file is
//! written to `<name>.part`, flushed to disk and renamed, so a finished name is
//! always a whole file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::store::{Store, StoreError};

const MAGIC: &[u8; 8] = b"FGEXP001";
/// Plaintext bytes per frame: large enough that sealing costs nothing per
/// resource, small enough that a reader holds little.
const FRAME: usize = 256 * 1024;
/// A frame longer than this is not one this writer made.
const MAX_SEALED: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("export file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the export file {0} is damaged or incomplete")]
    Damaged(String),
}

fn aad(name: &str, index: u64, last: bool) -> Vec<u8> {
    format!("export-file/{name}/{index}/{}", u8::from(last)).into_bytes()
}

/// Creates `dir` (and its parents) readable by this user only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// A new file readable by this user only.
fn private_file(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// Writes one file.
pub struct SealedWriter {
    store: Store,
    name: String,
    part: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    frames: u64,
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Lines written.
    pub lines: u64,
}

impl SealedWriter {
    /// A new file `name` in `dir` (created if missing).
    pub fn create(store: &Store, dir: &Path, name: &str) -> Result<SealedWriter, SealedError> {
        private_dir(dir)?;
        let path = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let mut out = BufWriter::new(private_file(&part)?);
        out.write_all(MAGIC)?;
        Ok(SealedWriter {
            store: store.clone(),
            name: name.to_string(),
            part,
            path,
            out,
            buf: Vec::with_capacity(FRAME + 16 * 1024),
            frames: 0,
            bytes: 0,
            lines: 0,
        })
    }

    /// Appends one line (a resource's JSON, without a line break).
    pub fn line(&mut self, json: &[u8]) -> Result<(), SealedError> {
        self.buf.extend_from_slice(json);
        self.buf.push(b'\n');
        self.bytes += json.len() as u64 + 1;
        self.lines += 1;
        if self.buf.len() >= FRAME {
            self.frame(false)?;
        }
        Ok(())
    }

    fn frame(&mut self, last: bool) -> Result<(), SealedError> {
        let (key_id, sealed) = self
            .store
            .export_seal(&self.buf, &aad(&self.name, self.frames, last))?;
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|l| *l <= MAX_SEALED)
            .ok_or_else(|| SealedError::Damaged(self.name.clone()))?;
        self.out.write_all(&[u8::from(last)])?;
        self.out.write_all(&key_id.to_be_bytes())?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&sealed)?;
        self.frames += 1;
        self.buf.clear();
        Ok(())
    }

    /// Seals the rest, flushes the file to disk and gives it its name.
    pub fn finish(mut self) -> Result<(), SealedError> {
        self.frame(true)?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        std::fs::rename(&self.part, &self.path)?;
        Ok(())
    }

    /// Removes the unfinished file.
    pub fn abandon(self) {
        let part = self.part.clone();
        drop(self);
        let _ = std::fs::remove_file(part);
    }
}

/// Reads a file back, frame by frame.
pub struct SealedReader {
    store: Store,
    name: String,
    input: BufReader<File>,
    frames: u64,
    done: bool,
}

impl SealedReader {
    pub fn open(store: &Store, dir: &Path, name: &str) -> Result<SealedReader, SealedError> {
        let mut input = BufReader::new(File::open(dir.join(name))?);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| SealedError::Damaged(name.to_string()))?;
        if &magic != MAGIC {
            return Err(SealedError::Damaged(name.to_string()));
        }
        Ok(SealedReader {
            store: store.clone(),
            name: name.to_string(),
            input,
            frames: 0,
            done: false,
        })
    }

    /// The next frame's plaintext; None after the last frame. A file that ends
    /// before its last frame, or goes on after it, is damaged.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, SealedError> {
        let damaged = || SealedError::Damaged(self.name.clone());
        let mut head = [0u8; 13];
        if self.done {
            return match self.input.read(&mut head[..1])? {
                0 => Ok(None),
                _ => Err(damaged()),
            };
        }
        self.input.read_exact(&mut head).map_err(|_| damaged())?;
        let last = match head[0] {
            0 => false,
            1 => true,
            _ => return Err(damaged()),
        };
        let mut key = [0u8; 8];
        key.copy_from_slice(&head[1..9]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[9..13]);
        let len = u32::from_be_bytes(len);
        if len > MAX_SEALED {
            return Err(damaged());
        }
        let mut sealed = vec![0u8; len as usize];
        self.input.read_exact(&mut sealed).map_err(|_| damaged())?;
        let plain = self
            .store
            .export_open(
                i64::from_be_bytes(key),
                &sealed,
                &aad(&self.name, self.frames, last),
            )
            .map_err(|_| damaged())?;
        self.frames += 1;
        self.done = last;
        Ok(Some(plain))
    }
}
