//! Transactions under concurrency and crashes: racing transactions whose conditional
//! creates overlap make no duplicates (both backends, and two server processes on one
//! PostgreSQL); a server killed with SIGKILL in the middle of a transaction load
//! leaves every transaction whole or absent after the restart (both backends).

use std::collections::BTreeMap;
use std::time::Duration;

use awc::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_app, Backend, Database};

const ROUNDS: usize = 4;
const RACERS: usize = 8;

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .finish()
}

async fn post(client: &awc::Client, url: &str, body: &Value) -> (StatusCode, Value) {
    match client
        .post(url)
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(serde_json::to_vec(body).unwrap())
        .await
    {
        Ok(mut r) => {
            let v = r
                .body()
                .limit(64 << 20)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            (r.status(), v.unwrap_or(Value::Null))
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
    }
}

async fn get(client: &awc::Client, url: &str) -> Value {
    let mut r = client.get(url).send().await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "{url}");
    r.json().limit(64 << 20).await.unwrap()
}

/// A transaction that conditionally creates the patients `mrns` (in this order),
/// each with an Observation that refers to it by its placeholder.
fn overlapping(mrns: &[String], system: &str) -> Value {
    let mut entries = Vec::new();
    for (i, mrn) in mrns.iter().enumerate() {
        let placeholder = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        entries.push(json!({"fullUrl": placeholder,
            "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": mrn}]},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={system}|{mrn}")}}));
        entries.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("obs {i}")},
                         "identifier": [{"system": format!("{system}:obs"), "value": mrn}],
                         "subject": {"reference": placeholder}},
            "request": {"method": "POST", "url": "Observation"}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// Races `RACERS` transactions over overlapping sets of patients; every patient
/// exists once and every Observation refers to it.
async fn race_overlapping_transactions(bases: &[String], round: usize) {
    let client = client();
    let system = format!("urn:race:{round}:{}", uuid::Uuid::new_v4().simple());
    let pool: Vec<String> = (0..6).map(|i| format!("MRN-{i}")).collect();
    let attempts = (0..RACERS).map(|r| {
        // Each racer takes four of the six, starting at a different one and in
        // either direction, so the orders differ.
        let mut mine: Vec<String> = (0..4).map(|k| pool[(r + k) % pool.len()].clone()).collect();
        if r % 2 == 1 {
            mine.reverse();
        }
        let url = bases[r % bases.len()].clone();
        let body = overlapping(&mine, &system);
        let client = client.clone();
        async move { post(&client, &url, &body).await }
    });
    let results = join_all(attempts).await;
    for (s, v) in &results {
        assert_eq!(*s, StatusCode::OK, "{v}");
    }
    let base = &bases[0];
    for mrn in &pool {
        let found = get(
            &client,
            &format!("{base}/Patient?identifier={system}|{mrn}"),
        )
        .await;
        assert_eq!(found["total"], 1, "{mrn}: {found}");
        let id = found["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let obs = get(
            &client,
            &format!("{base}/Observation?identifier={system}:obs|{mrn}&_count=100"),
        )
        .await;
        let subjects: Vec<&str> = obs["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["subject"]["reference"].as_str().unwrap())
            .collect();
        // Every racer that had this patient wrote one Observation for it.
        let racers = (0..RACERS)
            .filter(|r| (0..4).any(|k| pool[(r + k) % pool.len()] == *mrn))
            .count();
        assert_eq!(subjects.len(), racers, "{mrn}");
        assert!(
            subjects.iter().all(|s| *s == format!("Patient/{id}")),
            "{mrn}: {subjects:?}"
        );
    }
}

async fn racing_transactions_with_overlapping_conditional_creates_make_no_duplicates(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    for round in 0..ROUNDS {
        race_overlapping_transactions(std::slice::from_ref(&app.base), round).await;
    }
    app.stop().await;
}

on_both_backends!(racing_transactions_with_overlapping_conditional_creates_make_no_duplicates);

#[actix_rt::test]
async fn racing_transactions_across_two_processes_make_no_duplicates() {
    let (_db, _dir, a, b) = support::process::two_pg_nodes();
    for round in 0..ROUNDS {
        race_overlapping_transactions(&[a.base.clone(), b.base.clone()], round).await;
    }
}

/// Entries per transaction of the crash load.
const CRASH_ENTRIES: usize = 40;

/// A transaction of one Patient and its Observations, all carrying `tag`.
fn tagged(tag: &str) -> Value {
    let patient = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut entries = vec![json!({"fullUrl": patient,
        "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:crash", "value": tag}]},
        "request": {"method": "POST", "url": "Patient"}})];
    for i in 1..CRASH_ENTRIES {
        entries.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("o{i}")},
                         "identifier": [{"system": "urn:crash", "value": tag}],
                         "subject": {"reference": patient}, "valueInteger": i},
            "request": {"method": "POST", "url": "Observation"}}));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

