//! Version-aware updates race correctly: of concurrent updates carrying the same
//! If-Match, exactly one wins, on both backends and across two server processes
//! sharing one PostgreSQL database.

use awc::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_app, Backend};

const ROUNDS: usize = 10;
const RACERS: usize = 6;

async fn put_if_match(client: &awc::Client, url: &str, body: &Value, version: usize) -> StatusCode {
    client
        .put(url)
        .insert_header(("Content-Type", "application/fhir+json"))
        .insert_header(("If-Match", format!("W/\"{version}\"")))
        .send_body(serde_json::to_vec(body).unwrap())
        .await
        .expect("PUT")
        .status()
}

/// Races `RACERS` updates per round against the given base URLs (round-robin).
async fn race(bases: &[String]) {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .finish();
    let first = format!("{}/Patient/racer", bases[0]);
    let body = json!({"resourceType": "Patient", "id": "racer", "active": true});
    let created = client
        .put(&first)
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(serde_json::to_vec(&body).unwrap())
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    for round in 0..ROUNDS {
        let version = round + 1;
        let attempts = (0..RACERS).map(|i| {
            let url = format!("{}/Patient/racer", bases[i % bases.len()]);
            let mut b = body.clone();
            b["gender"] = json!(if i % 2 == 0 { "male" } else { "female" });
            // Each racer changes something: an update that changes nothing makes no
            // version (no_op_update), and would let a second racer's If-Match pass.
            b["name"] = json!([{"family": format!("round{round}-racer{i}")}]);
            let client = client.clone();
            async move { put_if_match(&client, &url, &b, version).await }
        });
        let statuses = join_all(attempts).await;
        let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let lost = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((won, lost), (1, RACERS - 1), "round {round}: {statuses:?}");
    }
    let mut final_read = client.get(&first).send().await.unwrap();
    let v: Value = final_read.json().await.unwrap();
    assert_eq!(v["meta"]["versionId"], (ROUNDS + 1).to_string());
}

async fn concurrent_updates_with_one_if_match_let_exactly_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    race(std::slice::from_ref(&app.base)).await;
    app.stop().await;
}

on_both_backends!(concurrent_updates_with_one_if_match_let_exactly_one_win);

#[actix_rt::test]
async fn two_server_processes_on_one_postgres_let_exactly_one_update_win() {
    let (_db, _dir, a, b) = support::process::two_pg_nodes();
    race(&[a.base.clone(), b.base.clone()]).await;
}

/// Races `RACERS` conditional creates with the same criteria; exactly one creates.
async fn race_conditional_creates(bases: &[String], round: usize) {
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .finish();
    let mrn = format!("MRN-{round}-{}", uuid::Uuid::new_v4().simple());
    let body =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]});
    let attempts = (0..RACERS).map(|i| {
        let url = format!("{}/Patient", bases[i % bases.len()]);
        let client = client.clone();
        let body = body.to_string();
        let criteria = format!("identifier=urn:mrn|{mrn}");
        async move {
            let mut r = client
                .post(&url)
                .insert_header(("Content-Type", "application/fhir+json"))
                .insert_header(("If-None-Exist", criteria))
                .send_body(body)
                .await
                .expect("POST");
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (r.status(), v["id"].as_str().unwrap_or_default().to_string())
        }
    });
    let results = join_all(attempts).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let found = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!((created, found), (1, RACERS - 1), "{results:?}");
    let ids: std::collections::BTreeSet<&String> = results.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids.len(),
        1,
        "every answer names the one resource: {results:?}"
    );
}

async fn racing_conditional_creates_make_exactly_one_resource(backend: Backend) {
    let app = spawn_app(backend).await;
    for round in 0..ROUNDS {
        race_conditional_creates(std::slice::from_ref(&app.base), round).await;
    }
    app.stop().await;
}

on_both_backends!(racing_conditional_creates_make_exactly_one_resource);

#[actix_rt::test]
async fn racing_conditional_creates_across_two_processes_make_exactly_one_resource() {
    let (_db, _dir, a, b) = support::process::two_pg_nodes();
    for round in 0..ROUNDS {
        race_conditional_creates(&[a.base.clone(), b.base.clone()], round).await;
    }
}
