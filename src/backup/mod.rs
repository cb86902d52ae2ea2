//! `fhirgate backup --out FILE`, `fhirgate backup verify FILE` and `fhirgate
//! restore --from FILE` (DESIGN section 14): a consistent online backup in one
//! file (a tar archive of `manifest.json` and the database's copy: SQLite's file,
//! or PostgreSQL's `pg_dump` custom format), and a restore that proves itself.
//!
//! The rows stay as the database keeps them: resource bodies and AuditEvents
//! sealed under data keys that are wrapped by the master key, search values
//! blinded. The manifest names the rows and digest of every table, the SHA-256 of
//! the data, and the key check (a constant sealed with the master key: it tells
//! the right key from a wrong one, and reveals neither). A restore refuses a
//! wrong master key before it touches the target, refuses a target whose
//! fhirgate tables hold rows, and then verifies: every table's rows and digest,
//! every sealed body opened with the configured key, the audit chain.
//!
//! Architecture invariant: the master key is never written into a backup.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::store::backup as db;
use crate::store::{Backend, SealedCount, Store, StoreError, TableDigest};

pub const FORMAT: &str = "fhirgate-backup/1";
const MANIFEST: &str = "manifest.json";

/// What a backup holds, and how to check it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    /// `sqlite` or `postgres`: a backup restores into the same backend.
    pub backend: String,
    pub created: String,
    pub fhirgate_version: String,
    /// The data's name in the archive.
    pub data: String,
    pub data_bytes: u64,
    pub data_sha256: String,
    /// The key check (base64): the master key that opens it is the one needed.
    pub key_check: Option<String>,
    /// Rows and digest of every table (the digest is the backend's: see
    /// store::backup).
    pub tables: BTreeMap<String, TableDigest>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    File(String),
    #[error("{0}")]
    Refused(String),
    /// The backup or the restored data is not what the manifest says.
    #[error("verification failed: {0}")]
    Mismatch(String),
}

fn file_error(what: &str, e: impl std::fmt::Display) -> BackupError {
    BackupError::File(format!("{what}: {e}"))
}

/// What a verification or restore proved.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proof {
    pub tables: usize,
    pub rows: i64,
    /// Resource versions and AuditEvents opened with the configured key (not
    /// for `backup verify` of a PostgreSQL dump, which is not restored).
    pub opened: Option<SealedCount>,
    /// Audit chain links verified.
    pub chain_verified: Option<i64>,
}

fn backend_name(url: &str) -> Result<Backend, BackupError> {
    if url.starts_with("sqlite://") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        // Not the URL itself: it may carry a password.
        Err(BackupError::Refused(
            "the database URL is neither sqlite://FILE nor postgres://...".into(),
        ))
    }
}

fn sqlite_path(url: &str) -> PathBuf {
    PathBuf::from(url.trim_start_matches("sqlite://"))
}

fn label(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String), BackupError> {
    let mut f = std::fs::File::open(path).map_err(|e| file_error("read the data", e))?;
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| file_error("read the data", e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finish())))
}

/// A folder for the work, beside `near` (the same file system: large copies
/// are renamed, not copied), removed when dropped.
fn work_dir(near: &Path) -> Result<tempfile::TempDir, BackupError> {
    let parent = near
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".fhirgate-backup-")
        .tempdir_in(parent)
        .map_err(|e| file_error("make a work folder", e))
}

/// Makes a backup of the database at `db_url` in `out` (refused if it exists),
/// while the server may go on serving.
pub fn backup(db_url: &str, out: &Path) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(BackupError::Refused(format!(
            "{} exists; a backup never overwrites a file",
            out.display()
        )));
    }
    let backend = backend_name(db_url)?;
    let work = work_dir(out)?;
    let (data_name, snapshot) = match backend {
        Backend::Sqlite => {
            let data = work.path().join("data.sqlite");
            db::sqlite_snapshot(&sqlite_path(db_url), &data)?;
            ("data.sqlite", db::sqlite_contents(&data)?)
        }
        Backend::Postgres => {
            let data = work.path().join("data.pgdump");
            ("data.pgdump", db::pg_dump(db_url, &data)?)
        }
    };
    let data = work.path().join(data_name);
    let (data_bytes, data_sha256) = sha256_file(&data)?;
    use base64::Engine as _;
    let manifest = Manifest {
        format: FORMAT.into(),
        backend: label(backend).into(),
        created: crate::fhir::instant(crate::fhir::now_micros()),
        fhirgate_version: env!("CARGO_PKG_VERSION").into(),
        data: data_name.into(),
        data_bytes,
        data_sha256,
        key_check: snapshot
            .key_check
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
        tables: snapshot.tables,
    };
    let part = work.path().join("backup.tar");
    {
        let file = std::fs::File::create(&part).map_err(|e| file_error("write the backup", e))?;
        let mut tar = tar::Builder::new(file);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| file_error("manifest", e))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, MANIFEST, json.as_slice())
            .map_err(|e| file_error("write the backup", e))?;
        tar.append_path_with_name(&data, data_name)
            .map_err(|e| file_error("write the backup", e))?;
        let file = tar
            .into_inner()
            .map_err(|e| file_error("write the backup", e))?;
        file.sync_all()
            .map_err(|e| file_error("write the backup", e))?;
    }
    set_private(&part);
    std::fs::rename(&part, out).map_err(|e| file_error("write the backup", e))?;
    Ok(manifest)
}

