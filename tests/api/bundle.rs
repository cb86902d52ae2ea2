//! Batch and transaction Bundles (`POST /fhir`) and the conditional interactions at
//! the type level, against a real server on SQLite and PostgreSQL: identities
//! rewritten into references (nested, contained, extensions, uri and canonical
//! elements, relative references under a RESTful fullUrl), each conditional form in
//! a Bundle and over HTTP, rollback of a transaction whose last entry fails (checked
//! in the database tables themselves), batch partial success, GET entries, limits
//! (413), Bundle types that belong to `/fhir/Bundle` (400). Every test ends by
//! checking that each request and each entry left its AuditEvent.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::server::{
    on_both_backends, spawn_app, spawn_with, Backend, Database, Reply, TestApp,
};

const FHIR_JSON: (&str, &str) = ("Content-Type", "application/fhir+json");

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn batch(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

fn post_entry(full_url: &str, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": t}})
}

fn assert_status(r: &Reply, status: StatusCode) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
}

/// `Type/id` of a response entry's location.
fn located(entry: &Value) -> String {
    let loc = entry["response"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("no location in {entry}"));
    loc.split("/_history").next().unwrap().to_string()
}

async fn read(app: &TestApp, reference: &str) -> Value {
    let r = app.get(&format!("/{reference}")).await;
    assert_status(&r, StatusCode::OK);
    r.json()
}

async fn search_total(app: &TestApp, query: &str) -> u64 {
    let r = app.get(query).await;
    assert_status(&r, StatusCode::OK);
    r.json()["total"].as_u64().unwrap()
}

const PAT: &str = "urn:uuid:6a0b7f0e-0000-4000-8000-000000000001";
const ENC: &str = "urn:uuid:6a0b7f0e-0000-4000-8000-000000000002";
const QUE: &str = "urn:uuid:6a0b7f0e-0000-4000-8000-000000000003";
const PRA: &str = "http://example.org/fhir/Practitioner/prac-1";

