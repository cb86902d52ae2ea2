//! A `$reindex` batch is read outside its write transaction (its index rows are
//! computed without holding the writer); when it commits, a resource written in
//! between keeps the index rows its own write gave it. Before this was so, a
//! resource deleted between the batch's read and its commit got its old index
//! rows back, and they made it match searches after a re-create.

use fhirgate::store::{ReindexJob, Reindexed};
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    actix_web::rt::task::spawn_blocking(f).await.unwrap()
}

/// A reindex job of Patients that this test, not the server's worker, holds.
async fn claim_a_job(app: &TestApp, owner: &str) -> ReindexJob {
    for _ in 0..50 {
        let (store, owner) = (app.store.clone(), owner.to_string());
        let claimed = blocking(move || {
            let queued = store.reindex_enqueue("Patient").expect("enqueue");
            // The server's worker polls too: a job it took first is left to it.
            store
                .reindex_claim(&owner, 60_000)
                .expect("claim")
                .filter(|j| j.job_id == queued.job_id)
        })
        .await;
        if let Some(job) = claimed {
            return job;
        }
    }
    panic!("the worker took every job")
}

async fn family_search(app: &TestApp, family: &str) -> Vec<String> {
    let r = app.get(&format!("/Patient?family={family}")).await.json();
    r["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn a_resource_written_during_a_reindex_batch_keeps_its_own_index_rows(backend: Backend) {
    let app = spawn_app(backend).await;
    let patient = |family: &str| -> Value {
        json!({"resourceType": "Patient", "id": "race", "name": [{"family": family}]})
    };
    assert!(app
        .put_json("/Patient/race", &patient("Racing"))
        .await
        .status
        .is_success());
    assert!(app
        .put_json(
            "/Patient/stays",
            &json!({"resourceType": "Patient", "id": "stays", "name": [{"family": "Staying"}]})
        )
        .await
        .status
        .is_success());
    let owner = "test-owner";
    let job = claim_a_job(&app, owner).await;
    // The batch is read (both Patients at version 1) ...
    let (store, state, j) = (app.store.clone(), app.state.clone(), job.clone());
    let batch: Vec<Reindexed> = blocking(move || {
        store
            .reindex_batch(&j, 100)
            .expect("batch")
            .into_iter()
            .map(|h| Reindexed {
                rid: h.rid,
                version: h.version.version,
                rows: state
                    .search
                    .stored_index_rows(&serde_json::from_slice::<Value>(&h.version.body).unwrap()),
            })
            .collect()
    })
    .await;
    assert_eq!(batch.len(), 2);
    // ... one of them is deleted before the batch commits ...
    assert!(app.delete("/Patient/race").await.status.is_success());
    let last = batch.iter().map(|r| r.rid).max().unwrap();
    let (store, j) = (app.store.clone(), job.clone());
    let committed = blocking(move || store.reindex_commit(&j, owner, 60_000, &batch, last)).await;
    assert!(committed.expect("commit"));
    // ... and stays out of searches, also once re-created under another name.
    assert!(family_search(&app, "Racing").await.is_empty());
    assert_eq!(family_search(&app, "Staying").await, vec!["stays"]);
    assert!(app
        .put_json("/Patient/race", &patient("Renamed"))
        .await
        .status
        .is_success());
    assert!(
        family_search(&app, "Racing").await.is_empty(),
        "the old name's index rows came back"
    );
    assert_eq!(family_search(&app, "Renamed").await, vec!["race"]);
    let (store, j) = (app.store.clone(), job.clone());
    blocking(move || store.reindex_finish(&j, None))
        .await
        .expect("finish");
    app.stop().await;
}

on_both_backends!(a_resource_written_during_a_reindex_batch_keeps_its_own_index_rows);
