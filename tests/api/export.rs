//! Bulk Data `$export` (issue 16, DESIGN section 14) on both backends, through
//! the real server and its real files: the synthetic cohort exported whole
//! (every resource exactly once, files split at `bulk.max_file_resources`, no
//! patient name in clear on disk); `_since`, `_type` and `_typeFilter` select
//! exactly what they should; patient and group exports take the right
//! compartments; bad kick-offs are refused with nothing queued; a cancel removes
//! the job and its files; with SMART on, another client cannot see a job, a
//! narrowed grant narrows what is exported, and a download is audited once per
//! patient it holds; a node killed mid-job leaves a job that the next start
//! completes with nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::smart_auth::{bearer, client_token, spawn_auth};
use crate::support;
use crate::support::server::{on_both_backends, spawn_with, Backend, Database, Reply, TestApp};
use crate::synthetic;

fn headers<'a>(token: Option<&'a str>, auth: &'a mut String) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![
        ("Prefer", "respond-async"),
        ("Accept", "application/fhir+json"),
    ];
    if let Some(t) = token {
        *auth = bearer(t);
        h.push(("Authorization", auth.as_str()));
    }
    h
}

async fn kick_off(app: &TestApp, path: &str, token: Option<&str>) -> Reply {
    let mut auth = String::new();
    app.send(Method::GET, path, &headers(token, &mut auth), None)
        .await
}

async fn kick_off_post(app: &TestApp, path: &str, params: &Value, token: Option<&str>) -> Reply {
    let mut auth = String::new();
    let mut h = headers(token, &mut auth);
    h.push(("Content-Type", "application/fhir+json"));
    let body = serde_json::to_vec(params).unwrap();
    app.send(Method::POST, path, &h, Some(&body)).await
}

async fn get_as(app: &TestApp, url: &str, token: Option<&str>, accept: &str) -> Reply {
    let auth = token.map(bearer);
    let mut h = vec![("Accept", accept)];
    if let Some(a) = &auth {
        h.push(("Authorization", a.as_str()));
    }
    app.send(Method::GET, url, &h, None).await
}

/// The status URL of an accepted kick-off.
fn status_url(r: &Reply) -> String {
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.header("content-location").expect("Content-Location")
}

/// Polls a status URL until the manifest comes (202s carry X-Progress).
async fn manifest(app: &TestApp, url: &str, token: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = get_as(app, url, token, "application/json").await;
        match r.status {
            StatusCode::OK => {
                assert_eq!(
                    r.header("content-type").as_deref(),
                    Some("application/json")
                );
                return r.json();
            }
            StatusCode::ACCEPTED => {
                assert!(r.header("x-progress").is_some(), "a 202 without X-Progress");
                assert!(
                    r.header("retry-after").is_some(),
                    "a 202 without Retry-After"
                );
            }
            s => panic!("status {s}: {}", String::from_utf8_lossy(&r.body)),
        }
        assert!(Instant::now() < deadline, "the export did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every resource of every file of a manifest, with the file's type checked.
async fn exported(app: &TestApp, m: &Value, token: Option<&str>) -> Vec<Value> {
    let mut all = Vec::new();
    for out in m["output"].as_array().expect("output") {
        let r = get_as(
            app,
            out["url"].as_str().unwrap(),
            token,
            "application/fhir+ndjson",
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/fhir+ndjson")
        );
        let text = String::from_utf8(r.body.clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one resource per line"))
            .collect();
        assert_eq!(lines.len() as u64, out["count"].as_u64().unwrap(), "{out}");
        assert!(
            lines.iter().all(|l| l["resourceType"] == out["type"]),
            "{out}"
        );
        all.extend(lines);
    }
    all
}

async fn export_all(app: &TestApp, path: &str, token: Option<&str>) -> (Value, Vec<Value>) {
    let url = status_url(&kick_off(app, path, token).await);
    let m = manifest(app, &url, token).await;
    let lines = exported(app, &m, token).await;
    (m, lines)
}

fn keys(lines: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = lines
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap(),
                r["id"].as_str().unwrap()
            )
        })
        .collect();
    k.sort();
    k
}

