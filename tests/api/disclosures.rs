//! The accounting of disclosures (HIPAA 164.528) on both backends, with
//! authorization on: a known set of accesses to one patient (a create, a read,
//! a search whose page holds the patient's Observation, an Observation create,
//! and a read refused for lack of scope) among accesses to another patient,
//! then `GET /fhir/Patient/{id}/$disclosures` by a compliance user must list
//! exactly those, oldest first, with `start`/`end` bounds (dates and
//! dateTimes), and `fhirgate audit report` (the real binary) the same rows as
//! CSV and JSON. Bad bounds are 400; a client without the audit log is refused
//! (403, audited); the report's own AuditEvent names no patient, so it is never
//! in a later report.

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use fhirgate::audit::disclosures::COLUMNS;
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use crate::smart_auth::{client_token, spawn_auth};
use crate::support::audit::{request_id, send, user_token};
use crate::support::process::cli;
use crate::support::server::{on_both_backends, Backend, Reply, TestApp};

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

/// The AuditEvents of a searchset Bundle, every page followed.
async fn all_events(app: &TestApp, token: &str, first: Reply) -> Vec<Value> {
    let mut events = Vec::new();
    let mut page = first;
    loop {
        assert_eq!(page.status, StatusCode::OK, "{}", text(&page));
        let b = page.json();
        assert_eq!(b["resourceType"], "Bundle", "{b}");
        assert_eq!(b["type"], "searchset", "{b}");
        for e in b["entry"].as_array().cloned().unwrap_or_default() {
            assert_eq!(e["search"]["mode"], "match", "{e}");
            assert_eq!(e["resource"]["resourceType"], "AuditEvent", "{e}");
            events.push(e["resource"].clone());
        }
        let next = b["link"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|u| u.strip_prefix(&app.base).unwrap_or(u).to_string());
        match next {
            Some(n) => page = send(app, Method::GET, &n, token, None, "next-page").await,
            None => return events,
        }
    }
}

/// A caller's accesses, each under the request id `{run}-{label}` and followed
/// by a pause (so that the next one is recorded at a later instant).
struct Caller<'a> {
    app: &'a TestApp,
    token: &'a str,
    run: &'a str,
}

impl Caller<'_> {
    async fn send(&self, method: Method, path: &str, body: Option<&Value>, label: &str) -> Reply {
        let request_id = format!("{}-{label}", self.run);
        let r = send(self.app, method, path, self.token, body, &request_id).await;
        pause().await;
        r
    }

    /// A create that must succeed: the new resource's id.
    async fn create(&self, path: &str, body: &Value, label: &str) -> String {
        let r = self.send(Method::POST, path, Some(body), label).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// A GET that must be answered with `status`.
    async fn get(&self, path: &str, label: &str, status: StatusCode) -> Reply {
        let r = self.send(Method::GET, path, None, label).await;
        assert_eq!(r.status, status, "{}", text(&r));
        r
    }
}

fn now() -> String {
    fhirgate::fhir::instant(fhirgate::fhir::now_micros())
}

async fn pause() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

/// A minimal RFC 4180 reader (quoted fields, doubled quotes, CRLF records).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(row.is_empty() && field.is_empty(), "the CSV ends with CRLF");
    rows
}

