//! What the fuzz targets share: the core model loaded once from a package cache
//! installed from `../shared/fhir-packages` (the way `fhirgate packages install
//! FILE.tgz` installs), a server state over a throw-away SQLite file for the Bundle
//! planner, and the seed corpora, generated at run time from the R4 examples, the
//! official FHIRPath tests and the core package (nothing of `../shared` is kept in
//! the repository).
//!
//! A target started with `FHIRGATE_FUZZ_SEEDS=DIR` writes its seeds to `DIR` and
//! exits instead of fuzzing (`fuzz/run.sh` does that before each run).
//!
//! The fuzz crate is a developer tool run by hand, so it reads its own environment
//! variables here rather than through `fhirgate::config`.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use fhirgate::fhir::Model;
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use serde_json::{json, Value};

/// `../shared` beside the checkout, or `FHIRGATE_FUZZ_SHARED`.
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIRGATE_FUZZ_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The package cache (`FHIRGATE_FUZZ_PACKAGE_CACHE`, else `fuzz/target/fhir-packages`),
/// holding every package of `../shared/fhir-packages`.
pub fn package_cache() -> PathBuf {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = match std::env::var_os("FHIRGATE_FUZZ_PACKAGE_CACHE") {
                Some(p) => PathBuf::from(p),
                None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fhir-packages"),
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
                if path.extension().is_none_or(|e| e != "tgz") {
                    continue;
                }
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let installed = name
                    .trim_end_matches(".tgz")
                    .rsplit_once('-')
                    .and_then(|(id, v)| format!("{id}#{v}").parse::<PackageRef>().ok())
                    .is_some_and(|p| cache.is_installed(&p));
                if !installed {
                    cache.install_file(&path).expect("install a shared package");
                }
            }
            dir
        })
        .clone()
}

/// The structure model over the core package.
pub fn core_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let cache = PackageCache::new(package_cache(), "http://127.0.0.1:9/unused-registry");
            let core: PackageRef = "hl7.fhir.r4.core#4.0.1".parse().expect("package ref");
            let set = PackageSet::load(&cache, &[core]).expect("load the core package");
            Arc::new(Model::new(Arc::new(set)))
        })
        .clone()
}

/// Settings of a server over a fresh SQLite file in a temporary folder, with
/// authorization off (the planner decides access with an open grant, as the CLI does).
pub fn settings() -> fhirgate::config::Settings {
    let dir = std::env::temp_dir().join(format!("fhirgate-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let mut s = fhirgate::config::Settings::default();
    s.database.url = format!("sqlite://{}", dir.join("fuzz.db").display());
    s.packages.cache = Some(package_cache());
    s.auth.enabled = false;
    s.crypto.master_key = Some("00".repeat(32));
    s
}

/// If `FHIRGATE_FUZZ_SEEDS` names a folder, writes `seeds` there (one file each)
/// and exits: the target was asked for its seed corpus, not to fuzz. It says how
/// many on stdout, as a command-line tool does (`fuzz/run.sh` shows it).
#[allow(clippy::disallowed_macros)]
pub fn write_seeds_if_asked(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("FHIRGATE_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed folder");
    let seeds = seeds();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:05}")), s).expect("write a seed");
    }
    println!("{} seeds written to {}", seeds.len(), dir.display());
    std::process::exit(0);
}

/// The largest seed kept: libFuzzer's `-max_len` in `fuzz/run.sh`.
pub const MAX_SEED: usize = 16 * 1024;

