//! The package cache folder in the layout other FHIR tools share:
//! `<cache>/<id>#<version>/package/...` (an extracted npm tarball). A
//! `<id>#<version>.tgz` dropped in the cache is extracted on first use.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use flate2::read::GzDecoder;

/// Largest package tarball accepted from a registry (the core package is ~4 MB).
const MAX_PACKAGE_BYTES: u64 = 512 * 1024 * 1024;

/// `id#version`, e.g. `hl7.fhir.r4.core#4.0.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackageRef {
    pub id: String,
    pub version: String,
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.id, self.version)
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 214
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && s != "."
        && s != ".."
}

impl FromStr for PackageRef {
    type Err = PackageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, version) = s
            .split_once('#')
            .or_else(|| s.split_once('@'))
            .ok_or_else(|| PackageError::BadReference(s.to_string()))?;
        if !valid_part(id) || !valid_part(version) {
            return Err(PackageError::BadReference(s.to_string()));
        }
        Ok(PackageRef {
            id: id.to_string(),
            version: version.to_string(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("`{0}` is not a package reference; expected id#version (e.g. hl7.fhir.r4.core#4.0.1)")]
    BadReference(String),
    #[error("package {package} is not in the cache {cache} and could not be downloaded from {url}: {reason}")]
    Download {
        package: PackageRef,
        cache: PathBuf,
        url: String,
        reason: String,
    },
    #[error("package archive {archive}: {reason}")]
    BadArchive { archive: String, reason: String },
    #[error("package cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("package {package}: {file}: {reason}")]
    BadResource {
        package: PackageRef,
        file: String,
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The local package cache and the registry behind it.
#[derive(Debug, Clone)]
pub struct PackageCache {
    dir: PathBuf,
    registry: String,
}

impl PackageCache {
    pub fn new(dir: impl Into<PathBuf>, registry: impl Into<String>) -> Self {
        PackageCache {
            dir: dir.into(),
            registry: registry.into().trim_end_matches('/').to_string(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder that holds `package.json` of an installed package.
    pub fn package_dir(&self, p: &PackageRef) -> PathBuf {
        self.dir.join(p.to_string()).join("package")
    }

    pub fn is_installed(&self, p: &PackageRef) -> bool {
        self.package_dir(p).join("package.json").is_file()
    }

    /// Makes sure a package is extracted in the cache: already there, a `.tgz` of it
    /// in the cache, or downloaded from the registry (`<registry>/<id>/<version>`).
    pub fn ensure(&self, p: &PackageRef) -> Result<PathBuf, PackageError> {
        if self.is_installed(p) {
            return Ok(self.package_dir(p));
        }
        for name in [format!("{p}.tgz"), format!("{}-{}.tgz", p.id, p.version)] {
            let tgz = self.dir.join(name);
            if tgz.is_file() {
                let bytes = fs::read(&tgz).map_err(io_err(&tgz))?;
                self.extract(p, &bytes, &tgz.display().to_string())?;
                return Ok(self.package_dir(p));
            }
        }
        self.install(p)
    }

    /// Downloads a package from the registry into the cache.
    pub fn install(&self, p: &PackageRef) -> Result<PathBuf, PackageError> {
        let url = format!("{}/{}/{}", self.registry, p.id, p.version);
        tracing::info!(package = %p, url = %url, "downloading FHIR package");
        let fail = |reason: String| PackageError::Download {
            package: p.clone(),
            cache: self.dir.clone(),
            url: url.clone(),
            reason,
        };
        let mut response = ureq::get(&url)
            .header("Accept", "application/tar+gzip, application/gzip, */*")
            .call()
            .map_err(|e| fail(e.to_string()))?;
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_PACKAGE_BYTES)
            .read_to_vec()
            .map_err(|e| fail(e.to_string()))?;
        let found = read_manifest(&bytes, &url)?;
        if &found != p {
            return Err(fail(format!("the registry sent package {found}")));
        }
        self.extract(p, &bytes, &url)?;
        Ok(self.package_dir(p))
    }

    /// Installs a local `.tgz` package file; returns which package it was.
    pub fn install_file(&self, tgz: &Path) -> Result<PackageRef, PackageError> {
        let bytes = fs::read(tgz).map_err(io_err(tgz))?;
        let name = tgz.display().to_string();
        let p = read_manifest(&bytes, &name)?;
        self.extract(&p, &bytes, &name)?;
        Ok(p)
    }

    /// Installed packages, sorted.
    pub fn list(&self) -> Result<Vec<PackageRef>, PackageError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Ok(p) = name.parse::<PackageRef>() {
                if self.is_installed(&p) {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Unpacks into a temporary folder beside the target, then renames it into
    /// place, so a crash never leaves a half-extracted package that looks installed.
    fn extract(&self, p: &PackageRef, tgz: &[u8], origin: &str) -> Result<(), PackageError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let target = self.dir.join(p.to_string());
        let tmp = self
            .dir
            .join(format!(".{}.tmp-{}", p, uuid::Uuid::new_v4().simple()));
        let result = unpack(tgz, &tmp, origin);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if target.exists() {
            // Another process installed it meanwhile, or an incomplete folder is there.
            if self.is_installed(p) {
                let _ = fs::remove_dir_all(&tmp);
                return Ok(());
            }
            fs::remove_dir_all(&target).map_err(io_err(&target))?;
        }
        match fs::rename(&tmp, &target) {
            Ok(()) => Ok(()),
            Err(_) if self.is_installed(p) => {
                let _ = fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(io_err(&target)(e))
            }
        }
    }
}

fn bad_archive(origin: &str, reason: impl ToString) -> PackageError {
    PackageError::BadArchive {
        archive: origin.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads `package/package.json` from a tarball and returns its name and version.
fn read_manifest(tgz: &[u8], origin: &str) -> Result<PackageRef, PackageError> {
    let mut archive = tar::Archive::new(GzDecoder::new(tgz));
    for entry in archive.entries().map_err(|e| bad_archive(origin, e))? {
        let mut entry = entry.map_err(|e| bad_archive(origin, e))?;
        let path = entry.path().map_err(|e| bad_archive(origin, e))?;
        if path == Path::new("package/package.json") {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| bad_archive(origin, e))?;
            let manifest: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad_archive(origin, e))?;
            let id = manifest.get("name").and_then(|v| v.as_str());
            let version = manifest.get("version").and_then(|v| v.as_str());
            return match (id, version) {
                (Some(id), Some(version)) => format!("{id}#{version}").parse(),
                _ => Err(bad_archive(origin, "package.json lacks name or version")),
            };
        }
    }
    Err(bad_archive(origin, "no package/package.json inside"))
}

/// Extracts the tarball under `dest`, refusing paths that would escape it.
fn unpack(tgz: &[u8], dest: &Path, origin: &str) -> Result<(), PackageError> {
    let mut archive = tar::Archive::new(GzDecoder::new(tgz));
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    for entry in archive.entries().map_err(|e| bad_archive(origin, e))? {
        let mut entry = entry.map_err(|e| bad_archive(origin, e))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue; // links and devices have no place in a FHIR package
        }
        let path = entry
            .path()
            .map_err(|e| bad_archive(origin, e))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(bad_archive(
                origin,
                format!("unsafe path {}", path.display()),
            ));
        }
        let out = dest.join(&path);
        if kind.is_dir() {
            fs::create_dir_all(&out).map_err(io_err(&out))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad_archive(origin, e))?;
        fs::write(&out, bytes).map_err(io_err(&out))?;
    }
    if !dest.join("package/package.json").is_file() {
        return Err(bad_archive(origin, "no package/package.json inside"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_references_parse_and_reject_paths() {
        let p: PackageRef = "hl7.fhir.r4.core#4.0.1".parse().unwrap();
        assert_eq!(p.id, "hl7.fhir.r4.core");
        assert_eq!(p.version, "4.0.1");
        for bad in [
            "hl7.fhir.r4.core",
            "#1",
            "a#",
            "../x#1",
            "a#../../etc",
            "a b#1",
        ] {
            assert!(bad.parse::<PackageRef>().is_err(), "{bad}");
        }
    }
}
