//! The loaded packages and an index of their conformance resources by canonical
//! URL and by resource type. The index of each package is built once and kept
//! beside it (`package/.fhirgate.index.json`); resources are parsed on first use.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cache::{PackageCache, PackageError, PackageRef};

const INDEX_FILE: &str = ".fhirgate.index.json";
const INDEX_FORMAT: u32 = 2;

/// What the index knows of one resource file without parsing it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexEntry {
    pub file: String,
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub id: Option<String>,
    pub url: Option<String>,
    pub version: Option<String>,
    /// StructureDefinition.kind
    pub kind: Option<String>,
    /// StructureDefinition.type
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// StructureDefinition.derivation
    pub derivation: Option<String>,
    #[serde(rename = "baseDefinition")]
    pub base_definition: Option<String>,
    #[serde(rename = "abstract", default)]
    pub is_abstract: bool,
    /// SearchParameter.code
    #[serde(default)]
    pub code: Option<String>,
    /// SearchParameter.base
    #[serde(default)]
    pub base: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    files: Vec<IndexEntry>,
}

struct LoadedPackage {
    reference: PackageRef,
    dir: PathBuf,
    entries: Vec<IndexEntry>,
}

/// A handle on one indexed resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    package: usize,
    entry: usize,
}

/// The packages loaded by this process.
pub struct PackageSet {
    packages: Vec<LoadedPackage>,
    by_url: HashMap<String, Vec<EntryId>>,
    parsed: RwLock<HashMap<EntryId, Arc<Value>>>,
}

impl std::fmt::Debug for PackageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.packages.iter().map(|p| p.reference.to_string()))
            .finish()
    }
}

impl PackageSet {
    /// Loads the named packages, installing any that the cache lacks.
    pub fn load(cache: &PackageCache, refs: &[PackageRef]) -> Result<PackageSet, PackageError> {
        PackageSet::load_with_local(cache, refs, None)
    }

    /// Loads the named packages and a package folder outside the cache (fhirgate's
    /// own `profiles/`: `package.json` and the resources side by side). The local
    /// package's dependencies are loaded too when the cache holds them (never
    /// downloaded for it: a missing one is a warning, the profiles that need it
    /// then do not compile). Its index is rebuilt at every load and not written,
    /// so an edited folder is never read through a stale index.
    pub fn load_with_local(
        cache: &PackageCache,
        refs: &[PackageRef],
        local: Option<&Path>,
    ) -> Result<PackageSet, PackageError> {
        let mut packages = Vec::new();
        for r in refs {
            let dir = cache.ensure(r)?;
            let entries = read_or_build_index(r, &dir)?;
            packages.push(LoadedPackage {
                reference: r.clone(),
                dir,
                entries,
            });
        }
        if let Some(dir) = local {
            let (reference, dependencies) = local_manifest(dir)?;
            for d in dependencies {
                if packages.iter().any(|p| p.reference.id == d.id) {
                    continue;
                }
                if !cache.is_installed(&d) {
                    tracing::warn!(package = %reference, dependency = %d, "a dependency of the local package is not in the package cache; its profiles that need it will not compile (fhirgate packages install)");
                    continue;
                }
                let ddir = cache.package_dir(&d);
                let entries = read_or_build_index(&d, &ddir)?;
                packages.push(LoadedPackage {
                    reference: d,
                    dir: ddir,
                    entries,
                });
            }
            let entries = build_index(&reference, dir)?;
            packages.push(LoadedPackage {
                reference,
                dir: dir.to_path_buf(),
                entries,
            });
        }
        let mut by_url: HashMap<String, Vec<EntryId>> = HashMap::new();
        for (pi, p) in packages.iter().enumerate() {
            for (ei, e) in p.entries.iter().enumerate() {
                if let Some(url) = &e.url {
                    let id = EntryId {
                        package: pi,
                        entry: ei,
                    };
                    by_url.entry(url.clone()).or_default().push(id);
                    if let Some(v) = &e.version {
                        by_url.entry(format!("{url}|{v}")).or_default().push(id);
                    }
                }
            }
        }
        Ok(PackageSet {
            packages,
            by_url,
            parsed: RwLock::new(HashMap::new()),
        })
    }

    /// The packages, in load order.
    pub fn references(&self) -> Vec<PackageRef> {
        self.packages.iter().map(|p| p.reference.clone()).collect()
    }

    /// Every indexed resource with its handle.
    pub fn entries(&self) -> impl Iterator<Item = (EntryId, &IndexEntry)> {
        self.packages.iter().enumerate().flat_map(|(pi, p)| {
            p.entries.iter().enumerate().map(move |(ei, e)| {
                (
                    EntryId {
                        package: pi,
                        entry: ei,
                    },
                    e,
                )
            })
        })
    }