async fn transaction_rewrites_references_across_entries(backend: Backend) {
    let app = spawn_app(backend).await;
    let bundle = transaction(vec![
        // Observation first: references are resolved whatever the entry order.
        post_entry(
            "urn:uuid:6a0b7f0e-0000-4000-8000-000000000004",
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": PAT},
                "encounter": {"reference": ENC},
                // A relative reference from an entry whose fullUrl is a placeholder:
                // resolved against the server's base, so it is left alone.
                "basedOn": [{"reference": "ServiceRequest/unrelated"}],
                "performer": [{"reference": PRA}],
                "contained": [{
                    "resourceType": "Provenance",
                    "id": "prov",
                    "target": [{"reference": PAT}],
                    "recorded": "2020-01-01T00:00:00Z",
                    "agent": [{"who": {"reference": "Practitioner/prac-1"}}]
                }],
                "extension": [{
                    "url": "http://example.org/ext/nested",
                    "extension": [
                        {"url": "who", "valueReference": {"reference": PAT}},
                        {"url": "where", "valueUri": ENC}
                    ]
                }, {
                    // dom-3: a contained resource is referred to from its container.
                    "url": "http://example.org/ext/provenance",
                    "valueReference": {"reference": "#prov"}
                }],
                "_status": {"extension": [{"url": "http://example.org/ext/by", "valueReference": {"reference": PRA}}]}
            }),
        ),
        post_entry(
            PAT,
            json!({"resourceType": "Patient", "name": [{"family": "Ref"}],
            "generalPractitioner": [{"reference": PRA}]}),
        ),
        post_entry(
            ENC,
            json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": PAT},
            "participant": [{"individual": {"reference": "Practitioner/prac-1"}}]}),
        ),
        // A RESTful fullUrl: relative references from entries with the same base,
        // and absolute references to the fullUrl, name the new id.
        post_entry(
            PRA,
            json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}),
        ),
        post_entry(
            QUE,
            json!({"resourceType": "Questionnaire", "status": "active",
            "url": "http://example.org/q/1"}),
        ),
        post_entry(
            "http://example.org/fhir/QuestionnaireResponse/qr",
            json!({"resourceType": "QuestionnaireResponse", "status": "completed",
                "questionnaire": QUE, "subject": {"reference": PAT},
                "author": {"reference": "Practitioner/prac-1"}}),
        ),
    ]);
    let r = app.post_json("", &bundle).await;
    assert_status(&r, StatusCode::OK);
    let resp = r.json();
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    for e in entries {
        assert_eq!(e["response"]["status"], "201 Created", "{e}");
        assert!(e["response"]["etag"] == "W/\"1\"" && e["response"]["lastModified"].is_string());
    }
    let (obs, pat, enc, pra, que, qr) = (
        located(&entries[0]),
        located(&entries[1]),
        located(&entries[2]),
        located(&entries[3]),
        located(&entries[4]),
        located(&entries[5]),
    );
    assert!(pra.starts_with("Practitioner/") && pra != "Practitioner/prac-1");
    let o = read(&app, &obs).await;
    assert_eq!(o["subject"]["reference"], pat.as_str());
    assert_eq!(o["encounter"]["reference"], enc.as_str());
    assert_eq!(o["basedOn"][0]["reference"], "ServiceRequest/unrelated");
    assert_eq!(o["performer"][0]["reference"], pra.as_str());
    assert_eq!(o["contained"][0]["target"][0]["reference"], pat.as_str());
    // Inside the contained resource the entry's base is the server's: left alone.
    assert_eq!(
        o["contained"][0]["agent"][0]["who"]["reference"],
        "Practitioner/prac-1"
    );
    assert_eq!(
        o["extension"][0]["extension"][0]["valueReference"]["reference"],
        pat.as_str()
    );
    // uri elements get the absolute URL of the entry they name.
    assert_eq!(
        o["extension"][0]["extension"][1]["valueUri"],
        format!("{}/{enc}", app.base)
    );
    assert_eq!(
        o["_status"]["extension"][0]["valueReference"]["reference"],
        pra.as_str()
    );
    let p = read(&app, &pat).await;
    assert_eq!(p["generalPractitioner"][0]["reference"], pra.as_str());
    let e = read(&app, &enc).await;
    // Not rewritten: Encounter's fullUrl is a placeholder, so `Practitioner/prac-1`
    // means the server's own Practitioner/prac-1.
    assert_eq!(
        e["participant"][0]["individual"]["reference"],
        "Practitioner/prac-1"
    );
    let q = read(&app, &qr).await;
    assert_eq!(q["questionnaire"], format!("{}/{que}", app.base));
    // Same base as the Practitioner's fullUrl: the relative reference names it.
    assert_eq!(q["author"]["reference"], pra.as_str());
    // The index holds the rewritten references.
    let pid = pat.trim_start_matches("Patient/");
    assert_eq!(
        search_total(&app, &format!("/Observation?subject=Patient/{pid}")).await,
        1
    );
    assert_eq!(
        search_total(&app, &format!("/Encounter?subject={pat}")).await,
        1
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn a_placeholder_that_names_no_entry_fails_the_transaction(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.db.written_rows();
    let r = app
        .post_json(
            "",
            &transaction(vec![
                post_entry(PAT, json!({"resourceType": "Patient"})),
                post_entry(ENC, json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000ff"}})),
            ]),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let (code, diag, at) = r.issue();
    assert_eq!(code, "not-found");
    assert!(
        diag.contains("entry 1 (POST Observation)")
            && diag.contains("urn:uuid:6a0b7f0e-0000-4000-8000-0000000000ff"),
        "{diag}"
    );
    assert_eq!(
        at.as_deref(),
        Some("Bundle.entry[1].resource.subject.reference")
    );
    assert_eq!(app.db.written_rows(), before);
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// The AuditEvents of one request, by request id (the Bundle's and its entries').
async fn audits_of(app: &TestApp, request_id: &str) -> Vec<Value> {
    app.audits_by_request()
        .await
        .remove(request_id)
        .unwrap_or_default()
}

async fn send_with_id(app: &TestApp, body: &Value, request_id: &str) -> Reply {
    let b = serde_json::to_vec(body).unwrap();
    app.send(
        Method::POST,
        "",
        &[FHIR_JSON, ("X-Request-Id", request_id)],
        Some(&b),
    )
    .await
}

async fn a_transaction_whose_last_entry_fails_leaves_nothing_behind(backend: Backend) {
    let app = spawn_app(backend).await;
    let r = app
        .put_json(
            "/Patient/existing",
            &json!({"resourceType": "Patient", "id": "existing"}),
        )
        .await;
    assert_status(&r, StatusCode::CREATED);
    let before = app.db.written_rows();
    let audits_before = app.db.count_rows("audit_log");
    // The PUT is processed last (after the POSTs); its ifMatch is stale, so it fails
    // after the other entries were written inside the transaction.
    let bundle = transaction(vec![
        post_entry(
            PAT,
            json!({"resourceType": "Patient", "name": [{"family": "Gone"}],
            "identifier": [{"system": "urn:mrn", "value": "rollback-1"}], "birthDate": "1970-01-01"}),
        ),
        post_entry(
            ENC,
            json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": PAT}, "effectiveDateTime": "2020-01-01",
            "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
        ),
        json!({"resource": {"resourceType": "Patient", "id": "existing", "active": true},
               "request": {"method": "PUT", "url": "Patient/existing", "ifMatch": "W/\"7\""}}),
    ]);
    let rid = uuid::Uuid::new_v4().to_string();
    let r = send_with_id(&app, &bundle, &rid).await;
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    let (code, diag, at) = r.issue();
    assert_eq!(code, "conflict");
    assert!(diag.starts_with("entry 2 (PUT Patient/existing)"), "{diag}");
    assert_eq!(at.as_deref(), Some("Bundle.entry[2]"));
    // Nothing of the first two entries is left: no resource, no version, no index row.
    assert_eq!(app.db.written_rows(), before);
    assert_eq!(
        search_total(&app, "/Patient?identifier=urn:mrn|rollback-1").await,
        0
    );
    assert_eq!(
        read(&app, "Patient/existing").await["meta"]["versionId"],
        "1"
    );
    // The failure is audited: the Bundle and its three entries, all failed.
    let events = audits_of(&app, &rid).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.iter().all(|e| e["outcome"] == "4"), "{events:?}");
    assert!(events
        .iter()
        .any(|e| e["subtype"][0]["code"] == "transaction"));
    assert!(events
        .iter()
        .any(|e| e["outcomeDesc"].as_str().unwrap_or("").contains("ifMatch")));
    // Plus the search and the read above.
    assert_eq!(app.db.count_rows("audit_log"), audits_before + 4 + 2);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn every_invalid_entry_of_a_transaction_is_reported_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = app.db.written_rows();
    let r = app
        .post_json(
            "",
            &transaction(vec![
                post_entry(
                    PAT,
                    json!({"resourceType": "Patient", "birthDate": "1970-02-30"}),
                ),
                post_entry(ENC, json!({"resourceType": "Patient"})),
                json!({"resource": {"resourceType": "Patient", "gender": 7},
                       "request": {"method": "PUT", "url": "Patient/p1"}}),
                json!({"request": {"method": "FETCH", "url": "Patient/p1"}}),
            ]),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let oo = r.json();
    let at: Vec<&str> = oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap_or(""))
        .collect();
    assert!(at.contains(&"Bundle.entry[0].resource.birthDate"), "{oo}");
    assert!(at.contains(&"Bundle.entry[2].resource.gender"), "{oo}");
    assert!(at.contains(&"Bundle.entry[3].request.method"), "{oo}");
    assert!(!at.iter().any(|a| a.starts_with("Bundle.entry[1]")), "{oo}");
    assert_eq!(app.db.written_rows(), before);
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// Conditional writes of the transaction test, entries 0 to 5.
fn conditional_writes() -> Vec<Value> {
    vec![
        // ifNoneExist whose one match (Patient/a) this transaction deletes (DELETE
        // comes first): no match any more, so it creates.
        json!({"fullUrl": PAT, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M1"}]},
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|M1"}}),
        // ifNoneExist with none: created (written as a whole search URL, as some
        // clients do).
        json!({"fullUrl": ENC, "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "NEW"}]},
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": "Patient?identifier=urn:mrn|NEW"}}),
        // Conditional update with one match: updates Patient/b.
        json!({"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M2"}], "active": true},
               "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|M2"}}),
        // Conditional update without match and with an id: created with it.
        json!({"resource": {"resourceType": "Patient", "id": "chosen", "identifier": [{"system": "urn:mrn", "value": "M3"}]},
               "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|M3"}}),
        // Conditional delete with one match.
        json!({"request": {"method": "DELETE", "url": "Patient?_id=a"}}),
        // Conditional delete without a match: nothing to delete, no failure.
        json!({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|NOBODY"}}),
    ]
}

async fn conditional_entries_in_a_transaction(backend: Backend) {
    let app = spawn_app(backend).await;
    for (id, mrn) in [
        ("a", "M1"),
        ("b", "M2"),
        ("c", "DUP"),
        ("d", "DUP"),
        ("e", "M5"),
    ] {
        let r = app
            .put_json(
                &format!("/Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id,
                    "identifier": [{"system": "urn:mrn", "value": mrn}]}),
            )
            .await;
        assert_status(&r, StatusCode::CREATED);
    }
    // Conditional references, and references to the matched/created entries; one
    // that matches nothing fails the whole transaction, with its element.
    let mut entries = conditional_writes();
    entries.push(post_entry(
        QUE,
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient?identifier=urn:mrn|M2"},
        "focus": [{"reference": PAT}, {"reference": ENC}],
        "hasMember": [{"reference": "Observation?_id=none"}]}),
    ));
    let r = app.post_json("", &transaction(entries)).await;
    // `Observation?_id=none` matches nothing: the whole transaction fails, with the element.
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    let (_, diag, at) = r.issue();
    assert!(
        diag.contains("Observation?_id=none") && diag.contains("entry 6"),
        "{diag}"
    );
    assert_eq!(
        at.as_deref(),
        Some("Bundle.entry[6].resource.hasMember[0].reference")
    );
    assert_eq!(
        search_total(&app, "/Patient?identifier=urn:mrn|NEW").await,
        0
    );
    assert_eq!(read(&app, "Patient/a").await["id"], "a");

    // The same without the unresolvable reference.
    let mut entries = conditional_writes();
    entries.extend([
                post_entry(QUE, json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "subject": {"reference": "Patient?identifier=urn:mrn|M2"},
                    "focus": [{"reference": PAT}, {"reference": ENC}, {"reference": "Patient?identifier=urn:mrn|NEW"},
                              {"reference": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000e5"}]})),
                // GET entries run after the writes and see them.
                json!({"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|NEW"}}),
                json!({"request": {"method": "GET", "url": "Patient/b"}}),
                // ifNoneExist with one match: nothing created, the fullUrl names it.
                json!({"fullUrl": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000e5",
                       "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M5"}]},
                       "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|M5"}}),
    ]);
    let r = app.post_json("", &transaction(entries)).await;
    assert_status(&r, StatusCode::OK);
    let e = r.json()["entry"].as_array().unwrap().clone();
    assert_eq!(e[0]["response"]["status"], "201 Created");
    let m1 = located(&e[0]);
    assert_ne!(m1, "Patient/a");
    assert_eq!(e[1]["response"]["status"], "201 Created");
    let new = located(&e[1]);
    assert_eq!(e[2]["response"]["status"], "200 OK");
    assert_eq!(located(&e[2]), "Patient/b");
    assert_eq!(e[3]["response"]["status"], "201 Created");
    assert_eq!(located(&e[3]), "Patient/chosen");
    assert_eq!(e[4]["response"]["status"], "200 OK");
    assert_eq!(e[5]["response"]["status"], "200 OK");
    assert!(e[5]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("nothing was deleted"));
    let obs = read(&app, &located(&e[6])).await;
    assert_eq!(obs["subject"]["reference"], "Patient/b");
    assert_eq!(obs["focus"][0]["reference"], m1.as_str());
    assert_eq!(obs["focus"][1]["reference"], new.as_str());
    assert_eq!(obs["focus"][2]["reference"], new.as_str());
    assert_eq!(obs["focus"][3]["reference"], "Patient/e");
    assert_eq!(e[7]["response"]["status"], "200 OK");
    assert_eq!(e[7]["resource"]["total"], 1);
    assert_eq!(e[8]["resource"]["active"], true);
    assert_eq!(e[8]["response"]["etag"], "W/\"2\"");
    assert_eq!(e[9]["response"]["status"], "200 OK");
    assert_eq!(located(&e[9]), "Patient/e");
    let gone = app.get("/Patient/a").await;
    assert_status(&gone, StatusCode::GONE);
    assert_eq!(
        search_total(&app, "/Patient?identifier=urn:mrn|NEW").await,
        1
    );
    assert_eq!(
        search_total(&app, "/Patient?identifier=urn:mrn|M5").await,
        1
    );

    // Criteria that match several resources: 412, nothing changes.
    for entry in [
        json!({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|DUP"}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|DUP"}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|DUP"}}),
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=urn:mrn|DUP"}},
               "request": {"method": "POST", "url": "Observation"}}),
        // ifMatch per entry.
        json!({"resource": {"resourceType": "Patient", "id": "b"}, "request": {"method": "PUT", "url": "Patient/b", "ifMatch": "W/\"1\""}}),
        json!({"request": {"method": "DELETE", "url": "Patient/b", "ifMatch": "W/\"1\""}}),
    ] {
        let before = app.db.written_rows();
        let r = app.post_json("", &transaction(vec![entry.clone()])).await;
        assert_status(&r, StatusCode::PRECONDITION_FAILED);
        assert_eq!(app.db.written_rows(), before, "{entry}");
    }
    // Bad criteria are a 400 at the element that holds them.
    let r = app
        .post_json(
            "",
            &transaction(vec![
                json!({"request": {"method": "DELETE", "url": "Patient?nosuchparam=1"}}),
            ]),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert_eq!(r.issue().2.as_deref(), Some("Bundle.entry[0].request.url"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn patch_entries_and_identity_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    for (id, mrn) in [("p1", "P1"), ("p2", "P2")] {
        app.put_json(
            &format!("/Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:mrn", "value": mrn}], "gender": "male"}),
        )
        .await;
    }
    use base64::Engine as _;
    let json_patch = base64::engine::general_purpose::STANDARD
        .encode(br#"[{"op": "replace", "path": "/gender", "value": "female"}]"#);
    let r = app
        .post_json(
            "",
            &transaction(vec![
                json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
                       "request": {"method": "PATCH", "url": "Patient/p1"}}),
                json!({"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                          {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                          {"name": "name", "valueString": "active"}, {"name": "value", "valueBoolean": true}]}]},
                       "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|P2"}}),
            ]),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(read(&app, "Patient/p1").await["gender"], "female");
    let p2 = read(&app, "Patient/p2").await;
    assert_eq!(
        (p2["active"].clone(), p2["meta"]["versionId"].clone()),
        (json!(true), json!("2"))
    );
    // Two entries that change one resource are refused (R4: identities must not overlap).
    let r = app
        .post_json(
            "",
            &transaction(vec![
                json!({"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "PUT", "url": "Patient/p1"}}),
                json!({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|P1"}}),
            ]),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert!(
        r.issue().1.contains("both change Patient/p1"),
        "{:?}",
        r.issue()
    );
    // A body id that disagrees with the URL.
    let r = app
        .post_json(
            "",
            &transaction(vec![json!({"resource": {"resourceType": "Patient", "id": "other"}, "request": {"method": "PUT", "url": "Patient/p1"}})]),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert_eq!(r.issue().2.as_deref(), Some("Bundle.entry[0].resource.id"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn conditional_interactions_over_http(backend: Backend) {
    let app = spawn_app(backend).await;
    let patient = |mrn: &str| json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]});
    // PUT ?criteria, no match, no id: created with a server id.
    let r = app
        .put_json("/Patient?identifier=urn:mrn|H1", &patient("H1"))
        .await;
    assert_status(&r, StatusCode::CREATED);
    let h1 = r.json()["id"].as_str().unwrap().to_string();
    assert!(r
        .header("location")
        .unwrap()
        .contains(&format!("/Patient/{h1}/_history/1")));
    // One match: updated.
    let mut body = patient("H1");
    body["active"] = json!(true);
    let r = app.put_json("/Patient?identifier=urn:mrn|H1", &body).await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json()["id"], h1.as_str());
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    // One match, a body id that disagrees: 400.
    let mut wrong = patient("H1");
    wrong["id"] = json!("not-it");
    let r = app.put_json("/Patient?identifier=urn:mrn|H1", &wrong).await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    // No match, an id: created with that id; a later PUT with other criteria naming it: 409.
    let mut with_id = patient("H2");
    with_id["id"] = json!("h2");
    let r = app
        .put_json("/Patient?identifier=urn:mrn|H2", &with_id)
        .await;
    assert_status(&r, StatusCode::CREATED);
    assert_eq!(r.json()["id"], "h2");
    let r = app
        .put_json("/Patient?identifier=urn:mrn|H9", &with_id)
        .await;
    assert_status(&r, StatusCode::CONFLICT);
    // If-Match applies to the matched resource.
    let b = serde_json::to_vec(&patient("H1")).unwrap();
    let r = app
        .send(
            Method::PUT,
            "/Patient?identifier=urn:mrn|H1",
            &[FHIR_JSON, ("If-Match", "W/\"1\"")],
            Some(&b),
        )
        .await;
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    // Several matches: 412 for update, patch and delete.
    app.put_json(
        "/Patient/d1",
        &json!({"resourceType": "Patient", "id": "d1", "gender": "other"}),
    )
    .await;
    app.put_json(
        "/Patient/d2",
        &json!({"resourceType": "Patient", "id": "d2", "gender": "other"}),
    )
    .await;
    let r = app.put_json("/Patient?gender=other", &patient("X")).await;
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    let r = app.delete("/Patient?gender=other").await;
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    let patch = br#"[{"op": "add", "path": "/active", "value": false}]"#;
    let jp = ("Content-Type", "application/json-patch+json");
    let r = app
        .send(Method::PATCH, "/Patient?gender=other", &[jp], Some(patch))
        .await;
    assert_status(&r, StatusCode::PRECONDITION_FAILED);
    // PATCH ?criteria with one match.
    let r = app
        .send(Method::PATCH, "/Patient?_id=d1", &[jp], Some(patch))
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json()["active"], false);
    // ...and none: 404.
    let r = app
        .send(Method::PATCH, "/Patient?_id=nobody", &[jp], Some(patch))
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);
    // DELETE ?criteria: one match deleted, none is an ordinary delete of nothing (200).
    let r = app.delete("/Patient?_id=d1").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"3\""));
    assert_status(&app.get("/Patient/d1").await, StatusCode::GONE);
    let r = app.delete("/Patient?_id=d1").await;
    assert_status(&r, StatusCode::OK);
    assert!(
        r.issue().1.contains("nothing was deleted"),
        "{:?}",
        r.issue()
    );
    // Without criteria: 405; bad criteria: 400; AuditEvents: 405.
    assert_status(
        &app.put_json("/Patient", &patient("Z")).await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert_status(
        &app.delete("/Patient").await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert_status(
        &app.delete("/Patient?nosuch=1").await,
        StatusCode::BAD_REQUEST,
    );
    assert_status(
        &app.delete("/AuditEvent?_id=x").await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    // The CapabilityStatement says what exists.
    let cs = app.get("/metadata").await.json();
    let patient_cs = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient_cs["conditionalUpdate"], true);
    assert_eq!(patient_cs["conditionalDelete"], "single");
    let interactions: Vec<&str> = cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert!(interactions.contains(&"transaction") && interactions.contains(&"batch"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn a_batch_runs_each_entry_on_its_own(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_json(
        "/Patient/b1",
        &json!({"resourceType": "Patient", "id": "b1"}),
    )
    .await;
    let rid = uuid::Uuid::new_v4().to_string();
    let r = send_with_id(
        &app,
        &batch(vec![
            post_entry(PAT, json!({"resourceType": "Patient", "name": [{"family": "Ok"}]})),
            post_entry(ENC, json!({"resourceType": "Patient", "birthDate": "not-a-date"})),
            json!({"resource": {"resourceType": "Patient", "id": "b1", "active": true},
                   "request": {"method": "PUT", "url": "Patient/b1", "ifMatch": "W/\"5\""}}),
            json!({"request": {"method": "GET", "url": "Patient/b1"}}),
            json!({"request": {"method": "GET", "url": "Patient/nobody"}}),
            json!({"request": {"method": "DELETE", "url": "Patient/nobody"}}),
            // Entries of a batch are independent: a placeholder cannot name another entry.
            post_entry(QUE, json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": PAT}})),
            json!({"request": {"method": "GET", "url": "Patient?_id=b1"}}),
            json!({"request": {"method": "GET", "url": "Patient/b1/_history/1"}}),
            json!({"request": {"method": "HEAD", "url": "Patient/b1"}}),
            json!({"request": {"method": "GET", "url": "Patient/b1/_history"}}),
        ]),
        &rid,
    )
    .await;
    assert_status(&r, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["type"], "batch-response");
    let statuses: Vec<&str> = v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "412 Precondition Failed",
            "200 OK",
            "404 Not Found",
            "404 Not Found",
            "400 Bad Request",
            "200 OK",
            "200 OK",
            "200 OK",
            "501 Not Implemented"
        ]
    );
    let e = &v["entry"];
    assert_eq!(
        e[1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.birthDate"
    );
    assert!(e[6]["response"]["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("batch"));
    assert_eq!(e[3]["resource"]["id"], "b1");
    assert_eq!(e[7]["resource"]["type"], "searchset");
    assert_eq!(e[8]["resource"]["meta"]["versionId"], "1");
    assert_eq!(e[9]["response"]["etag"], "W/\"1\"");
    assert!(e[9].get("resource").is_none(), "HEAD carries no resource");
    read(&app, &located(&e[0])).await;
    // Each entry has its AuditEvent, with its own outcome (besides them, the
    // search entry's PatientQuery events).
    let mut events = audits_of(&app, &rid).await;
    events.retain(|e| !crate::support::server::is_companion_event(e));
    assert_eq!(events.len(), 12);
    let failed = events.iter().filter(|e| e["outcome"] != "0").count();
    assert_eq!(failed, 6, "{events:?}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn bundles_of_other_types_belong_to_the_bundle_endpoint(backend: Backend) {
    let app = spawn_app(backend).await;
    for t in ["document", "message", "collection", "searchset", "history"] {
        let patient = json!({"fullUrl": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000aa", "resource": {"resourceType": "Patient"}});
        // Each type valid by its own rules (bdl-11, bdl-12, bdl-3, bdl-4), so that
        // storing it under /fhir/Bundle succeeds.
        let entries = match t {
            "document" => {
                json!([{"fullUrl": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000ab", "resource": {
                "resourceType": "Composition", "status": "final", "type": {"text": "note"},
                "date": "2020-01-01", "author": [{"display": "Dr. A"}], "title": "Note"}}, patient])
            }
            "message" => {
                json!([{"fullUrl": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000ac", "resource": {
                "resourceType": "MessageHeader", "eventCoding": {"system": "http://example.org/events", "code": "e"},
                "source": {"endpoint": "http://example.org/source"}}}, patient])
            }
            "history" => json!([{"fullUrl": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000aa",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"}, "response": {"status": "201"}}]),
            _ => json!([patient]),
        };
        let mut b = json!({"resourceType": "Bundle", "type": t, "entry": entries});
        if t == "document" || t == "message" {
            b["identifier"] = json!({"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6a0b7f0e-0000-4000-8000-0000000000bb"});
            b["timestamp"] = json!("2020-01-01T00:00:00Z");
        }
        let r = app.post_json("", &b).await;
        assert_status(&r, StatusCode::BAD_REQUEST);
        let (_, diag, at) = r.issue();
        assert!(
            diag.contains(&format!("`{t}`")) && diag.contains("[base]/Bundle"),
            "{diag}"
        );
        assert_eq!(at.as_deref(), Some("Bundle.type"));
        let stored = app.post_json("/Bundle", &b).await;
        assert_status(&stored, StatusCode::CREATED);
        assert_eq!(stored.json()["type"], t);
    }
    let r = app.post_json("", &json!({"resourceType": "Patient"})).await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let r = app
        .send(Method::POST, "", &[FHIR_JSON], Some(b"{not json"))
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn limits_answer_413(backend: Backend) {
    let app = spawn_with(Database::new(backend), |s| {
        s.bundle.max_entries = 3;
        s.server.max_body_bytes = 4096;
    })
    .await;
    let entries: Vec<Value> = (0..4)
        .map(|i| {
            post_entry(
                &format!("urn:uuid:6a0b7f0e-0000-4000-8000-00000000010{i}"),
                json!({"resourceType": "Patient"}),
            )
        })
        .collect();
    let r = app.post_json("", &transaction(entries.clone())).await;
    assert_status(&r, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, diag, _) = r.issue();
    assert_eq!(code, "too-costly");
    assert!(
        diag.contains("4 entries") && diag.contains("at most 3"),
        "{diag}"
    );
    let r = app.post_json("", &batch(entries[..3].to_vec())).await;
    assert_status(&r, StatusCode::OK);
    let big = post_entry(
        PAT,
        json!({"resourceType": "Patient", "name": [{"text": "x".repeat(5000)}]}),
    );
    let r = app.post_json("", &transaction(vec![big])).await;
    assert_status(&r, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.issue().1.contains("4096 bytes"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn an_xml_transaction_and_prefer_representation(backend: Backend) {
    let app = spawn_app(backend).await;
    let xml = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
<entry><fullUrl value="{PAT}"/><resource><Patient><name><family value="Xml"/></name></Patient></resource>
<request><method value="POST"/><url value="Patient"/></request></entry>
<entry><fullUrl value="{ENC}"/><resource><Observation><status value="final"/><code><text value="x"/></code><subject><reference value="{PAT}"/></subject></Observation></resource>
<request><method value="POST"/><url value="Observation"/></request></entry></Bundle>"#
    );
    let r = app
        .send(
            Method::POST,
            "?_format=json",
            &[
                ("Content-Type", "application/fhir+xml"),
                ("Prefer", "return=representation"),
            ],
            Some(xml.as_bytes()),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let v = r.json();
    let pat = located(&v["entry"][0]);
    assert_eq!(v["entry"][0]["resource"]["name"][0]["family"], "Xml");
    assert_eq!(
        v["entry"][1]["resource"]["subject"]["reference"],
        pat.as_str()
    );
    assert_eq!(
        v["entry"][1]["fullUrl"],
        format!("{}/{}", app.base, located(&v["entry"][1]))
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// A transaction that stores a collection Bundle: the stored Bundle's own `urn:uuid:`
/// references name its own entries and are kept as sent (issue 13, item 5), while the
/// transaction's placeholders are still rewritten.
async fn a_bundle_stored_by_a_transaction_keeps_its_own_references(backend: Backend) {
    let app = spawn_app(backend).await;
    let inner_patient = "urn:uuid:22222222-2222-4222-8222-222222222222";
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:44444444-4444-4444-8444-444444444444",
         "resource": {"resourceType": "Patient", "name": [{"family": "Outer"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
         "resource": {"resourceType": "Bundle", "type": "collection", "entry": [
            {"fullUrl": inner_patient, "resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": inner_patient},
                          "performer": [{"reference": "urn:uuid:44444444-4444-4444-8444-444444444444"}]}}
         ]},
         "request": {"method": "POST", "url": "Bundle"}}
    ]});
    let r = app.post_json("", &tx).await;
    assert_status(&r, StatusCode::OK);
    let entries = r.json()["entry"].as_array().unwrap().clone();
    let outer = located(&entries[0]);
    let stored = read(&app, &located(&entries[1])).await;
    let obs = &stored["entry"][1]["resource"];
    assert_eq!(obs["subject"]["reference"], inner_patient, "{stored}");
    // A placeholder of the transaction itself is not a reference of the inner Bundle's
    // entries: it is kept as sent too (the inner Bundle is a document of its own).
    assert_eq!(
        obs["performer"][0]["reference"], "urn:uuid:44444444-4444-4444-8444-444444444444",
        "{stored}"
    );
    assert!(outer.starts_with("Patient/"), "{outer}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    transaction_rewrites_references_across_entries,
    a_placeholder_that_names_no_entry_fails_the_transaction,
    a_transaction_whose_last_entry_fails_leaves_nothing_behind,
    every_invalid_entry_of_a_transaction_is_reported_at_once,
    conditional_entries_in_a_transaction,
    patch_entries_and_identity_rules,
    conditional_interactions_over_http,
    a_batch_runs_each_entry_on_its_own,
    bundles_of_other_types_belong_to_the_bundle_endpoint,
    limits_answer_413,
    an_xml_transaction_and_prefer_representation,
    a_bundle_stored_by_a_transaction_keeps_its_own_references,
);