/// Every current resource, read through search (type by type).
async fn stored(app: &TestApp, types: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    for t in types {
        let mut url = format!("/{t}?_count=1000&_elements=id");
        loop {
            let page = app.get(&url).await.json();
            for e in page["entry"].as_array().into_iter().flatten() {
                all.push(format!("{t}/{}", e["resource"]["id"].as_str().unwrap()));
            }
            match page["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(next) => url = next["url"].as_str().unwrap().to_string(),
                None => break,
            }
        }
    }
    all.sort();
    all
}

/// Every file below `dir`, as bytes.
fn files_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn bulk_dir(app: &TestApp) -> std::path::PathBuf {
    app.state.settings.bulk_dir()
}

async fn spawn_export(backend: Backend, max_file: u64) -> TestApp {
    spawn_with(Database::new(backend), |s| {
        s.bulk.max_file_resources = max_file;
    })
    .await
}

const COHORT_TYPES: [&str; 14] = [
    "Patient",
    "Organization",
    "Practitioner",
    "Coverage",
    "Encounter",
    "Condition",
    "Observation",
    "DiagnosticReport",
    "Procedure",
    "MedicationRequest",
    "Immunization",
    "Claim",
    "CarePlan",
    "Provenance",
];

async fn a_system_export_holds_every_resource_once_in_sealed_files(backend: Backend) {
    let app = spawn_export(backend, 50).await;
    assert_eq!(
        app.post_json("", &synthetic::hospital()).await.status,
        StatusCode::OK
    );
    let mut rng = synthetic::Rng(20261204);
    for n in 0..3 {
        let r = app.post_json("", &synthetic::patient(&mut rng, n)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let (m, lines) = export_all(&app, "/$export", None).await;
    // The manifest.
    assert_eq!(m["requiresAccessToken"], false);
    assert!(
        m["request"].as_str().unwrap().ends_with("/fhir/$export"),
        "{m}"
    );
    assert!(m["transactionTime"].as_str().unwrap().ends_with('Z'), "{m}");
    assert_eq!(m["error"], json!([]));
    // Every resource exactly once.
    let got = keys(&lines);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a resource exported twice");
    let want = stored(&app, &COHORT_TYPES).await;
    assert!(want.len() > 300, "{} resources", want.len());
    assert_eq!(got, want);
    // Split at bulk.max_file_resources: no file over 50, and a type of more
    // than 50 in several files.
    let outputs = m["output"].as_array().unwrap();
    assert!(outputs.iter().all(|o| o["count"].as_u64().unwrap() <= 50));
    let observation_files = outputs
        .iter()
        .filter(|o| o["type"] == "Observation")
        .count();
    assert!(observation_files > 1, "{m}");
    // The files on disk hold no patient's name in clear.
    let families: BTreeSet<String> = lines
        .iter()
        .filter(|r| r["resourceType"] == "Patient")
        .flat_map(|r| r["name"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n["family"].as_str().map(str::to_string))
        .collect();
    assert_eq!(families.len(), 3, "{families:?}");
    let files = files_below(&bulk_dir(&app));
    assert_eq!(
        files.len(),
        outputs.len(),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (path, bytes) in &files {
        for f in &families {
            assert!(
                !bytes.windows(f.len()).any(|w| w == f.as_bytes()),
                "{f} in clear in {path:?}"
            );
        }
        assert!(
            !bytes.windows(12).any(|w| w == b"resourceType"),
            "clear JSON in {path:?}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{path:?}");
        }
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn since_type_and_type_filter_select_exactly(backend: Backend) {
    let app = spawn_export(backend, 1000).await;
    let obs = |code: &str, patient: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")}})
    };
    for (id, family) in [("a", "Alpha"), ("b", "Beta")] {
        let r = app
            .put_json(
                &format!("/Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let mut before = Vec::new();
    for (i, code) in ["1-1", "2-2", "3-3"].iter().enumerate() {
        let r = app
            .post_json("/Observation", &obs(code, if i == 0 { "a" } else { "b" }))
            .await;
        before.push(format!("Observation/{}", r.json()["id"].as_str().unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After `since`: Patient a updated, Patient c created, one Observation.
    app.put_json("/Patient/a", &json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Alpha"}], "gender": "female"}))
        .await;
    app.put_json(
        "/Patient/c",
        &json!({"resourceType": "Patient", "id": "c", "name": [{"family": "Gamma"}]}),
    )
    .await;
    let late = app.post_json("/Observation", &obs("1-1", "c")).await.json();
    let late = format!("Observation/{}", late["id"].as_str().unwrap());

    let (_, lines) = export_all(
        &app,
        &format!("/$export?_since={}", since.replace('+', "%2B")),
        None,
    )
    .await;
    assert_eq!(
        keys(&lines),
        vec![late.clone(), "Patient/a".into(), "Patient/c".into()]
    );

    let (_, lines) = export_all(&app, "/$export?_type=Patient", None).await;
    assert_eq!(keys(&lines), vec!["Patient/a", "Patient/b", "Patient/c"]);

    // Two _typeFilter searches of one type are OR-ed; a type without one is whole.
    let filter = "Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C1-1,Observation%3Fcode%3D3-3";
    let (_, lines) = export_all(
        &app,
        &format!("/$export?_type=Observation,Patient&_typeFilter={filter}"),
        None,
    )
    .await;
    let mut want = vec![before[0].clone(), before[2].clone(), late.clone()];
    want.extend([
        "Patient/a".to_string(),
        "Patient/b".into(),
        "Patient/c".into(),
    ]);
    want.sort();
    assert_eq!(keys(&lines), want);
    // An OR inside one search, unencoded: `code=1-1,2-2`.
    let (_, lines) = export_all(
        &app,
        "/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D1-1,2-2",
        None,
    )
    .await;
    let mut want = vec![before[0].clone(), before[1].clone(), late.clone()];
    want.sort();
    assert_eq!(keys(&lines), want);

    // POST with Parameters, the same as GET.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": "Observation?code=2-2"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}]});
    let url = status_url(&kick_off_post(&app, "/$export", &params, None).await);
    let lines = exported(&app, &manifest(&app, &url, None).await, None).await;
    assert_eq!(keys(&lines), vec![before[1].clone()]);

    // Refused kick-offs: 400 with an OperationOutcome, nothing queued.
    let jobs = app.db.count_rows("export_jobs");
    let no_prefer = app.get("/$export").await;
    assert_eq!(no_prefer.status, StatusCode::BAD_REQUEST);
    assert!(
        no_prefer.issue().1.contains("respond-async"),
        "{:?}",
        no_prefer.issue()
    );
    for bad in [
        "/$export?_since=yesterday",
        "/$export?_type=NoSuchType",
        "/$export?_typeFilter=Observation%3Fno-such-param%3D1",
        "/$export?_type=Patient&_typeFilter=Observation%3Fcode%3D1-1",
        "/$export?_outputFormat=text%2Fcsv",
        "/$export?includeAssociatedData=LatestProvenanceResources",
        "/$export?patient=Patient%2Fa",
        "/Patient/$export?_type=Organization",
        "/Patient/$export?_type=AuditEvent",
    ] {
        let r = kick_off(&app, bad, None).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{bad}");
    }
    // An unknown parameter: a warning under lenient handling, 400 under strict.
    let r = kick_off(&app, "/$export?_type=Patient&_elements=id", None).await;
    let warned = r.json();
    assert!(
        warned["issue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["severity"] == "warning"),
        "{warned}"
    );
    let url = status_url(&r);
    manifest(&app, &url, None).await;
    let r = app
        .send(
            Method::GET,
            "/$export?_type=Patient&_elements=id",
            &[("Prefer", "respond-async, handling=strict")],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.db.count_rows("export_jobs"),
        jobs + 1,
        "only the lenient kick-off made a job"
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn patient_and_group_exports_take_their_compartments(backend: Backend) {
    let app = spawn_export(backend, 1000).await;
    for p in ["p1", "p2", "p3"] {
        app.put_json(
            &format!("/Patient/{p}"),
            &json!({"resourceType": "Patient", "id": p}),
        )
        .await;
        app.put_json(
            &format!("/Observation/o-{p}"),
            &json!({"resourceType": "Observation", "id": format!("o-{p}"), "status": "final",
                "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
    }
    // Outside every compartment.
    app.put_json(
        "/Organization/org",
        &json!({"resourceType": "Organization", "id": "org", "name": "Org"}),
    )
    .await;
    // p1 a member now; p2 inactive; p3's membership ended in 2020.
    let r = app
        .put_json(
            "/Group/g",
            &json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true, "member": [
                {"entity": {"reference": "Patient/p1"}},
                {"entity": {"reference": "Patient/p2"}, "inactive": true},
                {"entity": {"reference": "Patient/p3"}, "period": {"start": "2019-01-01", "end": "2020-01-01"}}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    let (_, lines) = export_all(&app, "/Group/g/$export?_type=Patient,Observation", None).await;
    assert_eq!(keys(&lines), vec!["Observation/o-p1", "Patient/p1"]);

    let (_, lines) = export_all(&app, "/Patient/$export?_type=Patient,Observation", None).await;
    assert_eq!(
        keys(&lines),
        vec![
            "Observation/o-p1",
            "Observation/o-p2",
            "Observation/o-p3",
            "Patient/p1",
            "Patient/p2",
            "Patient/p3"
        ]
    );
    // Without _type: the compartment's types, never the Organization.
    let (_, lines) = export_all(&app, "/Patient/$export", None).await;
    assert!(!keys(&lines).iter().any(|k| k.starts_with("Organization/")));
    assert!(keys(&lines).contains(&"Observation/o-p3".to_string()));

    // POST `patient` narrows a patient-level export.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "patient", "valueReference": {"reference": "Patient/p2"}}]});
    let url = status_url(&kick_off_post(&app, "/Patient/$export", &params, None).await);
    let lines = exported(&app, &manifest(&app, &url, None).await, None).await;
    assert_eq!(keys(&lines), vec!["Observation/o-p2", "Patient/p2"]);

    let r = kick_off(&app, "/Group/nope/$export", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn a_cancelled_export_leaves_no_job_and_no_files(backend: Backend) {
    let app = spawn_export(backend, 2).await;
    for i in 0..5 {
        app.post_json(
            "/Patient",
            &json!({"resourceType": "Patient", "name": [{"family": format!("Cancel{i}")}]}),
        )
        .await;
    }
    let url = status_url(&kick_off(&app, "/$export?_type=Patient", None).await);
    let m = manifest(&app, &url, None).await;
    assert_eq!(m["output"].as_array().unwrap().len(), 3);
    assert_eq!(files_below(&bulk_dir(&app)).len(), 3);
    let file = m["output"][0]["url"].as_str().unwrap().to_string();
    let r = app.send(Method::DELETE, &url, &[], None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(app.get(&url).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&file).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.send(Method::DELETE, &url, &[], None).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(files_below(&bulk_dir(&app)).is_empty());
    assert_eq!(app.db.count_rows("export_jobs"), 0);
    assert_eq!(app.db.count_rows("export_files"), 0);
    // A status URL that names no job at all.
    let r = app.get("/$export-status/not-a-job").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// AuditEvents of one request, by request id.
async fn events_of(app: &TestApp, request_id: &str) -> Vec<Value> {
    app.audits_by_request()
        .await
        .remove(request_id)
        .unwrap_or_default()
}

async fn with_smart_only_the_owner_sees_a_job_and_grants_narrow_it(backend: Backend) {
    let app = spawn_auth(backend, |s| s.bulk.max_file_resources = 1000).await;
    let (_, admin) = client_token(&app, "system/*.cruds").await;
    let mut patients = Vec::new();
    for family in ["Owner", "Other"] {
        patients.push(crate::smart_auth::create_patient(&app, &admin, family).await);
    }
    for (i, p) in patients.iter().enumerate() {
        let category = if i == 0 { "laboratory" } else { "vital-signs" };
        let r = crate::smart_auth::fhir(
            &app,
            Method::POST,
            "/Observation",
            Some(&admin),
            Some(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                "subject": {"reference": format!("Patient/{p}")}})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let (_, exporter) = client_token(&app, "system/*.rs").await;
    let (_, stranger) = client_token(&app, "system/*.rs").await;
    let url =
        status_url(&kick_off(&app, "/$export?_type=Patient,Observation", Some(&exporter)).await);
    let m = manifest(&app, &url, Some(&exporter)).await;
    assert_eq!(m["requiresAccessToken"], true);
    let file = m["output"][0]["url"].as_str().unwrap().to_string();
    // Another client: no such job, no such file, no cancel.
    assert_eq!(
        get_as(&app, &url, Some(&stranger), "application/json")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_as(&app, &file, Some(&stranger), "application/fhir+ndjson")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let auth = bearer(&stranger);
    let r = app
        .send(
            Method::DELETE,
            &url,
            &[("Authorization", auth.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // No token at all: 401.
    assert_eq!(
        get_as(&app, &file, None, "application/fhir+ndjson")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // A download is audited once more per patient its file holds.
    let patient_file = m["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Patient")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let rid = uuid::Uuid::new_v4().to_string();
    let auth = bearer(&exporter);
    let r = app
        .send(
            Method::GET,
            &patient_file,
            &[
                ("Authorization", auth.as_str()),
                ("X-Request-Id", rid.as_str()),
                ("Accept", "application/fhir+ndjson"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = events_of(&app, &rid).await;
    let mut named: Vec<String> = events
        .iter()
        .filter(|e| support::server::is_companion_event(e))
        .flat_map(|e| {
            e["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|x| x["role"]["code"] == "1")
                .filter_map(|x| x["what"]["reference"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    named.sort();
    let mut want: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
    want.sort();
    assert_eq!(named, want, "{events:#?}");

    // A grant of lab Observations only: a system export without _type takes
    // only those; asking for Patients is refused.
    let (_, lab) = client_token(&app, "system/Observation.rs?category=laboratory").await;
    let (_, lines) = export_all(&app, "/$export", Some(&lab)).await;
    let ks = keys(&lines);
    assert_eq!(ks.len(), 1, "{ks:?}");
    assert!(ks[0].starts_with("Observation/"));
    assert_eq!(
        lines[0]["subject"]["reference"],
        format!("Patient/{}", patients[0])
    );
    let r = kick_off(&app, "/$export?_type=Patient", Some(&lab)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A patient-level export takes the compartments of the Patients the
    // caller may search: none here, so it is refused, not silently empty.
    let r = kick_off(&app, "/Patient/$export?_type=Observation", Some(&lab)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // AuditEvents only when asked, and only for a client that may search them.
    let r = kick_off(&app, "/$export?_type=AuditEvent", Some(&lab)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (_, auditor) = client_token(&app, "system/AuditEvent.rs").await;
    let (_, lines) = export_all(&app, "/$export?_type=AuditEvent", Some(&auditor)).await;
    assert!(lines.len() > 5, "{} AuditEvents", lines.len());
    assert!(lines.iter().all(|l| l["resourceType"] == "AuditEvent"));
    let (_, lines) = export_all(&app, "/$export", Some(&exporter)).await;
    assert!(!lines.iter().any(|l| l["resourceType"] == "AuditEvent"));
    // Every AuditEvent made (kick-offs, status looks, downloads and their
    // PatientQuery events, a cancel refused) meets the profiles it claims.
    crate::audit_balp::validate_all(&app).await;
    app.stop().await;
}

/// Kicks off an export of the Patients of a server process; its status URL.
async fn kick_off_patients(client: &awc::Client, base: &str) -> String {
    let r = client
        .get(format!("{base}/$export?_type=Patient"))
        .insert_header(("Prefer", "respond-async"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.headers()
        .get("content-location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// Waits until a running job has committed `n` files (it must still be
/// running: the test needs it in the middle).
async fn files_committed(client: &awc::Client, url: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "the job ended too soon");
        let progress = r
            .headers()
            .get("x-progress")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let files: u64 = progress
            .split(" in ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        if files >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no progress: {progress}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A node killed with SIGKILL in the middle of a job (after some files were
/// committed): the next start takes the job over once its lease has run out and
/// completes it, with every resource exactly once.
async fn a_killed_export_is_completed_by_the_next_start(backend: Backend) {
    let db = Database::new(backend);
    let key = db.key_file();
    let bulk = db.dir.path().join("bulk");
    let env = [
        ("FHIRGATE_BULK__MAX_FILE_RESOURCES", "1"),
        ("FHIRGATE_BULK__LEASE_SECS", "2"),
        ("FHIRGATE_BULK__DIR", bulk.to_str().unwrap()),
    ];
    let mut server =
        support::process::start(&db.url, &key, &db.dir.path().join("server.log"), &env);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let entries: Vec<Value> = (0..400)
        .map(|i| {
            json!({"resource": {"resourceType": "Patient", "id": format!("k{i}")},
            "request": {"method": "PUT", "url": format!("Patient/k{i}")}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = client
        .post(&server.base)
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(serde_json::to_vec(&bundle).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let url = kick_off_patients(&client, &server.base).await;
    // Kill once some files are committed, before the job ends.
    files_committed(&client, &url, 20).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let restarted =
        support::process::start(&db.url, &key, &db.dir.path().join("restart.log"), &env);
    let url = url.replace(&server.base, &restarted.base);
    let deadline = Instant::now() + Duration::from_secs(120);
    let m = loop {
        let mut r = client.get(&url).send().await.unwrap();
        if r.status() == StatusCode::OK {
            break r.json::<Value>().limit(1 << 24).await.unwrap();
        }
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(Instant::now() < deadline, "the job was not taken over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for out in m["output"].as_array().unwrap() {
        let file = out["url"]
            .as_str()
            .unwrap()
            .replace(&server.base, &restarted.base);
        let mut r = client.get(&file).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.body().limit(1 << 24).await.unwrap();
        for line in String::from_utf8(body.to_vec()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            *seen
                .entry(v["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 400, "every Patient exported");
    assert!(seen.values().all(|n| *n == 1), "a Patient exported twice");
    assert_eq!(m["output"].as_array().unwrap().len(), 400);
    // The files of the killed node's unfinished work are not left behind as
    // finished files: one file on disk per output.
    let on_disk: Vec<_> = files_below(&bulk)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().ends_with(".part"))
        .collect();
    assert_eq!(on_disk.len(), 400);
    // A running job cancelled: no job, no files, no folder left.
    let url = kick_off_patients(&client, &restarted.base).await;
    let job = url.rsplit('/').next().unwrap().to_string();
    files_committed(&client, &url, 5).await;
    let r = client.delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bulk.join(&job).exists() {
        assert!(
            Instant::now() < deadline,
            "the cancelled job's folder stays"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker has let go of the job by now (its next file's record failed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bulk.join(&job).exists(), "the folder came back");
    assert_eq!(
        db.count_rows(&format!("export_files WHERE job_id = '{job}'")),
        0
    );
    assert_eq!(
        db.count_rows(&format!("export_jobs WHERE job_id = '{job}'")),
        0
    );
    drop(restarted);
}

on_both_backends!(
    a_system_export_holds_every_resource_once_in_sealed_files,
    since_type_and_type_filter_select_exactly,
    patient_and_group_exports_take_their_compartments,
    a_cancelled_export_leaves_no_job_and_no_files,
    with_smart_only_the_owner_sees_a_job_and_grants_narrow_it,
    a_killed_export_is_completed_by_the_next_start,
);
