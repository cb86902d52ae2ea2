//! Batch and transaction Bundles against a real server on SQLite and PostgreSQL.

mod support;

use awc::http::StatusCode;
use serde_json::{json, Value};
use support::server::{spawn_app, Backend};

async fn smoke(backend: Backend) {
    let app = spawn_app(backend).await;
    let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient", "name": [{"family": "Smoke"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.post_json("", &b).await;
    println!("{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.status, StatusCode::OK);
    let v: Value = r.json();
    let loc = v["entry"][1]["response"]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let obs = app
        .get(&format!("/{}", loc.split("/_history").next().unwrap()))
        .await
        .json();
    println!("{obs}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(smoke);