/// The R4 examples (`../shared/testdata/r4-examples.tgz`), sorted by file name.
pub fn r4_examples() -> Vec<Value> {
    let path = shared_dir().join("testdata/r4-examples.tgz");
    let mut out: Vec<(String, Value)> = Vec::new();
    for (name, text) in tgz_files(&path) {
        if !name.ends_with(".json") || name.ends_with("package.json") {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&text) {
            if v.get("resourceType").is_some() {
                out.push((name, v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, v)| v).collect()
}

/// (path, bytes) of every file of a `.tgz`.
fn tgz_files(path: &Path) -> Vec<(String, Vec<u8>)> {
    let file = std::fs::File::open(path)
        .unwrap_or_else(|e| panic!("{} cannot be read: {e}", path.display()));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries").flatten() {
        let mut entry = entry;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut bytes = Vec::new();
        if entry.read_to_end(&mut bytes).is_ok() {
            out.push((name, bytes));
        }
    }
    out
}

/// Seeds of the JSON reader: the R4 examples as compact JSON, those that fit.
pub fn json_seeds() -> Vec<Vec<u8>> {
    r4_examples()
        .iter()
        .filter_map(|v| serde_json::to_vec(v).ok())
        .filter(|b| b.len() <= MAX_SEED)
        .collect()
}

/// Seeds of the XML reader: the R4 examples written as XML by fhirgate, those that fit.
pub fn xml_seeds() -> Vec<Vec<u8>> {
    let model = core_model();
    r4_examples()
        .iter()
        .filter_map(|v| fhirgate::fhir::xml::to_xml(&model, v, false).ok())
        .map(String::into_bytes)
        .filter(|b| b.len() <= MAX_SEED)
        .collect()
}

/// Seeds of the FHIRPath parser: the expressions of the official R4 test suite,
/// and every invariant and SearchParameter expression of the core package.
pub fn fhirpath_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<String> = Vec::new();
    let suite = shared_dir().join("testdata/fhirpath/tests-fhir-r4.xml");
    if let Ok(text) = std::fs::read_to_string(&suite) {
        for chunk in text.split("<expression").skip(1) {
            let Some(start) = chunk.find('>') else {
                continue;
            };
            let Some(end) = chunk.find("</expression>") else {
                continue;
            };
            if start < end {
                out.push(unescape_xml(&chunk[start + 1..end]));
            }
        }
    }
    for r in core_resources() {
        match r.get("resourceType").and_then(Value::as_str) {
            Some("SearchParameter") => {
                if let Some(e) = r.get("expression").and_then(Value::as_str) {
                    out.push(e.to_string());
                }
            }
            Some("StructureDefinition") => {
                let elements = r
                    .pointer("/snapshot/element")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for el in elements {
                    for c in el
                        .get("constraint")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(e) = c.get("expression").and_then(Value::as_str) {
                            out.push(e.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out.into_iter().map(String::into_bytes).collect()
}

fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The resources of the core package.
fn core_resources() -> Vec<Value> {
    tgz_files(&shared_dir().join("fhir-packages/hl7.fhir.r4.core-4.0.1.tgz"))
        .into_iter()
        .filter(|(name, _)| name.starts_with("package/") && name.ends_with(".json"))
        .filter_map(|(_, bytes)| serde_json::from_slice::<Value>(&bytes).ok())
        .collect()
}

/// A value of the shape a search parameter of `kind` takes.
fn search_value(kind: &str, i: usize) -> &'static str {
    const STRING: [&str; 3] = ["Chalmers", "pet", "ééé"];
    const TOKEN: [&str; 3] = ["http://loinc.org|8867-4", "|male", "final"];
    const DATE: [&str; 3] = ["ge2013-01-14", "lt2020-02", "2012-05-01T10:00:00Z"];
    const NUMBER: [&str; 3] = ["gt5.4", "100", "ap1e2"];
    const QUANTITY: [&str; 3] = ["5.4|http://unitsofmeasure.org|mg", "le120||mm[Hg]", "gt0.5"];
    const REFERENCE: [&str; 3] = ["Patient/example", "example", "http://x/fhir/Patient/1"];
    const URI: [&str; 3] = [
        "http://hl7.org/fhir/ValueSet/administrative-gender",
        "urn:oid:1.2.3",
        "http://x",
    ];
    const COMPOSITE: [&str; 3] = [
        "http://loinc.org|8480-6$lt60",
        "a$b",
        "http://loinc.org|2339-0$gt1",
    ];
    let pick = match kind {
        "string" => STRING,
        "token" => TOKEN,
        "date" => DATE,
        "number" => NUMBER,
        "quantity" => QUANTITY,
        "reference" => REFERENCE,
        "uri" => URI,
        "composite" => COMPOSITE,
        _ => STRING,
    };
    pick[i % 3]
}

/// Seeds of the search parameter parser, as `Type?query`: every SearchParameter of
/// the core package on each of its base types with a value of its kind (some with a
/// modifier, a chain or `_has`), and the result controls.
pub fn search_seeds() -> Vec<Vec<u8>> {
    const MODIFIERS: [&str; 8] = [
        "",
        ":exact",
        ":contains",
        ":missing",
        ":not",
        ":text",
        ":below",
        ":of-type",
    ];
    let mut out: Vec<String> = Vec::new();
    for (i, r) in core_resources().iter().enumerate() {
        if r.get("resourceType").and_then(Value::as_str) != Some("SearchParameter") {
            continue;
        }
        let (Some(code), Some(kind)) = (
            r.get("code").and_then(Value::as_str),
            r.get("type").and_then(Value::as_str),
        ) else {
            continue;
        };
        let bases = r
            .get("base")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for base in bases.iter().filter_map(Value::as_str).take(3) {
            let modifier = MODIFIERS[i % MODIFIERS.len()];
            let value = form_urlencoded::byte_serialize(search_value(kind, i).as_bytes())
                .collect::<String>();
            out.push(format!("{base}?{code}{modifier}={value}"));
            if kind == "reference" {
                out.push(format!("{base}?{code}:Patient.name=pet&_count=5"));
                out.push(format!("Patient?_has:{base}:{code}:_id=x"));
            }
        }
    }
    out.extend(
        [
            "Observation?_sort=-date,code&_count=3&_total=accurate",
            "Observation?_include=Observation:subject&_revinclude:iterate=Provenance:target",
            "Patient?_summary=count&_elements=name,birthDate",
            "?_type=Patient,Observation&_lastUpdated=gt2020",
            "Patient?_list=42&_id=a,b,c",
            "Encounter?subject:Patient.general-practitioner.name=x",
            "Patient?_has:Observation:patient:_has:AuditEvent:entity:agent=y",
        ]
        .map(String::from),
    );
    out.sort();
    out.dedup();
    out.into_iter().map(String::into_bytes).collect()
}

/// Seeds of the Bundle planner: transactions and batches of R4 examples, with
/// `urn:uuid` identities and references between them, creates, updates,
/// conditional creates, updates and deletes, a conditional reference, a PATCH and
/// reads.
pub fn bundle_seeds() -> Vec<Vec<u8>> {
    let examples: Vec<Value> = r4_examples()
        .into_iter()
        .filter(|v| v.get("resourceType").and_then(Value::as_str) != Some("Bundle"))
        .filter(|v| {
            serde_json::to_vec(v)
                .map(|b| b.len() < 2_000)
                .unwrap_or(false)
        })
        .collect();
    let mut out = Vec::new();
    for (n, group) in examples.chunks(4).enumerate() {
        let kind = if n % 3 == 2 { "batch" } else { "transaction" };
        let mut entries = Vec::new();
        entries.push(json!({
            "fullUrl": "urn:uuid:5c4f3a2e-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": format!("p{n}")}]},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=urn:x|p{n}")}
        }));
        for (i, r) in group.iter().enumerate() {
            let rt = r
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("Basic");
            let mut r = r.clone();
            // Point every subject and patient at the Bundle's Patient.
            if let Some(o) = r.as_object_mut() {
                for key in ["subject", "patient"] {
                    if o.contains_key(key) {
                        o.insert(
                            key.into(),
                            json!({"reference": "urn:uuid:5c4f3a2e-0000-4000-8000-000000000001"}),
                        );
                    }
                }
            }
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("x")
                .to_string();
            let request = match (n + i) % 4 {
                0 => json!({"method": "POST", "url": rt}),
                1 => json!({"method": "PUT", "url": format!("{rt}/{id}")}),
                2 => json!({"method": "PUT", "url": format!("{rt}?_id={id}")}),
                _ => json!({"method": "POST", "url": rt, "ifNoneExist": "_id=abc"}),
            };
            entries.push(json!({
                "fullUrl": format!("urn:uuid:5c4f3a2e-0000-4000-8000-0000000001{i:02}"),
                "resource": r,
                "request": request,
            }));
        }
        entries.push(json!({
            "resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:x|p0"}},
            "request": {"method": "POST", "url": "Observation"}
        }));
        entries.push(json!({"request": {"method": "DELETE", "url": "Observation?code=http://loinc.org|1234-5"}}));
        entries.push(json!({"request": {"method": "GET", "url": "Patient?name=peter&_count=1"}}));
        if n % 5 == 0 {
            entries.push(json!({
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                    "data": "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9hY3RpdmUiLCJ2YWx1ZSI6ZmFsc2V9XQ=="},
                "request": {"method": "PATCH", "url": "Patient/example", "ifMatch": "W/\"1\""}
            }));
        }
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
        if let Ok(b) = serde_json::to_vec(&bundle) {
            if b.len() <= MAX_SEED {
                out.push(b);
            }
        }
    }
    out
}
