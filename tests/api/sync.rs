//! The offline sync protocol of docs/sync.md, played on both backends: client B
//! goes offline holding a Patient and an Observation; meanwhile client A updates
//! the Patient, creates one Observation and deletes B's. B's update of its stale
//! copy is refused (412) and succeeds after re-reading and merging; B's catch-up
//! by `_history?_since=` sees every change, the delete included (a search does
//! not); B's create, sent twice because the first answer was "lost", exists once.

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

async fn put_if_match(
    app: &TestApp,
    path: &str,
    body: &Value,
    version: &str,
) -> crate::support::server::Reply {
    let b = serde_json::to_vec(body).unwrap();
    let if_match = format!("W/\"{version}\"");
    app.send(
        Method::PUT,
        path,
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-Match", if_match.as_str()),
        ],
        Some(&b),
    )
    .await
}

async fn create_once(
    app: &TestApp,
    body: &Value,
    identifier: &str,
) -> crate::support::server::Reply {
    let b = serde_json::to_vec(body).unwrap();
    let criteria = format!("identifier={identifier}");
    app.send(
        Method::POST,
        "/Observation",
        &[
            ("Content-Type", "application/fhir+json"),
            ("If-None-Exist", criteria.as_str()),
        ],
        Some(&b),
    )
    .await
}

async fn an_offline_client_catches_up_merges_and_creates_once(backend: Backend) {
    let app = spawn_app(backend).await;
    // Both clients start in sync.
    let r = app
        .post_json("/Patient", &json!({"resourceType": "Patient", "name": [{"family": "Offline"}], "gender": "female"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let patient = r.json();
    let pid = patient["id"].as_str().unwrap().to_string();
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": format!("Patient/{pid}")}})
    };
    let r = app.post_json("/Observation", &obs("8867-4")).await;
    let held_obs = r.json()["id"].as_str().unwrap().to_string();
    // B's sync point: the newest lastUpdated it has seen (the server's clock).
    let sync_point = r.json()["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();

    // A, online: updates the Patient, adds an Observation, deletes B's.
    let mut by_a = patient.clone();
    by_a["telecom"] = json!([{"system": "phone", "value": "555-0199"}]);
    let r = put_if_match(&app, &format!("/Patient/{pid}"), &by_a, "1").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app.post_json("/Observation", &obs("8310-5")).await;
    let new_obs = r.json()["id"].as_str().unwrap().to_string();
    let r = app.delete(&format!("/Observation/{held_obs}")).await;
    assert!(r.status.is_success());

    // B, back online: its edit of version 1 is refused, nothing written.
    let mut by_b = patient.clone();
    by_b["birthDate"] = json!("1980-02-29");
    let r = put_if_match(&app, &format!("/Patient/{pid}"), &by_b, "1").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let current = app.get(&format!("/Patient/{pid}")).await;
    assert_eq!(current.json()["meta"]["versionId"], "2");
    // Re-read, merge (B's field onto A's version), write with the new If-Match.
    let mut merged = current.json();
    merged["birthDate"] = json!("1980-02-29");
    let r = put_if_match(&app, &format!("/Patient/{pid}"), &merged, "2").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let now = app.get(&format!("/Patient/{pid}")).await.json();
    assert_eq!(now["telecom"][0]["value"], "555-0199", "A's change kept");
    assert_eq!(now["birthDate"], "1980-02-29", "B's change kept");

    // Catch-up: _history since the sync point has every change, the delete included.
    let since = sync_point.replace('+', "%2B");
    let h = app
        .get(&format!("/_history?_since={since}&_count=100"))
        .await;
    assert_eq!(
        h.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&h.body)
    );
    let entries: Vec<(String, String)> = h.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["request"]["method"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["request"]["url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for expected in [
        ("DELETE".to_string(), format!("Observation/{held_obs}")),
        ("POST".to_string(), "Observation".to_string()),
        ("PUT".to_string(), format!("Patient/{pid}")),
    ] {
        assert!(
            entries.contains(&expected),
            "{expected:?} not in {entries:?}"
        );
    }
    let puts = entries
        .iter()
        .filter(|e| e.1 == format!("Patient/{pid}"))
        .count();
    assert_eq!(puts, 2, "both updates of the Patient: {entries:?}");
    // A search since the sync point shows the new Observation, not the delete.
    let s = app
        .get(&format!("/Observation?_lastUpdated=ge{since}"))
        .await
        .json();
    let ids: Vec<&str> = s["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(
        ids.contains(&new_obs.as_str()) && !ids.contains(&held_obs.as_str()),
        "{ids:?}"
    );

    // B's offline create, sent twice (the first answer was lost): one resource.
    let mut made_offline = obs("29463-7");
    made_offline["identifier"] =
        json!([{"system": "urn:uuid:5d2c7c1e-client-b", "value": "7f1e0e52-obs-1"}]);
    let key = "urn:uuid:5d2c7c1e-client-b|7f1e0e52-obs-1";
    let first = create_once(&app, &made_offline, key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = create_once(&app, &made_offline, key).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let found = app
        .get(&format!("/Observation?identifier={key}"))
        .await
        .json();
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(an_offline_client_catches_up_merges_and_creates_once);
