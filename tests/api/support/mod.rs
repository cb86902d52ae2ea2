//! Shared test support: the FHIR package cache built from `../shared`, the R4
//! examples, and (in `server`) a real fhirgate server on 127.0.0.1:0.
//!
//! The `FHIRGATE_TEST_*` and `FHIRGATE_REGENERATE_GOLDEN` variables configure the tests, not
//! a server, so they are read here with `std::env` (allowed function by function) rather
//! than through `config::Settings`.

pub mod audit;
pub mod process;
pub mod server;

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use fhirgate::fhir::Model;
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use serde_json::Value;

/// `../shared` beside the checkout (or `FHIRGATE_TEST_SHARED`).
#[allow(clippy::disallowed_methods)]
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIRGATE_TEST_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// `tests/smart_clients`: the client scripts the SMART client and console
/// tests run, and the virtual environment `.ci/run` makes for them.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smart_clients")
}

/// `FHIRGATE_TEST_PYTHON`, else the virtual environment `.ci/run` makes in
/// `tests/smart_clients/.venv`, else `python3`.
#[allow(clippy::disallowed_methods)] // a test's own knob, not a server setting
pub fn python() -> std::ffi::OsString {
    if let Some(p) = std::env::var_os("FHIRGATE_TEST_PYTHON") {
        return p;
    }
    let venv = clients_dir().join(".venv/bin/python");
    if venv.is_file() {
        venv.into_os_string()
    } else {
        "python3".into()
    }
}

/// Runs a client script of `tests/smart_clients` (off the test's runtime, so the
/// server keeps serving) and parses the one JSON object it prints; `install`
/// says what to install when it cannot run or fails.
pub async fn run_client(program: std::ffi::OsString, args: Vec<String>, install: &str) -> Value {
    let shown = format!("{} {}", program.to_string_lossy(), args[0]);
    let output = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PUPPETEER_SKIP_DOWNLOAD", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run `{shown}` ({e}): {install}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{shown}` failed ({}): {stderr}\n{install}",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "`{shown}` printed no JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A package cache holding the packages of `../shared/fhir-packages`, installed
/// through the same code path a user's `fhirgate packages install FILE` takes.
#[allow(clippy::disallowed_methods)]
pub fn package_cache() -> PathBuf {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = match std::env::var_os("FHIRGATE_TEST_PACKAGE_CACHE") {
                Some(p) => PathBuf::from(p),
                None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fhir-packages"),
            };
            let cache = PackageCache::new(&dir, "http://127.0.0.1:9/unused-registry");
            let src = shared_dir().join("fhir-packages");
            let entries = std::fs::read_dir(&src).unwrap_or_else(|e| {
                panic!(
                    "the shared FHIR packages are missing at {}: {e}",
                    src.display()
                )
            });
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "tgz") {
                    let name = path.file_name().unwrap().to_string_lossy().to_string();
                    let guess = name
                        .trim_end_matches(".tgz")
                        .rsplit_once('-')
                        .map(|(id, v)| format!("{id}#{v}"));
                    let installed = guess
                        .and_then(|g| g.parse::<PackageRef>().ok())
                        .is_some_and(|p| cache.is_installed(&p));
                    if !installed {
                        cache.install_file(&path).expect("install shared package");
                    }
                }
            }
            dir
        })
        .clone()
}

/// The FHIRPath view of the core model (built once per test binary).
pub fn path_model() -> &'static PackageModel {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL.get_or_init(core_model).path_model()
}

pub use fhirgate::fhir::path_model::PathModel as PackageModel;

/// Every `package/*.json` resource of an npm-layout `.tgz` package.
pub fn package_resources(tgz: &std::path::Path) -> Vec<Value> {
    let file = std::fs::File::open(tgz).expect("package file");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("path").to_string_lossy().to_string();
        if !path.starts_with("package/")
            || !path.ends_with(".json")
            || path.matches('/').count() != 1
        {
            continue;
        }
        let mut text = String::new();
        if entry.read_to_string(&mut text).is_err() {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if v.get("resourceType").is_some() {
                out.push(v);
            }
        }
    }
    out
}

/// FHIRPath services for the official suite: `conformsTo` knows the core profiles.
pub struct SuiteServices<'m> {
    pub model: &'m PackageModel,
}

impl fhirgate::fhirpath::Services for SuiteServices<'_> {
    fn conforms_to(
        &self,
        _resource: &Value,
        resource_type: &str,
        profile: &str,
    ) -> Result<bool, String> {
        use fhirgate::fhirpath::ModelInfo;
        let Some(name) = profile.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
            return Err(format!("unknown profile '{profile}'"));
        };
        if !self.model.is_type(name) {
            return Err(format!("unknown profile '{profile}'"));
        }
        Ok(fhirgate::fhirpath::is_a(self.model, resource_type, name))
    }
}

/// Case names listed in a conformance known-failures file (lines `- `name`: reason`).
pub fn known_failures(file: &std::path::Path) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("- `")?;
            Some(rest.split('`').next()?.to_string())
        })
        .collect()
}

pub fn core_ref() -> PackageRef {
    "hl7.fhir.r4.core#4.0.1".parse().unwrap()
}

/// The structure model over the core package.
pub fn core_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let cache = PackageCache::new(package_cache(), "http://127.0.0.1:9/unused-registry");
            let set = PackageSet::load(&cache, &[core_ref()]).expect("load core package");
            Arc::new(Model::new(Arc::new(set)))
        })
        .clone()
}

/// The R4 examples: (file name, resource), sorted by name.
pub fn r4_examples() -> &'static [(String, Value)] {
    static EXAMPLES: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let path = shared_dir().join("testdata/r4-examples.tgz");
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("the R4 examples are missing at {}: {e}", path.display()));
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry
                .path()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            if !name.ends_with(".json") {
                continue;
            }
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            if v.get("resourceType").is_some() && name != "package.json" {
                out.push((name, v));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    })
}

/// True when golden files are to be rewritten (`FHIRGATE_REGENERATE_GOLDEN=1`).
#[allow(clippy::disallowed_methods)]
pub fn regenerate_golden() -> bool {
    std::env::var_os("FHIRGATE_REGENERATE_GOLDEN").is_some()
}