    /// The index entry behind a handle.
    pub fn entry(&self, id: EntryId) -> &IndexEntry {
        &self.packages[id.package].entries[id.entry]
    }

    /// Finds a conformance resource by canonical URL (`url` or `url|version`);
    /// the first loaded package wins when several define it.
    pub fn find(&self, canonical: &str) -> Option<EntryId> {
        self.by_url.get(canonical).and_then(|v| v.first().copied())
    }

    /// Resolves a canonical URL to the parsed resource.
    pub fn resolve(&self, canonical: &str) -> Option<Arc<Value>> {
        self.find(canonical).and_then(|id| self.get(id).ok())
    }

    /// Parses (once) and returns the resource behind a handle.
    pub fn get(&self, id: EntryId) -> Result<Arc<Value>, PackageError> {
        if let Some(v) = self.parsed.read().get(&id) {
            return Ok(v.clone());
        }
        let p = &self.packages[id.package];
        let e = &p.entries[id.entry];
        let path = p.dir.join(&e.file);
        let bytes = fs::read(&path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|err| PackageError::BadResource {
                package: p.reference.clone(),
                file: e.file.clone(),
                reason: err.to_string(),
            })?;
        let value = Arc::new(value);
        self.parsed.write().insert(id, value.clone());
        Ok(value)
    }
}

/// The name, version and dependencies of a package folder's `package.json`.
fn local_manifest(dir: &Path) -> Result<(PackageRef, Vec<PackageRef>), PackageError> {
    let path = dir.join("package.json");
    let bad = |reason: String| PackageError::BadArchive {
        archive: path.display().to_string(),
        reason,
    };
    let bytes = fs::read(&path).map_err(|source| PackageError::Io {
        path: path.clone(),
        source,
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("package.json has no `{k}`")))
    };
    let reference: PackageRef = format!("{}#{}", field("name")?, field("version")?).parse()?;
    let mut dependencies = Vec::new();
    if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
        for (id, version) in deps {
            let version = version.as_str().unwrap_or_default();
            dependencies.push(format!("{id}#{version}").parse()?);
        }
    }
    Ok((reference, dependencies))
}

fn read_or_build_index(r: &PackageRef, dir: &Path) -> Result<Vec<IndexEntry>, PackageError> {
    let index_path = dir.join(INDEX_FILE);
    if let Ok(bytes) = fs::read(&index_path) {
        if let Ok(index) = serde_json::from_slice::<IndexFile>(&bytes) {
            if index.format == INDEX_FORMAT {
                return Ok(index.files);
            }
        }
    }
    let entries = build_index(r, dir)?;
    let file = IndexFile {
        format: INDEX_FORMAT,
        files: entries.clone(),
    };
    // The cache may be read-only (shared with other tools): then index every start.
    match serde_json::to_vec(&file) {
        Ok(bytes) => {
            let tmp = dir.join(format!("{INDEX_FILE}.{}", uuid::Uuid::new_v4().simple()));
            if fs::write(&tmp, bytes).is_err() || fs::rename(&tmp, &index_path).is_err() {
                let _ = fs::remove_file(&tmp);
                tracing::warn!(package = %r, "could not write the package index; it will be rebuilt at every start");
            }
        }
        Err(e) => tracing::warn!(package = %r, error = %e, "could not serialise the package index"),
    }
    Ok(entries)
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string)
}

fn build_index(r: &PackageRef, dir: &Path) -> Result<Vec<IndexEntry>, PackageError> {
    let mut files: Vec<String> = fs::read_dir(dir)
        .map_err(|source| PackageError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.') && n != "package.json")
        .collect();
    files.sort();
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        let path = dir.join(&file);
        let bytes = fs::read(&path).map_err(|source| PackageError::Io {
            path: path.clone(),
            source,
        })?;
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            tracing::warn!(package = %r, file = %file, "skipping a package file that is not JSON");
            continue;
        };
        let Some(resource_type) = str_field(&v, "resourceType") else {
            continue;
        };
        entries.push(IndexEntry {
            file,
            resource_type,
            id: str_field(&v, "id"),
            url: str_field(&v, "url"),
            version: str_field(&v, "version"),
            kind: str_field(&v, "kind"),
            type_: str_field(&v, "type"),
            derivation: str_field(&v, "derivation"),
            base_definition: str_field(&v, "baseDefinition"),
            is_abstract: v.get("abstract").and_then(|x| x.as_bool()).unwrap_or(false),
            code: str_field(&v, "code"),
            base: v
                .get("base")
                .and_then(|b| b.as_array())
                .map(|b| {
                    b.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(entries)
}
