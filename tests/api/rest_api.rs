//! The REST interactions against a real server, on SQLite and PostgreSQL. Each
//! test ends by checking that every request left exactly one AuditEvent.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, spawn_with, Backend, Database};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Peter", "James"]}], "gender": "male", "birthDate": "1974-12-25", "active": true})
}

async fn create_read_update_delete_lifecycle(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.post_json("/Patient", &patient("Chalmers")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let location = created.header("location").unwrap();
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("{}/Patient/{id}/_history/1", app.base));
    assert_eq!(created.header("etag").unwrap(), "W/\"1\"");
    assert!(created.header("last-modified").is_some());
    assert_eq!(body["meta"]["versionId"], "1");

    let read = app.get(&format!("/Patient/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), body);
    assert_eq!(
        read.header("content-type").unwrap(),
        "application/fhir+json; charset=utf-8"
    );

    let mut changed = body.clone();
    changed["active"] = json!(false);
    let updated = app.put_json(&format!("/Patient/{id}"), &changed).await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    assert_eq!(updated.header("etag").unwrap(), "W/\"2\"");

    let v1 = app.get(&format!("/Patient/{id}/_history/1")).await;
    assert_eq!(v1.status, StatusCode::OK);
    assert_eq!(v1.json()["active"], true);
    assert_eq!(
        app.get(&format!("/Patient/{id}/_history/9")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/Patient/{id}/_history/x")).await.status,
        StatusCode::NOT_FOUND
    );

    let deleted = app.delete(&format!("/Patient/{id}")).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        app.get(&format!("/Patient/{id}")).await.status,
        StatusCode::GONE
    );
    assert_eq!(
        app.get(&format!("/Patient/{id}/_history/2")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/Patient/{id}")).await.status,
        StatusCode::OK,
        "deleting twice is idempotent"
    );

    let history = app.get(&format!("/Patient/{id}/_history")).await.json();
    assert_eq!(history["type"], "history");
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[2]["request"]["method"], "POST");

    // Re-creating a deleted resource by update is a create.
    let mut again = body.clone();
    again["active"] = json!(true);
    let recreated = app.put_json(&format!("/Patient/{id}"), &again).await;
    assert_eq!(recreated.status, StatusCode::CREATED);
    assert_eq!(recreated.json()["meta"]["versionId"], "4");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn update_as_create_with_a_client_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = patient("Levin");
    p["id"] = json!("pat-1");
    let r = app.put_json("/Patient/pat-1", &p).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location").unwrap(),
        format!("{}/Patient/pat-1/_history/1", app.base)
    );
    // The same body again changes nothing: 200 with version 1 (no_op_update).
    let r = app.put_json("/Patient/pat-1", &p).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["meta"]["versionId"], "1");
    p["active"] = json!(false);
    let r = app.put_json("/Patient/pat-1", &p).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["meta"]["versionId"], "2");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn version_aware_updates_and_conditional_reads(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.post_json("/Patient", &patient("Chalmers")).await.json();
    let id = created["id"].as_str().unwrap();
    let path = format!("/Patient/{id}");
    // A changed body: an update that changes nothing makes no version (no_op_update).
    let mut changed = created.clone();
    changed["active"] = json!(false);
    let body = serde_json::to_vec(&changed).unwrap();
    let ct = ("Content-Type", "application/fhir+json");

    let stale = app
        .send(
            Method::PUT,
            &path,
            &[ct, ("If-Match", "W/\"7\"")],
            Some(&body),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.issue().0, "conflict");
    let ok = app
        .send(
            Method::PUT,
            &path,
            &[ct, ("If-Match", "W/\"1\"")],
            Some(&body),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let bad = app
        .send(
            Method::PUT,
            &path,
            &[ct, ("If-Match", "yesterday")],
            Some(&body),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let stale_delete = app
        .send(Method::DELETE, &path, &[("If-Match", "W/\"1\"")], None)
        .await;
    assert_eq!(stale_delete.status, StatusCode::PRECONDITION_FAILED);

    let same = app
        .send(Method::GET, &path, &[("If-None-Match", "W/\"2\"")], None)
        .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    let other = app
        .send(Method::GET, &path, &[("If-None-Match", "W/\"1\"")], None)
        .await;
    assert_eq!(other.status, StatusCode::OK);
    let last_modified = other.header("last-modified").unwrap();
    let fresh = app
        .send(
            Method::GET,
            &path,
            &[("If-Modified-Since", &last_modified)],
            None,
        )
        .await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED);
    let old = app
        .send(
            Method::GET,
            &path,
            &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
            None,
        )
        .await;
    assert_eq!(old.status, StatusCode::OK);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn formats_summary_elements_and_prefer(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = patient("Chalmers");
    p["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter Chalmers</div>"});
    p["communication"] = json!([{"language": {"text": "English"}}]);
    let created = app.post_json("/Patient", &p).await.json();
    let id = created["id"].as_str().unwrap();
    let path = format!("/Patient/{id}");

    let xml = app
        .send(
            Method::GET,
            &path,
            &[("Accept", "application/fhir+xml")],
            None,
        )
        .await;
    assert_eq!(xml.status, StatusCode::OK);
    assert_eq!(
        xml.header("content-type").unwrap(),
        "application/fhir+xml; charset=utf-8"
    );
    let text = String::from_utf8(xml.body.clone()).unwrap();
    assert!(text.contains("<family value=\"Chalmers\"/>"), "{text}");
    let via_param = app.get(&format!("{path}?_format=xml")).await;
    assert_eq!(via_param.body, xml.body);
    assert_eq!(
        app.get(&format!("{path}?_format=text/turtle")).await.status,
        StatusCode::NOT_ACCEPTABLE
    );
    assert_eq!(
        app.send(Method::GET, &path, &[("Accept", "text/html")], None)
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE
    );

    // XML in: the same resource written as XML reads back as the same JSON.
    let xml_update = text.replace("<active value=\"true\"/>", "<active value=\"false\"/>");
    let r = app
        .send(
            Method::PUT,
            &path,
            &[("Content-Type", "application/fhir+xml")],
            Some(xml_update.as_bytes()),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let back = r.json();
    assert_eq!(back["active"], false);
    assert_eq!(back["name"], created["name"]);

    let pretty = app.get(&format!("{path}?_pretty=true")).await;
    assert!(String::from_utf8_lossy(&pretty.body).contains("\n  \"resourceType\""));

    let summary = app.get(&format!("{path}?_summary=true")).await.json();
    assert!(
        summary.get("name").is_some()
            && summary.get("communication").is_none()
            && summary.get("text").is_none()
    );
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");
    let text_only = app.get(&format!("{path}?_summary=text")).await.json();
    assert!(text_only.get("text").is_some() && text_only.get("name").is_none());
    let data = app.get(&format!("{path}?_summary=data")).await.json();
    assert!(data.get("text").is_none() && data.get("communication").is_some());
    let elements = app.get(&format!("{path}?_elements=birthDate")).await.json();
    assert!(
        elements.get("birthDate").is_some()
            && elements.get("name").is_none()
            && elements.get("id").is_some()
    );
    assert_eq!(
        app.get(&format!("{path}?_summary=maybe")).await.status,
        StatusCode::BAD_REQUEST
    );

    let body = serde_json::to_vec(&patient("Prefer")).unwrap();
    let ct = ("Content-Type", "application/fhir+json");
    let minimal = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("Prefer", "return=minimal")],
            Some(&body),
        )
        .await;
    assert_eq!(minimal.status, StatusCode::CREATED);
    assert!(minimal.body.is_empty() && minimal.header("location").is_some());
    let outcome = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("Prefer", "return=OperationOutcome")],
            Some(&body),
        )
        .await;
    assert_eq!(outcome.json()["resourceType"], "OperationOutcome");
    let full = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("Prefer", "return=representation")],
            Some(&body),
        )
        .await;
    assert_eq!(full.json()["resourceType"], "Patient");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn bad_input_gets_a_precise_outcome_and_changes_nothing(backend: Backend) {
    let db = Database::new(backend);
    let app = spawn_with(db, |s| s.server.max_body_bytes = 4096).await;
    let json_ct = ("Content-Type", "application/fhir+json");
    struct Case {
        method: Method,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        body: Option<Vec<u8>>,
        status: StatusCode,
        code: &'static str,
        expression: Option<&'static str>,
    }
    let case = |method: Method,
                path: &'static str,
                headers: Vec<(&'static str, &'static str)>,
                body: Option<&str>,
                status: StatusCode,
                code: &'static str,
                expression: Option<&'static str>| Case {
        method,
        path,
        headers,
        body: body.map(|b| b.as_bytes().to_vec()),
        status,
        code,
        expression,
    };
    let big = format!(
        "{{\"resourceType\":\"Patient\",\"name\":[{{\"text\":\"{}\"}}]}}",
        "x".repeat(5000)
    );
    let cases = vec![
        case(Method::POST, "/Patient", vec![json_ct], Some("{\"resourceType\":"), StatusCode::BAD_REQUEST, "structure", None),
        case(Method::POST, "/Patient", vec![json_ct], Some("{\"resourceType\":\"Patient\",\"nickname\":\"x\"}"), StatusCode::BAD_REQUEST, "structure", Some("Patient.nickname")),
        case(Method::POST, "/Patient", vec![json_ct], Some("{\"resourceType\":\"Patient\",\"birthDate\":\"1974-13-01\"}"), StatusCode::BAD_REQUEST, "value", Some("Patient.birthDate")),
        case(Method::POST, "/Patient", vec![json_ct], Some("{\"resourceType\":\"Patient\",\"active\":\"true\"}"), StatusCode::BAD_REQUEST, "structure", Some("Patient.active")),
        case(Method::POST, "/Patient", vec![json_ct], Some("{\"resourceType\":\"Observation\",\"status\":\"final\",\"code\":{\"text\":\"x\"}}"), StatusCode::BAD_REQUEST, "invalid", None),
        case(Method::POST, "/Patient", vec![("Content-Type", "text/plain")], Some("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", None),
        case(Method::POST, "/Patient", vec![], Some("{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", None),
        case(Method::POST, "/Patient", vec![json_ct], None, StatusCode::BAD_REQUEST, "required", None),
        case(Method::POST, "/Patient", vec![("Content-Type", "application/fhir+xml")], Some("<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"yes\"/></Patient>"), StatusCode::BAD_REQUEST, "value", None),
        case(Method::POST, "/Patient", vec![("Content-Type", "application/fhir+xml")], Some("<!DOCTYPE x [<!ENTITY a \"b\">]><Patient xmlns=\"http://hl7.org/fhir\"/>"), StatusCode::BAD_REQUEST, "structure", None),
        case(Method::POST, "/Patient", vec![json_ct], Some(big.as_str()), StatusCode::PAYLOAD_TOO_LARGE, "too-costly", None),
        case(Method::POST, "/Unicorn", vec![json_ct], Some("{\"resourceType\":\"Unicorn\"}"), StatusCode::NOT_FOUND, "not-found", None),
        case(Method::GET, "/Unicorn/1", vec![], None, StatusCode::NOT_FOUND, "not-found", None),
        case(Method::GET, "/Patient/a_b", vec![], None, StatusCode::BAD_REQUEST, "value", None),
        case(Method::GET, "/Patient/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", vec![], None, StatusCode::BAD_REQUEST, "value", None),
        case(Method::GET, "/Patient/nobody", vec![], None, StatusCode::NOT_FOUND, "not-found", None),
        case(Method::PUT, "/Patient/p1", vec![json_ct], Some("{\"resourceType\":\"Patient\",\"id\":\"p2\"}"), StatusCode::BAD_REQUEST, "invalid", Some("Patient.id")),
        case(Method::PUT, "/Patient/p1", vec![json_ct], Some("{\"resourceType\":\"Patient\"}"), StatusCode::BAD_REQUEST, "required", Some("Patient.id")),
        case(Method::POST, "/Patient/p1", vec![json_ct], Some("{}"), StatusCode::METHOD_NOT_ALLOWED, "not-supported", None),
        case(Method::POST, "/metadata", vec![json_ct], Some("{}"), StatusCode::METHOD_NOT_ALLOWED, "not-supported", None),
        case(Method::PUT, "/AuditEvent/a1", vec![json_ct], Some("{\"resourceType\":\"AuditEvent\",\"id\":\"a1\"}"), StatusCode::METHOD_NOT_ALLOWED, "not-supported", None),
        case(Method::DELETE, "/AuditEvent/a1", vec![], None, StatusCode::METHOD_NOT_ALLOWED, "not-supported", None),
        case(Method::POST, "/AuditEvent", vec![json_ct], Some("{\"resourceType\":\"AuditEvent\"}"), StatusCode::METHOD_NOT_ALLOWED, "not-supported", None),
        case(Method::DELETE, "/Patient/nobody", vec![], None, StatusCode::NOT_FOUND, "not-found", None),
        case(Method::GET, "/Patient/x/_history?_since=yesterday", vec![], None, StatusCode::BAD_REQUEST, "value", None),
    ];
    for c in &cases {
        let r = app
            .send(c.method.clone(), c.path, &c.headers, c.body.as_deref())
            .await;
        assert_eq!(
            r.status,
            c.status,
            "{} {}: {}",
            c.method,
            c.path,
            String::from_utf8_lossy(&r.body)
        );
        let (code, diagnostics, expression) = r.issue();
        assert_eq!(code, c.code, "{} {}: {diagnostics}", c.method, c.path);
        assert!(!diagnostics.is_empty());
        if let Some(e) = c.expression {
            assert_eq!(
                expression.as_deref(),
                Some(e),
                "{} {}: {diagnostics}",
                c.method,
                c.path
            );
        }
    }
    // Nothing was stored: system history (which holds every version of every
    // resource but the AuditEvents) is empty.
    let history = app.get("/_history?_count=1000").await.json();
    assert!(history.get("entry").is_none(), "{history}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn history_pages_with_stable_links(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..7 {
        assert_eq!(app.post_json("/Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("o{i}")}})).await.status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut url = "/Observation/_history?_count=3".to_string();
    let mut pages = 0;
    loop {
        let page = app.get(&url).await.json();
        pages += 1;
        for e in page["entry"].as_array().into_iter().flatten() {
            seen.push(e["resource"]["code"]["text"].as_str().unwrap().to_string());
        }
        // A write between pages does not shift the pages already defined.
        if pages == 1 {
            app.post_json("/Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "late"}})).await;
        }
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["o6", "o5", "o4", "o3", "o2", "o1", "o0"]);
    let type_history = app.get("/Observation/_history").await.json();
    assert_eq!(type_history["entry"].as_array().unwrap().len(), 8);
    let system = app.get("/_history?_count=5").await.json();
    assert_eq!(system["entry"].as_array().unwrap().len(), 5);
    let future = app
        .get("/Observation/_history?_since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert!(future.get("entry").is_none());
    assert_eq!(
        app.get("/Observation/_history?_count=x").await.status,
        StatusCode::BAD_REQUEST
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn metadata_states_what_is_implemented(backend: Backend) {
    let app = spawn_app(backend).await;
    let cs = app.get("/metadata").await.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146, "every R4 resource type");
    let audit = resources
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap();
    let codes: Vec<&str> = audit["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert!(!codes.contains(&"update") && !codes.contains(&"delete") && !codes.contains(&"create"));
    assert!(codes.contains(&"search-type"), "AuditEvents are searchable");
    let patient_revincludes = resources.iter().find(|r| r["type"] == "Patient").unwrap()
        ["searchRevInclude"]
        .as_array()
        .unwrap();
    assert!(
        !patient_revincludes
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("AuditEvent:"))),
        "AuditEvents are searched on their own, never reached by _revinclude"
    );
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let params: Vec<(&str, &str)> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["type"].as_str().unwrap()))
        .collect();
    for want in [
        ("family", "string"),
        ("birthdate", "date"),
        ("_id", "token"),
        ("general-practitioner", "reference"),
    ] {
        assert!(params.contains(&want), "{want:?} in {params:?}");
    }
    let location = resources.iter().find(|r| r["type"] == "Location").unwrap();
    assert!(
        !location["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "near"),
        "near is not implemented and not claimed"
    );
    assert!(patient["searchRevInclude"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "Observation:subject"));
    assert!(cs["rest"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["code"] == "search-system"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn audit_events_record_who_what_and_the_patient(backend: Backend) {
    let app = spawn_app(backend).await;
    let pat = app.post_json("/Patient", &patient("Chalmers")).await.json();
    let pid = pat["id"].as_str().unwrap();
    let obs = app
        .post_json("/Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await
        .json();
    let oid = obs["id"].as_str().unwrap();
    let read = app.get(&format!("/Observation/{oid}")).await;
    assert_eq!(read.status, StatusCode::OK);
    let audits = app.audits_by_request().await;
    let read_event = audits
        .values()
        .flatten()
        .find(|e| {
            e["action"] == "R"
                && e["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["what"]["reference"] == format!("Observation/{oid}/_history/1"))
        })
        .expect("the read is audited");
    assert_eq!(read_event["type"]["code"], "rest");
    assert_eq!(read_event["subtype"][0]["code"], "read");
    assert_eq!(read_event["outcome"], "0");
    assert_eq!(
        read_event["meta"]["profile"][0],
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    );
    let entities = read_event["entity"].as_array().unwrap();
    assert!(entities.iter().any(|e| e["role"]["code"] == "1" && e["what"]["reference"] == format!("Patient/{pid}")), "{read_event}");
    let agents = read_event["agent"].as_array().unwrap();
    assert_eq!(agents[0]["network"]["address"], "127.0.0.1");
    assert!(
        !read_event.to_string().contains("Chalmers"),
        "an AuditEvent holds references, not content"
    );
    // AuditEvents are readable but not writable through the API.
    let aid = read_event["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/AuditEvent/{aid}")).await.status,
        StatusCode::OK
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    create_read_update_delete_lifecycle,
    update_as_create_with_a_client_id,
    version_aware_updates_and_conditional_reads,
    formats_summary_elements_and_prefer,
    bad_input_gets_a_precise_outcome_and_changes_nothing,
    history_pages_with_stable_links,
    metadata_states_what_is_implemented,
    audit_events_record_who_what_and_the_patient,
);

async fn conditional_create_finds_its_match(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut p = patient("Chalmers");
    p["identifier"] = json!([{"system": "http://hospital.example.org/mrn", "value": "MRN-1"}]);
    let body = serde_json::to_vec(&p).unwrap();
    let ct = ("Content-Type", "application/fhir+json");
    let criteria = (
        "If-None-Exist",
        "identifier=http://hospital.example.org/mrn|MRN-1",
    );
    let first = app
        .send(Method::POST, "/Patient", &[ct, criteria], Some(&body))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let id = first.json()["id"].as_str().unwrap().to_string();
    let second = app
        .send(Method::POST, "/Patient", &[ct, criteria], Some(&body))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.json()["id"], id.as_str());
    for other in [
        "identifier=MRN-1",
        "identifier=http://hospital.example.org/mrn|MRN-1,x|y",
        "gender=male&identifier=MRN-1",
    ] {
        let r = app
            .send(
                Method::POST,
                "/Patient",
                &[ct, ("If-None-Exist", other)],
                Some(&body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{other}");
        assert_eq!(r.json()["id"], id.as_str(), "{other}");
    }
    let by_id = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("If-None-Exist", &format!("_id={id}"))],
            Some(&body),
        )
        .await;
    assert_eq!(by_id.status, StatusCode::OK);
    // Different criteria that match nothing create.
    let mut p2 = p.clone();
    p2["identifier"][0]["value"] = json!("MRN-2");
    let body2 = serde_json::to_vec(&p2).unwrap();
    let fresh = app
        .send(
            Method::POST,
            "/Patient",
            &[
                ct,
                (
                    "If-None-Exist",
                    "identifier=http://hospital.example.org/mrn|MRN-2",
                ),
            ],
            Some(&body2),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    // Both carry gender=male now: two matches -> 412, nothing written.
    let two = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("If-None-Exist", "gender=male")],
            Some(&body),
        )
        .await;
    assert_eq!(two.status, StatusCode::PRECONDITION_FAILED);
    // Criteria are a full search: both are named Chalmers.
    let by_name = app
        .send(
            Method::POST,
            "/Patient",
            &[ct, ("If-None-Exist", "name=chal")],
            Some(&body),
        )
        .await;
    assert_eq!(by_name.status, StatusCode::PRECONDITION_FAILED);
    // Conditional criteria are strict: an unknown parameter or modifier is refused.
    for bad in [
        "nonsense=Chalmers",
        "identifier:nonsense=x",
        "_count=1&gender=male",
    ] {
        let r = app
            .send(
                Method::POST,
                "/Patient",
                &[ct, ("If-None-Exist", bad)],
                Some(&body),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // A deleted match no longer counts.
    app.delete(&format!("/Patient/{id}")).await;
    let after_delete = app
        .send(Method::POST, "/Patient", &[ct, criteria], Some(&body))
        .await;
    assert_eq!(after_delete.status, StatusCode::CREATED);
    let patients = app.get("/Patient/_history?_count=100").await.json();
    let creates = patients["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["request"]["method"] == "POST")
        .count();
    assert_eq!(creates, 3);
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(conditional_create_finds_its_match);