async fn a_server_killed_during_a_transaction_load_leaves_no_partial_transaction(backend: Backend) {
    let db = Database::new(backend);
    let key = db.key_file();
    let log = db.dir.path().join("server.log");
    let server = support::process::start(&db.url, &key, &log, &[]);
    let base = server.base.clone();
    let client = client();
    // Four clients send transactions until the server dies under them.
    let load = (0..4).map(|c| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let mut sent: Vec<(String, StatusCode)> = Vec::new();
            for i in 0..200 {
                let tag = format!("c{c}-t{i}");
                let (status, _) = post(&client, &base, &tagged(&tag)).await;
                let dead = status == StatusCode::SERVICE_UNAVAILABLE;
                sent.push((tag, status));
                if dead {
                    break;
                }
            }
            sent
        }
    });
    let mut server = server;
    let killer = async {
        // Let some transactions commit, then kill in the middle of the others.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reap");
    };
    let (sent, ()) = futures_util::join!(join_all(load), killer);
    let sent: Vec<(String, StatusCode)> = sent.into_iter().flatten().collect();
    let committed = sent.iter().filter(|(_, s)| *s == StatusCode::OK).count();
    assert!(
        committed > 0,
        "no transaction committed before the kill: {sent:?}"
    );
    assert!(
        sent.iter()
            .any(|(_, s)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "the server was not killed during the load"
    );
    drop(server);
    // Restart on the same database: every transaction is whole or absent.
    let restarted = support::process::start(&db.url, &key, &db.dir.path().join("restart.log"), &[]);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (tag, status) in &sent {
        let p = get(
            &client,
            &format!(
                "{}/Patient?identifier=urn:crash|{tag}&_summary=count",
                restarted.base
            ),
        )
        .await;
        let o = get(
            &client,
            &format!(
                "{}/Observation?identifier=urn:crash|{tag}&_summary=count",
                restarted.base
            ),
        )
        .await;
        let n = p["total"].as_u64().unwrap() + o["total"].as_u64().unwrap();
        if *status == StatusCode::OK {
            assert_eq!(
                n, CRASH_ENTRIES as u64,
                "{tag} was answered 200 but is not whole"
            );
        }
        counts.insert(tag.clone(), n);
    }
    let partial: Vec<_> = counts
        .iter()
        .filter(|(_, n)| **n != 0 && **n != CRASH_ENTRIES as u64)
        .collect();
    assert!(
        partial.is_empty(),
        "partial transactions after the crash: {partial:?}"
    );
}

on_both_backends!(a_server_killed_during_a_transaction_load_leaves_no_partial_transaction);

/// Reads are answered while transactions queue for SQLite's one writer: a transaction
/// waiting for its turn holds no pooled connection (the test pool has three; a read that
/// waits 300 ms for one gets 503). (On PostgreSQL transactions run side by side, each on
/// its own connection: there the pool size is the bound, as for any request.)
#[actix_rt::test]
async fn reads_are_served_while_long_sqlite_transactions_queue() {
    let app = support::server::spawn_with(Database::new(Backend::Sqlite), |s| {
        s.database.pool_timeout_ms = 300;
    })
    .await;
    let client = client();
    let r = app
        .put_json(
            "/Patient/reader",
            &json!({"resourceType": "Patient", "id": "reader"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let big = |n: usize| {
        let mut b = tagged(&format!("long-{n}"));
        let entries = b["entry"].as_array_mut().unwrap();
        let template = entries[1].clone();
        for _ in 0..(1500 - CRASH_ENTRIES) {
            let mut e = template.clone();
            e["fullUrl"] = json!(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
            entries.push(e);
        }
        b
    };
    let writers = (0..6).map(|n| {
        let client = client.clone();
        let url = app.base.clone();
        let body = big(n);
        async move { post(&client, &url, &body).await.0 }
    });
    let readers = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            let r = client
                .get(format!("{}/Patient/reader", app.base))
                .send()
                .await
                .unwrap();
            statuses.push(r.status());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        statuses
    };
    let (written, read) = futures_util::join!(join_all(writers), readers);
    assert!(written.iter().all(|s| *s == StatusCode::OK), "{written:?}");
    assert!(read.iter().all(|s| *s == StatusCode::OK), "{read:?}");
    app.stop().await;
}
