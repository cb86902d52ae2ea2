//! The SQL of the common searches, per backend, against golden files (they change
//! only with `FHIRGATE_REGENERATE_GOLDEN=1`, so a diff shows what moved), and the
//! plans PostgreSQL picks for them on analysed data: every filter is answered from
//! an index, never by scanning an index table.

use std::path::PathBuf;

use fhirgate::access::AccessContext;
use serde_json::json;

use crate::support;
use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

const MRN: &str = "http://hospital.example.org/mrn";

/// The searches whose plans matter most (the benchmark's, and the usual shapes).
const QUERIES: &[(&str, &str)] = &[
    ("Patient", "family=smi"),
    ("Patient", "identifier=http://hospital.example.org/mrn|MRN7"),
    (
        "Observation",
        "patient=p7&code=http://loinc.org|29463-7&date=ge2020",
    ),
    ("Observation", "patient=p7&_sort=-date&_count=10"),
    (
        "Observation",
        "subject:Patient.identifier=http://hospital.example.org/mrn|MRN7",
    ),
    (
        "Observation",
        "code=http://loinc.org|29463-7&value-quantity=gt70",
    ),
    (
        "Patient",
        "_has:Observation:patient:code=8867-4&gender=female",
    ),
    ("Patient", "birthdate=ge1990&_sort=birthdate"),
    ("Observation", "_lastUpdated=gt2020-01-01&status=final"),
    // The audit trail (the AuditEvents of the load's writes): its rows come from
    // audit_log, by rid = -seq.
    ("AuditEvent", "patient=p7&date=ge2020"),
    ("AuditEvent", "action=C&_sort=-date&_count=50"),
];

async fn load(app: &TestApp, patients: usize) {
    let mut requests = Vec::new();
    for i in 0..patients {
        let family = ["Smith", "Jones", "Brown", "Miller"][i % 4];
        requests.push((
            format!("/Patient/p{i}"),
            json!({"resourceType": "Patient", "id": format!("p{i}"),
                   "identifier": [{"system": MRN, "value": format!("MRN{i}")}],
                   "name": [{"family": family, "given": ["Ann"]}],
                   "gender": if i % 2 == 0 { "female" } else { "male" },
                   "birthDate": format!("{}-01-01", 1950 + i % 60)}),
        ));
        for j in 0..5 {
            let code = ["29463-7", "8867-4", "2339-0", "8302-2", "718-7"][(i + j) % 5];
            requests.push((
                format!("/Observation/o{i}-{j}"),
                json!({"resourceType": "Observation", "id": format!("o{i}-{j}"), "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                       "subject": {"reference": format!("Patient/p{i}")},
                       "effectiveDateTime": format!("{}-06-01", 2015 + (i + j) % 10),
                       "valueQuantity": {"value": 50 + (i + j) % 50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
            ));
        }
    }
    for chunk in requests.chunks(16) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|(p, b)| app.put_json(p, b))).await;
        for ((path, _), r) in chunk.iter().zip(replies) {
            assert!(
                r.status.is_success(),
                "PUT {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

fn golden_path(backend: Backend) -> PathBuf {
    let name = match backend {
        Backend::Sqlite => "search-plans-sqlite.sql",
        Backend::Postgres => "search-plans-postgres.sql",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

async fn explain_all(app: &TestApp) -> Vec<(String, String, String)> {
    let settings = fhirgate::startup::search_settings(&app.db.settings());
    let model = support::core_model();
    let terminology = std::sync::Arc::new(fhirgate::terminology::Terminology::new(
        model.packages().clone(),
    ));
    let engine = std::sync::Arc::new(fhirgate::search::SearchEngine::new(
        model,
        terminology,
        app.base.clone(),
        settings,
    ));
    let mut out = Vec::new();
    for (t, q) in QUERIES {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let req = engine.parse(vec![t.to_string()], &pairs, true).expect(q);
        let store = app.store.clone();
        let e = engine.clone();
        let text = actix_web::rt::task::spawn_blocking(move || {
            e.explain(&store, &AccessContext::system(), &req)
        })
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{t}?{q}: {err}"));
        let (sql, plan) = text.split_once('\n').unwrap_or((&text, ""));
        out.push((format!("{t}?{q}"), sql.to_string(), plan.to_string()));
    }
    out
}

async fn common_searches_have_their_golden_sql_and_use_indexes(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app, 400).await;
    if let Some(name) = app.db.pg_name() {
        let mut c = <diesel::PgConnection as diesel::Connection>::establish(&app.db.url).unwrap();
        diesel::RunQueryDsl::execute(diesel::sql_query("ANALYZE"), &mut c).unwrap();
        let _ = name;
    }
    let explained = explain_all(&app).await;
    let rendered: String = explained
        .iter()
        .map(|(q, sql, _)| format!("-- {q}\n{sql};\n\n"))
        .collect();
    let path = golden_path(backend);
    if support::regenerate_golden() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with FHIRGATE_REGENERATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        rendered, golden,
        "the search SQL changed; rerun with FHIRGATE_REGENERATE_GOLDEN=1 and review the diff"
    );
    if backend == Backend::Postgres {
        let mut bad = Vec::new();
        for (q, _, plan) in &explained {
            // (At this size a hash join over resource_versions is a fair choice; the
            // plans at benchmark size are in docs/benchmarks.md.)
            for table in [
                "search_blind",
                "search_date",
                "search_number",
                "search_reference",
            ] {
                if plan.contains(&format!("Seq Scan on {table}")) {
                    bad.push(format!("{q} scans {table}:\n{plan}"));
                }
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n\n"));
    } else {
        for (q, _, plan) in &explained {
            assert!(
                !plan.contains("SCAN search_") && !plan.contains("SCAN resource_versions"),
                "{q} scans a table:\n{plan}"
            );
        }
    }
    app.stop().await;
}

on_both_backends!(common_searches_have_their_golden_sql_and_use_indexes);