#[cfg(unix)]
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn set_private(_: &Path) {}

/// Unpacks a backup into `work`: its manifest, and the data checked against
/// the manifest's size and SHA-256.
fn unpack(file: &Path, work: &Path) -> Result<(Manifest, PathBuf), BackupError> {
    let f = std::fs::File::open(file).map_err(|e| file_error("read the backup", e))?;
    let mut archive = tar::Archive::new(f);
    let mut manifest: Option<Manifest> = None;
    let entries = archive
        .entries()
        .map_err(|e| file_error("read the backup", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| file_error("read the backup", e))?;
        let name = entry
            .path()
            .map_err(|e| file_error("read the backup", e))?
            .to_string_lossy()
            .to_string();
        match name.as_str() {
            MANIFEST => {
                let mut json = Vec::new();
                entry
                    .read_to_end(&mut json)
                    .map_err(|e| file_error("read the manifest", e))?;
                manifest = Some(
                    serde_json::from_slice(&json)
                        .map_err(|e| file_error("the manifest does not read", e))?,
                );
            }
            "data.sqlite" | "data.pgdump" if entry.header().entry_type().is_file() => {
                entry
                    .unpack(work.join(&name))
                    .map_err(|e| file_error("unpack the data", e))?;
            }
            other => {
                return Err(BackupError::Mismatch(format!(
                    "the backup holds `{other}`, which fhirgate never writes"
                )))
            }
        }
    }
    let manifest =
        manifest.ok_or_else(|| BackupError::Mismatch("the backup has no manifest".into()))?;
    if manifest.format != FORMAT {
        return Err(BackupError::Mismatch(format!(
            "the backup's format is `{}`, not {FORMAT}",
            manifest.format
        )));
    }
    let expected = match manifest.backend.as_str() {
        "sqlite" => "data.sqlite",
        "postgres" => "data.pgdump",
        other => {
            return Err(BackupError::Mismatch(format!(
                "the backup's backend `{}` is not one fhirgate knows",
                crate::fhir::types::truncate(other, 40)
            )))
        }
    };
    if manifest.data != expected {
        return Err(BackupError::Mismatch(format!(
            "a {} backup's data is {expected}",
            manifest.backend
        )));
    }
    let data = work.join(expected);
    if !data.is_file() {
        return Err(BackupError::Mismatch(format!(
            "the backup lacks its data ({})",
            manifest.data
        )));
    }
    let (bytes, sha) = sha256_file(&data)?;
    if bytes != manifest.data_bytes || sha != manifest.data_sha256 {
        return Err(BackupError::Mismatch(
            "the data's size or SHA-256 differs from the manifest's (the file is damaged)".into(),
        ));
    }
    Ok((manifest, data))
}

/// The master key must open the backup's key check: said before anything is
/// restored.
fn check_key(manifest: &Manifest, master: &MasterKey) -> Result<(), BackupError> {
    use base64::Engine as _;
    let Some(check) = &manifest.key_check else {
        return Err(BackupError::Mismatch(
            "the manifest has no key check: the master key cannot be checked before restoring"
                .into(),
        ));
    };
    let check = base64::engine::general_purpose::STANDARD
        .decode(check)
        .map_err(|_| BackupError::Mismatch("the manifest's key check does not read".into()))?;
    master.verify(&check).map_err(|_| {
        BackupError::Refused(
            "the configured master key is not the one this backup's data is sealed under: nothing was restored; configure the master key of the database the backup was made of".into(),
        )
    })
}

