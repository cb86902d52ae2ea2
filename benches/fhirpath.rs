//! FHIRPath engine throughput on the two workloads that run on every write:
//!
//! - `invariants/*`: every constraint of the R4 Patient StructureDefinition (the snapshot, so
//!   inherited ones such as ele-1 and dom-2..dom-6 included) evaluated on every node of the R4
//!   example `Patient-example.json` it applies to. `invariants/patient_all` evaluates the
//!   prepared (constraint, node) pairs; `invariants/patient_ele1` only the ele-1 pairs (the
//!   simplest and most frequent invariant); `invariants/patient_with_navigation` also finds the
//!   nodes from the element paths, as a validator does. Throughput: invariant evaluations.
//! - `search_extraction/*`: every core SearchParameter expression whose base includes
//!   Observation on an R4 Observation example: `whole_expressions` evaluates multi-resource
//!   expressions (`AllergyIntolerance.patient | ... | Observation.subject.where(...)`) whole,
//!   `observation_branches` only their branches that can apply to an Observation (what an
//!   indexer that splits them per resource type at compile time would run). Throughput:
//!   resources.
//!
//! Run: `cargo bench --bench fhirpath -- --warm-up-time 2 --measurement-time 5`; the figures
//! are in docs/benchmarks.md. `FHIRPATH_BENCH_BREAKDOWN=1` also prints the mean time of each
//! Patient constraint and of the slowest SearchParameter expressions. The FHIR packages come
//! from the test package cache (`target/tmp/fhir-packages`), installed from
//! `../shared/fhir-packages` when missing.
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)] // a benchmark reports on stdout

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fhirgate::fhir::path_model::PathModel;
use fhirgate::fhir::Model;
use fhirgate::fhirpath::{self, EvalContext, Expression, Item};
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use serde_json::Value;

fn shared_dir() -> PathBuf {
    match std::env::var_os("FHIRGATE_TEST_SHARED") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}

/// The core package from the test package cache, installed there from the shared `.tgz` when
/// it is missing.
fn core_model() -> Arc<Model> {
    let core: PackageRef = "hl7.fhir.r4.core#4.0.1".parse().expect("package reference");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fhir-packages");
    let cache = PackageCache::new(&dir, "http://127.0.0.1:9/unused-registry");
    if !cache.is_installed(&core) {
        let tgz = shared_dir().join("fhir-packages/hl7.fhir.r4.core-4.0.1.tgz");
        cache.install_file(&tgz).expect("install the core package");
    }
    let set = PackageSet::load(&cache, &[core]).expect("load the core package");
    Arc::new(Model::new(Arc::new(set)))
}

/// One R4 example from `testdata/r4-examples.tgz`.
fn r4_example(name: &str) -> Value {
    let path = shared_dir().join("testdata/r4-examples.tgz");
    let file = std::fs::File::open(&path).expect("r4-examples.tgz");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let file_name = entry
            .path()
            .expect("path")
            .file_name()
            .map(|n| n.to_owned());
        if file_name.as_deref() == Some(std::ffi::OsStr::new(name)) {
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("read example");
            return serde_json::from_str(&text).expect("example JSON");
        }
    }
    panic!("no R4 example {name}");
}

/// A constraint of the Patient StructureDefinition and where it applies.
struct Constraint {
    key: String,
    expression: Arc<Expression>,
    /// The element path as a FHIRPath expression (`Patient.deceased[x]` -> `Patient.deceased`).
    path: Arc<Expression>,
}

fn patient_constraints(model: &Model) -> Vec<Constraint> {
    let sd = model
        .packages()
        .resolve("http://hl7.org/fhir/StructureDefinition/Patient")
        .expect("Patient StructureDefinition");
    let mut out = Vec::new();
    for element in sd["snapshot"]["element"].as_array().expect("snapshot") {
        let path = element["path"].as_str().expect("path").replace("[x]", "");
        for c in element["constraint"].as_array().into_iter().flatten() {
            let Some(text) = c["expression"].as_str() else {
                continue;
            };
            out.push(Constraint {
                key: c["key"].as_str().unwrap_or("?").to_string(),
                expression: fhirpath::compile(text).expect("constraint compiles"),
                path: fhirpath::compile(&path).expect("element path compiles"),
            });
        }
    }
    out
}

