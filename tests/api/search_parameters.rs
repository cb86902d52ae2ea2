//! SearchParameters created through the API: refused when they cannot be indexed,
//! not searchable until a `$reindex` of their base type has run, then searchable
//! for old and new resources alike; the registry follows on a second node. The
//! reindex job itself is in the database, so its status is visible from any node.

use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

const COLOUR: &str = "http://example.org/fhir/StructureDefinition/favourite-colour";

fn colour_param() -> Value {
    json!({
        "resourceType": "SearchParameter", "id": "patient-colour",
        "url": "http://example.org/fhir/SearchParameter/patient-colour",
        "name": "colour", "status": "active", "description": "Favourite colour",
        "code": "colour", "base": ["Patient"], "type": "string",
        "expression": format!("Patient.extension.where(url = '{COLOUR}').value")
    })
}

fn patient(id: &str, colour: &str) -> Value {
    json!({"resourceType": "Patient", "id": id,
           "extension": [{"url": COLOUR, "valueString": colour}]})
}

fn ids(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Polls the job's status URL until it is done (the job runs in the background).
async fn wait_for_job(app: &TestApp, status_url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = app.get(status_url).await;
        assert_eq!(r.status, StatusCode::OK);
        let p = r.json();
        let status = p["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "status")
            .unwrap()["valueCode"]
            .clone();
        if status == "done" {
            return p;
        }
        assert_ne!(status, "failed", "{p}");
        assert!(
            Instant::now() < deadline,
            "the reindex job did not finish: {p}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_new_parameter_is_searchable_after_reindex(backend: Backend) {
    let app = spawn_app(backend).await;
    for (id, c) in [("p1", "Blue"), ("p2", "green"), ("p3", "blue-grey")] {
        assert_eq!(
            app.put_json(&format!("/Patient/{id}"), &patient(id, c))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    // An expression that does not compile, or a base the server does not know: 422.
    let mut broken = colour_param();
    broken["id"] = json!("broken");
    broken["expression"] = json!("Patient.extension.where(");
    let r = app.put_json("/SearchParameter/broken", &broken).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.issue().2.as_deref(), Some("SearchParameter.expression"));
    let mut bad_base = colour_param();
    bad_base["id"] = json!("bad-base");
    bad_base["base"] = json!(["Nonsense"]);
    assert_eq!(
        app.put_json("/SearchParameter/bad-base", &bad_base)
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    assert_eq!(
        app.put_json("/SearchParameter/patient-colour", &colour_param())
            .await
            .status,
        StatusCode::CREATED
    );
    // Not usable until reindexed: ignored with a warning, or 400 when strict.
    let waiting = app.get("/Patient?colour=blue").await.json();
    assert_eq!(ids(&waiting), vec!["p1", "p2", "p3"]);
    let outcome = waiting["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("$reindex"));
    let strict = app
        .send(
            Method::GET,
            "/Patient?colour=blue",
            &[("Prefer", "handling=strict")],
            None,
        )
        .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    // Written while the parameter is pending: indexed already.
    assert_eq!(
        app.put_json("/Patient/p4", &patient("p4", "BLUE"))
            .await
            .status,
        StatusCode::CREATED
    );

    let started = app.send(Method::POST, "/Patient/$reindex", &[], None).await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let status_url = started.header("content-location").unwrap();
    let done = wait_for_job(&app, &status_url).await;
    let processed = done["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "processed")
        .unwrap()["valueInteger"]
        .clone();
    assert_eq!(processed, 4);
    // Activation follows the job; poll until the parameter is searchable.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app
            .send(
                Method::GET,
                "/Patient?colour=blue",
                &[("Prefer", "handling=strict")],
                None,
            )
            .await;
        if r.status == StatusCode::OK {
            assert_eq!(ids(&r.json()), vec!["p1", "p3", "p4"]);
            break;
        }
        assert!(Instant::now() < deadline, "the parameter was not activated");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ids(&app.get("/Patient?colour:exact=green").await.json()),
        vec!["p2"]
    );
    assert_eq!(
        app.put_json("/Patient/p5", &patient("p5", "blueish"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        ids(&app.get("/Patient?colour=blue").await.json()),
        vec!["p1", "p3", "p4", "p5"]
    );
    let missing = app.get("/fhir/$reindex/no-such-job").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(a_new_parameter_is_searchable_after_reindex);

#[actix_rt::test]
async fn a_second_node_learns_the_new_parameter() {
    let (_db, _dir, a, b) = support::process::two_pg_nodes();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let put = |base: &str, path: &str, body: Value| {
        let url = format!("{base}{path}");
        let client = client.clone();
        async move {
            client
                .put(url)
                .insert_header(("Content-Type", "application/fhir+json"))
                .send_json(&body)
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        put(&a.base, "/Patient/p1", patient("p1", "blue")).await,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&a.base, "/SearchParameter/patient-colour", colour_param()).await,
        StatusCode::CREATED
    );
    let started = client
        .post(format!("{}/Patient/$reindex", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // Node b has its own registry; it reloads when the database says it changed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut r = client
            .get(format!("{}/Patient?colour=blue", b.base))
            .insert_header(("Prefer", "handling=strict"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            let body: Value = serde_json::from_slice(&r.body().await.unwrap()).unwrap();
            assert_eq!(ids(&body), vec!["p1"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b never learned the parameter"
        );
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
}