fn compare(
    want: &BTreeMap<String, TableDigest>,
    got: &BTreeMap<String, TableDigest>,
) -> Result<i64, BackupError> {
    for (t, w) in want {
        match got.get(t) {
            None => return Err(BackupError::Mismatch(format!("table {t} is missing"))),
            Some(g) if g.rows != w.rows => {
                return Err(BackupError::Mismatch(format!(
                    "table {t} has {} rows, the manifest says {}",
                    g.rows, w.rows
                )))
            }
            Some(g) if g.digest != w.digest => {
                return Err(BackupError::Mismatch(format!(
                    "the rows of table {t} differ from the manifest's"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(t) = got.keys().find(|t| !want.contains_key(*t)) {
        return Err(BackupError::Mismatch(format!(
            "table {t} is not in the manifest"
        )));
    }
    Ok(want.values().map(|d| d.rows).sum())
}

/// Opens every sealed body and verifies the audit chain of the database at
/// `url` with `master`.
fn prove(url: &str, master: &MasterKey) -> Result<(SealedCount, i64), BackupError> {
    let store = Store::connect(url, 2, std::time::Duration::from_secs(30))?;
    store.unlock(master).map_err(|e| match e {
        StoreError::Keys(_) => {
            BackupError::Refused("the configured master key does not open this data's keys".into())
        }
        other => other.into(),
    })?;
    let opened = store.open_every_body()?;
    let verdict = crate::audit::chain::verify(
        &store,
        &crate::audit::chain::VerifyOptions {
            checkpoint_file: None,
            public_key_pem: None,
        },
    )
    .map_err(|e| BackupError::Mismatch(format!("the audit chain could not be verified: {e}")))?;
    if let Some((at, why)) = verdict.broken {
        return Err(BackupError::Mismatch(format!(
            "the audit chain is broken at position {at}: {why}"
        )));
    }
    Ok((opened, verdict.verified))
}

/// Checks a backup without restoring it: the data against the manifest; for a
/// SQLite backup also every table's digest, every sealed body opened with
/// `master`, and the audit chain (on a copy); a PostgreSQL dump is listed.
pub fn verify(file: &Path, master: &MasterKey) -> Result<(Manifest, Proof), BackupError> {
    let work = work_dir(file)?;
    let (manifest, data) = unpack(file, work.path())?;
    check_key(&manifest, master)?;
    let proof = match manifest.backend.as_str() {
        "sqlite" => {
            let rows = compare(&manifest.tables, &db::sqlite_digests(&data)?)?;
            let (opened, chain) = prove(&format!("sqlite://{}", data.display()), master)?;
            Proof {
                tables: manifest.tables.len(),
                rows,
                opened: Some(opened),
                chain_verified: Some(chain),
            }
        }
        "postgres" => {
            let listed = db::pg_dump_lists(&data)?;
            if listed < manifest.tables.len() {
                return Err(BackupError::Mismatch(format!(
                    "the dump lists the data of {listed} tables; the manifest names {}",
                    manifest.tables.len()
                )));
            }
            Proof {
                tables: manifest.tables.len(),
                rows: manifest.tables.values().map(|d| d.rows).sum(),
                opened: None,
                chain_verified: None,
            }
        }
        other => {
            return Err(BackupError::Mismatch(format!(
                "the backup's backend `{other}` is not one fhirgate knows"
            )))
        }
    };
    Ok((manifest, proof))
}

/// Restores a backup into the database at `db_url` (of the backup's backend;
/// a SQLite file that does not exist yet, or whose fhirgate tables are empty;
/// a PostgreSQL database that exists and whose fhirgate tables, if any, are
/// empty), then proves it.
pub fn restore(
    file: &Path,
    db_url: &str,
    master: &MasterKey,
) -> Result<(Manifest, Proof), BackupError> {
    let backend = backend_name(db_url)?;
    let work = match backend {
        Backend::Sqlite => work_dir(&sqlite_path(db_url))?,
        Backend::Postgres => work_dir(file)?,
    };
    let (manifest, data) = unpack(file, work.path())?;
    if manifest.backend != label(backend) {
        return Err(BackupError::Refused(format!(
            "this is a {} backup; it restores into a {} database",
            manifest.backend, manifest.backend
        )));
    }
    check_key(&manifest, master)?;
    let tables: Vec<String> = manifest.tables.keys().cloned().collect();
    let refuse = |full: Vec<String>| {
        if full.is_empty() {
            Ok(())
        } else {
            Err(BackupError::Refused(format!(
                "the target database holds data (tables {}); a restore goes into an empty database only",
                full.join(", ")
            )))
        }
    };
    let restored = match backend {
        Backend::Sqlite => {
            let target = sqlite_path(db_url);
            if target.exists() {
                // Every table of the file, fhirgate's or not: the file is replaced.
                refuse(db::sqlite_tables_with_rows(&target, &[])?)?;
                for suffix in ["", "-wal", "-shm"] {
                    let p = PathBuf::from(format!("{}{suffix}", target.display()));
                    let _ = std::fs::remove_file(p);
                }
            }
            std::fs::rename(&data, &target)
                .or_else(|_| std::fs::copy(&data, &target).map(|_| ()))
                .map_err(|e| file_error("write the restored database", e))?;
            set_private(&target);
            db::sqlite_digests(&target)?
        }
        Backend::Postgres => {
            refuse(db::pg_tables_with_rows(db_url, &tables)?)?;
            db::pg_restore(db_url, &data)?;
            db::pg_digests(db_url)?
        }
    };
    let rows = compare(&manifest.tables, &restored)?;
    let (opened, chain) = prove(db_url, master)?;
    let proof = Proof {
        tables: manifest.tables.len(),
        rows,
        opened: Some(opened),
        chain_verified: Some(chain),
    };
    Ok((manifest, proof))
}