async fn disclosures_list_exactly_the_accesses_to_the_patient(backend: Backend) {
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 0).await;
    let (writer, writer_token) =
        client_token(&app, "system/Patient.cruds system/Observation.cruds").await;
    let (outsider, outsider_token) = client_token(&app, "system/Observation.rs").await;
    let auditor = user_token(
        &app,
        "cora",
        "Practitioner/c1",
        Role::Compliance,
        "openid fhirUser user/AuditEvent.rs",
    )
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let rid = |l: &str| format!("{run}-{l}");
    pause().await;
    let start = now();
    pause().await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Disclosed"}]});
    let as_writer = Caller {
        app: &app,
        token: &writer_token,
        run: &run,
    };
    let as_outsider = Caller {
        app: &app,
        token: &outsider_token,
        run: &run,
    };
    let p1 = as_writer.create("/Patient", &patient, "create-p1").await;
    let p2 = as_writer.create("/Patient", &patient, "create-p2").await;
    let obs = |p: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": format!("Patient/{p}")}})
    };
    as_writer
        .create("/Observation", &obs(&p1), "create-o1")
        .await;
    as_writer
        .create("/Observation", &obs(&p2), "create-o2")
        .await;
    as_writer
        .get(&format!("/Patient/{p1}"), "read-p1", StatusCode::OK)
        .await;
    as_writer
        .get(&format!("/Patient/{p2}"), "read-p2", StatusCode::OK)
        .await;
    let middle = now();
    pause().await;
    // A comma in the query: the report's CSV must quote the entity field.
    let search = format!("/Observation?subject=Patient/{p1}&status=final,amended");
    let r = as_writer.get(&search, "search-o1", StatusCode::OK).await;
    assert_eq!(r.json()["total"], 1, "{}", text(&r));
    let denied = StatusCode::FORBIDDEN;
    as_outsider
        .get(&format!("/Patient/{p1}"), "denied-p1", denied)
        .await;
    as_outsider
        .get("/Observation?status=final", "search-all", StatusCode::OK)
        .await;
    let end = now();
    pause().await;

    let expected: BTreeSet<String> = [
        "create-p1",
        "create-o1",
        "read-p1",
        "search-o1",
        "denied-p1",
    ]
    .iter()
    .map(|l| rid(l))
    .collect();
    // The search over every Observation returned p1's too: a disclosure of p1.
    let with_all = |mut s: BTreeSet<String>| {
        s.insert(rid("search-all"));
        s
    };
    let ask = |query: String, label: &'static str| {
        let (app, auditor, p1) = (&app, &auditor, &p1);
        async move {
            let first = send(
                app,
                Method::GET,
                &format!("/Patient/{p1}/$disclosures{query}"),
                auditor,
                None,
                label,
            )
            .await;
            all_events(app, auditor, first).await
        }
    };
    let events = ask(format!("?start={start}&_count=2"), "report-1").await;
    let got: BTreeSet<String> = events.iter().map(request_id).collect();
    assert_eq!(
        got,
        with_all(expected.clone()),
        "$disclosures since {start} ({backend:?})"
    );
    let recorded: Vec<&str> = events
        .iter()
        .map(|e| e["recorded"].as_str().unwrap())
        .collect();
    let mut sorted = recorded.clone();
    sorted.sort();
    assert_eq!(recorded, sorted, "oldest first");
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| request_id(e) == rid("denied-p1"))
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["outcome"], "4", "{}", denied[0]);

    // Bounds: a dateTime window, and whole days.
    let events = ask(format!("?start={start}&end={middle}"), "report-2").await;
    let got: BTreeSet<String> = events.iter().map(request_id).collect();
    let before_middle: BTreeSet<String> = ["create-p1", "create-o1", "read-p1"]
        .iter()
        .map(|l| rid(l))
        .collect();
    assert_eq!(got, before_middle, "start={start}&end={middle}");
    let events = ask(format!("?start={middle}&end={end}"), "report-3").await;
    let got: BTreeSet<String> = events.iter().map(request_id).collect();
    let after_middle: BTreeSet<String> = ["search-o1", "denied-p1", "search-all"]
        .iter()
        .map(|l| rid(l))
        .collect();
    assert_eq!(got, after_middle, "start={middle}&end={end}");
    // Whole days (two when the test ran over midnight UTC).
    let (today, last_day) = (&start[..10], &end[..10]);
    let events = ask(format!("?start={today}&end={last_day}"), "report-4").await;
    let got: BTreeSet<String> = events.iter().map(request_id).collect();
    assert!(
        got.is_superset(&with_all(expected.clone())),
        "whole day {today}: {got:?}"
    );
    // Earlier reports are not disclosures: they are not listed.
    assert!(!got.iter().any(|g| g.starts_with("report-")), "{got:?}");
    let events = ask(format!("?end={start}"), "report-5").await;
    assert!(events.is_empty(), "nothing of this patient before {start}");

    // The report is audited, naming no patient.
    let audits = app.audits_by_request().await;
    let own = &audits["report-1"];
    assert_eq!(own.len(), 1, "{own:?}");
    assert_eq!(own[0]["outcome"], "0");
    assert_eq!(own[0]["subtype"][1]["code"], "disclosures", "{}", own[0]);
    assert!(
        !own[0]["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["role"]["code"] == "1"),
        "{}",
        own[0]
    );

    // Bad requests and refusals.
    for (query, label) in [
        ("?start=yesterday", "bad-start"),
        ("?end=2026-13-01", "bad-end"),
        ("?start=2026-12-05&end=2026-12-04", "reversed"),
        ("?patient=x", "unknown-param"),
    ] {
        let r = send(
            &app,
            Method::GET,
            &format!("/Patient/{p1}/$disclosures{query}"),
            &auditor,
            None,
            label,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", text(&r));
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let r = send(
        &app,
        Method::GET,
        "/Patient/a$b/$disclosures",
        &auditor,
        None,
        "bad-id",
    )
    .await;
    assert!(r.status.is_client_error(), "{}", text(&r));
    for (token, label) in [
        (&writer_token, "refused-writer"),
        (&outsider_token, "refused-outsider"),
    ] {
        let r = send(
            &app,
            Method::GET,
            &format!("/Patient/{p1}/$disclosures"),
            token,
            None,
            label,
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    let r = app.get(&format!("/Patient/{p1}/$disclosures")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", text(&r));
    let audits = app.audits_by_request().await;
    for label in ["refused-writer", "refused-outsider", "bad-start"] {
        let ev = &audits[label][0];
        assert_eq!(ev["outcome"], "4", "{label}: {ev}");
    }

    // `fhirgate audit report`: the same AuditEvents, as CSV and JSON.
    let db = &app.db;
    let since = start.clone();
    let report = |format: &'static str| {
        let out = cli(
            db,
            &[
                "audit",
                "report",
                "--patient",
                &format!("Patient/{p1}"),
                "--since",
                &since,
                "--until",
                &end,
                "--format",
                format,
            ],
        );
        assert!(
            out.status.success(),
            "audit report --format {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json_rows: Vec<Value> = serde_json::from_str(&report("json")).unwrap();
    let api = ask(format!("?start={since}&end={end}"), "report-6").await;
    assert_eq!(json_rows.len(), api.len(), "{json_rows:?}");
    for (row, ev) in json_rows.iter().zip(&api) {
        let keys: Vec<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, COLUMNS);
        assert_eq!(row["recorded"], ev["recorded"]);
        assert_eq!(row["action"], ev["action"]);
        assert_eq!(row["address"], "127.0.0.1", "{row}");
    }
    let csv = parse_csv(&report("csv"));
    assert_eq!(csv[0], COLUMNS);
    assert_eq!(csv.len(), api.len() + 1, "{csv:?}");
    let by_label = |label: &str| -> &Vec<String> {
        let i = api
            .iter()
            .position(|e| request_id(e) == rid(label))
            .unwrap();
        &csv[i + 1]
    };
    let denied = by_label("denied-p1");
    assert!(denied[3].starts_with("4: "), "{denied:?}");
    assert_eq!(denied[5], outsider);
    assert_eq!(denied[1], "R");
    let read = by_label("read-p1");
    assert_eq!(
        (read[1].as_str(), read[2].as_str(), read[3].as_str()),
        ("R", "read", "0")
    );
    assert_eq!(read[5], writer);
    assert!(read[7].starts_with(&format!("Patient/{p1}")), "{read:?}");
    let search = by_label("search-o1");
    assert_eq!(search[1], "E");
    assert!(
        search[7].contains(&format!(
            "/fhir/Observation?subject=Patient/{p1}&status=final,amended"
        )),
        "the decoded query, its comma kept inside a quoted field: {search:?}"
    );
    let out = cli(
        db,
        &[
            "audit",
            "report",
            "--patient",
            "Patient/p1",
            "--since",
            "last week",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(db, &["audit", "report", "--patient", "Observation/o"]);
    assert!(!out.status.success());
    app.stop().await;
}

on_both_backends!(disclosures_list_exactly_the_accesses_to_the_patient);