fn invariants(c: &mut Criterion) {
    let model = core_model();
    let path_model: &PathModel = model.path_model();
    let patient = r4_example("Patient-example.json");
    let constraints = patient_constraints(&model);
    let mut ctx = EvalContext::new(path_model);
    ctx.resource = Some(&patient);

    // the (constraint, node) pairs: each constraint on every node its element path selects
    let mut pairs: Vec<(&Constraint, Item)> = Vec::new();
    for con in &constraints {
        for node in con.path.evaluate(&ctx, &patient).expect("element path") {
            pairs.push((con, node));
        }
    }
    let applied: std::collections::BTreeSet<&str> =
        pairs.iter().map(|(c, _)| c.key.as_str()).collect();
    println!(
        "Patient: {} constraints in the snapshot, {} apply to Patient-example.json, {} \
         (constraint, node) evaluations per pass",
        constraints.len(),
        applied.len(),
        pairs.len()
    );
    // every invariant must hold on the example, or the benchmark measures error paths
    for (con, node) in &pairs {
        let r = con
            .expression
            .evaluate_items(&ctx, std::slice::from_ref(node))
            .unwrap_or_else(|e| panic!("{}: {e}", con.key));
        assert!(
            !matches!(r.as_slice(), [Item::Boolean(false)]),
            "{} fails on the example",
            con.key
        );
    }
    let ele1: Vec<&(&Constraint, Item)> = pairs.iter().filter(|(c, _)| c.key == "ele-1").collect();

    if std::env::var_os("FHIRPATH_BENCH_BREAKDOWN").is_some() {
        let mut rows: Vec<(f64, &str, usize)> = Vec::new();
        for key in &applied {
            let mine: Vec<_> = pairs.iter().filter(|(c, _)| c.key == *key).collect();
            let rounds = 20_000 / mine.len().max(1);
            let start = Instant::now();
            for _ in 0..rounds {
                for (con, node) in &mine {
                    std::hint::black_box(
                        con.expression
                            .evaluate_items(&ctx, std::slice::from_ref(node))
                            .ok(),
                    );
                }
            }
            let per = start.elapsed().as_secs_f64() * 1e6 / (rounds * mine.len()) as f64;
            rows.push((per, key, mine.len()));
        }
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (per, key, n) in rows {
            println!("  {key:8} {n:3} nodes  {per:8.3} us per evaluation");
        }
    }

    let mut group = c.benchmark_group("invariants");
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.bench_function("patient_all", |b| {
        b.iter(|| {
            for (con, node) in &pairs {
                let r = con
                    .expression
                    .evaluate_items(&ctx, std::slice::from_ref(node));
                std::hint::black_box(r.ok());
            }
        })
    });
    group.throughput(Throughput::Elements(ele1.len() as u64));
    group.bench_function("patient_ele1", |b| {
        b.iter(|| {
            for (con, node) in &ele1 {
                let r = con
                    .expression
                    .evaluate_items(&ctx, std::slice::from_ref(node));
                std::hint::black_box(r.ok());
            }
        })
    });
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.bench_function("patient_with_navigation", |b| {
        b.iter(|| {
            for con in &constraints {
                let nodes = con.path.evaluate(&ctx, &patient).expect("element path");
                for node in &nodes {
                    let r = con
                        .expression
                        .evaluate_items(&ctx, std::slice::from_ref(node));
                    std::hint::black_box(r.ok());
                }
            }
        })
    });
    group.finish();
}

/// The expressions of the core SearchParameters whose base includes Observation: (code, whole
/// expression, expression reduced to its Observation branches).
fn observation_search_expressions(
    model: &Model,
) -> Vec<(String, Arc<Expression>, Arc<Expression>)> {
    let packages = model.packages();
    let mut out = Vec::new();
    for (id, e) in packages.entries() {
        if e.resource_type != "SearchParameter" || !e.base.iter().any(|b| b == "Observation") {
            continue;
        }
        let sp = packages.get(id).expect("SearchParameter");
        let Some(text) = sp["expression"].as_str() else {
            continue;
        };
        let code = sp["code"].as_str().unwrap_or("?").to_string();
        let own = observation_branches(model, text);
        out.push((
            code,
            fhirpath::compile(text).expect("expression compiles"),
            fhirpath::compile(&own).expect("Observation branches compile"),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The top-level `|` branches of a SearchParameter expression that can select something in an
/// Observation: those not starting with the name of another resource type.
fn observation_branches(model: &Model, text: &str) -> String {
    let mut branches = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, ch) in text.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`') => quote = Some(ch),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, '|') if depth == 0 => {
                branches.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    branches.push(&text[start..]);
    branches
        .into_iter()
        .map(str::trim)
        .filter(|b| {
            let head: String = b
                .trim_start_matches('(')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            head == "Observation" || !model.is_resource_type(&head)
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn search_extraction(c: &mut Criterion) {
    let model = core_model();
    let path_model: &PathModel = model.path_model();
    let params = observation_search_expressions(&model);
    let mut group = c.benchmark_group("search_extraction");
    group.throughput(Throughput::Elements(1));
    for name in [
        "Observation-example.json",
        "Observation-blood-pressure.json",
    ] {
        let observation = r4_example(name);
        let ctx = EvalContext::new(path_model);
        // an expression that fails is skipped, as the search indexer does
        let mut values = 0;
        let mut failing = Vec::new();
        for (code, whole, own) in &params {
            let a = whole.evaluate(&ctx, &observation);
            let b = own.evaluate(&ctx, &observation);
            assert_eq!(
                a.as_ref().map(Vec::len).ok(),
                b.as_ref().map(Vec::len).ok(),
                "{code}: the Observation branches select what the whole expression selects"
            );
            match a {
                Ok(items) => values += items.len(),
                Err(e) => failing.push(format!("{code} ({e})")),
            }
        }
        println!(
            "{name}: {} SearchParameter expressions (base includes Observation), {values} values, \
             {} failing: {failing:?}",
            params.len(),
            failing.len()
        );
        if std::env::var_os("FHIRPATH_BENCH_BREAKDOWN").is_some() {
            let mut rows: Vec<(f64, &str)> = Vec::new();
            for (code, whole, _) in &params {
                let rounds = 20_000;
                let start = Instant::now();
                for _ in 0..rounds {
                    std::hint::black_box(whole.evaluate(&ctx, &observation).ok());
                }
                rows.push((start.elapsed().as_secs_f64() * 1e6 / rounds as f64, code));
            }
            rows.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (per, code) in rows.iter().take(12) {
                println!("  {code:28} {per:8.3} us");
            }
        }
        let short = name.trim_end_matches(".json");
        group.bench_function(format!("{short}/whole_expressions"), |b| {
            b.iter(|| {
                for (_, whole, _) in &params {
                    std::hint::black_box(whole.evaluate(&ctx, &observation).ok());
                }
            })
        });
        group.bench_function(format!("{short}/observation_branches"), |b| {
            b.iter(|| {
                for (_, _, own) in &params {
                    std::hint::black_box(own.evaluate(&ctx, &observation).ok());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, invariants, search_extraction);
criterion_main!(benches);
