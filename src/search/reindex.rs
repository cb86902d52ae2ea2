//! The background worker of every node: runs reindex jobs (`$reindex`, and the
//! upgrade job a migration queues) batch by batch under a lease, so a job survives
//! restarts and moves to another node when its owner dies; activates the
//! SearchParameters of the database once their base types are reindexed; and
//! reloads the parameter registry whenever another node changed it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use super::params::CustomParam;
use super::SearchEngine;
use crate::store::{ReindexJob, Reindexed, Store, StoreError, WeakStore};

/// Resources reindexed per transaction.
const BATCH: usize = 200;
/// A job's lease; renewed with every batch.
const LEASE_MS: i64 = 30_000;
/// How often an idle worker looks for jobs and registry changes.
const POLL: Duration = Duration::from_millis(500);

/// Loads the SearchParameters of the database into the registry.
pub fn reload_registry(store: &Store, engine: &SearchEngine) -> Result<(), StoreError> {
    let rows = store.custom_search_params("SearchParameter")?;
    let custom = rows
        .into_iter()
        .filter_map(|(row, v)| {
            let resource: Value = serde_json::from_slice(&v.body).ok()?;
            Some(CustomParam {
                resource: Arc::new(resource),
                active: row.active,
            })
        })
        .collect();
    engine.registry().set_custom(custom);
    Ok(())
}

/// Starts the worker thread; it ends when the server's store and engine are gone.
pub fn start(store: &Store, engine: &Arc<SearchEngine>) {
    let weak_store = store.downgrade();
    let weak_engine = Arc::downgrade(engine);
    let owner = format!("node-{}", uuid::Uuid::new_v4().simple());
    let spawned = std::thread::Builder::new()
        .name("search-reindex".into())
        .spawn(move || worker(weak_store, weak_engine, owner));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the reindex worker; $reindex jobs will not run on this node");
    }
}

fn worker(store: WeakStore, engine: Weak<SearchEngine>, owner: String) {
    let mut generation = None;
    loop {
        std::thread::sleep(POLL);
        let (Some(store), Some(engine)) = (store.upgrade(), engine.upgrade()) else {
            return;
        };
        match store.search_registry_generation() {
            Ok(g) if generation != Some(g) => match reload_registry(&store, &engine) {
                Ok(()) => generation = Some(g),
                Err(e) => tracing::warn!(error = %e, "could not reload the search parameters"),
            },
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "registry check skipped");
                continue;
            }
        }
        match store.reindex_claim(&owner, LEASE_MS) {
            Ok(Some(job)) => {
                let result = run_job(&store, &engine, &owner, &job);
                if let Err(e) = result {
                    tracing::warn!(job.id = %job.job_id, error = %e, "reindex batch failed; the job resumes later");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "no reindex job claimed"),
        }
    }
}

fn run_job(
    store: &Store,
    engine: &SearchEngine,
    owner: &str,
    job: &ReindexJob,
) -> Result<(), StoreError> {
    tracing::info!(job.id = %job.job_id, resource.type = %job.resource_type, from_rid = job.after_rid, "reindex job running");
    let mut job = job.clone();
    loop {
        let batch = store.reindex_batch(&job, BATCH)?;
        let Some(last) = batch.last().map(|h| h.rid) else {
            store.reindex_finish(&job, None)?;
            tracing::info!(job.id = %job.job_id, processed = job.processed, "reindex job done");
            activate_ready(store, engine)?;
            return Ok(());
        };
        let rows: Vec<Reindexed> = batch
            .iter()
            .map(|h| Reindexed {
                rid: h.rid,
                version: h.version.version,
                rows: serde_json::from_slice::<Value>(&h.version.body)
                    .map(|v| engine.stored_index_rows(&v))
                    .unwrap_or_default(),
            })
            .collect();
        if !store.reindex_commit(&job, owner, LEASE_MS, &rows, last)? {
            tracing::info!(job.id = %job.job_id, "reindex lease lost to another node");
            return Ok(());
        }
        job.after_rid = last;
        job.processed += rows.len() as i64;
    }
}

/// Activates the pending SearchParameters whose every base type was reindexed by
/// a job created after the parameter was last written.
fn activate_ready(store: &Store, engine: &SearchEngine) -> Result<(), StoreError> {
    let done = store.reindex_done()?;
    let mut ready = Vec::new();
    for (row, v) in store.custom_search_params("SearchParameter")? {
        if row.active {
            continue;
        }
        let Ok(sp) = serde_json::from_slice::<Value>(&v.body) else {
            continue;
        };
        let bases: Vec<&str> = sp
            .get("base")
            .and_then(Value::as_array)
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let covered = !bases.is_empty()
            && bases.iter().all(|b| {
                done.iter()
                    .any(|(t, created)| (t == b || t == "*") && *created >= row.updated)
            });
        if covered {
            ready.push(row.resource_id);
        }
    }
    if !ready.is_empty() {
        tracing::info!(
            params = ready.len(),
            "SearchParameters active after reindex"
        );
        store.activate_search_params(&ready)?;
        reload_registry(store, engine)?;
    }
    Ok(())
}
